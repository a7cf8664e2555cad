//! What the `base` template takes from the host: facts and a short allow-list of public files.
//!
//! Nothing here reads a secret: `/etc/shadow`, `/etc/ssl/private`, SSH keys and the host's shell
//! profiles are never opened. Every file copied is named in [`HOST_FILES`] or lives under
//! `/etc/ssl/certs` or `/etc/alternatives` (symlinks only there). `/etc/resolv.conf` (or
//! systemd-resolved's upstream list) is read but only its nameserver addresses are kept; other
//! facts are existence checks (`/usr/bin/sudo`, `/lib64`, the `/bin` links...).

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Host files `base` may copy verbatim (absolute paths as seen on the host). Anything else in
/// the template's `/etc` is generated.
pub const HOST_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/os-release",
    "/usr/lib/os-release",
    "/etc/services",
    "/etc/protocols",
    "/etc/pam.d/sudo",
    "/etc/pam.d/su",
    "/etc/pam.d/su-l",
    "/etc/pam.d/other",
    "/etc/pam.d/common-auth",
    "/etc/pam.d/common-account",
    "/etc/pam.d/common-password",
    "/etc/pam.d/common-session",
    "/etc/pam.d/common-session-noninteractive",
];

/// The PAM files copied when the host has `sudo` (names under `/etc/pam.d`): `sudo`'s and
/// `su`'s (whose `pam_rootok` lets root switch to `user` without a password), and what they
/// include.
pub(crate) const PAM_FILES: &[&str] = &[
    "sudo",
    "su",
    "su-l",
    "other",
    "common-auth",
    "common-account",
    "common-password",
    "common-session",
    "common-session-noninteractive",
];

/// The CA certificate directory copied into `base` (public certificates only).
pub const SSL_CERTS_DIR: &str = "/etc/ssl/certs";

/// One entry found under a copied host directory, relative to that directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// Path relative to the copied directory (never absolute, never `..`).
    pub path: PathBuf,
    /// What it is.
    pub kind: HostEntryKind,
}

/// The kind of a [`HostEntry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEntryKind {
    /// A directory.
    Dir,
    /// A regular file and its bytes.
    File(Vec<u8>),
    /// A symbolic link and its target, as written.
    Symlink(PathBuf),
}

/// Everything the `base` plan needs to know about the host. Read it with [`HostFacts::read`];
/// build it by hand in tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// `/usr/bin/sudo` exists.
    pub has_sudo: bool,
    /// `/usr/bin/python3` exists.
    pub has_python3: bool,
    /// `/usr/bin/python` exists (Debian needs `python-is-python3` for it).
    pub has_python: bool,
    /// `/usr/share/zoneinfo/Etc/UTC` exists (then `/etc/localtime` links to it).
    pub has_zoneinfo_utc: bool,
    /// `/bin`, `/sbin` and `/lib` are symlinks into `/usr` (merged `/usr`).
    pub merged_usr: bool,
    /// The host has `/lib64` (or `/usr/lib64`): the ELF interpreter path of x86-64 binaries.
    pub has_lib64: bool,
    /// The host's `/etc/ld.so.cache`: the dynamic linker finds multiarch libraries through it.
    pub ld_so_cache: Option<Vec<u8>>,
    /// The host's `os-release` (`/etc/os-release`, else `/usr/lib/os-release`).
    pub os_release: Option<Vec<u8>>,
    /// The host's `/etc/services` (netbase: port names, used by `getservbyname`).
    pub services: Option<Vec<u8>>,
    /// The host's `/etc/protocols` (netbase).
    pub protocols: Option<Vec<u8>>,
    /// The `/etc/alternatives` symlinks: (name, target). Non-symlinks are ignored.
    pub alternatives: Vec<(String, PathBuf)>,
    /// Everything under `/etc/ssl/certs` (public CA certificates and their hash links).
    pub ssl_certs: Vec<HostEntry>,
    /// Usable nameservers: from `/etc/resolv.conf`, loopback ones dropped (they do not answer
    /// inside a sandbox's network namespace); if none remain, from systemd-resolved's upstream
    /// list `/run/systemd/resolve/resolv.conf`.
    pub nameservers: Vec<IpAddr>,
    /// The PAM files `sudo` and `su` need, (name under `/etc/pam.d`, bytes); empty without sudo.
    pub pam: Vec<(String, Vec<u8>)>,
}

impl HostFacts {
    /// Reads the facts from this host.
    ///
    /// # Errors
    /// Only on an I/O error other than "not found" while reading an allow-listed file.
    pub fn read() -> io::Result<Self> {
        Self::read_from(Path::new("/"))
    }

    /// Reads the facts from a host tree rooted at `root` (for tests: a fake host in a temporary
    /// directory).
    ///
    /// # Errors
    /// Only on an I/O error other than "not found" while reading an allow-listed file.
    pub fn read_from(root: &Path) -> io::Result<Self> {
        let at = |p: &str| root.join(p.trim_start_matches('/'));
        let has_sudo = at("/usr/bin/sudo").exists();
        let is_usr_link = |name: &str| {
            std::fs::read_link(at(name)).is_ok_and(|t| {
                let t = t.to_string_lossy().trim_start_matches('/').to_owned();
                t == format!("usr{name}")
            })
        };
        let merged_usr = is_usr_link("/bin") && is_usr_link("/sbin") && is_usr_link("/lib");
        let pam = if has_sudo {
            let mut pam = Vec::new();
            for name in PAM_FILES {
                if let Some(bytes) = read_optional(&at(&format!("/etc/pam.d/{name}")))? {
                    pam.push(((*name).to_owned(), bytes));
                }
            }
            pam
        } else {
            Vec::new()
        };
        let os_release = match read_optional(&at("/etc/os-release"))? {
            Some(bytes) => Some(bytes),
            None => read_optional(&at("/usr/lib/os-release"))?,
        };
        let mut nameservers = read_optional(&at("/etc/resolv.conf"))?
            .map(|b| parse_nameservers(&String::from_utf8_lossy(&b)))
            .unwrap_or_default();
        if nameservers.is_empty() {
            nameservers = read_optional(&at("/run/systemd/resolve/resolv.conf"))?
                .map(|b| parse_nameservers(&String::from_utf8_lossy(&b)))
                .unwrap_or_default();
        }
        Ok(Self {
            has_sudo,
            has_python3: at("/usr/bin/python3").exists(),
            has_python: at("/usr/bin/python").exists(),
            has_zoneinfo_utc: at("/usr/share/zoneinfo/Etc/UTC").exists(),
            merged_usr,
            has_lib64: at("/lib64").exists() || at("/usr/lib64").exists(),
            ld_so_cache: read_optional(&at("/etc/ld.so.cache"))?,
            os_release,
            services: read_optional(&at("/etc/services"))?,
            protocols: read_optional(&at("/etc/protocols"))?,
            alternatives: read_alternatives(&at("/etc/alternatives"))?,
            ssl_certs: read_tree(&at(SSL_CERTS_DIR))?,
            nameservers,
            pam,
        })
    }
}

/// The `nameserver` addresses of a `resolv.conf`, loopback ones dropped, at most three (the
/// resolver's limit).
pub(crate) fn parse_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|addr| addr.parse::<IpAddr>().ok())
        .filter(|addr| !addr.is_loopback() && !addr.is_unspecified())
        .take(3)
        .collect()
}

fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

fn read_alternatives(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut links = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_symlink() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        links.push((name, std::fs::read_link(entry.path())?));
    }
    links.sort();
    Ok(links)
}

/// Every entry under `dir` (relative paths, parents before children, sorted).
fn read_tree(dir: &Path) -> io::Result<Vec<HostEntry>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let path = rel.join(entry.file_name());
            let file_type = entry.file_type()?;
            let kind = if file_type.is_symlink() {
                HostEntryKind::Symlink(std::fs::read_link(entry.path())?)
            } else if file_type.is_dir() {
                stack.push(path.clone());
                HostEntryKind::Dir
            } else if file_type.is_file() {
                HostEntryKind::File(std::fs::read(entry.path())?)
            } else {
                continue;
            };
            out.push(HostEntry { path, kind });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_drop_loopback_and_junk() {
        let text = "# comment\nsearch example.com\nnameserver 127.0.0.53\nnameserver 10.0.0.2\n\
                    nameserver ::1\nnameserver bogus; rm -rf /\noptions edns0\nnameserver 2001:db8::1\n";
        assert_eq!(
            parse_nameservers(text),
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn reads_a_fake_host_without_touching_secrets() {
        let root = tempfile::tempdir().unwrap();
        let p = |s: &str| root.path().join(s);
        for d in [
            "usr/bin",
            "usr/lib",
            "usr/sbin",
            "etc/ssl/certs",
            "etc/ssl/private",
        ] {
            std::fs::create_dir_all(p(d)).unwrap();
        }
        for l in ["bin", "sbin", "lib"] {
            std::os::unix::fs::symlink(format!("usr/{l}"), p(l)).unwrap();
        }
        std::fs::write(p("usr/bin/sudo"), "").unwrap();
        std::fs::write(p("etc/ssl/certs/ca.pem"), "CERT").unwrap();
        std::fs::write(p("etc/ssl/private/key.pem"), "SECRET").unwrap();
        std::fs::write(p("etc/shadow"), "root:$6$secret:1:0:99999:7:::\n").unwrap();
        std::fs::write(p("etc/resolv.conf"), "nameserver 127.0.0.53\n").unwrap();
        std::fs::create_dir_all(p("run/systemd/resolve")).unwrap();
        std::fs::write(p("run/systemd/resolve/resolv.conf"), "nameserver 9.9.9.9\n").unwrap();
        let facts = HostFacts::read_from(root.path()).unwrap();
        assert!(facts.has_sudo && facts.merged_usr && !facts.has_lib64);
        assert_eq!(
            facts.nameservers,
            vec!["9.9.9.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(facts.ssl_certs.len(), 1);
        assert_eq!(facts.ssl_certs[0].path, Path::new("ca.pem"));
    }
}
