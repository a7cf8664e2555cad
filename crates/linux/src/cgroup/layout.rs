//! Where the cgroup hierarchies are and where this process sits in them.
//!
//! Detection reads `/proc/self/mountinfo` (mount points and each mount's root inside its
//! hierarchy) and `/proc/self/cgroup` (this process's path per hierarchy). The daemon's own
//! directory for a hierarchy is `<mount point>/<own path minus the mount's root>`; sandbox
//! cgroups go below it, in `firkin/<name>`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{
    CgroupError, CgroupHandle, CgroupVersion, DAEMON_LEAF, FIRKIN_DIR, V1_CONTROLLERS,
    V2_CONTROLLERS, fs as cgfs, is_valid_name,
};

/// Every cgroup v1 controller name the kernel knows; other super options are flags.
const KNOWN_V1: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// The cgroup hierarchies of this host as seen by this process, and the version firkin uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    version: CgroupVersion,
    unified: Option<Unified>,
    /// v1 controller name → this process's directory in that controller's hierarchy.
    v1: BTreeMap<String, PathBuf>,
}

/// The cgroup2 hierarchy holding this process.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unified {
    mount_point: PathBuf,
    /// Our own directory (the parent of [`DAEMON_LEAF`] if we moved ourselves there).
    own_dir: PathBuf,
    /// What `own_dir/cgroup.controllers` offers.
    controllers: Vec<String>,
}

/// One parsed `/proc/self/mountinfo` line (the fields we use).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    root: String,
    mount_point: String,
    fstype: String,
    super_options: Vec<String>,
}

impl CgroupLayout {
    /// Detects the layout from `/proc/self/mountinfo` and `/proc/self/cgroup`.
    ///
    /// Chooses cgroup v2 when this process's v2 cgroup offers `cpu`, `memory` and `pids`,
    /// otherwise v1 when `cpu`, `cpuacct`, `memory`, `pids` and `freezer` are mounted.
    pub fn detect() -> Result<Self, CgroupError> {
        let mountinfo = cgfs::read(Path::new("/proc/self/mountinfo"))?;
        let cgroup = cgfs::read(Path::new("/proc/self/cgroup"))?;
        Self::from_texts(&mountinfo, &cgroup, Path::new("/"))
    }

    /// Builds the layout from the texts of `/proc/self/mountinfo` and `/proc/self/cgroup`,
    /// with every mount point taken under `root` (`/` on a real host, a temporary directory
    /// holding a fake tree in tests). Reads `cgroup.controllers` below `root`.
    ///
    /// Lines that do not parse are skipped: the mount table carries much we do not read.
    pub fn from_texts(
        mountinfo: &str,
        proc_cgroup: &str,
        root: &Path,
    ) -> Result<Self, CgroupError> {
        let mounts: Vec<Mount> = mountinfo.lines().filter_map(parse_mount_line).collect();
        let own = parse_proc_cgroup(proc_cgroup);
        let unified = find_unified(&mounts, &own, root)?;
        let v1 = find_v1(&mounts, &own, root);
        let v2_ok = unified.as_ref().is_some_and(|u| {
            V2_CONTROLLERS
                .iter()
                .all(|c| u.controllers.iter().any(|x| x == c))
        });
        let v1_missing: Vec<String> = V1_CONTROLLERS
            .iter()
            .filter(|c| !v1.contains_key(**c))
            .map(|c| (*c).to_owned())
            .collect();
        let version = if v2_ok {
            CgroupVersion::V2
        } else if v1_missing.is_empty() {
            CgroupVersion::V1
        } else {
            return Err(CgroupError::NoUsableHierarchy {
                v2_dir: unified.as_ref().map(|u| u.own_dir.clone()),
                v2_controllers: unified.map(|u| u.controllers).unwrap_or_default(),
                v1_missing,
            });
        };
        Ok(Self {
            version,
            unified,
            v1,
        })
    }

    /// The version firkin uses on this host.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The daemon's own cgroup directory per controller firkin uses (v2: one entry, `unified`).
    pub fn own_dirs(&self) -> BTreeMap<String, PathBuf> {
        match (self.version, &self.unified) {
            (CgroupVersion::V2, Some(u)) => {
                BTreeMap::from([("unified".to_owned(), u.own_dir.clone())])
            }
            _ => V1_CONTROLLERS
                .iter()
                .filter_map(|c| self.v1.get(*c).map(|d| ((*c).to_owned(), d.clone())))
                .collect(),
        }
    }

    /// The `firkin` directories that hold sandbox cgroups, one per distinct hierarchy.
    pub fn firkin_dirs(&self) -> Vec<PathBuf> {
        let own = self.own_dirs();
        cgfs::distinct(own.values())
            .into_iter()
            .map(|d| d.join(FIRKIN_DIR))
            .collect()
    }

    /// The controllers the v2 cgroup offers (empty when there is none).
    pub(crate) fn v2_controllers(&self) -> &[String] {
        self.unified.as_ref().map_or(&[], |u| &u.controllers)
    }

    /// The handle a sandbox cgroup called `name` has (or would have) in this layout.
    pub fn handle_for(&self, name: &str) -> Result<CgroupHandle, CgroupError> {
        if !is_valid_name(name) {
            return Err(CgroupError::InvalidName {
                name: name.to_owned(),
            });
        }
        let paths = self
            .own_dirs()
            .into_iter()
            .map(|(c, d)| (c, d.join(FIRKIN_DIR).join(name)))
            .collect();
        Ok(CgroupHandle {
            version: self.version,
            name: name.to_owned(),
            paths,
        })
    }

    /// Every sandbox cgroup name present under any `firkin` directory (to reclaim leftovers),
    /// sorted. Directories with names firkin would not create are left alone.
    pub fn firkin_cgroups(&self) -> Result<Vec<String>, CgroupError> {
        let mut names = Vec::new();
        for dir in self.firkin_dirs() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupError::ReadDir { path: dir, source }),
            };
            for entry in entries {
                let entry = entry.map_err(|source| CgroupError::ReadDir {
                    path: dir.clone(),
                    source,
                })?;
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if let Some(name) = entry.file_name().to_str()
                    && is_dir
                    && is_valid_name(name)
                {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Removes the `firkin` directories that hold no sandbox cgroup any more (uninstall, or a
    /// leak check). Only call it when no `create` can be running: `create` expects the
    /// directory it has just made to stay.
    pub fn prune_firkin_dirs(&self) -> Result<(), CgroupError> {
        for dir in self.firkin_dirs() {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || matches!(e.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY)) => {}
                Err(source) => return Err(CgroupError::Rmdir { path: dir, source }),
            }
        }
        Ok(())
    }

    /// A human-readable summary for `firkin doctor`: version, where, and which controllers.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let _ = match self.version {
            CgroupVersion::V2 => writeln!(out, "cgroup v2 (unified)"),
            CgroupVersion::V1 if self.unified.is_some() => writeln!(out, "cgroup v1 (hybrid)"),
            CgroupVersion::V1 => writeln!(out, "cgroup v1 (legacy)"),
        };
        if let Some(u) = &self.unified {
            let _ = writeln!(
                out,
                "  cgroup2 at {}, own cgroup {}, controllers: {}",
                u.mount_point.display(),
                u.own_dir.display(),
                if u.controllers.is_empty() {
                    "none".to_owned()
                } else {
                    u.controllers.join(" ")
                }
            );
        }
        for (controller, dir) in &self.v1 {
            let used = if V1_CONTROLLERS.contains(&controller.as_str()) {
                ""
            } else {
                " (unused)"
            };
            let _ = writeln!(out, "  v1 {controller}: {}{used}", dir.display());
        }
        let _ = write!(out, "  sandbox cgroups under: ");
        let dirs: Vec<String> = self
            .firkin_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let _ = write!(out, "{}", dirs.join(", "));
        out
    }

    /// Forces cgroup v2 whatever controllers it offers (tests of the v2 freeze and kill
    /// paths on a hybrid host, where the unified hierarchy has none).
    #[cfg(test)]
    pub(crate) fn force_v2(mut self) -> Option<Self> {
        self.unified.as_ref()?;
        self.version = CgroupVersion::V2;
        Some(self)
    }
}

/// Parses one mountinfo line: `id parent maj:min root mount-point options [optional...] - fstype
/// source super-options`. `None` for lines that do not have that shape.
fn parse_mount_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let fields: Vec<&str> = left.split(' ').filter(|f| !f.is_empty()).collect();
    if fields.len() < 6 {
        return None;
    }
    let mut right = right.split(' ');
    let fstype = right.next().filter(|f| !f.is_empty())?;
    let _source = right.next();
    let super_options = right
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::to_owned)
        .collect();
    Some(Mount {
        root: unescape(fields[3]),
        mount_point: unescape(fields[4]),
        fstype: fstype.to_owned(),
        super_options,
    })
}

/// One mountinfo field as text.
fn unescape(field: &str) -> String {
    String::from_utf8_lossy(&crate::sys::unescape_mountinfo(field)).into_owned()
}

/// `/proc/self/cgroup` as (controller list, path); the v2 line has an empty list.
fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?.trim_end();
            if !path.starts_with('/') {
                return None;
            }
            let controllers = controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            Some((controllers, path.to_owned()))
        })
        .collect()
}

/// `own` relative to a mount whose root is `mount_root`, or `None` if it lies outside.
fn relative<'a>(own: &'a str, mount_root: &str) -> Option<&'a str> {
    let root = mount_root.trim_end_matches('/');
    let rest = own.strip_prefix(root)?;
    if rest.is_empty() || rest.starts_with('/') {
        Some(rest.trim_start_matches('/'))
    } else {
        None
    }
}

/// `root` + `mount_point` + `rel`.
fn host_dir(root: &Path, mount_point: &str, rel: &str) -> PathBuf {
    let mut dir = root.join(mount_point.trim_start_matches('/'));
    if !rel.is_empty() {
        dir.push(rel);
    }
    dir
}

fn find_unified(
    mounts: &[Mount],
    own: &[(Vec<String>, String)],
    root: &Path,
) -> Result<Option<Unified>, CgroupError> {
    let Some((_, own_path)) = own.iter().find(|(c, _)| c.is_empty()) else {
        return Ok(None);
    };
    // Prefer the canonical mount point when the hierarchy is mounted more than once.
    let mut candidates: Vec<&Mount> = mounts.iter().filter(|m| m.fstype == "cgroup2").collect();
    candidates.sort_by_key(|m| m.mount_point != "/sys/fs/cgroup");
    let Some((mount, rel)) = candidates
        .iter()
        .find_map(|m| relative(own_path, &m.root).map(|r| (*m, r)))
    else {
        return Ok(None);
    };
    let mut own_dir = host_dir(root, &mount.mount_point, rel);
    // After moving ourselves into the leaf (see `v2::ensure_delegation`), our base is its parent.
    if own_dir.file_name().is_some_and(|n| n == DAEMON_LEAF)
        && let Some(parent) = own_dir.parent()
    {
        own_dir = parent.to_owned();
    }
    let controllers_file = own_dir.join("cgroup.controllers");
    let controllers = match fs::read_to_string(&controllers_file) {
        Ok(t) => t.split_whitespace().map(str::to_owned).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(CgroupError::Read {
                path: controllers_file,
                source,
            });
        }
    };
    Ok(Some(Unified {
        mount_point: host_dir(root, &mount.mount_point, ""),
        own_dir,
        controllers,
    }))
}

fn find_v1(
    mounts: &[Mount],
    own: &[(Vec<String>, String)],
    root: &Path,
) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    for (controllers, own_path) in own {
        for controller in controllers
            .iter()
            .filter(|c| KNOWN_V1.contains(&c.as_str()))
        {
            let dir = mounts
                .iter()
                .filter(|m| m.fstype == "cgroup" && m.super_options.iter().any(|o| o == controller))
                .find_map(|m| {
                    relative(own_path, &m.root).map(|rel| host_dir(root, &m.mount_point, rel))
                });
            if let Some(dir) = dir {
                found.entry(controller.clone()).or_insert(dir);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's kind: v1 controllers, an empty cgroup2 at `unified`.
    const HYBRID_MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
";

    fn fake_tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (path, content) in files {
            let p = dir.path().join(path);
            fs::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
            fs::write(&p, content).expect("write");
        }
        dir
    }

    #[test]
    fn hybrid_v1_like_this_machine() {
        let tree = fake_tree(&[("sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n")]);
        let layout =
            CgroupLayout::from_texts(HYBRID_MOUNTINFO, HYBRID_CGROUP, tree.path()).expect("layout");
        assert_eq!(layout.version(), CgroupVersion::V1);
        let own = layout.own_dirs();
        let base = tree.path().join("sys/fs/cgroup");
        assert_eq!(own["memory"], base.join("memory/process_api/abc"));
        assert_eq!(own["cpu"], base.join("cpu"));
        assert_eq!(own["freezer"], base.join("freezer"));
        assert_eq!(own.len(), 5);
        let h = layout.handle_for("sb-1").expect("handle");
        assert_eq!(
            h.paths["memory"],
            base.join("memory/process_api/abc/firkin/sb-1")
        );
        assert!(
            layout.describe().contains("cgroup v1 (hybrid)"),
            "{}",
            layout.describe()
        );
        assert!(layout.describe().contains("controllers: hugetlb"));
    }

    #[test]
    fn pure_v2_in_a_service_cgroup() {
        let mountinfo = "25 20 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        let cgroup = "0::/system.slice/firkin.service\n";
        let tree = fake_tree(&[(
            "sys/fs/cgroup/system.slice/firkin.service/cgroup.controllers",
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )]);
        let layout = CgroupLayout::from_texts(mountinfo, cgroup, tree.path()).expect("layout");
        assert_eq!(layout.version(), CgroupVersion::V2);
        let own = tree
            .path()
            .join("sys/fs/cgroup/system.slice/firkin.service");
        assert_eq!(layout.own_dirs()["unified"], own);
        assert_eq!(layout.firkin_dirs(), vec![own.join("firkin")]);
        assert_eq!(
            layout.handle_for("a").expect("handle").paths["unified"],
            own.join("firkin/a")
        );
    }

    #[test]
    fn v2_daemon_leaf_is_seen_through() {
        let mountinfo = "25 20 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let cgroup = "0::/firkin.service/firkin-daemon\n";
        let tree = fake_tree(&[(
            "sys/fs/cgroup/firkin.service/cgroup.controllers",
            "cpu memory pids\n",
        )]);
        let layout = CgroupLayout::from_texts(mountinfo, cgroup, tree.path()).expect("layout");
        assert_eq!(
            layout.own_dirs()["unified"],
            tree.path().join("sys/fs/cgroup/firkin.service")
        );
    }

    #[test]
    fn v2_without_controllers_falls_back_or_fails() {
        let mountinfo = "25 20 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let tree = fake_tree(&[("sys/fs/cgroup/cgroup.controllers", "cpu io\n")]);
        let err =
            CgroupLayout::from_texts(mountinfo, "0::/\n", tree.path()).expect_err("no memory");
        match err {
            CgroupError::NoUsableHierarchy {
                v2_controllers,
                v1_missing,
                ..
            } => {
                assert_eq!(v2_controllers, ["cpu", "io"]);
                assert_eq!(v1_missing.len(), 5);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn odd_mountinfo_lines() {
        // Co-mounted cpu,cpuacct with optional fields, a mount point with an escaped space,
        // a bind mount whose root is a sub-cgroup, garbage and an empty line.
        let mountinfo = "\
garbage line without separator
1 2 3
\n\
30 20 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 master:3 - cgroup cgroup rw,cpu,cpuacct
31 20 0:31 / /sys/fs/cgroup/my\\040memory rw - cgroup cgroup rw,memory,clone_children
32 20 0:32 /outer /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
33 20 0:33 / /sys/fs/cgroup/freezer rw - cgroup none rw,freezer,release_agent=/x
34 20 0:34 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
";
        let cgroup = "\
5:name=systemd:/
4:freezer:/
3:pids:/outer/inner
2:memory:/a:b
1:cpu,cpuacct:/c
0::/
bogus
";
        let root = Path::new("/fake");
        let layout = CgroupLayout::from_texts(mountinfo, cgroup, root).expect("layout");
        assert_eq!(layout.version(), CgroupVersion::V1);
        let own = layout.own_dirs();
        assert_eq!(own["cpu"], Path::new("/fake/sys/fs/cgroup/cpu,cpuacct/c"));
        assert_eq!(own["cpuacct"], own["cpu"]);
        assert_eq!(
            own["memory"],
            Path::new("/fake/sys/fs/cgroup/my memory/a:b")
        );
        assert_eq!(own["pids"], Path::new("/fake/sys/fs/cgroup/pids/inner"));
        assert_eq!(own["freezer"], Path::new("/fake/sys/fs/cgroup/freezer"));
        // cpu and cpuacct share one directory: one firkin dir for both.
        assert_eq!(layout.firkin_dirs().len(), 4);
        assert!(
            layout.describe().contains("cgroup v1 (legacy)"),
            "{}",
            layout.describe()
        );
    }

    #[test]
    fn own_path_outside_the_mount_root_is_not_used() {
        assert_eq!(relative("/a/b", "/a"), Some("b"));
        assert_eq!(relative("/a", "/a"), Some(""));
        assert_eq!(relative("/ab", "/a"), None);
        assert_eq!(relative("/x", "/"), Some("x"));
        assert_eq!(unescape(r"a\040b\134c\0"), "a b\\c\\0");
    }

    #[test]
    fn leftovers_are_listed_by_valid_name() {
        let tree = fake_tree(&[("sys/fs/cgroup/unified/cgroup.controllers", "")]);
        let layout =
            CgroupLayout::from_texts(HYBRID_MOUNTINFO, HYBRID_CGROUP, tree.path()).expect("layout");
        assert_eq!(
            layout.firkin_cgroups().expect("none yet"),
            Vec::<String>::new()
        );
        let base = tree.path().join("sys/fs/cgroup");
        for dir in [
            "memory/process_api/abc/firkin/sb-2",
            "pids/firkin/sb-1",
            "cpu/firkin/sb-2",
            "cpu/firkin/Bad_Name",
        ] {
            fs::create_dir_all(base.join(dir)).expect("mkdir");
        }
        fs::write(base.join("pids/firkin/notes"), "").expect("file");
        assert_eq!(layout.firkin_cgroups().expect("listed"), ["sb-1", "sb-2"]);
    }
}
