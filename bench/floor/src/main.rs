//! Accepts connections on 127.0.0.1:PORT and holds them: `hold` keeps each socket in a list,
//! `task` gives each one a task waiting for it to be readable (the least a task per connection
//! can be). Built with the allocator `wshub serve` uses.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "task".into());
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(7803);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let mut held = Vec::new();
    loop {
        let (socket, _) = listener.accept().await?;
        if mode == "hold" {
            held.push(socket);
        } else {
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                loop {
                    if socket.readable().await.is_err() {
                        return;
                    }
                    match socket.try_read(&mut byte) {
                        Ok(0) => return,
                        Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return,
                        _ => {}
                    }
                }
            });
        }
    }
}
