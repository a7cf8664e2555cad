//! A test body that needs root: runs as root, skips with a message otherwise (and fails
//! instead of skipping under `FIRKIN_REQUIRE_ROOT_TESTS=1`).

fn main() {
    if !firkin_test_support::root_or_skip("example") {
        return;
    }
    println!("running as root: the test would run here");
}
