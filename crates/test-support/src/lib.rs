//! What firkin's test suites share.
//!
//! Most of firkin's isolation tests need root (namespaces, cgroups, nftables, loop devices).
//! Run without it, they skip with a message, so that `cargo test` stays usable for a
//! developer without root. A skipped isolation test proves nothing, though, and CI must not
//! stay green with every one of them skipped: with [`REQUIRE_VAR`] set to `1` (as
//! `scripts/test` sets it), every skip is a failure instead.
//!
//! ```
//! fn a_root_test() {
//!     if !firkin_test_support::is_root() {
//!         return firkin_test_support::skip("a_root_test", "needs root");
//!     }
//!     // ... the test itself
//! }
//! # a_root_test();
//! ```

/// The environment variable that turns every skip into a failure when set to `1`.
pub const REQUIRE_VAR: &str = "FIRKIN_REQUIRE_ROOT_TESTS";

/// Whether skipping is forbidden in this run ([`REQUIRE_VAR`] is `1`).
pub fn skips_forbidden() -> bool {
    std::env::var_os(REQUIRE_VAR).is_some_and(|value| value == "1")
}

/// Reports that `test` cannot run on this host because `why`.
///
/// # Panics
///
/// When [`skips_forbidden`]: the test then fails, naming what it lacked.
pub fn skip(test: &str, why: &str) {
    assert!(
        !skips_forbidden(),
        "{test} cannot run here ({why}), and {REQUIRE_VAR}=1 forbids skipping it"
    );
    eprintln!("SKIP {test}: {why}");
}

/// Whether this process runs as root (its effective uid owns `/proc/self`; no `unsafe`).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .is_ok_and(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0)
}

/// [`skip`]s `test` and answers `false` unless this process runs as root.
pub fn root_or_skip(test: &str) -> bool {
    let root = is_root();
    if !root {
        skip(test, "needs root");
    }
    root
}
