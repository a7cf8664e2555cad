//! The `base` template as data: every directory, file and symlink of its lower layer, computed
//! purely from [`HostFacts`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::host::{HostEntryKind, HostFacts, SSL_CERTS_DIR};

/// The hostname written into the template's `/etc/hosts` and `/etc/hostname`. The driver
/// replaces both per sandbox with [`hosts_file`] and [`hostname_file`].
pub const PLACEHOLDER_HOSTNAME: &str = "firkin";

/// The `PATH` of every login shell in `base`.
pub const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where `base` keeps its own small helpers (the `python` link when the host lacks one); it is
/// last on `PATH` when present.
pub const FIRKIN_BIN: &str = "/opt/firkin/bin";

/// uid and gid of `user`.
pub const USER_ID: u32 = 1000;
/// gid of the `shadow` group (owns `/etc/shadow` and `/etc/gshadow`, as on Debian).
pub const SHADOW_GID: u32 = 42;

/// Where an entry's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Written by firkin.
    Generated,
    /// Copied from this host path (one of the allow-listed files, or under `/etc/ssl/certs` or
    /// `/etc/alternatives`).
    Host(PathBuf),
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory (possibly an empty mount point).
    Dir,
    /// A regular file with this content.
    File(Vec<u8>),
    /// A symbolic link with this target.
    Symlink(PathBuf),
}

/// One entry of the plan. Ids are the sandbox's view; the builder adds the id shift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path inside the sandbox (`/` is the template root).
    pub path: PathBuf,
    /// Directory, file or symlink.
    pub kind: EntryKind,
    /// Permission bits (including sticky); ignored for symlinks.
    pub mode: u32,
    /// Owner inside the sandbox.
    pub uid: u32,
    /// Group inside the sandbox.
    pub gid: u32,
    /// Generated, or copied from the host.
    pub origin: Origin,
}

/// The whole `base` layer: entries sorted so that every parent precedes its children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasePlan {
    entries: Vec<Entry>,
}

impl BasePlan {
    /// Computes the plan from host facts. Pure: no I/O.
    pub fn new(host: &HostFacts) -> Self {
        let mut b = Builder::default();
        b.dir("/", 0o755);
        // Merged /usr: the host's /usr is mounted at /usr; these links make /bin etc. work.
        // Without merged /usr the driver mounts the host's /bin, /sbin, /lib, /lib64 onto
        // these directories instead (see `mounts_for`).
        let mut top_links = vec!["bin", "sbin", "lib"];
        if host.has_lib64 {
            top_links.push("lib64");
        }
        for name in top_links {
            if host.merged_usr {
                b.symlink(&format!("/{name}"), &format!("usr/{name}"));
            } else {
                b.dir(&format!("/{name}"), 0o755);
            }
        }
        for dir in [
            "/usr", "/proc", "/sys", "/dev", "/run", "/opt", "/mnt", "/media", "/srv",
        ] {
            b.dir(dir, 0o755);
        }
        b.dir("/run/lock", 0o1777);
        b.dir("/tmp", 0o1777);
        b.dir("/var", 0o755);
        b.dir("/var/tmp", 0o1777);
        for dir in ["/var/lib", "/var/log", "/var/cache", "/var/spool"] {
            b.dir(dir, 0o755);
        }
        b.symlink("/var/run", "../run");
        b.symlink("/var/lock", "../run/lock");
        b.dir("/root", 0o700);
        b.file("/root/.profile", 0o644, ROOT_PROFILE);
        b.file("/root/.bashrc", 0o644, USER_BASHRC);
        b.dir("/home", 0o755);
        b.owned_dir("/home/user", 0o755, USER_ID, USER_ID);
        b.owned_file("/home/user/.profile", 0o644, USER_ID, USER_ID, USER_PROFILE);
        b.owned_file("/home/user/.bashrc", 0o644, USER_ID, USER_ID, USER_BASHRC);

        let path = if host.has_python3 && !host.has_python {
            b.dir("/opt/firkin", 0o755);
            b.dir(FIRKIN_BIN, 0o755);
            b.symlink(&format!("{FIRKIN_BIN}/python"), "/usr/bin/python3");
            format!("{BASE_PATH}:{FIRKIN_BIN}")
        } else {
            BASE_PATH.to_owned()
        };

        b.dir("/etc", 0o755);
        b.file("/etc/passwd", 0o644, PASSWD);
        b.file("/etc/group", 0o644, GROUP);
        b.owned_file("/etc/shadow", 0o640, 0, SHADOW_GID, SHADOW);
        b.owned_file("/etc/gshadow", 0o640, 0, SHADOW_GID, GSHADOW);
        b.file("/etc/hosts", 0o644, &hosts_file(PLACEHOLDER_HOSTNAME));
        b.file("/etc/hostname", 0o644, &hostname_file(PLACEHOLDER_HOSTNAME));
        b.file("/etc/resolv.conf", 0o644, &resolv_conf(host));
        b.file("/etc/nsswitch.conf", 0o644, NSSWITCH);
        b.file("/etc/host.conf", 0o644, "multi on\n");
        b.file("/etc/shells", 0o644, SHELLS);
        b.file("/etc/profile", 0o644, &etc_profile(&path));
        b.file("/etc/bash.bashrc", 0o644, BASH_BASHRC);
        b.file("/etc/environment", 0o644, &format!("PATH=\"{path}\"\n"));
        b.symlink("/etc/mtab", "../proc/self/mounts");
        if host.has_zoneinfo_utc {
            b.symlink("/etc/localtime", "/usr/share/zoneinfo/Etc/UTC");
        }
        b.file("/etc/timezone", 0o644, "Etc/UTC\n");
        match &host.os_release {
            Some(bytes) => b.copy("/etc/os-release", 0o644, bytes, "/etc/os-release"),
            None => b.file("/etc/os-release", 0o644, FIRKIN_OS_RELEASE),
        }
        if let Some(cache) = &host.ld_so_cache {
            b.copy("/etc/ld.so.cache", 0o644, cache, "/etc/ld.so.cache");
        }
        if let Some(bytes) = &host.services {
            b.copy("/etc/services", 0o644, bytes, "/etc/services");
        }
        if let Some(bytes) = &host.protocols {
            b.copy("/etc/protocols", 0o644, bytes, "/etc/protocols");
        }

        b.dir("/etc/alternatives", 0o755);
        for (name, target) in &host.alternatives {
            if is_plain_name(name) {
                let path = format!("/etc/alternatives/{name}");
                b.push(Entry {
                    path: PathBuf::from(&path),
                    kind: EntryKind::Symlink(target.clone()),
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                    origin: Origin::Host(PathBuf::from(&path)),
                });
            }
        }

        b.dir("/etc/ssl", 0o755);
        b.dir(SSL_CERTS_DIR, 0o755);
        for entry in &host.ssl_certs {
            if !is_relative_clean(&entry.path) {
                continue;
            }
            let path = Path::new(SSL_CERTS_DIR).join(&entry.path);
            let (kind, mode) = match &entry.kind {
                HostEntryKind::Dir => (EntryKind::Dir, 0o755),
                HostEntryKind::File(bytes) => (EntryKind::File(bytes.clone()), 0o644),
                HostEntryKind::Symlink(target) => (EntryKind::Symlink(target.clone()), 0o777),
            };
            b.push(Entry {
                path: path.clone(),
                kind,
                mode,
                uid: 0,
                gid: 0,
                origin: Origin::Host(path),
            });
        }

        if host.has_sudo {
            b.file("/etc/sudoers", 0o440, SUDOERS);
            b.dir("/etc/sudoers.d", 0o750);
            b.dir("/etc/pam.d", 0o755);
            for (name, bytes) in &host.pam {
                if is_plain_name(name) {
                    let path = format!("/etc/pam.d/{name}");
                    b.copy(&path, 0o644, bytes, &path);
                }
            }
            // pam_limits (in Debian's /etc/pam.d/sudo) wants its configuration file.
            b.dir("/etc/security", 0o755);
            b.file(
                "/etc/security/limits.conf",
                0o644,
                "# firkin base: no limits here; the sandbox's cgroup limits it.\n",
            );
        }

        b.entries.sort_by(|a, b| a.path.cmp(&b.path));
        Self { entries: b.entries }
    }

    /// All entries, parents before children.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry at `path` (absolute, inside the sandbox).
    pub fn get(&self, path: impl AsRef<Path>) -> Option<&Entry> {
        let path = path.as_ref();
        self.entries.iter().find(|e| e.path == path)
    }

    /// The content of the file at `path` as text, if it is a file in the plan.
    pub fn text(&self, path: impl AsRef<Path>) -> Option<String> {
        match &self.get(path)?.kind {
            EntryKind::File(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        }
    }

    /// A stable fingerprint of the plan (FNV-1a 64 over every entry): a changed plan has a
    /// different fingerprint, so a template built from an older plan is rebuilt.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv::new();
        for e in &self.entries {
            h.write(e.path.as_os_str().as_encoded_bytes());
            match &e.kind {
                EntryKind::Dir => h.write(b"\0d"),
                EntryKind::File(bytes) => {
                    h.write(b"\0f");
                    h.write(&(bytes.len() as u64).to_le_bytes());
                    h.write(bytes);
                }
                EntryKind::Symlink(target) => {
                    h.write(b"\0l");
                    h.write(target.as_os_str().as_encoded_bytes());
                }
            }
            h.write(&e.mode.to_le_bytes());
            h.write(&e.uid.to_le_bytes());
            h.write(&e.gid.to_le_bytes());
        }
        h.finish()
    }
}

/// The sandbox's `/etc/hosts`: localhost, the usual IPv6 names, and `hostname` on 127.0.1.1
/// (so `sudo` and anything else resolving its own hostname find it without DNS).
pub fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
    )
}

/// The sandbox's `/etc/hostname`.
pub fn hostname_file(hostname: &str) -> String {
    format!("{hostname}\n")
}

/// A sandbox's `/etc/resolv.conf`: the host's nameservers.
pub fn resolv_conf(host: &HostFacts) -> String {
    let mut out = String::from("# firkin base: the host's nameservers\n");
    for ns in &host.nameservers {
        let _ = writeln!(out, "nameserver {ns}");
    }
    out
}

fn etc_profile(path: &str) -> String {
    format!(
        "# /etc/profile: firkin base. Every command the E2B SDK runs starts a login shell, so\n\
         # this file must stay cheap: no subshells, no external commands.\n\
         PATH=\"{path}\"\n\
         export PATH\n\
         umask 022\n\
         if [ -n \"${{BASH_VERSION-}}\" ] && [ -n \"${{PS1-}}\" ] && [ -r /etc/bash.bashrc ]; then\n\
         \t. /etc/bash.bashrc\n\
         fi\n"
    )
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

fn is_relative_clean(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
        && path.components().next().is_some()
}

#[derive(Default)]
struct Builder {
    entries: Vec<Entry>,
}

impl Builder {
    fn push(&mut self, entry: Entry) {
        debug_assert!(
            self.entries.iter().all(|e| e.path != entry.path),
            "duplicate plan entry {}",
            entry.path.display()
        );
        self.entries.push(entry);
    }
    fn dir(&mut self, path: &str, mode: u32) {
        self.owned_dir(path, mode, 0, 0);
    }
    fn owned_dir(&mut self, path: &str, mode: u32, uid: u32, gid: u32) {
        self.push(Entry {
            path: path.into(),
            kind: EntryKind::Dir,
            mode,
            uid,
            gid,
            origin: Origin::Generated,
        });
    }
    fn file(&mut self, path: &str, mode: u32, content: &str) {
        self.owned_file(path, mode, 0, 0, content);
    }
    fn owned_file(&mut self, path: &str, mode: u32, uid: u32, gid: u32, content: &str) {
        self.push(Entry {
            path: path.into(),
            kind: EntryKind::File(content.as_bytes().to_vec()),
            mode,
            uid,
            gid,
            origin: Origin::Generated,
        });
    }
    fn copy(&mut self, path: &str, mode: u32, bytes: &[u8], from: &str) {
        self.push(Entry {
            path: path.into(),
            kind: EntryKind::File(bytes.to_vec()),
            mode,
            uid: 0,
            gid: 0,
            origin: Origin::Host(from.into()),
        });
    }
    fn symlink(&mut self, path: &str, target: &str) {
        self.push(Entry {
            path: path.into(),
            kind: EntryKind::Symlink(target.into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
            origin: Origin::Generated,
        });
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
user:x:1000:1000:user:/home/user:/bin/bash\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

const GROUP: &str = "root:x:0:\n\
tty:x:5:\n\
sudo:x:27:user\n\
shadow:x:42:\n\
users:x:100:user\n\
user:x:1000:\n\
nogroup:x:65534:\n";

// `*`: no password can match; accounts are usable through su/sudo from root and `sudo` for
// user (NOPASSWD). No aging fields, so PAM's account checks never expire them.
const SHADOW: &str = "root:*::0:99999:7:::\n\
user:*::0:99999:7:::\n\
nobody:*::0:99999:7:::\n";

const GSHADOW: &str = "root:*::\n\
tty:*::\n\
sudo:*::user\n\
shadow:*::\n\
users:*::user\n\
user:*::\n\
nogroup:*::\n";

const NSSWITCH: &str = "# firkin base: local files, then DNS for hosts\n\
passwd:         files\n\
group:          files\n\
shadow:         files\n\
gshadow:        files\n\
hosts:          files dns\n\
networks:       files\n\
protocols:      files\n\
services:       files\n\
ethers:         files\n\
rpc:            files\n\
netgroup:       files\n";

const SHELLS: &str = "/bin/sh\n/usr/bin/sh\n/bin/bash\n/usr/bin/bash\n/bin/dash\n/usr/bin/dash\n";

const BASH_BASHRC: &str = "# /etc/bash.bashrc: firkin base (interactive shells only; keep it cheap)\n\
[ -z \"${PS1-}\" ] && return\n\
shopt -s checkwinsize\n\
PS1='\\u@\\h:\\w\\$ '\n";

const ROOT_PROFILE: &str = "# ~/.profile: firkin base\n\
if [ -n \"${BASH_VERSION-}\" ] && [ -f \"$HOME/.bashrc\" ]; then . \"$HOME/.bashrc\"; fi\n";

const USER_PROFILE: &str = ROOT_PROFILE;

const USER_BASHRC: &str = "# ~/.bashrc: firkin base\n\
case $- in *i*) ;; *) return ;; esac\n\
alias ls='ls --color=auto'\n";

const SUDOERS: &str = "# /etc/sudoers: firkin base\n\
Defaults\tenv_reset\n\
Defaults\t!requiretty\n\
Defaults\tlecture=never\n\
Defaults\t!fqdn\n\
Defaults\tsecure_path=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n\
root\tALL=(ALL:ALL) ALL\n\
%sudo\tALL=(ALL:ALL) ALL\n\
# After %sudo: the last matching rule wins, and user is in group sudo.\n\
user\tALL=(ALL:ALL) NOPASSWD: ALL\n\
@includedir /etc/sudoers.d\n";

const FIRKIN_OS_RELEASE: &str = "PRETTY_NAME=\"firkin base\"\nNAME=\"firkin base\"\nID=firkin\n";
