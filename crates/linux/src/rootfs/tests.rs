//! Pure tests of the `base` plan: no root, no host files beyond what a test passes in.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::*;

fn fake_host() -> HostFacts {
    HostFacts {
        has_sudo: true,
        has_python3: true,
        has_python: false,
        has_zoneinfo_utc: true,
        merged_usr: true,
        has_lib64: true,
        ld_so_cache: Some(b"ld.so-1.7.0 fake".to_vec()),
        os_release: Some(b"ID=debian\n".to_vec()),
        services: Some(b"http 80/tcp\n".to_vec()),
        protocols: None,
        alternatives: vec![
            ("awk".into(), "/usr/bin/mawk".into()),
            ("../evil".into(), "/etc/shadow".into()),
        ],
        ssl_certs: vec![
            HostEntry {
                path: "ca-certificates.crt".into(),
                kind: HostEntryKind::File(b"PEM".to_vec()),
            },
            HostEntry {
                path: "java".into(),
                kind: HostEntryKind::Dir,
            },
            HostEntry {
                path: "java/cacerts".into(),
                kind: HostEntryKind::File(b"JKS".to_vec()),
            },
            HostEntry {
                path: "abcd.0".into(),
                kind: HostEntryKind::Symlink("x.pem".into()),
            },
            HostEntry {
                path: "../private/key.pem".into(),
                kind: HostEntryKind::File(b"KEY".to_vec()),
            },
        ],
        nameservers: vec!["10.0.0.2".parse().unwrap()],
        pam: vec![("sudo".into(), b"@include common-auth\n".to_vec())],
    }
}

#[test]
fn users_groups_and_locked_passwords() {
    let plan = BasePlan::new(&fake_host());
    let passwd = plan.text("/etc/passwd").unwrap();
    assert!(passwd.contains("root:x:0:0:root:/root:/bin/bash\n"));
    assert!(passwd.contains("user:x:1000:1000:user:/home/user:/bin/bash\n"));
    assert!(passwd.contains("nobody:x:65534:65534:"));
    let group = plan.text("/etc/group").unwrap();
    for line in [
        "root:x:0:",
        "sudo:x:27:user",
        "user:x:1000:",
        "nogroup:x:65534:",
    ] {
        assert!(
            group.lines().any(|l| l == line),
            "{line} missing from /etc/group"
        );
    }
    for file in ["/etc/shadow", "/etc/gshadow"] {
        let entry = plan.get(file).unwrap();
        assert_eq!((entry.mode, entry.uid, entry.gid), (0o640, 0, SHADOW_GID));
        for line in plan.text(file).unwrap().lines() {
            let password = line.split(':').nth(1).unwrap();
            assert!(
                password == "*" || password == "!",
                "{file}: real password in {line:?}"
            );
        }
    }
    let home = plan.get("/home/user").unwrap();
    assert_eq!((home.mode, home.uid, home.gid), (0o755, USER_ID, USER_ID));
    assert_eq!(plan.get("/root").unwrap().mode, 0o700);
    assert_eq!(plan.get("/tmp").unwrap().mode, 0o1777);
    assert_eq!(plan.get("/var/tmp").unwrap().mode, 0o1777);
}

#[test]
fn nothing_from_host_etc_beyond_the_allow_list() {
    let plan = BasePlan::new(&fake_host());
    for entry in plan.entries() {
        if let Origin::Host(from) = &entry.origin {
            let allowed = HOST_FILES.iter().any(|f| Path::new(f) == from)
                || from.starts_with(SSL_CERTS_DIR)
                || (from.starts_with("/etc/alternatives")
                    && matches!(entry.kind, EntryKind::Symlink(_)));
            assert!(
                allowed,
                "{} copied from {}",
                entry.path.display(),
                from.display()
            );
        }
        assert!(
            !entry.path.starts_with("/etc/ssl/private"),
            "private key material in the plan: {}",
            entry.path.display()
        );
        assert!(entry.path.is_absolute());
        assert!(
            entry
                .path
                .components()
                .all(|c| !matches!(c, std::path::Component::ParentDir)),
            "{} escapes",
            entry.path.display()
        );
    }
    assert!(plan.get("/etc/alternatives/awk").is_some());
    assert!(plan.get("/etc/ssl/certs/java/cacerts").is_some());
    assert_eq!(
        plan.text("/etc/ssl/certs/ca-certificates.crt").unwrap(),
        "PEM"
    );
    assert!(
        plan.entries()
            .iter()
            .all(|e| !e.path.to_string_lossy().contains("evil"))
    );
    // Host shell profiles are never copied.
    for profile in [
        "/etc/profile",
        "/etc/bash.bashrc",
        "/root/.profile",
        "/home/user/.profile",
    ] {
        assert_eq!(plan.get(profile).unwrap().origin, Origin::Generated);
    }
}

#[test]
fn resolv_conf_has_only_nameservers() {
    let plan = BasePlan::new(&fake_host());
    let resolv = plan.text("/etc/resolv.conf").unwrap();
    let lines: Vec<&str> = resolv.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines, ["nameserver 10.0.0.2"]);
    let empty = BasePlan::new(&HostFacts {
        nameservers: vec![],
        ..fake_host()
    });
    assert!(
        empty
            .text("/etc/resolv.conf")
            .unwrap()
            .lines()
            .all(|l| l.starts_with('#'))
    );
}

#[test]
fn profiles_are_cheap() {
    let plan = BasePlan::new(&fake_host());
    let profile = plan.text("/etc/profile").unwrap();
    assert!(profile.contains("umask 022"));
    assert!(profile.contains(&format!("PATH=\"{BASE_PATH}:{FIRKIN_BIN}\"")));
    for file in [
        "/etc/profile",
        "/etc/bash.bashrc",
        "/home/user/.profile",
        "/home/user/.bashrc",
    ] {
        let text = plan.text(file).unwrap();
        assert!(
            !text.contains("$(") && !text.contains('`'),
            "{file} forks: {text}"
        );
    }
}

#[test]
fn sudo_only_with_host_sudo() {
    let plan = BasePlan::new(&fake_host());
    let sudoers = plan.get("/etc/sudoers").unwrap();
    assert_eq!((sudoers.mode, sudoers.uid, sudoers.gid), (0o440, 0, 0));
    let text = plan.text("/etc/sudoers").unwrap();
    assert!(text.contains("user\tALL=(ALL:ALL) NOPASSWD: ALL"));
    assert!(text.contains("!requiretty") && text.contains("lecture=never"));
    // The last matching rule wins and user is in group sudo: NOPASSWD must come last.
    assert!(text.find("user\tALL").unwrap() > text.find("%sudo\tALL").unwrap());
    assert!(plan.get("/etc/pam.d/sudo").is_some());
    let without = BasePlan::new(&HostFacts {
        has_sudo: false,
        pam: vec![],
        ..fake_host()
    });
    assert!(without.get("/etc/sudoers").is_none());
    assert!(without.get("/etc/pam.d").is_none());
}

#[test]
fn links_mount_points_and_structure() {
    let host = fake_host();
    let plan = BasePlan::new(&host);
    let link = |p: &str| match &plan.get(p).unwrap().kind {
        EntryKind::Symlink(t) => t.clone(),
        other => panic!("{p} is {other:?}"),
    };
    assert_eq!(link("/bin"), PathBuf::from("usr/bin"));
    assert_eq!(link("/lib64"), PathBuf::from("usr/lib64"));
    assert_eq!(link("/etc/mtab"), PathBuf::from("../proc/self/mounts"));
    assert_eq!(
        link("/opt/firkin/bin/python"),
        PathBuf::from("/usr/bin/python3")
    );
    let no64 = BasePlan::new(&HostFacts {
        has_lib64: false,
        has_python: true,
        ..host.clone()
    });
    assert!(no64.get("/lib64").is_none());
    assert!(no64.get("/opt/firkin/bin/python").is_none());
    for dir in [
        "/usr", "/proc", "/sys", "/dev", "/run", "/opt", "/mnt", "/var/lib", "/var/log",
    ] {
        assert_eq!(plan.get(dir).unwrap().kind, EntryKind::Dir, "{dir}");
    }
    // Every parent precedes its children and is a directory; no duplicates.
    let mut seen = BTreeSet::new();
    for entry in plan.entries() {
        if let Some(parent) = entry.path.parent() {
            assert!(
                seen.contains(parent),
                "{} before its parent",
                entry.path.display()
            );
            assert_eq!(plan.get(parent).unwrap().kind, EntryKind::Dir);
        }
        assert!(
            seen.insert(entry.path.clone()),
            "duplicate {}",
            entry.path.display()
        );
    }
}

#[test]
fn hosts_and_hostname_templates() {
    let hosts = hosts_file("abc123");
    assert!(hosts.lines().any(|l| l == "127.0.0.1\tlocalhost"));
    assert!(hosts.lines().any(|l| l == "127.0.1.1\tabc123"));
    assert_eq!(hostname_file("abc123"), "abc123\n");
    let plan = BasePlan::new(&fake_host());
    assert_eq!(
        plan.text("/etc/hosts").unwrap(),
        hosts_file(PLACEHOLDER_HOSTNAME)
    );
}

#[test]
fn fingerprint_tracks_the_plan() {
    let a = BasePlan::new(&fake_host());
    assert_eq!(a.fingerprint(), BasePlan::new(&fake_host()).fingerprint());
    let b = BasePlan::new(&HostFacts {
        has_sudo: false,
        ..fake_host()
    });
    assert_ne!(a.fingerprint(), b.fingerprint());
    let c = BasePlan::new(&HostFacts {
        nameservers: vec![],
        ..fake_host()
    });
    assert_ne!(a.fingerprint(), c.fingerprint());
}

#[test]
fn mounts_usr_only_on_merged_hosts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rootfs")).unwrap();
    std::os::unix::fs::symlink("usr/bin", dir.path().join("rootfs/bin")).unwrap();
    let mounts = mounts_for(dir.path());
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].source, Path::new("/usr"));
    assert_eq!(mounts[0].target, Path::new("/usr"));
    assert!(mounts[0].read_only);
    assert!(mounts.iter().all(|m| !m.source.starts_with("/etc")));
}
