//! Users of the sandbox, read from its `/etc/passwd` and `/etc/group`.
//!
//! envd is a static binary and may run in any root filesystem, so it reads the files itself
//! instead of going through NSS.

use std::path::{Path, PathBuf};

/// A user processes and file operations run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (from `/etc/group`), without the primary group.
    pub groups: Vec<u32>,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: String,
}

/// Why a user could not be found.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// No entry with that name.
    #[error("user {0:?} does not exist")]
    Unknown(String),
    /// The account database could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The account database under a root directory (`/` inside a sandbox).
#[derive(Clone, Debug)]
pub struct UserDb {
    etc: PathBuf,
}

impl Default for UserDb {
    fn default() -> Self {
        Self::new("/")
    }
}

impl UserDb {
    /// The database of the file system rooted at `root`.
    #[must_use]
    pub fn new(root: impl AsRef<Path>) -> Self {
        Self {
            etc: root.as_ref().join("etc"),
        }
    }

    /// Look `name` up. The files are read each time: they are small, and users added by a
    /// template's start command must be seen at once.
    ///
    /// # Errors
    ///
    /// [`UserError::Unknown`] or [`UserError::Read`].
    pub fn lookup(&self, name: &str) -> Result<User, UserError> {
        let passwd = self.read("passwd")?;
        let entry = passwd
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.len() >= 7 && fields[0] == name)
            .ok_or_else(|| UserError::Unknown(name.to_owned()))?;
        let parse = |field: &str| {
            field
                .parse::<u32>()
                .map_err(|_| UserError::Unknown(name.to_owned()))
        };
        let uid = parse(entry[2])?;
        let gid = parse(entry[3])?;
        let groups = self
            .read("group")
            .map(|group| supplementary_groups(&group, name, gid))
            .unwrap_or_default();
        Ok(User {
            name: name.to_owned(),
            uid,
            gid,
            groups,
            home: PathBuf::from(if entry[5].is_empty() { "/" } else { entry[5] }),
            shell: if entry[6].is_empty() {
                "/bin/sh"
            } else {
                entry[6]
            }
            .to_owned(),
        })
    }

    /// Whether `name` exists.
    #[must_use]
    pub fn exists(&self, name: &str) -> bool {
        self.lookup(name).is_ok()
    }

    fn read(&self, file: &str) -> Result<String, UserError> {
        let path = self.etc.join(file);
        std::fs::read_to_string(&path).map_err(|source| UserError::Read { path, source })
    }
}

fn supplementary_groups(group_file: &str, user: &str, primary: u32) -> Vec<u32> {
    group_file
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let gid: u32 = fields.get(2)?.parse().ok()?;
            let members = fields.get(3)?;
            (gid != primary && members.split(',').any(|member| member == user)).then_some(gid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_users_and_their_groups() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\nbad:x\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("etc/group"),
            "root:x:0:\nsudo:x:27:user,other\nuser:x:1000:user\n",
        )
        .unwrap();
        let db = UserDb::new(root.path());
        let user = db.lookup("user").unwrap();
        assert_eq!(
            (user.uid, user.gid, user.groups.as_slice()),
            (1000, 1000, &[27][..])
        );
        assert_eq!(user.home, PathBuf::from("/home/user"));
        assert_eq!(db.lookup("root").unwrap().uid, 0);
        assert!(matches!(db.lookup("nobody"), Err(UserError::Unknown(_))));
        assert!(matches!(db.lookup("bad"), Err(UserError::Unknown(_))));
    }
}
