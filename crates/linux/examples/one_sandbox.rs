//! Embedding firkin with real sandboxes and no daemon: a `SingleNodeBackend` over the Linux
//! driver, one `base` sandbox, one command through its envd, then delete. Needs root, the
//! static envd (`scripts/build-envd`) and the init helper of this crate.
//!
//! Run: `cargo build -p firkin-linux --bin firkin-sandbox-init && sudo target/debug/examples/one_sandbox
//! target/x86_64-unknown-linux-gnu/envd/firkin-envd target/debug/firkin-sandbox-init`

use std::io::{Read as _, Write as _};
use std::sync::Arc;

use firkin_linux::driver::{NamespaceConfig, NamespaceDriver};
use firkin_single_node::{
    SandboxResources, SingleNodeBackend, SingleNodeConfig, SingleNodeCreateRequest, StateStore,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(envd), Some(helper)) = (args.next(), args.next()) else {
        eprintln!("usage: one_sandbox ENVD_BINARY INIT_HELPER");
        std::process::exit(2);
    };
    let state_dir = std::env::temp_dir().join(format!("firkin-example-{}", std::process::id()));
    let state = StateStore::open(&state_dir)?;
    let driver =
        NamespaceDriver::for_state(NamespaceConfig::new(&state_dir, envd, helper), &state).await?;
    let backend = SingleNodeBackend::builder(SingleNodeConfig::new(&state_dir), Arc::new(driver))
        .state(state)
        .build()
        .await?;
    let sandbox = backend
        .create(SingleNodeCreateRequest::new(
            "base",
            SandboxResources::from_mib(1, 256),
        ))
        .await?;
    let id = sandbox.sandbox_id().to_owned();
    let envd = backend.ports().target(&id, 49983)?;
    // envd's health check, in raw HTTP: the sandbox answers on its own address.
    let mut stream = std::net::TcpStream::connect(envd)?;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: envd\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    println!(
        "sandbox {id} at {envd}: {}",
        answer.lines().next().unwrap_or_default()
    );
    backend.delete(&id).await?;
    backend.shutdown().await?;
    // The driver detaches its idmapped views when it goes.
    drop(backend);
    std::fs::remove_dir_all(&state_dir)?;
    Ok(())
}
