//! `firkin serve` settings refused before anything is made.

#[cfg(test)]
mod tests {
    use std::process::Command;

    #[test]
    fn a_disk_below_the_minimum_is_refused_and_changes_nothing() {
        if !firkin_test_support::root_or_skip(
            "a_disk_below_the_minimum_is_refused_and_changes_nothing",
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        // Any existing file will do as envd: the setting is refused before it is used.
        let out = Command::new(env!("CARGO_BIN_EXE_firkin"))
            .arg("serve")
            .arg("--state-dir")
            .arg(&state)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--disk-size-mb",
                "8",
                "--envd-bin",
            ])
            .arg(env!("CARGO_BIN_EXE_firkin"))
            .env_remove("FIRKIN_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{out:?}");
        assert!(
            stderr.contains("8 MiB is too small") && stderr.contains("0 for no limit"),
            "{stderr}"
        );
        assert!(
            !state.exists(),
            "the refused daemon made its state directory"
        );
    }
}
