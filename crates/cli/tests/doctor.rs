//! `firkin doctor`, run as the built binary: the table and the JSON both list every check, and
//! the command exits 0 even when checks fail.

#[cfg(test)]
mod tests {
    use std::process::{Command, Output};

    use firkin_linux::doctor::CHECK_NAMES;
    use serde_json::Value;

    fn firkin(args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_firkin"))
            .args(args)
            .env_remove("FIRKIN_LOG")
            .output()
            .expect("run firkin")
    }

    #[test]
    fn table_lists_every_check_and_a_summary() {
        let out = firkin(&["doctor"]);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        for name in CHECK_NAMES {
            assert!(
                text.lines()
                    .any(|l| (l.starts_with("✓ ") || l.starts_with("✗ "))
                        && l[4..].trim_start().starts_with(name)),
                "{name} missing from:\n{text}"
            );
        }
        let summary = text.lines().last().unwrap();
        assert!(
            summary.contains(&format!("of {} checks passed", CHECK_NAMES.len())),
            "{summary}"
        );
        // Every failure says what does not work without it.
        let failures = text.lines().filter(|l| l.starts_with("✗ ")).count();
        assert_eq!(text.matches("without it: ").count(), failures, "{text}");
    }

    #[test]
    fn json_lists_every_check() {
        let out = firkin(&["doctor", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let json: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
        let checks = json["checks"].as_array().unwrap();
        let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, CHECK_NAMES);
        for check in checks {
            assert!(check["ok"].is_boolean() && check["detail"].is_string());
            assert!(!check["needed_for"].as_str().unwrap().is_empty());
        }
        let passed = checks.iter().filter(|c| c["ok"] == true).count();
        assert_eq!(json["passed"], passed);
        assert_eq!(json["failed"], checks.len() - passed);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains("checks passed"), "{stderr}");
    }
}
