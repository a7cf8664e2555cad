//! Unpack one layer archive (a tar, plain, gzip or zstd, as a registry serves it or as
//! `docker save` writes it) into a layer store, and print where it went.
//!
//! Run as root (ownership is shifted into the sandboxes' id range):
//! `cargo run -p firkin-image --example unpack_layer -- <store dir> <layer file>`

use firkin_image::{Expected, IdShift, LayerStore, UnpackOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(store), Some(layer)) = (args.next(), args.next()) else {
        eprintln!("usage: unpack_layer <store dir> <layer file>");
        std::process::exit(2);
    };
    // The Linux driver's default: sandbox root is host id 100000.
    let ids = IdShift {
        host_start: 100_000,
        count: 65_536,
    };
    let store = LayerStore::open(store, UnpackOptions::new(ids))?;
    let layer = store.unpack(std::fs::File::open(layer)?, Expected::default())?;
    println!("{} at {}", layer.diff_id, layer.path.display());
    if let Some(report) = layer.report {
        println!(
            "{} entries, {} bytes of tar ({} as given, {}); {} device nodes skipped",
            report.entries,
            report.tar_bytes,
            report.compressed_bytes,
            report.digest,
            report.skipped_devices
        );
    }
    Ok(())
}
