//! The E2B face over any `SingleNodeBackend`: here the in-memory fake driver, so the control
//! plane can be tried without root (sandboxes are records only; the proxy finds nothing to
//! talk to). `firkin serve` does the same over the Linux driver.
//!
//! Run: `cargo run -p firkin-e2b --example serve_fake`, then
//! `curl -H 'X-API-KEY: example' -d '{"templateID":"base"}' http://127.0.0.1:49981/v2/sandboxes`.

use std::sync::Arc;

use firkin_e2b::{AppState, E2bConfig};
use firkin_single_node::testing::FakeDriver;
use firkin_single_node::{SingleNodeBackend, SingleNodeConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("firkin-e2b-example-{}", std::process::id()));
    let mut config = SingleNodeConfig::new(&dir);
    config.minimum_free_disk_bytes = 0;
    let backend = SingleNodeBackend::open(config, Arc::new(FakeDriver::new())).await?;
    let state = AppState::new(backend, E2bConfig::new("example"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:49981").await?;
    println!(
        "E2B_API_URL=http://{} E2B_API_KEY=example",
        listener.local_addr()?
    );
    firkin_e2b::serve(listener, state, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
