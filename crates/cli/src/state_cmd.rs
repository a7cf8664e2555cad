//! `firkin state ...`: summary and seed import.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use firkin_single_node::{LogStore, SeedState, SingleNodeConfig, StateStore};

#[derive(Debug, Subcommand)]
pub(crate) enum StateCommand {
    /// Summarise the state database: sandboxes by state, snapshots.
    Show,
    /// Import a firkin-single-node seed state directory (active.json, snapshots.json,
    /// logs.json). All or nothing: a bad file or an id clash imports nothing.
    Import {
        /// The seed state directory.
        dir: PathBuf,
    },
}

pub(crate) fn run(state_dir: &Path, command: StateCommand, json: bool) -> anyhow::Result<()> {
    let max_logs = SingleNodeConfig::default().max_log_events_per_sandbox;
    match command {
        StateCommand::Show => {
            let state = StateStore::open(state_dir)
                .with_context(|| format!("open state in {}", state_dir.display()))?;
            let active = state.load_active();
            let snapshots = state.load_snapshots();
            let logs = LogStore::new(state.durable().clone(), max_logs);
            if json {
                let sandboxes: Vec<_> = active
                    .iter()
                    .map(|record| {
                        serde_json::json!({
                            "sandboxID": record.sandbox_id,
                            "templateID": record.template_id,
                            "state": record.state.as_str(),
                            "startedAtUnixMs": record.started_at_unix_ms,
                            "endAtUnixMs": record.end_at_unix_ms,
                            "logEvents": logs.len(&record.sandbox_id).unwrap_or(0),
                        })
                    })
                    .collect();
                let snapshot_ids: Vec<_> = snapshots.iter().map(|s| &s.snapshot_id).collect();
                println!(
                    "{}",
                    serde_json::json!({ "stateDir": state_dir, "sandboxes": sandboxes, "snapshots": snapshot_ids })
                );
            } else {
                println!("state directory: {}", state_dir.display());
                println!("sandboxes: {}", active.len());
                for record in &active {
                    println!(
                        "  {}  {:<9} template {}  logs {}",
                        record.sandbox_id,
                        record.state.as_str(),
                        record.template_id,
                        logs.len(&record.sandbox_id).unwrap_or(0)
                    );
                }
                println!("snapshots: {}", snapshots.len());
                for snapshot in &snapshots {
                    println!(
                        "  {}  from {}",
                        snapshot.snapshot_id, snapshot.source_sandbox_id
                    );
                }
            }
        }
        StateCommand::Import { dir } => {
            // Parse the seed before touching the state directory: a bad seed leaves no trace.
            let seed =
                SeedState::read(&dir).with_context(|| format!("import {}", dir.display()))?;
            let state = StateStore::open(state_dir)
                .with_context(|| format!("open state in {}", state_dir.display()))?;
            let summary = state
                .import_seed(&seed, max_logs)
                .with_context(|| format!("import {}", dir.display()))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "active": summary.active,
                        "snapshots": summary.snapshots,
                        "logEvents": summary.log_events,
                    })
                );
            } else {
                println!(
                    "imported {} sandboxes, {} snapshots and {} log events into {}",
                    summary.active,
                    summary.snapshots,
                    summary.log_events,
                    state_dir.display()
                );
            }
        }
    }
    Ok(())
}
