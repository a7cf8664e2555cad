"""PTYs through the real `e2b` SDK (sync and async) against a real firkin-envd.

A sync PTY handle only yields output while something iterates it, so the sync tests read it
on a thread (`PtyReader`) while the test types into it.
"""

import asyncio
import os
import re
import threading
import time

import pytest
from e2b import AsyncSandbox, CommandExitException, PtySize, SandboxException


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def screen_lines(output: bytes) -> list[str]:
    """The terminal output as lines, without escape sequences (prompt colours, bracketed
    paste switches) and line-ending noise."""
    text = ANSI.sub("", output.decode("utf-8", "replace"))
    return re.split(r"\r\n|\r|\n", text)


class PtyReader:
    """Collects a sync PTY's output on a thread until the PTY ends."""

    def __init__(self, handle):
        self.handle = handle
        self.output = bytearray()
        self.result = None
        self.error = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="pty-reader", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            self.result = self.handle.wait(on_pty=self._append)
        except Exception as error:  # noqa: BLE001 - handed to the test
            self.error = error

    def _append(self, chunk: bytes):
        with self._lock:
            self.output.extend(chunk)

    def text(self) -> str:
        with self._lock:
            return self.output.decode("utf-8", "replace")

    def lines(self) -> list[str]:
        with self._lock:
            return screen_lines(bytes(self.output))

    def wait_for(self, line: str, timeout: float = 10.0) -> list[str]:
        """Wait until `line` is a whole line of the output; return every line so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.lines()
            if line in lines:
                return lines
            time.sleep(0.02)
        raise AssertionError(f"line {line!r} never appeared in the PTY output: {self.text()!r}")

    def join(self, timeout: float = 10.0):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the PTY did not end: {self.text()!r}"


def type_line(sandbox, pid: int, line: str):
    sandbox.pty.send_stdin(pid, (line + "\n").encode())


def test_pty_echo_and_exit(sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    reader = PtyReader(handle)
    try:
        type_line(sandbox, handle.pid, "echo h''i")
        # The echoed command line says `h''i`; only the command's output says `hi`.
        reader.wait_for("hi")
        type_line(sandbox, handle.pid, "exit")
        reader.join()
        assert reader.error is None, reader.error
        assert reader.result.exit_code == 0
    finally:
        sandbox.pty.kill(handle.pid)
    assert handle.pid not in [p.pid for p in sandbox.commands.list()]


def test_pty_is_a_terminal_with_the_requested_size(sandbox):
    handle = sandbox.pty.create(PtySize(rows=33, cols=101))
    reader = PtyReader(handle)
    try:
        type_line(sandbox, handle.pid, 'tty; echo "T=$TERM"; stty size; echo "W=$(whoami)"')
        lines = reader.wait_for("W=user")
        assert any(line.startswith("/dev/pts/") for line in lines), lines
        assert "T=xterm-256color" in lines
        assert "33 101" in lines
    finally:
        sandbox.pty.kill(handle.pid)
        reader.join()


def test_pty_resize(sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    reader = PtyReader(handle)
    try:
        type_line(sandbox, handle.pid, "stty size")
        reader.wait_for("24 80")
        sandbox.pty.resize(handle.pid, PtySize(rows=40, cols=120))
        type_line(sandbox, handle.pid, "stty size")
        reader.wait_for("40 120")
    finally:
        sandbox.pty.kill(handle.pid)
        reader.join()


def test_pty_kill(sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    reader = PtyReader(handle)
    type_line(sandbox, handle.pid, "echo ready")
    reader.wait_for("ready")
    assert handle.pid in [p.pid for p in sandbox.commands.list()]
    assert os.path.exists(f"/proc/{handle.pid}")
    assert sandbox.pty.kill(handle.pid) is True
    reader.join()
    # envd reaped the shell: it is gone from /proc, not a zombie.
    assert not os.path.exists(f"/proc/{handle.pid}")
    assert isinstance(reader.error, CommandExitException)
    assert reader.error.exit_code == -1
    assert handle.pid not in [p.pid for p in sandbox.commands.list()]
    assert sandbox.pty.kill(handle.pid) is False


def test_pty_ctrl_d_ends_the_shell(sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    reader = PtyReader(handle)
    try:
        type_line(sandbox, handle.pid, "echo ready")
        reader.wait_for("ready")
        sandbox.pty.send_stdin(handle.pid, b"\x04")
        reader.join()
        assert reader.error is None, reader.error
        assert reader.result.exit_code == 0
    finally:
        sandbox.pty.kill(handle.pid)


def test_pty_user_root_and_cwd(sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80), user="root", cwd="/tmp")
    reader = PtyReader(handle)
    try:
        type_line(sandbox, handle.pid, 'echo "W=$(whoami) D=$(pwd)"; exit')
        reader.join()
        assert "W=root D=/tmp" in reader.lines()
    finally:
        sandbox.pty.kill(handle.pid)


def test_pty_connect_sees_live_output(sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    reader = PtyReader(handle)
    connected = sandbox.pty.connect(handle.pid)
    second = PtyReader(connected)
    try:
        type_line(sandbox, handle.pid, "echo con''nected")
        second.wait_for("connected")
        reader.wait_for("connected")
        type_line(sandbox, handle.pid, "exit")
        reader.join()
        second.join()
        assert reader.result.exit_code == 0
        assert second.result.exit_code == 0
    finally:
        sandbox.pty.kill(handle.pid)


def test_pty_stream_input(sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    reader = PtyReader(handle)
    try:
        sandbox.pty.stream_input(handle.pid, ["echo st", b"rea''med\n", "exit\n"])
        reader.join()
        assert "streamed" in reader.lines()
    finally:
        sandbox.pty.kill(handle.pid)


def test_send_stdin_to_a_pty_as_command_input_is_an_error(sandbox):
    # A PTY takes `pty` input; `stdin` input (commands.send_stdin) is refused, not lost.
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    reader = PtyReader(handle)
    try:
        with pytest.raises(SandboxException) as error:
            sandbox.commands.send_stdin(handle.pid, "echo nope\n")
        assert "pty" in str(error.value)
    finally:
        sandbox.pty.kill(handle.pid)
        reader.join()


def test_async_pty(envd):
    async def main():
        sbx = await AsyncSandbox.create()
        output = bytearray()

        async def wait_for(line: str):
            for _ in range(500):
                if line in screen_lines(bytes(output)):
                    return
                await asyncio.sleep(0.02)
            raise AssertionError(f"line {line!r} never appeared in {bytes(output)!r}")

        handle = await sbx.pty.create(PtySize(rows=24, cols=80), on_data=output.extend)
        try:
            await sbx.pty.send_stdin(handle.pid, b"echo h''i\n")
            await wait_for("hi")
            await sbx.pty.resize(handle.pid, PtySize(rows=50, cols=132))
            await sbx.pty.send_stdin(handle.pid, b"stty size\n")
            await wait_for("50 132")
            await sbx.pty.send_stdin(handle.pid, b"exit\n")
            result = await handle.wait()
            assert result.exit_code == 0
        finally:
            await sbx.pty.kill(handle.pid)

        killed = await sbx.pty.create(PtySize(rows=24, cols=80), on_data=lambda _: None)
        try:
            assert await killed.kill() is True
            with pytest.raises(CommandExitException) as error:
                await killed.wait()
            assert error.value.exit_code == -1
            assert killed.pid not in [p.pid for p in await sbx.commands.list()]
            assert await sbx.pty.kill(killed.pid) is False
        finally:
            await sbx.pty.kill(killed.pid)

    asyncio.run(main())
