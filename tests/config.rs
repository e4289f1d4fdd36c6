//! The configuration file: precedence flags > environment > file > defaults, unknown keys and
//! bad values refused at startup naming the key, and `--print-config` with secrets masked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn wshub(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wshub"));
    cmd.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WSHUB_")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wshub-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn flags_beat_environment_beat_file_beat_defaults() {
    let path = file(
        "precedence.toml",
        "listen = \"127.0.0.1:6000\"\nping-interval = \"5s\"\nmax_message_size = \"1MiB\"\nidle_timeout = \"90s\"\napi_key = \"topsecret\"\nallowed_origins = [\"https://a.example\"]\n",
    );
    let p = path.to_str().unwrap();
    let (ok, out, err) = wshub(
        &[
            "serve",
            "--config",
            p,
            "--ping-interval",
            "7s",
            "--print-config",
        ],
        &[
            ("WSHUB_LISTEN", "127.0.0.1:7000"),
            ("WSHUB_IDLE_TIMEOUT", "2m"),
        ],
    );
    assert!(ok, "{err}");
    let cfg: toml::Table = out.parse().unwrap();
    assert_eq!(
        cfg["listen"].as_str(),
        Some("127.0.0.1:7000"),
        "env beats file"
    );
    assert_eq!(cfg["ping_interval"].as_str(), Some("7s"), "flag beats file");
    assert_eq!(cfg["idle_timeout"].as_str(), Some("2m"), "env beats file");
    assert_eq!(
        cfg["max_message_size"].as_integer(),
        Some(1 << 20),
        "file beats default"
    );
    assert_eq!(cfg["send_queue"].as_integer(), Some(1024), "default");
    assert!(cfg.get("api_key").is_none(), "secrets are not printed");
    assert!(out.contains("# api_key is set but not printed"), "{out}");
    assert!(!out.contains("topsecret"));
    assert_eq!(cfg["allowed_origins"].as_array().unwrap().len(), 1);
}

#[test]
fn print_config_output_is_reusable_and_a_masked_secret_is_refused() {
    let p = file(
        "orig.toml",
        "api_key = \"topsecret\"\nidle_timeout = \"90s\"\n",
    );
    let (ok, out, err) = wshub(
        &["serve", "--config", p.to_str().unwrap(), "--print-config"],
        &[],
    );
    assert!(ok, "{err}");
    let again = file("again.toml", &out);
    let (ok, out2, err) = wshub(
        &[
            "serve",
            "--config",
            again.to_str().unwrap(),
            "--print-config",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert!(
        !out2.contains("api_key"),
        "no key came back from the printout: {out2}"
    );
    let masked = file("masked.toml", "api_key = \"***\"\n");
    let (ok, _, err) = wshub(&["serve", "--config", masked.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(
        err.contains("masked.toml") && err.contains("api_key"),
        "{err}"
    );
    assert!(err.contains("placeholder"), "{err}");
}

#[test]
fn unknown_keys_and_bad_values_are_refused_naming_the_key() {
    let p = file("unknown.toml", "max_mesage_size = 10\n");
    let (ok, _, err) = wshub(&["serve", "--config", p.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(err.contains("unknown key `max_mesage_size`"), "{err}");
    let p = file("badvalue.toml", "ping_interval = \"soon\"\n");
    let (ok, _, err) = wshub(&["serve", "--config", p.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(
        err.contains("ping-interval") && err.contains("badvalue.toml"),
        "{err}"
    );
    let p = file("syntax.toml", "listen = \n");
    let (ok, _, err) = wshub(&["serve", "--config", p.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(err.contains("syntax.toml"), "{err}");
    let (ok, _, err) = wshub(&["serve", "--config", "/nonexistent/wshub.toml"], &[]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/wshub.toml"), "{err}");
}

#[test]
fn printed_configuration_is_a_valid_configuration_file() {
    let (ok, out, _) = wshub(&["serve", "--print-config"], &[]);
    assert!(ok);
    let p = file("roundtrip.toml", &out);
    let (ok, again, err) = wshub(
        &["serve", "--config", p.to_str().unwrap(), "--print-config"],
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(out, again);
}

#[test]
fn backplane_and_node_id_are_checked_at_startup() {
    let (ok, _, err) = wshub(&["serve", "--backplane", "kafka://127.0.0.1:9092"], &[]);
    assert!(!ok);
    assert!(err.contains("redis://") && err.contains("nats://"), "{err}");
    let (ok, _, err) = wshub(&["serve", "--node-id", "a\"b"], &[]);
    assert!(!ok);
    assert!(err.contains("node id"), "{err}");
    let (ok, out, _) = wshub(
        &[
            "serve",
            "--print-config",
            "--backplane",
            "nats://127.0.0.1:4222",
            "--node-id",
            "n-1",
        ],
        &[],
    );
    assert!(ok);
    assert!(
        out.contains("backplane = \"nats://127.0.0.1:4222\""),
        "{out}"
    );
    assert!(out.contains("node_id = \"n-1\""), "{out}");
}

#[test]
fn the_production_example_is_a_valid_configuration_with_echo_off() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/wshub.production.toml");
    let (ok, out, err) = wshub(&["serve", "--config", path, "--print-config"], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("echo_endpoint = false"), "{out}");
    assert!(out.contains("announce = \"none\""), "{out}");
}

#[test]
fn pusher_apps_come_from_tables_or_flags_and_their_secrets_are_never_printed() {
    let path = file(
        "apps.toml",
        "[[apps]]\nid = \"shop\"\nkey = \"shop-key\"\nsecret = \"shop-secret-value\"\nclient_events = false\nmax_connections = 5\n\n[[apps]]\nid = \"blog\"\nkey = \"blog-key\"\nsecret = \"blog-secret-value\"\n",
    );
    let p = path.to_str().unwrap();
    let (ok, out, err) = wshub(&["serve", "--config", p, "--print-config"], &[]);
    assert!(ok, "{err}");
    assert!(!out.contains("secret-value"), "{out}");
    assert!(out.contains("app secrets are not printed"), "{out}");
    let cfg: toml::Table = out
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .parse()
        .unwrap();
    let apps = cfg["apps"].as_array().unwrap();
    assert_eq!(apps.len(), 2);
    assert_eq!(apps[0]["id"].as_str(), Some("shop"));
    assert_eq!(apps[0]["client_events"].as_bool(), Some(false));
    assert_eq!(apps[0]["max_connections"].as_integer(), Some(5));
    // The command line's form; a bad app stops the server naming what is wrong.
    let (ok, out, err) = wshub(&["serve", "--app", "7:k7:s7", "--print-config"], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("k7") && !out.contains("s7\""), "{out}");
    let (ok, _, err) = wshub(&["serve", "--app", "bad id:k:s"], &[]);
    assert!(!ok);
    assert!(err.contains("app id"), "{err}");
    let bad = file("bad-app.toml", "[[apps]]\nid = \"x\"\nkey = \"k\"\n");
    let (ok, _, err) = wshub(&["serve", "--config", bad.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(err.contains("secret"), "{err}");
    let dup = file("dup-app.toml", "[[apps]]\nid = \"x\"\nkey = \"k\"\nsecret = \"s\"\n[[apps]]\nid = \"x\"\nkey = \"k2\"\nsecret = \"s\"\n");
    let (ok, _, err) = wshub(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            dup.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("two apps have the id"), "{err}");
}

#[test]
fn webhooks_and_hooks_are_checked_at_startup_and_their_secret_never_printed() {
    let path = file(
        "hooks.toml",
        "webhook_secret = \"whsec_YS1rZXktb2YtdGhlLWJhY2tlbmQtMjRi\"\nwebhook_delay = \"4s\"\n\n[[webhooks]]\nurl = \"http://127.0.0.1:9/events\"\nevent_types = [\"group.occupied\", \"group.vacated\"]\n\n[[webhooks]]\nurl = \"http://127.0.0.1:9/all\"\n",
    );
    let (ok, out, err) = wshub(
        &[
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--print-config",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert!(!out.contains("YS1rZXkt"), "{out}");
    assert!(
        out.contains("webhook_secret is set but not printed"),
        "{out}"
    );
    let cfg: toml::Table = out
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .parse()
        .unwrap();
    let hooks = cfg["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[0]["event_types"].as_array().unwrap().len(), 2);
    assert_eq!(cfg["webhook_delay"].as_str(), Some("4s"));
    // What cannot work stops the server, saying why.
    let secret = "0123456789abcdef";
    for (args, says) in [
        (vec!["--webhook", "http://127.0.0.1:9/"], "--webhook-secret"),
        (
            vec![
                "--webhook",
                "http://127.0.0.1:9/",
                "--webhook-secret",
                "short",
            ],
            "at least 16",
        ),
        (
            vec![
                "--webhook",
                r#"{"url":"http://127.0.0.1:9/","event_types":["group.opened"]}"#,
                "--webhook-secret",
                secret,
            ],
            "unknown event `group.opened`",
        ),
        (
            vec!["--connect-hook", "ftp://x", "--webhook-secret", secret],
            "--connect-hook `ftp://x`",
        ),
        (
            vec!["--join-hook", "http://127.0.0.1:9/"],
            "--webhook-secret",
        ),
        (vec!["--webhook-delay", "2m"], "at most 1m"),
    ] {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend(args.iter().copied());
        let (ok, _, err) = wshub(&all, &[]);
        assert!(!ok, "{args:?} started");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
