//! The `base` template built for real: idempotence, races, ownership, and a smoke run inside it.
//!
//! The smoke tests need root and util-linux `unshare`: they enter a private mount and PID
//! namespace, bind the host's `/usr` read-only onto the template, and `chroot` into it, so every
//! mount vanishes with the namespace. Without root they skip with a message.

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    use std::path::Path;
    use std::process::{Command, Output};

    use firkin_linux::rootfs::{BaseTemplate, HostFacts, MARKER, mounts_for};

    fn skip(why: &str) {
        firkin_test_support::skip("base template test", why);
    }

    fn has_unshare() -> bool {
        Command::new("unshare")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Runs `script` with `sh` as root in a private mount+PID namespace where `root` has the host's
    /// `/usr` (read-only), a fresh `/proc` and the host's `/dev`. `$R` is the root directory.
    fn in_namespace(root: &Path, script: &str) -> Output {
        let setup = "set -e\n\
            mount --bind -o ro /usr \"$R/usr\"\n\
            mount -t proc proc \"$R/proc\"\n\
            mount --rbind /dev \"$R/dev\"\n";
        Command::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--fork",
                "--propagation",
                "private",
                "sh",
                "-c",
            ])
            .arg(format!("{setup}{script}"))
            .env("R", root)
            .output()
            .expect("run unshare")
    }

    /// `chroot` into `$R` with a clean environment as root.
    const AS_ROOT: &str =
        "env -i HOME=/root USER=root LOGNAME=root TERM=dumb /usr/sbin/chroot \"$R\"";
    /// `chroot` into `$R` as `user` (groups from the template's /etc/group).
    const AS_USER: &str = "env -i HOME=/home/user USER=user LOGNAME=user TERM=dumb /usr/sbin/chroot \"$R\" \
                           /usr/bin/setpriv --reuid=1000 --regid=1000 --init-groups";

    fn text(out: &Output) -> String {
        format!(
            "status {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    #[test]
    fn build_reuses_and_rebuilds_on_plan_change() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("base");
        let host = HostFacts::read().unwrap();
        let first = BaseTemplate::build(&dir, &host, 0).unwrap();
        assert!(!first.reused());
        assert!(dir.join(MARKER).is_file());
        assert!(first.rootfs().join("etc/passwd").is_file());
        let again = BaseTemplate::build(&dir, &host, 0).unwrap();
        assert!(again.reused());
        assert_eq!(first.fingerprint(), again.fingerprint());

        // A changed plan rebuilds; the old tree is kept aside for sandboxes still using it.
        let changed = HostFacts {
            nameservers: vec!["192.0.2.1".parse().unwrap()],
            ..host.clone()
        };
        let rebuilt = BaseTemplate::build(&dir, &changed, 0).unwrap();
        assert!(!rebuilt.reused());
        assert_ne!(rebuilt.fingerprint(), first.fingerprint());
        let resolv = std::fs::read_to_string(dir.join("rootfs/etc/resolv.conf")).unwrap();
        assert!(resolv.contains("nameserver 192.0.2.1"), "{resolv}");
        let names: Vec<String> = std::fs::read_dir(parent.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("base.old-")),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
    }

    #[test]
    fn racing_builders_one_builds_the_rest_reuse() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("base");
        let host = HostFacts::read().unwrap();
        let results: Vec<BaseTemplate> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| s.spawn(|| BaseTemplate::build(&dir, &host, 0).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|t| !t.reused()).count(), 1);
        let entries = std::fs::read_dir(parent.path()).unwrap().count();
        assert_eq!(entries, 2, "only base/ and base.lock remain"); // no tmp or old directories
    }

    #[test]
    fn ownership_and_modes_with_an_id_shift() {
        if !firkin_test_support::is_root() {
            return skip("chown needs root");
        }
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("base");
        let host = HostFacts::read().unwrap();
        let template = BaseTemplate::build(&dir, &host, 100_000).unwrap();
        let root = template.rootfs();
        let meta = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap();
        let check = |p: &str, mode: u32, uid: u32, gid: u32| {
            let m = meta(p);
            assert_eq!(
                (m.permissions().mode() & 0o7777, m.uid(), m.gid()),
                (mode, uid, gid),
                "{p}"
            );
        };
        check("", 0o755, 100_000, 100_000);
        check("home/user", 0o755, 101_000, 101_000);
        check("home/user/.bashrc", 0o644, 101_000, 101_000);
        check("root", 0o700, 100_000, 100_000);
        check("tmp", 0o1777, 100_000, 100_000);
        check("var/tmp", 0o1777, 100_000, 100_000);
        check("etc/shadow", 0o640, 100_000, 100_042);
        if host.has_sudo {
            check("etc/sudoers", 0o440, 100_000, 100_000);
        }
        assert_eq!(
            meta("bin").uid(),
            100_000,
            "symlinks are chowned too (lchown)"
        );
        // The same directory with another shift is a different build.
        let unshifted = BaseTemplate::build(&dir, &host, 0).unwrap();
        assert!(!unshifted.reused());
        check("home/user", 0o755, 1000, 1000);
    }

    #[test]
    fn mounts_only_usr_from_the_host() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("base");
        let host = HostFacts::read().unwrap();
        BaseTemplate::build(&dir, &host, 0).unwrap();
        let mounts = mounts_for(&dir);
        assert_eq!(mounts[0].source, Path::new("/usr"));
        assert!(
            mounts
                .iter()
                .all(|m| m.read_only && !m.target.starts_with("/etc"))
        );
        if host.merged_usr {
            assert_eq!(mounts.len(), 1, "{mounts:?}");
        }
    }

    #[test]
    fn smoke_inside_the_template() {
        if !firkin_test_support::is_root() || !has_unshare() {
            return skip("the smoke test needs root and util-linux unshare");
        }
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("base");
        let host = HostFacts::read().unwrap();
        let template = BaseTemplate::build(&dir, &host, 0).unwrap();
        let root = template.rootfs();

        let script = format!(
            "{AS_ROOT} /bin/bash -l -c 'id; whoami; python3 -c 1; awk 1 </dev/null; getent passwd user; \
             echo \"PATH=$PATH\"; umask'\n\
             {AS_USER} /bin/bash -l -c 'whoami; cd; pwd; id -u; python -c \"print(2+2)\"'\n"
        );
        let out = in_namespace(&root, &script);
        let log = text(&out);
        assert!(out.status.success(), "{log}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines[0], "uid=0(root) gid=0(root) groups=0(root)", "{log}");
        assert_eq!(lines[1], "root", "{log}");
        assert_eq!(
            lines[2], "user:x:1000:1000:user:/home/user:/bin/bash",
            "{log}"
        );
        assert!(lines[3].starts_with("PATH=/usr/local/sbin:"), "{log}");
        assert_eq!(lines[4], "0022", "{log}");
        assert_eq!(&lines[5..8], ["user", "/home/user", "1000"], "{log}");
        if host.has_python3 {
            assert_eq!(lines[8], "4", "{log}");
        }
        assert!(out.stderr.is_empty(), "{log}");
    }

    /// Every command the E2B SDK runs starts a login shell, so the template's profiles must
    /// stay cheap. Checked as behaviour, not time: a login shell as `user` runs no other
    /// program and reads no profile but the template's own (no host `/etc/profile.d`, no
    /// bash-completion).
    #[test]
    fn login_shell_runs_nothing_and_reads_only_the_templates_profiles() {
        if !firkin_test_support::is_root() || !has_unshare() {
            return skip("needs root and util-linux unshare");
        }
        if !Path::new("/usr/bin/strace").exists() {
            return skip("needs strace (scripts/setup installs it)");
        }
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("base");
        let host = HostFacts::read().unwrap();
        let template = BaseTemplate::build(&dir, &host, 0).unwrap();
        // strace writes its trace to stderr; the shell itself prints nothing.
        let script = format!(
            "{AS_USER} /usr/bin/strace -f -qq -e trace=execve,open,openat -e signal=none \
             /bin/bash -l -c true\n"
        );
        let out = in_namespace(&template.rootfs(), &script);
        let log = text(&out);
        assert!(out.status.success(), "{log}");
        let trace = String::from_utf8_lossy(&out.stderr);
        let execs: Vec<&str> = trace.lines().filter(|l| l.contains("execve(")).collect();
        assert_eq!(
            execs.len(),
            1,
            "the login shell started programs: {execs:#?}"
        );
        assert!(execs[0].contains("\"/bin/bash\""), "{log}");
        let profiles: Vec<&str> = trace
            .lines()
            .filter(|l| !l.contains("ENOENT"))
            .filter_map(|l| l.split('"').nth(1))
            .filter(|path| {
                path.starts_with("/etc/") && !path.starts_with("/etc/ld.so")
                    || path.starts_with("/home/")
                    || path.starts_with("/usr/share/bash")
            })
            .filter(|path| !matches!(*path, "/etc/passwd" | "/etc/group" | "/etc/nsswitch.conf"))
            .collect();
        assert_eq!(
            profiles,
            ["/etc/profile", "/home/user/.profile", "/home/user/.bashrc"],
            "the login shell read more than the template's profiles\n{log}"
        );
    }

    #[test]
    fn sudo_works_for_user_unshifted() {
        if !firkin_test_support::is_root() || !has_unshare() {
            return skip("needs root and util-linux unshare");
        }
        let host = HostFacts::read().unwrap();
        if !host.has_sudo {
            return skip("the host has no /usr/bin/sudo, so base has no sudo");
        }
        // With an id shift, setuid sudo needs idmapped layers (the driver's job): not tested here.
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("base");
        let template = BaseTemplate::build(&dir, &host, 0).unwrap();
        let out = in_namespace(
            &template.rootfs(),
            &format!("{AS_USER} /bin/bash -l -c 'sudo -n id -u; sudo -n whoami'\n"),
        );
        let log = text(&out);
        assert!(out.status.success(), "{log}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "0\nroot\n", "{log}");
        assert!(out.stderr.is_empty(), "sudo warned: {log}");
    }

    /// A template built with an id shift, seen through the sandbox's id map (container
    /// 0..65535 = host 100000..165535): its files belong to the sandbox's root and user. `sudo`
    /// is not checked: with a plain bind of the host's `/usr` it is owned by the overflow uid
    /// and refuses to run; the driver's idmapped `/usr` fixes that (LINUX-FINDINGS.md).
    #[test]
    fn shifted_template_through_the_sandbox_id_map() {
        if !firkin_test_support::is_root() || !has_unshare() {
            return skip("needs root and util-linux unshare and nsenter");
        }
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("base");
        let host = HostFacts::read().unwrap();
        let template = BaseTemplate::build(&dir, &host, 100_000).unwrap();

        // A holder process owns the new user, mount and PID namespaces; we write its id maps
        // from outside (as the driver does), then enter with nsenter as the sandbox's root.
        let mut holder = Command::new("unshare")
            .args([
                "--user",
                "--mount",
                "--pid",
                "--fork",
                "--propagation",
                "private",
            ])
            .args(["sleep", "60"])
            .spawn()
            .unwrap();
        let unshare_pid = holder.id();
        let children = format!("/proc/{unshare_pid}/task/{unshare_pid}/children");
        let mut inner = None;
        for _ in 0..400 {
            inner = std::fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next().map(str::to_owned));
            if inner.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let inner = inner.expect("unshare forked its child");
        for map in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{unshare_pid}/{map}"), "0 100000 65536\n").unwrap();
        }
        let script = format!(
            "set -e\n\
             mount --bind -o ro /usr \"$R/usr\"\n\
             mount -t proc proc \"$R/proc\"\n\
             mount --rbind /dev \"$R/dev\"\n\
             {AS_ROOT} /bin/bash -l -c 'id -u; stat -c \"%u:%g %a %n\" / /etc/shadow /home/user /tmp'\n\
             {AS_USER} /bin/bash -l -c 'id; cd; pwd'\n"
        );
        let out = Command::new("nsenter")
            .args([
                "-t", &inner, "-U", "-m", "-p", "-S", "0", "-G", "0", "sh", "-c", &script,
            ])
            .env("R", template.rootfs())
            .output()
            .unwrap();
        let _ = holder.kill();
        let _ = holder.wait();
        let log = text(&out);
        assert!(out.status.success(), "{log}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines,
            [
                "0",
                "0:0 755 /",
                "0:42 640 /etc/shadow",
                "1000:1000 755 /home/user",
                "0:0 1777 /tmp",
                "uid=1000(user) gid=1000(user) groups=1000(user),27(sudo),100(users)",
                "/home/user",
            ],
            "{log}"
        );
    }
}
