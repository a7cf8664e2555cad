//! What a skip does, seen from outside: this test binary runs itself again with only the
//! `child_skips` test, once with skipping allowed and once under `FIRKIN_REQUIRE_ROOT_TESTS=1`.

#[cfg(test)]
mod tests {
    use std::process::{Command, Output};

    /// Set in the child run: `child_skips` then skips (otherwise it does nothing).
    const CHILD: &str = "FIRKIN_TEST_SUPPORT_CHILD";

    #[test]
    fn child_skips() {
        if std::env::var_os(CHILD).is_some() {
            firkin_test_support::skip("child_skips", "it was told to");
        }
    }

    fn run_child(require: Option<&str>) -> Output {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "tests::child_skips",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env_remove(firkin_test_support::REQUIRE_VAR);
        if let Some(value) = require {
            command.env(firkin_test_support::REQUIRE_VAR, value);
        }
        command.output().unwrap()
    }

    #[test]
    fn a_skip_is_a_message_unless_skipping_is_forbidden() {
        let allowed = run_child(None);
        let stderr = String::from_utf8_lossy(&allowed.stderr);
        assert!(allowed.status.success(), "{stderr}");
        assert!(
            stderr.contains("SKIP child_skips: it was told to"),
            "{stderr}"
        );

        // Only `1` forbids it.
        assert!(run_child(Some("0")).status.success());

        let forbidden = run_child(Some("1"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&forbidden.stdout),
            String::from_utf8_lossy(&forbidden.stderr)
        );
        assert!(!forbidden.status.success(), "{text}");
        assert!(
            text.contains("child_skips cannot run here (it was told to)")
                && text.contains("FIRKIN_REQUIRE_ROOT_TESTS=1 forbids skipping it"),
            "{text}"
        );
    }
}
