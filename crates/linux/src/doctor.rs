//! `firkin doctor`: which kernel features this host has, and what needs them.
//!
//! Every probe only reads (`/proc`, `/sys`, `/dev/kvm` opened and closed, `nft list tables`,
//! tools looked up in `PATH`):
//! running the doctor changes nothing on the host. It does not depend on the cgroup module: it
//! reads `/proc/self/mountinfo` and `/proc/cgroups` itself.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// One check: a feature, whether the host has it, and what needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short name, e.g. `namespace: user` or `/dev/kvm`.
    pub name: String,
    /// Whether the host has it.
    pub ok: bool,
    /// What was found (a version, a path, the reason it failed).
    pub detail: String,
    /// What does not work without it.
    pub needed_for: String,
}

impl Check {
    fn new(name: &str, ok: bool, detail: impl Into<String>, needed_for: &str) -> Self {
        Self {
            name: name.to_owned(),
            ok,
            detail: detail.into(),
            needed_for: needed_for.to_owned(),
        }
    }
}

/// The result of all checks, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoctorReport {
    /// The checks, in the order they were run.
    pub checks: Vec<Check>,
}

/// The names of every check [`DoctorReport::run`] performs, in order.
pub const CHECK_NAMES: &[&str] = &[
    "running as root",
    "namespace: user",
    "namespace: mount",
    "namespace: pid",
    "namespace: net",
    "namespace: uts",
    "namespace: ipc",
    "namespace: cgroup",
    "user namespaces",
    "unprivileged user namespaces",
    "overlayfs",
    "idmapped mounts",
    "cgroups",
    "cgroup controller: cpu",
    "cgroup controller: memory",
    "cgroup controller: pids",
    "cgroup controller: freezer",
    "nftables",
    "sandbox disks",
    "/dev/kvm",
];

impl DoctorReport {
    /// Probes this host.
    pub fn run() -> Self {
        let root = rustix::process::geteuid().is_root();
        let mut checks = vec![Check::new(
            "running as root",
            root,
            if root {
                "euid 0".to_owned()
            } else {
                format!("euid {}", rustix::process::geteuid().as_raw())
            },
            "creating sandboxes (namespaces, cgroups, mounts and network slots need root today)",
        )];
        for (ns, needed) in [
            (
                "user",
                "mapping sandbox root to an unprivileged host uid range",
            ),
            ("mnt", "a private root filesystem per sandbox"),
            (
                "pid",
                "sandboxes seeing only their own processes; envd as PID 1",
            ),
            ("net", "per-sandbox networking and egress rules"),
            ("uts", "the sandbox id as hostname"),
            ("ipc", "isolating SysV IPC and POSIX message queues"),
            ("cgroup", "sandboxes seeing only their own cgroup"),
        ] {
            let name = if ns == "mnt" { "mount" } else { ns };
            let path = format!("/proc/self/ns/{ns}");
            let ok = Path::new(&path).exists();
            let detail = if ok {
                path
            } else {
                format!("{path} missing (kernel built without it)")
            };
            checks.push(Check::new(
                &format!("namespace: {name}"),
                ok,
                detail,
                needed,
            ));
        }
        checks.extend(user_namespace_checks());
        checks.push(overlay_check());
        let release = read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default();
        checks.push(idmap_check(&release));
        let mut cgroups = Cgroups::read(
            &read_trimmed("/proc/self/mountinfo").unwrap_or_default(),
            &read_trimmed("/proc/cgroups").unwrap_or_default(),
        );
        cgroups.v2_freeze = kernel_version(&release).is_some_and(|v| v >= (5, 2));
        checks.extend(cgroups.checks());
        checks.push(nft_check(root));
        checks.push(disk_check());
        checks.push(kvm_check());
        Self { checks }
    }

    /// How many checks passed.
    pub fn passed(&self) -> usize {
        self.checks.iter().filter(|c| c.ok).count()
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }

    /// One line: how many checks passed, and whether sandboxes can run.
    pub fn summary(&self) -> String {
        let failed = self.checks.len() - self.passed();
        if failed == 0 {
            format!("{} of {} checks passed", self.passed(), self.checks.len())
        } else {
            let names: Vec<&str> = self.failures().map(|c| c.name.as_str()).collect();
            format!(
                "{} of {} checks passed; {failed} failed: {}",
                self.passed(),
                self.checks.len(),
                names.join(", ")
            )
        }
    }
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .checks
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0);
        for check in &self.checks {
            let mark = if check.ok { '✓' } else { '✗' };
            writeln!(f, "{mark} {:<width$}  {}", check.name, check.detail)?;
            if !check.ok {
                writeln!(f, "  {:<width$}  without it: {}", "", check.needed_for)?;
            }
        }
        writeln!(f, "{}", self.summary())
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim_end().to_owned())
}

fn user_namespace_checks() -> Vec<Check> {
    let max =
        read_trimmed("/proc/sys/user/max_user_namespaces").and_then(|s| s.parse::<u64>().ok());
    let privileged = match max {
        Some(0) => Check::new(
            "user namespaces",
            false,
            "/proc/sys/user/max_user_namespaces is 0",
            "sandbox root being unprivileged on the host (set user.max_user_namespaces > 0)",
        ),
        Some(n) => Check::new(
            "user namespaces",
            true,
            format!("max_user_namespaces {n}"),
            "sandbox root being unprivileged on the host",
        ),
        None => Check::new(
            "user namespaces",
            Path::new("/proc/self/ns/user").exists(),
            "/proc/sys/user/max_user_namespaces unreadable",
            "sandbox root being unprivileged on the host",
        ),
    };
    // Debian's knob, and Ubuntu's AppArmor restriction.
    let debian = read_trimmed("/proc/sys/kernel/unprivileged_userns_clone");
    let apparmor = read_trimmed("/proc/sys/kernel/apparmor_restrict_unprivileged_userns");
    let unprivileged_ok =
        max.unwrap_or(0) > 0 && debian.as_deref() != Some("0") && apparmor.as_deref() != Some("1");
    let detail = match (debian.as_deref(), apparmor.as_deref()) {
        (Some("0"), _) => "kernel.unprivileged_userns_clone = 0".to_owned(),
        (_, Some("1")) => "kernel.apparmor_restrict_unprivileged_userns = 1".to_owned(),
        _ if unprivileged_ok => "allowed".to_owned(),
        _ => "no user namespaces at all".to_owned(),
    };
    let unprivileged = Check::new(
        "unprivileged user namespaces",
        unprivileged_ok,
        detail,
        "running firkin without root (not supported yet: firkin runs as root today)",
    );
    vec![privileged, unprivileged]
}

fn overlay_check() -> Check {
    let needed = "sandbox root filesystems (template layers below a private writable layer)";
    if read_trimmed("/proc/filesystems")
        .is_some_and(|fs| fs.lines().any(|l| l.ends_with("\toverlay")))
    {
        return Check::new("overlayfs", true, "in /proc/filesystems", needed);
    }
    let release = read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default();
    let module_dir = PathBuf::from(format!("/lib/modules/{release}/kernel/fs/overlayfs"));
    let loadable = std::fs::read_dir(&module_dir).is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("overlay.ko")))
    });
    if loadable {
        Check::new(
            "overlayfs",
            true,
            "module overlay loadable (modprobe overlay)",
            needed,
        )
    } else {
        Check::new(
            "overlayfs",
            false,
            "not in /proc/filesystems and no overlay module",
            needed,
        )
    }
}

fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn idmap_check(release: &str) -> Check {
    let needed =
        "sudo and root writes inside sandboxes whose ids are shifted (idmapped template layers)";
    match kernel_version(release) {
        Some(v) if v >= (5, 19) => Check::new(
            "idmapped mounts",
            true,
            format!(
                "kernel {release} ≥ 5.19 (overlay on idmapped layers); will be probed at first use"
            ),
            needed,
        ),
        Some(_) => Check::new(
            "idmapped mounts",
            false,
            format!("kernel {release} < 5.19: overlayfs cannot use idmapped lower layers"),
            needed,
        ),
        None => Check::new(
            "idmapped mounts",
            false,
            format!("unknown kernel release {release:?}"),
            needed,
        ),
    }
}

/// cgroup hierarchies as read from `/proc/self/mountinfo` and `/proc/cgroups`.
#[derive(Debug, Default)]
struct Cgroups {
    /// Mount point of the cgroup2 hierarchy and its controllers (root `cgroup.controllers`).
    v2: Option<(PathBuf, Vec<String>)>,
    /// v1 controllers with their mount points.
    v1: Vec<(String, PathBuf)>,
    /// Controllers the kernel has enabled (`/proc/cgroups`).
    enabled: Vec<String>,
    /// The kernel has the v2 freezer (`cgroup.freeze`, Linux 5.2), which is not a listed
    /// controller.
    v2_freeze: bool,
}

impl Cgroups {
    fn read(mountinfo: &str, proc_cgroups: &str) -> Self {
        let mut out = Self::default();
        for line in mountinfo.lines() {
            // "id parent maj:min root mountpoint opts [optional...] - fstype source superopts"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split(' ').nth(4).map(unescape_octal);
            let mut right = right.split(' ');
            let (fstype, super_opts) = (right.next(), right.nth(1));
            let Some(mount_point) = mount_point else {
                continue;
            };
            match fstype {
                Some("cgroup2") if out.v2.is_none() => {
                    let controllers =
                        std::fs::read_to_string(Path::new(&mount_point).join("cgroup.controllers"))
                            .map(|s| s.split_whitespace().map(str::to_owned).collect())
                            .unwrap_or_default();
                    out.v2 = Some((PathBuf::from(mount_point), controllers));
                }
                Some("cgroup") => {
                    for opt in super_opts.unwrap_or_default().split(',') {
                        if !matches!(opt, "rw" | "ro")
                            && !opt.contains('=')
                            && !opt.starts_with("no")
                            && !out.v1.iter().any(|(c, _)| c == opt)
                        {
                            out.v1.push((opt.to_owned(), PathBuf::from(&mount_point)));
                        }
                    }
                }
                _ => {}
            }
        }
        out.enabled = proc_cgroups
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 4 && f[3] == "1").then(|| f[0].to_owned())
            })
            .collect();
        out
    }

    fn checks(&self) -> Vec<Check> {
        let mut parts = Vec::new();
        if let Some((path, controllers)) = &self.v2 {
            parts.push(format!(
                "v2 at {} [{}]",
                path.display(),
                controllers.join(" ")
            ));
        }
        if !self.v1.is_empty() {
            let names: Vec<&str> = self.v1.iter().map(|(c, _)| c.as_str()).collect();
            parts.push(format!("v1 [{}]", names.join(" ")));
        }
        let any = !parts.is_empty();
        let mut checks = vec![Check::new(
            "cgroups",
            any,
            if any {
                parts.join("; ")
            } else {
                "no cgroup hierarchy mounted".to_owned()
            },
            "resource limits, killing and freezing whole sandboxes",
        )];
        for (controller, needed) in [
            ("cpu", "CPU limits (cpuCount)"),
            (
                "memory",
                "memory limits (memoryMB); an OOM would hit the host instead of the sandbox",
            ),
            (
                "pids",
                "the process limit: a fork bomb in a sandbox would reach the host",
            ),
            ("freezer", "pause and resume"),
        ] {
            let v2 = self.v2.as_ref().and_then(|(path, controllers)| {
                // The v2 freezer is core (cgroup.freeze), not a listed controller.
                let has = if controller == "freezer" {
                    self.v2_freeze
                } else {
                    controllers.iter().any(|c| c == controller)
                };
                has.then(|| format!("v2 at {}", path.display()))
            });
            let v1 = self
                .v1
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, path)| format!("v1 at {}", path.display()));
            let (ok, detail) = match (v2, v1) {
                (Some(a), Some(b)) => (true, format!("{a}; {b}")),
                (Some(a), None) | (None, Some(a)) => (true, a),
                (None, None) if self.enabled.iter().any(|c| c == controller) => (
                    false,
                    "enabled in the kernel but not mounted in any hierarchy".to_owned(),
                ),
                (None, None) => (false, "not available".to_owned()),
            };
            checks.push(Check::new(
                &format!("cgroup controller: {controller}"),
                ok,
                detail,
                needed,
            ));
        }
        checks
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn nft_check(root: bool) -> Check {
    let needed = "network egress rules (blocking the host, other sandboxes, metadata; allow_internet_access=false)";
    let Some(nft) = crate::sys::find_in_path("nft") else {
        return Check::new(
            "nftables",
            false,
            "no `nft` binary (install nftables)",
            needed,
        );
    };
    if Path::new("/sys/module/nf_tables").exists() {
        return Check::new(
            "nftables",
            true,
            format!("{} and nf_tables loaded", nft.display()),
            needed,
        );
    }
    if root {
        let listed = std::process::Command::new(&nft)
            .args(["list", "tables"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        return if listed {
            Check::new(
                "nftables",
                true,
                format!("{}; `nft list tables` works", nft.display()),
                needed,
            )
        } else {
            Check::new(
                "nftables",
                false,
                format!(
                    "{} found but `nft list tables` fails: no nf_tables in the kernel?",
                    nft.display()
                ),
                needed,
            )
        };
    }
    Check::new(
        "nftables",
        false,
        format!(
            "{} found; kernel support unknown: nf_tables not in /sys/module (built in, or not loaded) and `nft list tables` needs root",
            nft.display()
        ),
        needed,
    )
}

/// Which mechanism bounds a sandbox's disk on this host (see [`crate::disk`]).
fn disk_check() -> Check {
    let needed = "a disk limit per sandbox (`--disk-size-mb`; 0 runs sandboxes without one)";
    match crate::disk::mechanism() {
        crate::disk::Mechanism::Image { mkfs, mount } => Check::new(
            "sandbox disks",
            true,
            format!(
                "a sparse ext4 image per sandbox, loop-mounted ({}, {}, /dev/loop-control)",
                mkfs.display(),
                mount.display()
            ),
            needed,
        ),
        crate::disk::Mechanism::Unavailable(reason) => {
            Check::new("sandbox disks", false, reason, needed)
        }
    }
}

fn kvm_check() -> Check {
    let needed = "microVM sandboxes (a future driver; the namespace driver does not need KVM)";
    let path = Path::new("/dev/kvm");
    if !path.exists() {
        return Check::new("/dev/kvm", false, "missing", needed);
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => Check::new(
            "/dev/kvm",
            true,
            "opens read-write (a paravirtual KVM such as PVM may still not boot stock guests)",
            needed,
        ),
        Err(e) => Check::new(
            "/dev/kvm",
            false,
            format!("exists but cannot be opened read-write: {e}"),
            needed,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DoctorReport {
        DoctorReport {
            checks: vec![
                Check::new(
                    "overlayfs",
                    true,
                    "in /proc/filesystems",
                    "root filesystems",
                ),
                Check::new("/dev/kvm", false, "missing", "microVM sandboxes"),
            ],
        }
    }

    #[test]
    fn renders_marks_failures_and_summary() {
        let text = sample().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "✓ overlayfs  in /proc/filesystems");
        assert_eq!(lines[1], "✗ /dev/kvm   missing");
        assert_eq!(lines[2], "             without it: microVM sandboxes");
        assert_eq!(lines[3], "1 of 2 checks passed; 1 failed: /dev/kvm");
        assert_eq!(lines.len(), 4);
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["checks"][1]["ok"], false);
        assert_eq!(json["checks"][1]["needed_for"], "microVM sandboxes");
    }

    #[test]
    fn runs_every_check_on_this_host() {
        let report = DoctorReport::run();
        let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, CHECK_NAMES);
    }

    #[test]
    fn names_the_disk_mechanism_this_host_gets() {
        let report = DoctorReport::run();
        let disks = report
            .checks
            .iter()
            .find(|c| c.name == "sandbox disks")
            .expect("no sandbox disks check");
        let loop_devices = Path::new("/dev/loop-control").exists();
        assert_eq!(
            disks.ok,
            loop_devices && disks.detail.contains("ext4 image"),
            "{disks:?}"
        );
        if !loop_devices {
            assert!(disks.detail.contains("no loop devices"), "{disks:?}");
        }
    }

    #[test]
    fn parses_hybrid_cgroups() {
        let mountinfo = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
            37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n\
            40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
            41 31 0:38 / /nonexistent/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let proc_cgroups = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\nmemory\t4\t20\t1\npids\t8\t1\t1\n";
        let checks = Cgroups::read(mountinfo, proc_cgroups).checks();
        let get = |n: &str| checks.iter().find(|c| c.name == n).unwrap();
        assert!(get("cgroups").ok);
        assert!(get("cgroup controller: cpu").ok);
        assert_eq!(
            get("cgroup controller: memory").detail,
            "v1 at /sys/fs/cgroup/memory"
        );
        assert!(get("cgroup controller: freezer").ok);
        let pids = get("cgroup controller: pids");
        assert!(!pids.ok);
        assert!(pids.detail.contains("not mounted"));
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert!(idmap_check("5.19.0").ok);
        assert!(!idmap_check("5.15.0-91-generic").ok);
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
    }
}
