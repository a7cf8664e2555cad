"""Shared fixtures for the end-to-end E2B SDK tests of `firkin serve`.

One real daemon (`target/debug/firkin serve`, with the static envd from scripts/build-envd)
runs for the whole session on a free loopback port with a fresh state directory. The real
`e2b` Python SDK from PyPI drives it through recipe A of E2B-CONTRACT.md: E2B_API_URL and
E2B_SANDBOX_URL taken from the `export` lines the daemon prints, and E2B_API_KEY, a random key
the session gives the daemon in FIRKIN_API_KEY (the daemon must never print it back).

Nothing is built here: run `cargo build -p firkin` and `scripts/build-envd` first (FIRKIN_BIN
and FIRKIN_ENVD_BIN point elsewhere). Without root, or without the binaries, every test is
skipped with the reason (a failure under FIRKIN_REQUIRE_ROOT_TESTS=1, as scripts/test runs).

Every sandbox a test creates carries `metadata={"test": <run id>, "case": <test name>}` (the
`meta` fixture). After each test, the sandboxes with its metadata must be gone; at the end of
the session every sandbox still listed is killed and reported, the daemon gets SIGTERM and
must exit 0, and no process may still be running in a root file system of the state
directory, and no network slot (fk<tag>h* veth) it made may be left. A failing test shows what
the daemon logged while it ran.

A starting daemon reclaims every firkin network slot on the host that its own state does not
own (sandbox cgroups only of its own state directory), so the session is skipped while another
`firkin serve`, a firkin-linux test or bench, or someone else's sandbox is running;
scripts/test, which runs its parts one after another, sets FIRKIN_SDK_TESTS_SHARE_HOST=1 so
that nothing is ever skipped there.
"""

import os
import pathlib
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import pytest
from registry import Registry, start_registry

REPO = pathlib.Path(__file__).resolve().parents[4]
# Each sandbox's disk (test_disk.py fills one): sparse, so it costs only what is written.
DISK_SIZE_MB = 1024
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def firkin_binary() -> pathlib.Path:
    explicit = os.environ.get("FIRKIN_BIN")
    return pathlib.Path(explicit) if explicit else REPO / "target" / "debug" / "firkin"


def envd_binary() -> pathlib.Path:
    explicit = os.environ.get("FIRKIN_ENVD_BIN")
    if explicit:
        return pathlib.Path(explicit)
    return REPO / "target" / "x86_64-unknown-linux-gnu" / "envd" / "firkin-envd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def other_daemons() -> list[str]:
    """Command lines of `firkin serve` processes already running on this host."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 1 and argv[0].endswith(b"firkin") and argv[1] == b"serve":
            found.append(b" ".join(argv).decode(errors="replace").strip())
    return found


def foreign_sandboxes() -> list[str]:
    """The root mounts of firkin sandboxes already running on this host (a process whose root
    is an overlay over a `templates/base/rootfs`), one per sandbox."""
    roots = set()
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            with open(proc / "mountinfo", "rb") as mountinfo:
                first = mountinfo.readline()
        except OSError:
            continue
        match = re.search(rb" / / .* - overlay \S+ \S*upperdir=([^,]+)", first)
        if match and b"/templates/base/rootfs" in first:
            roots.add(match.group(1).decode(errors="replace"))
    return sorted(roots)


# Test and bench executables of firkin-linux, which make sandboxes and network slots too.
DRIVER_USERS = re.compile(
    r"(firkin_linux|create|driver|isolation|launch|limits|net|restart|cgroup|base_template)"
    r"-[0-9a-f]{16}"
)


def driver_tests() -> list[str]:
    """Command lines of firkin-linux tests and benches running from this repo's target/."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            exe = pathlib.Path(os.readlink(proc / "exe"))
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if exe.parent.name == "deps" and DRIVER_USERS.fullmatch(exe.name):
            found.append(argv.decode(errors="replace").strip())
    return found


def network_slots() -> set[tuple[str, int]]:
    """(name, ifindex) of the firkin slot veths on this host (`fk<instance tag>h<N>`, any instance)."""
    slots = set()
    for link in pathlib.Path("/sys/class/net").iterdir():
        if re.fullmatch(r"fk[0-9a-f]{5}h\d+", link.name):
            try:
                slots.add((link.name, int((link / "ifindex").read_text())))
            except (OSError, ValueError):
                pass
    return slots


def processes_rooted_in(state_dir: pathlib.Path) -> list[tuple[int, str]]:
    """(pid, command line) of processes whose mounts use `state_dir`: sandbox processes."""
    needle = str(state_dir).encode()
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle not in (proc / "mountinfo").read_bytes():
                continue
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        found.append((int(proc.name), argv.decode(errors="replace").strip()))
    return found


class Daemon:
    """The running `firkin serve` of this session."""

    def __init__(self, process, log_path, state_dir, env, run_id):
        self.process = process
        self.log_path = log_path
        self.state_dir = state_dir
        self.env = env
        self.run_id = run_id

    @property
    def url(self) -> str:
        return self.env["E2B_API_URL"]

    @property
    def api_key(self) -> str:
        return self.env["E2B_API_KEY"]

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int, max_lines: int = 80) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError as error:
            return f"(cannot read {self.log_path}: {error})"
        lines = ANSI.sub("", text).splitlines()
        if len(lines) > max_lines:
            lines = [f"... ({len(lines) - max_lines} earlier lines)"] + lines[-max_lines:]
        return "\n".join(lines)

    def alive(self) -> bool:
        return self.process.poll() is None


_daemon: Daemon | None = None
_registry: Registry | None = None


def private_nameservers() -> list[str]:
    """`--egress-allow-private` for the host's nameservers that are private addresses: the
    sandboxes' resolv.conf names the host's nameservers, and a build that installs from PyPI
    needs them (sandboxes reach no private address unless allowed)."""
    import ipaddress

    ranges = []
    for line in pathlib.Path("/etc/resolv.conf").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                address = ipaddress.IPv4Address(parts[1])
            except ValueError:
                continue
            if address.is_private and not address.is_loopback:
                ranges.append(f"{address}/32")
    return ["--egress-allow-private", ",".join(ranges)] if ranges else []


def start_daemon(run_id: str, registry: str) -> Daemon:
    firkin, envd = firkin_binary(), envd_binary()
    port = free_port()
    tls_port = free_port()
    state_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"firkin-e2b-sdk-{run_id}-"))
    # mkdtemp makes it 0700; the daemon itself opens it as far as the sandboxes need (0711).
    log_path = REPO / "target" / f"e2b-sdk-tests-{port}.log"
    api_key = f"e2b_test_{uuid.uuid4().hex}"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [
            str(firkin),
            "serve",
            "--state-dir",
            str(state_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--envd-bin",
            str(envd),
            "--tls-listen",
            f"127.0.0.1:{tls_port}",
            "--disk-size-mb",
            str(DISK_SIZE_MB),
            # Template builds pull from the session's registry on loopback (registry.py).
            "--insecure-registry",
            registry,
            *private_nameservers(),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env={
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "FIRKIN_LOG": "info",
            "NO_COLOR": "1",
            # Never on the command line (readable by every user): the environment.
            "FIRKIN_API_KEY": api_key,
        },
    )
    log.close()

    # The export lines, read off the daemon's stdout by a thread (which then keeps draining it).
    lines: queue.Queue = queue.Queue()

    def pump():
        for raw in process.stdout:
            lines.put(raw.decode(errors="replace").rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 30
    # The daemon prints no key it was given (only one it generated): the key is ours.
    env: dict[str, str] = {"E2B_API_KEY": api_key}
    wanted = {"E2B_API_URL", "E2B_SANDBOX_URL", "E2B_DOMAIN", "SSL_CERT_FILE"}
    while not wanted <= env.keys():
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            process.kill()
            process.wait()
            shutil.rmtree(state_dir, ignore_errors=True)
            daemon = Daemon(process, log_path, state_dir, env, run_id)
            pytest.fail(
                f"firkin serve printed no export lines within 30 s (exit {process.returncode});"
                f" its log ({log_path}):\n{daemon.log_since(0)}",
                pytrace=False,
            )
        assert api_key not in line, "the daemon printed the API key it was given"
        match = re.fullmatch(r"export ([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match and match.group(1) != "E2B_API_KEY":
            env[match.group(1)] = match.group(2)
    daemon = Daemon(process, log_path, state_dir, env, run_id)
    assert env["E2B_API_URL"] == f"http://127.0.0.1:{port}", env
    assert env["E2B_SANDBOX_URL"] == f"http://127.0.0.1:{port}", env
    return daemon


def kill_all_sandboxes() -> list[str]:
    """Kill every sandbox the daemon lists (running or paused); return their ids."""
    from e2b import Sandbox

    ids = []
    paginator = Sandbox.list(limit=100)
    while paginator.has_next:
        ids += [info.sandbox_id for info in paginator.next_items()]
    for sandbox_id in ids:
        Sandbox.kill(sandbox_id)
    return ids


@pytest.fixture(scope="session", autouse=True)
def firkin():
    """The daemon for the whole session, with the SDK's environment pointing at it."""
    global _daemon
    if os.geteuid() != 0:
        pytest.skip(
            "the E2B SDK tests need root (firkin serve creates namespaces, cgroups and"
            " network devices); run them as root"
        )
    if not firkin_binary().is_file():
        pytest.skip(f"{firkin_binary()} does not exist: run `cargo build -p firkin` (or set FIRKIN_BIN)")
    if not envd_binary().is_file():
        pytest.skip(
            f"{envd_binary()} does not exist: run `scripts/build-envd` (or set FIRKIN_ENVD_BIN)"
        )
    if os.environ.get("FIRKIN_SDK_TESTS_SHARE_HOST") != "1":
        # A starting daemon reclaims every firkin sandbox cgroup its own state does not know
        # and every firkin network slot (host-wide), which wrecks the sandboxes of another
        # daemon (or bench) running beside it: do not start one then.
        others = other_daemons()
        if others:
            pytest.skip(
                "another firkin serve runs on this host and a new daemon would reclaim (kill)"
                f" its sandboxes and network slots: {others}; stop it, or set"
                " FIRKIN_SDK_TESTS_SHARE_HOST=1"
            )
        tests = driver_tests()
        if tests:
            pytest.skip(
                "firkin-linux tests or benches run on this host and a new daemon would reclaim"
                f" their sandboxes and network slots: {tests[:3]}; wait for them, or set"
                " FIRKIN_SDK_TESTS_SHARE_HOST=1"
            )
        foreign = foreign_sandboxes()
        if foreign:
            pytest.skip(
                f"{len(foreign)} firkin sandbox(es) of someone else run on this host and a new"
                f" daemon would reclaim them: {foreign[:5]}; stop their owner, or set"
                " FIRKIN_SDK_TESTS_SHARE_HOST=1"
            )

    run_id = uuid.uuid4().hex[:12]
    slots_before = network_slots()
    global _registry
    _registry = start_registry()
    daemon = start_daemon(run_id, _registry.address)
    _daemon = daemon
    # Recipe A for the tests; recipe B's variables (TLS and host names) only for the tests
    # that ask for them (daemon.env keeps them).
    recipe_a = {k: v for k, v in daemon.env.items() if k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY")}
    saved = {k: os.environ.get(k) for k in list(recipe_a) + ["E2B_DEBUG", "E2B_DOMAIN"]}
    os.environ.update(recipe_a)
    os.environ.pop("E2B_DEBUG", None)
    os.environ.pop("E2B_DOMAIN", None)
    problems = []
    try:
        yield daemon
    finally:
        if daemon.alive():
            try:
                leftovers = kill_all_sandboxes()
                if leftovers:
                    problems.append(f"sandboxes left at the end of the session: {leftovers}")
                remaining = kill_all_sandboxes()
                if remaining:
                    problems.append(f"sandboxes still listed after being killed: {remaining}")
            except Exception as error:  # noqa: BLE001 - reported below
                problems.append(f"cannot list or kill the remaining sandboxes: {error!r}")
            daemon.process.send_signal(signal.SIGTERM)
            try:
                daemon.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.process.kill()
                daemon.process.wait()
                problems.append("firkin serve did not exit within 15 s of SIGTERM")
        if daemon.process.returncode != 0:
            problems.append(f"firkin serve exited with {daemon.process.returncode}")
        # Every sandbox was killed before the shutdown: no process may still live in one.
        stray = processes_rooted_in(daemon.state_dir)
        if stray:
            problems.append(f"processes still running in sandboxes after the shutdown: {stray}")
            for pid, _ in stray:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        else:
            shutil.rmtree(daemon.state_dir, ignore_errors=True)
        # With no sandbox left, the daemon must not leave network slots behind either.
        time.sleep(0.2)
        new_slots = sorted(name for name, _ in network_slots() - slots_before)
        if new_slots:
            problems.append(
                f"network slots (fk<tag>h* veths, <state>/netns) the daemon made and left after"
                f" its shutdown, with no sandbox left: {new_slots}"
            )
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _daemon = None
        _registry.stop()
        if problems:
            pytest.fail(
                "\n".join(problems) + f"\nfirkin serve log ({daemon.log_path}), last lines:\n"
                + daemon.log_since(0, max_lines=40),
                pytrace=False,
            )


@pytest.fixture(scope="session")
def registry(firkin) -> Registry:
    """The session's registry on loopback, which the daemon pulls from over plain HTTP."""
    return _registry


@pytest.fixture
def run_id(firkin) -> str:
    return firkin.run_id


@pytest.fixture
def meta(firkin, request) -> dict[str, str]:
    """The metadata every sandbox of this test carries."""
    case = re.sub(r"[^a-zA-Z0-9_-]", "-", request.node.name)[:60]
    return {"test": firkin.run_id, "case": case}


@pytest.fixture(autouse=True)
def no_leaks(firkin, meta, request):
    """Before: the daemon runs. After: no sandbox of this test is left (the leftovers are
    killed, and the test errors)."""
    from e2b import Sandbox, SandboxQuery

    if not firkin.alive():
        pytest.fail(
            f"firkin serve is dead (exit {firkin.process.returncode}); log:\n"
            + firkin.log_since(0, max_lines=40),
            pytrace=False,
        )
    request.node.firkin_log_offset = firkin.log_size()
    yield
    if not firkin.alive():
        pytest.fail(f"firkin serve died during the test (exit {firkin.process.returncode})")
    paginator = Sandbox.list(query=SandboxQuery(metadata=meta), limit=100)
    left = []
    while paginator.has_next:
        left += [info.sandbox_id for info in paginator.next_items()]
    for sandbox_id in left:
        Sandbox.kill(sandbox_id)
    assert not left, f"the test left sandboxes behind: {left}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report shows what the daemon logged while it ran."""
    outcome = yield
    report = outcome.get_result()
    offset = getattr(item, "firkin_log_offset", None)
    if report.failed and _daemon is not None and offset is not None:
        text = _daemon.log_since(offset) or "(nothing logged)"
        report.sections.append(("firkin serve log during the test", text))


@pytest.fixture
def make_sandbox(meta):
    """`make_sandbox(**create_args)`: a sync Sandbox with this test's metadata, killed after."""
    from e2b import Sandbox

    created = []

    def make(**kwargs):
        kwargs["metadata"] = {**meta, **kwargs.get("metadata", {})}
        kwargs.setdefault("timeout", 120)
        sbx = Sandbox.create(**kwargs)
        created.append(sbx)
        return sbx

    yield make
    for sbx in created:
        try:
            sbx.kill()
        except Exception:  # noqa: BLE001 - the leak check reports what is left
            pass


@pytest.fixture
def sandbox(make_sandbox):
    """A fresh sandbox from the `base` template."""
    return make_sandbox()
