//! The `wshub` binary: `wshub serve` loads the configuration, binds and serves until
//! SIGINT/SIGTERM. The load generator is its own binary, `wshub-bench`.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use wshub::config::{LogFormat, ServeArgs};

/// wshub: a real-time WebSocket hub.
#[derive(Debug, Parser)]
#[command(name = "wshub", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at startup: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub server.
    Serve(ServeArgs),
}

/// jemalloc: see docs/BENCHMARKS.md ("Memory goes back").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let args = match parse_cli() {
        Ok(Command::Serve(args)) => args,
        Err(e) => {
            eprintln!("wshub: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", args.to_toml());
        return std::process::ExitCode::SUCCESS;
    }
    let log_format = args.log_format;
    init_logging(log_format);
    // Loop 0 is this thread's runtime; `--workers` counts all of them (see
    // `wshub::event_loops` for why loops rather than a work-stealing pool).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wshub: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let n = args.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    let loops = match runtime.block_on(async { wshub::event_loops::EventLoops::start(n) }) {
        Ok(loops) => loops,
        Err(e) => {
            eprintln!("wshub: cannot start the event loops: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve(args, loops.clone()));
    loops.stop();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Once: on the terminal for people, in the log stream for log collectors.
            match log_format {
                LogFormat::Text => eprintln!("wshub: {e}"),
                LogFormat::Json => tracing::error!("{e}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Parses the command line; for `serve --config FILE`, parses again with the file's options
/// added wherever no flag or environment variable set them.
fn parse_cli() -> Result<Command, String> {
    use clap::{CommandFactory, FromArgMatches};
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = Cli::command().get_matches_from(&argv);
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let (Command::Serve(args), Some(("serve", sub))) = (&cli.command, matches.subcommand()) else {
        return Ok(cli.command);
    };
    let Some(path) = &args.config else {
        return Ok(cli.command);
    };
    let known: Vec<String> = Cli::command()
        .find_subcommand("serve")
        .map(|c| {
            c.get_arguments()
                .map(|a| a.get_id().as_str().to_owned())
                .collect()
        })
        .unwrap_or_default();
    let is_set = |id: &str| {
        matches!(
            sub.value_source(id),
            Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
        )
    };
    let extra = wshub::config::file_args(path, &known, is_set)?;
    let mut argv = argv;
    argv.extend(extra.into_iter().map(Into::into));
    let matches = Cli::command().try_get_matches_from(&argv).map_err(|e| {
        format!(
            "{} (from {})",
            e.render().to_string().trim(),
            path.display()
        )
    })?;
    Cli::from_arg_matches(&matches)
        .map(|c| c.command)
        .map_err(|e| e.to_string())
}

async fn serve(
    args: ServeArgs,
    loops: std::sync::Arc<wshub::event_loops::EventLoops>,
) -> Result<(), String> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(wshub::tls::server_config(cert, key)?),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    let listener = wshub::server::bind(args.listen).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another process has it: choose another address with --listen or WSHUB_LISTEN)"
        } else {
            ""
        };
        format!("cannot listen on {}: {e}{hint}", args.listen)
    })?;
    let auth = wshub::auth::Auth::new(&args.auth_settings()?)?;
    if !auth.requires_token() && args.connect_hook.is_none() {
        tracing::warn!("connection authentication is OFF: anyone who reaches /ws connects anonymously (set --jwt-secret, --jwt-public-key or --connect-hook)");
    }
    if !auth.requires_api_key() {
        tracing::warn!("the REST API is open: anyone who reaches /api can push to every client (set --api-key)");
    }
    if args.allowed_origins.is_empty() || args.allowed_origins.iter().any(|o| o == "*") {
        tracing::warn!("the Origin policy is open: any web page can open WebSockets here with its visitors' cookies (set --allowed-origins)");
    }
    args.check()?;
    let config = args.hub_config();
    if args.apps.is_empty() && (auth.requires_token() || auth.requires_api_key()) {
        tracing::info!("Pusher protocol: no app configured (the development app is served only without --api-key and JWT auth): add --app ID:KEY:SECRET");
    } else if args.apps.is_empty() {
        let dev = wshub::apps::App::development();
        tracing::warn!(
            app_id = %dev.id, key = %dev.key, secret = %dev.secret,
            "Pusher protocol: serving the development app at /app/{} (public credentials: configure your own with --app ID:KEY:SECRET)",
            dev.key
        );
    } else {
        for a in config.apps.all() {
            tracing::info!(app_id = %a.id, key = %a.key, "Pusher app served at /app/{}", a.key);
        }
    }
    let hub = wshub::Hub::with_auth(config, auth);
    if args.backplane != wshub::backplane::BackplaneUrl::Memory {
        hub.connect_backplane(wshub::backplane::BackplaneConfig {
            url: args.backplane.clone(),
            node_ttl: args.node_ttl,
            heartbeat: (args.node_ttl / 5).max(std::time::Duration::from_millis(100)),
            queue: args.publish_queue as usize,
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
        tracing::info!(node = %hub.node_id(), backplane = %args.backplane, "joining the cluster");
        wait_for_backplane(&hub, BACKPLANE_WAIT).await;
    }
    let app = wshub::router(hub.clone());
    let options = wshub::server::ServerOptions {
        handshake_timeout: args.handshake_timeout,
        request_timeout: args.request_timeout,
        tls,
        loops: Some(loops),
    };
    let result = wshub::server::run(
        listener,
        hub.clone(),
        app,
        options,
        wshub::server::shutdown_signal(),
    )
    .await
    .map_err(|e| e.to_string());
    if let Some(c) = hub.cluster() {
        // A clean stop takes this node's entries out of the listing at once.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), c.engine().leave()).await;
    }
    result
}

/// How long a starting node waits for its backplane before it accepts anyone.
const BACKPLANE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits (up to `limit`) until the backplane is reachable. The port is already bound, so
/// clients that come meanwhile wait in the listen backlog rather than reaching a node that
/// could not recover their streams or carry their publications beyond itself. Past the
/// limit the node serves anyway, degraded (`/readyz` says so) and reconnecting.
async fn wait_for_backplane(hub: &wshub::Hub, limit: std::time::Duration) {
    let Some(c) = hub.cluster() else { return };
    let deadline = tokio::time::Instant::now() + limit;
    while !c.is_up() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    if !c.is_up() {
        tracing::warn!(
            waited = ?limit,
            "the backplane is not reachable yet: serving this node's own connections only until it is"
        );
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a terminal, and never when NO_COLOR is set (https://no-color.org).
    use std::io::IsTerminal as _;
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
