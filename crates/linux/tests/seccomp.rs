//! The seccomp profile seen from inside a real sandbox of the `base` template: every process
//! carries it; calls it forbids fail with the errno it promises (raw calls made with
//! arguments the kernel itself would reject differently, so the errno shows who answered);
//! calls through another ABI kill the caller; and ordinary work (Python, gcc, git, pip and a
//! venv, Node.js, curl to a local server, strace, sudo) still works. Each test deletes its
//! sandbox and checks nothing is left. Needs root, nftables and a built envd; skips otherwise.

mod common;

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::net::SocketAddr;

    use firkin_single_node::SingleNodeBackend;

    use super::common::{self, Harness, run_as};

    /// One sandbox of the base template and the way to reach its envd.
    struct Sandbox {
        harness: Harness,
        backend: SingleNodeBackend,
        id: String,
        token: String,
        envd: SocketAddr,
        pid1: u32,
    }

    impl Sandbox {
        /// A sandbox for `test` with slots in `range`, or `None` (after saying why).
        async fn create(test: &str, range: &str) -> Option<Self> {
            let harness = common::harness(test, range, env!("CARGO_BIN_EXE_firkin-sandbox-init"))?;
            let backend = harness.backend().await;
            // Enough memory for gcc, pip and Node.js.
            let made = common::create_base(&backend, 1, 1024).await;
            Some(Self {
                envd: made.envd,
                token: made.token,
                pid1: made.pid1,
                id: made.id,
                harness,
                backend,
            })
        }

        /// `sh -c script` as `user` (`None`: the default user, `user`): stdout, exit code.
        fn sh(&self, user: Option<&str>, script: &str) -> (String, i32) {
            run_as(self.envd, &self.token, user, script)
        }

        /// Delete the sandbox and check that nothing of it is left.
        async fn delete(self) {
            self.backend.delete(&self.id).await.expect("delete");
            self.backend.shutdown().await.unwrap();
            drop(self.backend);
            self.harness
                .assert_nothing_left(&[self.id], &[self.pid1])
                .await;
        }
    }

    /// A raw call through Python's ctypes: its name, number, arguments, and the errno the
    /// profile must produce. The arguments are invalid, so that a call the profile let through
    /// would fail differently (EBADF, EFAULT, EINVAL, EOPNOTSUPP: checked on the host).
    struct RawCall {
        name: &'static str,
        nr: libc::c_long,
        args: Vec<i64>,
        errno: i32,
    }

    fn raw(name: &'static str, nr: libc::c_long, args: &[i64], errno: i32) -> RawCall {
        RawCall {
            name,
            nr,
            args: args.to_vec(),
            errno,
        }
    }

    /// The forbidden calls. `clone` is asked with `CLONE_THREAD` but no `CLONE_SIGHAND`,
    /// which the kernel refuses with EINVAL, so no process is ever created.
    fn forbidden_calls() -> Vec<RawCall> {
        let thread_without_sighand = i64::from(libc::CLONE_THREAD);
        let mut calls = vec![
            raw("unshare", libc::SYS_unshare, &[-1], libc::EPERM),
            raw("setns", libc::SYS_setns, &[-1, 0], libc::EPERM),
            raw("mount", libc::SYS_mount, &[0, 0, 0, 0, 0], libc::EPERM),
            raw("keyctl", libc::SYS_keyctl, &[-1, 0, 0, 0, 0], libc::EPERM),
            raw("bpf", libc::SYS_bpf, &[-1, 0, 0], libc::EPERM),
            raw(
                "perf_event_open",
                libc::SYS_perf_event_open,
                &[0, 0, -1, -1, 0],
                libc::EPERM,
            ),
            raw(
                "io_uring_setup",
                libc::SYS_io_uring_setup,
                &[1, 0],
                libc::ENOSYS,
            ),
            raw(
                "io_uring_enter",
                libc::SYS_io_uring_enter,
                &[-1, 0, 0, 0, 0, 0],
                libc::ENOSYS,
            ),
            raw(
                "io_uring_register",
                libc::SYS_io_uring_register,
                &[-1, 0, 0, 0],
                libc::ENOSYS,
            ),
            raw("clone3", libc::SYS_clone3, &[0, 0], libc::ENOSYS),
            // The control: clone itself is allowed, so the kernel's own answer comes back.
            raw(
                "clone without a namespace flag",
                libc::SYS_clone,
                &[thread_without_sighand, 0, 0, 0, 0],
                libc::EINVAL,
            ),
        ];
        for (name, flag) in [
            ("clone(CLONE_NEWUSER)", libc::CLONE_NEWUSER),
            ("clone(CLONE_NEWNS)", libc::CLONE_NEWNS),
            ("clone(CLONE_NEWPID)", libc::CLONE_NEWPID),
            ("clone(CLONE_NEWNET)", libc::CLONE_NEWNET),
            ("clone(CLONE_NEWUTS)", libc::CLONE_NEWUTS),
            ("clone(CLONE_NEWIPC)", libc::CLONE_NEWIPC),
            ("clone(CLONE_NEWCGROUP)", libc::CLONE_NEWCGROUP),
        ] {
            let flags = i64::from(flag) | thread_without_sighand;
            calls.push(raw(
                name,
                libc::SYS_clone,
                &[flags, 0, 0, 0, 0],
                libc::EPERM,
            ));
        }
        calls
    }

    /// A Python script printing `name=errno` (0 on success) for each call.
    fn python_probe(calls: &[RawCall]) -> String {
        let mut script = String::from(
            "python3 - <<'EOF'\n\
             import ctypes\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             libc.syscall.restype = ctypes.c_long\n\
             def errno_of(nr, *args):\n    \
                 ctypes.set_errno(0)\n    \
                 ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])\n    \
                 return 0 if ret >= 0 else ctypes.get_errno()\n",
        );
        for call in calls {
            let args: Vec<String> = call.args.iter().map(i64::to_string).collect();
            writeln!(
                script,
                "print('{}=%d' % errno_of({}, {}))",
                call.name,
                call.nr,
                args.join(", ")
            )
            .unwrap();
        }
        script.push_str("EOF\n");
        script
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_process_of_a_sandbox_carries_the_whole_profile() {
        let Some(sandbox) = Sandbox::create("seccomp profile test", "10.217.0.0/16").await else {
            return;
        };
        let filters = firkin_linux::seccomp::default_profile().unwrap().len();
        // PID 1 (envd's reaper), envd's server, the shell and what it runs; as root so every
        // status file is readable whoever owns the process.
        let (out, code) = sandbox.sh(
            Some("root"),
            "for status in /proc/[0-9]*/status; do \
               name=$(sed -n 's/^Name:\\s*//p' $status); \
               mode=$(sed -n 's/^Seccomp:\\s*//p' $status); \
               count=$(sed -n 's/^Seccomp_filters:\\s*//p' $status); \
               [ -n \"$name\" ] && echo \"$name $mode $count\"; \
             done; true",
        );
        assert_eq!(code, 0, "{out}");
        let processes: Vec<&str> = out.lines().collect();
        assert!(
            processes.iter().filter(|p| p.starts_with("envd ")).count() >= 2,
            "envd's two processes not both seen: {out}"
        );
        for process in &processes {
            // Mode 2 is SECCOMP_MODE_FILTER.
            assert!(
                process.ends_with(&format!(" 2 {filters}")),
                "not every filter installed: {out}"
            );
        }
        sandbox.delete().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forbidden_calls_fail_with_the_promised_errno() {
        let Some(sandbox) = Sandbox::create("seccomp errno test", "10.218.0.0/16").await else {
            return;
        };
        let calls = forbidden_calls();
        let expected: Vec<String> = calls
            .iter()
            .map(|call| format!("{}={}", call.name, call.errno))
            .collect();
        for user in [None, Some("root")] {
            let (out, code) = sandbox.sh(user, &python_probe(&calls));
            assert_eq!(code, 0, "{user:?}: {out}");
            let got: Vec<&str> = out.lines().collect();
            assert_eq!(got, expected, "as {user:?}");
            // The same through util-linux: `user` could make a user namespace (and a mount
            // namespace inside it) were it not for the profile.
            for args in ["-U", "-m", "-Um"] {
                let (out, code) = sandbox.sh(user, &format!("unshare {args} true 2>&1"));
                assert_ne!(code, 0, "unshare {args} as {user:?} succeeded: {out}");
                assert!(
                    out.contains("Operation not permitted"),
                    "unshare {args} as {user:?}: {out}"
                );
            }
        }
        sandbox.delete().await;
    }

    /// Exit status of a shell command killed by SIGSYS.
    #[cfg(target_arch = "x86_64")]
    const KILLED_BY_SIGSYS: i32 = 128 + libc::SIGSYS;

    #[cfg(target_arch = "x86_64")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_through_another_abi_kill_the_process() {
        let Some(sandbox) = Sandbox::create("seccomp ABI test", "10.219.0.0/16").await else {
            return;
        };
        // x32 getpid (39 with __X32_SYSCALL_BIT); without the profile: ENOSYS on a kernel
        // without x32, a pid with it.
        let x32 = "python3 -c 'import ctypes; print(ctypes.CDLL(None).syscall(0x40000000 | 39))'";
        // i386 getpid (20) through `int 0x80`, from a page of machine code:
        // mov eax, 20; int 0x80; ret. Without the profile it prints the pid.
        let i386 = "python3 - <<'EOF'\n\
             import ctypes, mmap\n\
             page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n\
             page.write(b'\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3')\n\
             code = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))\n\
             print(code())\n\
             EOF\n";
        for user in [None, Some("root")] {
            for (abi, script) in [("x32", x32), ("i386", i386)] {
                // The status through the shell: however envd reports a signal, `$?` says it.
                let (out, _) = sandbox.sh(user, &format!("{script}\necho \"status=$?\""));
                assert_eq!(
                    out.trim(),
                    format!("status={KILLED_BY_SIGSYS}"),
                    "{abi} call as {user:?} not killed by SIGSYS"
                );
            }
        }
        sandbox.delete().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ordinary_work_still_works() {
        let Some(sandbox) = Sandbox::create("seccomp ordinary work test", "10.220.0.0/16").await
        else {
            return;
        };
        let checks: &[(&str, &str, &str)] = &[
            ("python", "python3 -c 'print(6 * 7)'", "42"),
            (
                "gcc",
                "cd /tmp && printf '#include <stdio.h>\\nint main(void) { puts(\"built and ran\"); return 0; }\\n' > hello.c \
                 && gcc -o hello hello.c && ./hello",
                "built and ran",
            ),
            (
                "git",
                "cd /tmp && git init -q repo && cd repo && echo x > file && git add file \
                 && git -c user.name=t -c user.email=t@example.com commit -qm first \
                 && git log --format=%s",
                "first",
            ),
            ("pip", "pip --version | cut -d' ' -f1", "pip"),
            (
                "venv and a local package",
                "cd /tmp && python3 -m venv venv && mkdir -p pkg/hello_fk \
                 && printf 'from setuptools import setup\\nsetup(name=\"hello-fk\", version=\"1.0\", packages=[\"hello_fk\"])\\n' > pkg/setup.py \
                 && echo 'GREETING = \"hi from pkg\"' > pkg/hello_fk/__init__.py \
                 && venv/bin/pip install -q --no-index --no-build-isolation ./pkg >/dev/null 2>&1 \
                 && venv/bin/python -c 'import hello_fk; print(hello_fk.GREETING)'",
                "hi from pkg",
            ),
            (
                // libuv is told to use io_uring; on ENOSYS it falls back to its thread pool.
                "node",
                "echo hello > /tmp/node-input && UV_USE_IO_URING=1 node -e \
                 'require(\"fs\").readFile(\"/tmp/node-input\", \"utf8\", (e, d) => console.log(e ? e.code : d.trim()))'",
                "hello",
            ),
            (
                // The server listens before curl starts; one request, then it exits.
                "curl to a local server",
                "mkdir -p /tmp/www && echo served > /tmp/www/page && cd /tmp/www && python3 -c '\
import http.server, subprocess, threading\n\
server = http.server.HTTPServer((\"127.0.0.1\", 0), http.server.SimpleHTTPRequestHandler)\n\
threading.Thread(target=server.handle_request).start()\n\
url = \"http://127.0.0.1:%d/page\" % server.server_port\n\
print(subprocess.run([\"curl\", \"-sS\", url], capture_output=True, text=True).stdout.strip())' 2>/dev/null",
                "served",
            ),
            (
                "strace of the sandbox's own child",
                "strace -f -o /tmp/trace sh -c 'echo traced >/dev/null' && grep -c 'execve(' /tmp/trace",
                "1",
            ),
            ("sudo", "sudo -n id -u", "0"),
        ];
        let mut failures = Vec::new();
        for (what, script, expected) in checks {
            let (out, code) = sandbox.sh(None, script);
            if code != 0 || out.trim() != *expected {
                failures.push(format!("{what}: exit {code}, output {out:?}"));
            }
        }
        assert!(failures.is_empty(), "ordinary work broke: {failures:#?}");
        sandbox.delete().await;
    }
}
