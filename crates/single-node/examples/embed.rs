//! Embedding `firkin-single-node` without a daemon: open a backend over a state directory,
//! create a sandbox, pause, list, read its log, delete it.
//!
//! This uses the in-memory fake driver, so it runs anywhere; `firkin-linux`'s example does
//! the same with real sandboxes.
//!
//! Run: `cargo run -p firkin-single-node --example embed`

use std::sync::Arc;
use std::time::Duration;

use firkin_single_node::testing::FakeDriver;
use firkin_single_node::{ListQuery, SingleNodeBackend, SingleNodeConfig, SingleNodeCreateRequest};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("firkin-embed-{}", std::process::id()));
    let mut config = SingleNodeConfig::new(&dir);
    config.minimum_free_disk_bytes = 0;
    let resources = config.default_sandbox_resources;
    let backend = SingleNodeBackend::open(config, Arc::new(FakeDriver::new())).await?;
    let reaper = backend.spawn_reaper();

    let request =
        SingleNodeCreateRequest::new("base", resources).with_timeout(Duration::from_secs(60));
    let sandbox = backend.create(request).await?;
    println!("created {} ({})", sandbox.sandbox_id(), sandbox.state());
    backend.pause(sandbox.sandbox_id()).await?;
    for listed in backend.list(&ListQuery::default())?.sandboxes {
        println!("listed  {} ({})", listed.sandbox_id(), listed.state());
    }
    for event in backend.sandbox_logs(sandbox.sandbox_id(), None, 10)? {
        println!("log #{}: {}", event.seq, event.message);
    }
    backend.delete(sandbox.sandbox_id()).await?;
    println!(
        "deleted; {} sandboxes left",
        backend.scheduler().admitted_len()
    );
    drop(reaper);
    drop(backend);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
