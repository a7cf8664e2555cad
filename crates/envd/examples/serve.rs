//! Embed envd in another program: serve it on a local port, ask `/health`, stop it.
//!
//! Run: `cargo run -p firkin-envd --example serve`

use std::io::{Read, Write};

use firkin_envd::state::{Envd, Settings};
use firkin_envd::users::UserDb;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let users = UserDb::default();
    let settings = Settings {
        default_user: if users.exists("user") { "user" } else { "root" }.to_owned(),
        ..Settings::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(firkin_envd::server::serve(
        listener,
        Envd::new(settings, users),
        async {
            let _ = stopped.await;
        },
    ));

    let answer = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: envd\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response.lines().next().unwrap_or_default().to_owned())
    })
    .await??;
    println!("envd on 127.0.0.1:{port} answered /health with {answer:?}");

    let _ = stop.send(());
    server.await??;
    Ok(())
}
