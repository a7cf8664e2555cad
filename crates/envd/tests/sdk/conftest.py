"""Shared fixtures for the envd SDK tests.

The tests drive a real `firkin-envd`, started standalone on 127.0.0.1:49983, with the real
`e2b` Python SDK from PyPI in debug mode (E2B_DEBUG=true): the SDK then talks to envd at
localhost:49983 directly, with no control plane. envd runs as root so it can run commands as
other users; without root the tests are skipped with a message.
"""

import os
import pathlib
import shutil
import socket
import subprocess
import time
import uuid

import pytest

# The SDK's debug mode talks to localhost:49983; E2B_SANDBOX_URL (which the SDK honours
# first) lets parallel test runs use other ports.
ENVD_PORT = int(os.environ.get("FIRKIN_ENVD_TEST_PORT", "49983"))
REPO = pathlib.Path(__file__).resolve().parents[4]


def envd_binary() -> pathlib.Path:
    explicit = os.environ.get("FIRKIN_ENVD_BIN")
    if explicit:
        return pathlib.Path(explicit)
    return REPO / "target" / "debug" / "firkin-envd"


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"envd did not listen on port {port} within {timeout} s")


@pytest.fixture(scope="session", autouse=True)
def envd():
    """One envd for the whole session; its log is printed if it dies."""
    if os.geteuid() != 0:
        pytest.skip("the envd SDK tests need root (envd switches users); run them as root")
    binary = envd_binary()
    if not binary.exists():
        pytest.fail(f"{binary} does not exist; run `cargo build -p firkin-envd` first")
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", ENVD_PORT)) == 0:
            pytest.fail(f"port {ENVD_PORT} is taken: stop whatever listens there")
    os.environ["E2B_DEBUG"] = "true"
    os.environ["E2B_SANDBOX_URL"] = f"http://127.0.0.1:{ENVD_PORT}"
    os.environ.setdefault("E2B_API_KEY", "unused-in-debug-mode")
    log = open(REPO / "target" / f"envd-sdk-tests-{ENVD_PORT}.log", "wb")
    process = subprocess.Popen(
        [str(binary), "--listen", f"127.0.0.1:{ENVD_PORT}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FIRKIN_ENVD_LOG": "info"},
    )
    try:
        wait_for_port(ENVD_PORT)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    assert process.returncode in (0, -15), f"envd exited with {process.returncode}"


@pytest.fixture
def sandbox(envd):
    from e2b import Sandbox

    sbx = Sandbox.create()
    yield sbx
    # Nothing a test started may outlive it.
    for process in sbx.commands.list():
        sbx.commands.kill(process.pid)


@pytest.fixture
def async_sandbox_factory(envd):
    from e2b import AsyncSandbox

    return AsyncSandbox.create


@pytest.fixture
def workdir(sandbox):
    """A fresh directory, removed afterwards; its path as the SDK sees it."""
    path = f"/tmp/envd-test-{uuid.uuid4().hex[:12]}"
    os.makedirs(path)
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)
