//! Paths as clients give them: relative to the user's home, with `~` expanded.

use std::path::{Component, Path, PathBuf};

use crate::users::User;

/// Resolve `path` for `user`: `~` and `~/x` are the home directory, relative paths are taken
/// from the home directory, `.` and `..` are folded lexically (the file system decides what
/// a symlink means; envd confines nothing beyond the user's permissions).
#[must_use]
pub fn resolve(user: &User, path: &str) -> PathBuf {
    let joined = if path == "~" {
        user.home.clone()
    } else if let Some(rest) = path.strip_prefix("~/") {
        user.home.join(rest)
    } else if Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        user.home.join(path)
    };
    normalize(&joined)
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            name: "user".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![],
            home: "/home/user".into(),
            shell: "/bin/bash".into(),
        }
    }

    #[test]
    fn relative_home_and_tilde() {
        let u = user();
        assert_eq!(resolve(&u, "a.txt"), PathBuf::from("/home/user/a.txt"));
        assert_eq!(resolve(&u, "~"), PathBuf::from("/home/user"));
        assert_eq!(resolve(&u, "~/x/../y"), PathBuf::from("/home/user/y"));
        assert_eq!(resolve(&u, "/tmp/./a"), PathBuf::from("/tmp/a"));
        assert_eq!(resolve(&u, "/../../etc"), PathBuf::from("/etc"));
        assert_eq!(resolve(&u, ""), PathBuf::from("/home/user"));
    }
}
