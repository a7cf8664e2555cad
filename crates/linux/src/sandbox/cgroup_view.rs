//! The sandbox's own cgroups at the roots of its `/sys/fs/cgroup` hierarchies.
//!
//! A sandbox sees the host's cgroup mounts (its `/sys` is the host's, bound read-only), so
//! `/sys/fs/cgroup/memory` would show the whole host tree, and envd could not tell which
//! directory is its own (the cgroup namespace makes `/proc/self/cgroup` say `/`). The init
//! helper therefore notes its cgroups before it unshares the cgroup namespace (it has joined
//! the sandbox's by then), and PID 1 binds each one over its hierarchy's mount point: inside,
//! `/sys/fs/cgroup/memory/memory.limit_in_bytes` (v1) or `/sys/fs/cgroup/memory.max` (v2) is
//! the sandbox's own limit, and no other cgroup is visible.

use std::os::unix::ffi::OsStringExt as _;
use std::path::{Path, PathBuf};

/// One bind: the hierarchy's mount point and the sandbox's cgroup below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupBind {
    /// Where the hierarchy is mounted (absolute, as on the host).
    pub mount_point: PathBuf,
    /// The sandbox's cgroup, relative to the hierarchy's root.
    pub cgroup: PathBuf,
}

/// The binds for the process whose `/proc/self/cgroup` is `own` and whose mount table is
/// `mountinfo`: one per cgroup mount of a hierarchy's root (mountinfo root `/`) whose
/// cgroup is not that root.
#[must_use]
pub fn binds(own: &str, mountinfo: &str) -> Vec<CgroupBind> {
    let mut binds = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(separator) = fields.iter().position(|field| *field == "-") else {
            continue;
        };
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let (Some(fs_type), Some(options)) = (fields.get(separator + 1), fields.get(separator + 3))
        else {
            continue;
        };
        if *root != "/" {
            continue;
        }
        let cgroup = match *fs_type {
            "cgroup2" => own_path(own, |controllers| controllers.is_empty(), true),
            "cgroup" => {
                let options: Vec<&str> = options.split(',').collect();
                own_path(
                    own,
                    |controllers| {
                        !controllers.is_empty()
                            && controllers.split(',').all(|c| options.contains(&c))
                    },
                    false,
                )
            }
            _ => None,
        };
        if let Some(cgroup) = cgroup.filter(|path| path != Path::new("/")) {
            binds.push(CgroupBind {
                mount_point: PathBuf::from(std::ffi::OsString::from_vec(
                    crate::sys::unescape_mountinfo(mount_point),
                )),
                cgroup,
            });
        }
    }
    binds
}

/// The path of the `/proc/self/cgroup` line whose controller list `matches` (v2: id 0).
fn own_path(own: &str, matches: impl Fn(&str) -> bool, v2: bool) -> Option<PathBuf> {
    own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        ((id == "0") == v2 && matches(controllers)).then(|| PathBuf::from(path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:38 /sub /mnt/elsewhere rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn each_hierarchy_root_gets_the_sandboxes_cgroup() {
        let own = "9:name=systemd:/\n4:memory:/firkin/sbx\n2:cpuacct:/firkin/sbx\n\
                   1:cpu:/firkin/sbx\n0::/firkin/sbx\n";
        let bind = |mount_point: &str| CgroupBind {
            mount_point: mount_point.into(),
            cgroup: "/firkin/sbx".into(),
        };
        assert_eq!(
            binds(own, MOUNTINFO),
            [
                bind("/sys/fs/cgroup/cpu"),
                bind("/sys/fs/cgroup/cpuacct"),
                bind("/sys/fs/cgroup/memory"),
                bind("/sys/fs/cgroup/unified"),
            ]
        );
    }

    #[test]
    fn a_pure_v2_host_binds_the_one_hierarchy() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            binds("0::/firkin/sbx\n", mountinfo),
            [CgroupBind {
                mount_point: "/sys/fs/cgroup".into(),
                cgroup: "/firkin/sbx".into(),
            }]
        );
        assert_eq!(binds("0::/\n", mountinfo), []);
    }
}
