//! What the image tests share: archives of a few files, and a store in a temporary directory.

#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::path::Path;

use firkin_image::{IdShift, LayerStore, UnpackOptions};

/// The id range the tests' stores shift owners into.
pub const SHIFT: IdShift = IdShift {
    host_start: 300_000,
    count: 65_536,
};

/// A tar of regular files (`0644`).
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, *bytes).unwrap();
    }
    builder.into_inner().unwrap()
}

/// `bytes`, gzip-compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A store at `<dir>/store`.
pub fn store(dir: &Path) -> LayerStore {
    LayerStore::open(dir.join("store"), UnpackOptions::new(SHIFT)).unwrap()
}

/// How many layers the store at `<dir>/store` holds.
pub fn layers_in(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("store/layers/sha256"))
        .unwrap()
        .count()
}
