"""Commands through the real `e2b` SDK (sync and async) against a real firkin-envd.

envd runs on this host, so the tests check what they start with `ps` and `/proc` as well as
through the SDK: a command that was killed, timed out or had its group killed must really be
gone. Every `sleep` carries a unique fractional duration (`sleep 10.123456`), so parallel test
runs on other ports never see each other's processes.
"""

import asyncio
import os
import pwd
import random
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    InvalidArgumentException,
    NotFoundException,
    TimeoutException,
)

# -- helpers ------------------------------------------------------------------------------


def unique_sleep(seconds: int) -> str:
    """A `sleep` argument no other test (or test run) uses: `10.483920`."""
    return f"{seconds}.{random.randrange(100000, 999999)}"


def live_processes(*argv: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line is exactly `argv`, from `ps`."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    wanted = " ".join(argv)
    pids = []
    for line in out.splitlines():
        pid, stat, args = (line.strip().split(None, 2) + ["", ""])[:3]
        if args == wanted and not stat.startswith("Z"):
            pids.append(int(pid))
    return pids


def alive(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy; return it, or the last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def assert_gone(sandbox, pid: int, argv: tuple[str, ...], timeout: float = 3.0) -> None:
    """`pid` is not in `commands.list()`, is not alive, and no live process runs `argv`."""
    assert wait_until(
        lambda: pid not in [p.pid for p in sandbox.commands.list()], timeout
    ), f"process {pid} is still listed"
    assert wait_until(lambda: not alive(pid), timeout), f"process {pid} is still alive"
    assert wait_until(lambda: not live_processes(*argv), timeout), (
        f"still running: {' '.join(argv)} as {live_processes(*argv)}"
    )


def kill_leftovers(*argv: str) -> None:
    for pid in live_processes(*argv):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


# -- foreground runs and exit codes -------------------------------------------------------


def test_echo_round_trip(sandbox):
    result = sandbox.commands.run("echo hi; echo err >&2")
    assert result.stdout == "hi\n"
    assert result.stderr == "err\n"
    assert result.exit_code == 0
    assert result.error is None


def test_exit_codes(sandbox):
    assert sandbox.commands.run("exit 0").exit_code == 0
    with pytest.raises(CommandExitException) as one:
        sandbox.commands.run("exit 1")
    assert one.value.exit_code == 1
    with pytest.raises(CommandExitException) as three:
        sandbox.commands.run("echo out; echo err >&2; exit 3")
    assert three.value.exit_code == 3
    assert three.value.stdout == "out\n"
    assert three.value.stderr == "err\n"


def test_end_error_matches_real_envd(sandbox):
    """Real envd puts Go's `cmd.Wait()` error in `end.error` (`exit status 3`,
    `signal: killed`), which the SDK surfaces as CommandExitException.error."""
    with pytest.raises(CommandExitException) as exited:
        sandbox.commands.run("exit 3")
    handle = sandbox.commands.run(f"sleep {unique_sleep(30)}", background=True)
    assert handle.kill()
    with pytest.raises(CommandExitException) as killed:
        handle.wait()
    assert (exited.value.error, killed.value.error) == ("exit status 3", "signal: killed")


def test_callbacks_get_stdout_and_stderr(sandbox):
    out, err = [], []
    result = sandbox.commands.run(
        "echo a; echo b >&2; sleep 0.1; echo c; echo d >&2",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert "".join(out) == "a\nc\n" == result.stdout
    assert "".join(err) == "b\nd\n" == result.stderr


def test_large_output_arrives_complete_and_in_order(sandbox):
    # `seq 1 1500000` is 10.9 MB.
    result = sandbox.commands.run("seq 1 1500000", timeout=120)
    expected = "".join(f"{i}\n" for i in range(1, 1500001))
    assert len(result.stdout) == len(expected) > 10 * 1024 * 1024
    assert result.stdout == expected


def test_cat_without_stdin_reads_end_of_file(sandbox):
    # The SDK's default is stdin=False: the command reads /dev/null and does not hang.
    result = sandbox.commands.run("cat; echo done", timeout=10)
    assert result.stdout == "done\n"


# -- background commands, kill, list, connect ---------------------------------------------


def test_background_wait(sandbox):
    handle = sandbox.commands.run("sleep 0.3; echo done", background=True)
    assert handle.pid > 0
    result = handle.wait()
    assert result.stdout == "done\n"
    assert result.exit_code == 0


def test_background_kill(sandbox):
    duration = unique_sleep(30)
    handle = sandbox.commands.run(f"sleep {duration}", background=True)
    assert wait_until(lambda: live_processes("sleep", duration))
    assert alive(handle.pid)
    assert handle.kill() is True
    with pytest.raises(CommandExitException) as killed:
        handle.wait()
    assert killed.value.exit_code == -1
    assert_gone(sandbox, handle.pid, ("sleep", duration))
    # Once it is gone, killing it again finds nothing.
    assert sandbox.commands.kill(handle.pid) is False


def test_kill_by_pid(sandbox):
    duration = unique_sleep(30)
    handle = sandbox.commands.run(f"sleep {duration}", background=True)
    assert sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as killed:
        handle.wait()
    assert killed.value.exit_code == -1
    assert_gone(sandbox, handle.pid, ("sleep", duration))
    assert sandbox.commands.kill(handle.pid) is False


def test_kill_unknown_pid_is_false(sandbox):
    assert sandbox.commands.kill(4_000_000) is False


def test_kill_takes_the_whole_group(sandbox):
    duration = unique_sleep(100)
    handle = sandbox.commands.run(
        f'bash -c "sleep {duration} & sleep {duration}"', background=True
    )
    try:
        assert wait_until(lambda: len(live_processes("sleep", duration)) == 2), (
            "both sleeps should be running"
        )
        assert handle.kill() is True
        with pytest.raises(CommandExitException):
            handle.wait()
        assert_gone(sandbox, handle.pid, ("sleep", duration))
    finally:
        kill_leftovers("sleep", duration)


def test_list_shows_running_commands(sandbox):
    duration = unique_sleep(30)
    cmd = f"sleep {duration}"
    handle = sandbox.commands.run(cmd, background=True, envs={"A": "1"}, cwd="/tmp")
    try:
        listed = {p.pid: p for p in sandbox.commands.list()}
        assert handle.pid in listed
        info = listed[handle.pid]
        assert info.cmd == "/bin/bash"
        assert info.args == ["-l", "-c", cmd]
        assert info.envs["A"] == "1"
        assert info.cwd == "/tmp"
        assert info.tag is None
    finally:
        handle.kill()
    with pytest.raises(CommandExitException):
        handle.wait()
    assert handle.pid not in [p.pid for p in sandbox.commands.list()]


def test_connect_gets_live_output(sandbox):
    # `late` is written only after the second client connected: it must come live.
    handle = sandbox.commands.run(
        "echo early; sleep 1.5; echo late; echo late-err >&2; exit 4", background=True
    )
    time.sleep(0.5)
    connected = sandbox.commands.connect(handle.pid)
    assert connected.pid == handle.pid
    with pytest.raises(CommandExitException) as seen_by_connect:
        connected.wait()
    assert "late\n" in seen_by_connect.value.stdout
    assert seen_by_connect.value.stderr == "late-err\n"
    assert seen_by_connect.value.exit_code == 4
    # The original stream got everything, early and late.
    with pytest.raises(CommandExitException) as seen_by_start:
        handle.wait()
    assert seen_by_start.value.stdout == "early\nlate\n"
    assert seen_by_start.value.exit_code == 4


def test_connect_to_unknown_pid_is_not_found(sandbox):
    with pytest.raises(NotFoundException):
        sandbox.commands.connect(4_000_000)


# -- stdin ----------------------------------------------------------------------------------


def test_stdin_send_and_close(sandbox):
    handle = sandbox.commands.run("cat", background=True, stdin=True)
    handle.send_stdin("hello\n")
    sandbox.commands.send_stdin(handle.pid, b"bytes \xc3\xa9\n")
    handle.close_stdin()
    result = handle.wait()
    assert result.stdout == "hello\nbytes \u00e9\n"
    assert result.exit_code == 0


def test_stream_input(sandbox):
    assert hasattr(sandbox.commands, "stream_input")
    handle = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.stream_input(handle.pid, ["one\n", b"two\n", "three\n"])
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "one\ntwo\nthree\n"


def test_stream_input_to_unknown_pid_is_not_found(sandbox):
    with pytest.raises(NotFoundException):
        sandbox.commands.stream_input(4_000_000, ["x"])


# -- timeouts -------------------------------------------------------------------------------


def test_timeout_raises_and_kills(sandbox):
    duration = unique_sleep(10)
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sandbox.commands.run(f"sleep {duration}", timeout=1)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed <= 2.5, f"timed out after {elapsed:.2f} s"
    try:
        assert wait_until(
            lambda: not [p for p in sandbox.commands.list() if duration in " ".join(p.args)], 3
        ), sandbox.commands.list()
        assert wait_until(lambda: not live_processes("sleep", duration), 3), (
            "the timed-out command is still running"
        )
    finally:
        kill_leftovers("sleep", duration)


def test_background_timeout_kills(sandbox):
    duration = unique_sleep(10)
    handle = sandbox.commands.run(f"sleep {duration}", background=True, timeout=1)
    try:
        with pytest.raises(TimeoutException):
            handle.wait()
        assert_gone(sandbox, handle.pid, ("sleep", duration))
    finally:
        kill_leftovers("sleep", duration)


# -- environment, working directory, user ---------------------------------------------------


def test_envs_and_defaults(sandbox):
    result = sandbox.commands.run(
        'echo "A=$A"; echo "HOME=$HOME"; echo "USER=$USER"; echo "PATH=$PATH"',
        envs={"A": "1"},
    )
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert lines["A"] == "1"
    assert lines["HOME"] == "/home/user"
    assert lines["USER"] == "user"
    path = lines["PATH"].split(":")
    assert "/usr/bin" in path and "/bin" in path
    # What envd itself sets (before the login shell's profile runs):
    handle = sandbox.commands.run(f"sleep {unique_sleep(30)}", background=True)
    try:
        envs = {p.pid: p.envs for p in sandbox.commands.list()}[handle.pid]
        assert envs["HOME"] == "/home/user"
        assert envs["USER"] == "user"
        assert "/usr/bin" in envs["PATH"].split(":")
    finally:
        handle.kill()
    with pytest.raises(CommandExitException):
        handle.wait()


def test_env_value_with_spaces_and_equals(sandbox):
    result = sandbox.commands.run('printf "%s" "$X"', envs={"X": "a b=c 'd'"})
    assert result.stdout == "a b=c 'd'"


def test_cwd_absolute(sandbox):
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"


def test_cwd_relative_to_home(sandbox):
    home = pwd.getpwnam("user").pw_dir
    name = f"envd-rel-{uuid.uuid4().hex[:10]}"
    path = os.path.join(home, name)
    os.makedirs(path)
    try:
        assert sandbox.commands.run("pwd", cwd=name).stdout == f"{path}\n"
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_default_cwd_is_home(sandbox):
    assert sandbox.commands.run("pwd").stdout == "/home/user\n"


def test_missing_cwd_is_an_error(sandbox):
    missing = f"/tmp/envd-missing-{uuid.uuid4().hex[:10]}"
    with pytest.raises(InvalidArgumentException) as error:
        sandbox.commands.run("pwd", cwd=missing)
    assert missing in str(error.value)


def test_default_user_is_user(sandbox):
    assert sandbox.commands.run("whoami").stdout == "user\n"


def test_user_root(sandbox):
    result = sandbox.commands.run('whoami; echo "$HOME"', user="root")
    assert result.stdout == "root\n/root\n"


def test_unknown_user_is_rejected(sandbox):
    with pytest.raises(AuthenticationException):
        sandbox.commands.run("whoami", user=f"nobody-{uuid.uuid4().hex[:8]}")


# -- concurrency ----------------------------------------------------------------------------


def test_many_concurrent_commands(sandbox):
    def run(i: int):
        return sandbox.commands.run(f"echo start {i}; sleep 0.5; echo end {i} >&2; exit {i % 3}")

    def outcome(i: int):
        try:
            result = run(i)
            return result.exit_code, result.stdout, result.stderr
        except CommandExitException as e:
            return e.exit_code, e.stdout, e.stderr

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(outcome, range(20)))
    elapsed = time.monotonic() - started
    for i, (code, out, err) in enumerate(results):
        assert (code, out, err) == (i % 3, f"start {i}\n", f"end {i}\n")
    # 20 × 0.5 s in series would be 10 s: they ran side by side.
    assert elapsed < 5, f"20 concurrent commands took {elapsed:.1f} s"


# -- async SDK ------------------------------------------------------------------------------


def run_async(test) -> None:
    """Run `test(sandbox)` with a fresh AsyncSandbox; kill whatever it left running."""

    async def main():
        sbx = await AsyncSandbox.create()
        try:
            await test(sbx)
        finally:
            for process in await sbx.commands.list():
                await sbx.commands.kill(process.pid)

    asyncio.run(main())


def test_async_run_exit_codes_and_callbacks(envd):
    async def test(sbx):
        out, err = [], []

        async def on_err(chunk):  # async callbacks are awaited
            err.append(chunk)

        result = await sbx.commands.run(
            "echo a; echo b >&2; echo c", on_stdout=out.append, on_stderr=on_err
        )
        assert result.exit_code == 0
        assert "".join(out) == "a\nc\n" == result.stdout
        assert "".join(err) == "b\n" == result.stderr
        with pytest.raises(CommandExitException) as one:
            await sbx.commands.run("exit 1")
        assert one.value.exit_code == 1
        with pytest.raises(CommandExitException) as three:
            await sbx.commands.run("echo x; exit 3")
        assert (three.value.exit_code, three.value.stdout) == (3, "x\n")

    run_async(test)


def test_async_background_kill_and_list(envd):
    duration = unique_sleep(30)

    async def test(sbx):
        handle = await sbx.commands.run(
            f"sleep {duration}", background=True, envs={"B": "2"}, cwd="/tmp"
        )
        listed = {p.pid: p for p in await sbx.commands.list()}
        info = listed[handle.pid]
        assert (info.cmd, info.args, info.cwd, info.tag) == (
            "/bin/bash",
            ["-l", "-c", f"sleep {duration}"],
            "/tmp",
            None,
        )
        assert info.envs["B"] == "2"
        assert await handle.kill() is True
        with pytest.raises(CommandExitException) as killed:
            await handle.wait()
        assert killed.value.exit_code == -1
        assert handle.pid not in [p.pid for p in await sbx.commands.list()]
        assert await sbx.commands.kill(handle.pid) is False
        assert await sbx.commands.kill(4_000_000) is False

    try:
        run_async(test)
        assert wait_until(lambda: not live_processes("sleep", duration), 3)
    finally:
        kill_leftovers("sleep", duration)


def test_async_stdin_and_stream_input(envd):
    async def test(sbx):
        handle = await sbx.commands.run("cat", background=True, stdin=True)
        await handle.send_stdin("one\n")
        async with sbx.commands.stream_input(handle.pid) as stream:
            await stream.send("two\n")
            await stream.send(b"three\n")
        await sbx.commands.send_stdin(handle.pid, "four\n")
        await handle.close_stdin()
        result = await handle.wait()
        assert result.stdout == "one\ntwo\nthree\nfour\n"

    run_async(test)


def test_async_connect_gets_live_output(envd):
    async def test(sbx):
        handle = await sbx.commands.run("sleep 1; echo late", background=True)
        seen = []
        connected = await sbx.commands.connect(handle.pid, on_stdout=seen.append)
        result = await connected.wait()
        assert "".join(seen) == "late\n" == result.stdout
        assert (await handle.wait()).stdout == "late\n"

    run_async(test)


def test_async_timeout_raises_and_kills(envd):
    duration = unique_sleep(10)

    async def test(sbx):
        started = time.monotonic()
        with pytest.raises(TimeoutException):
            await sbx.commands.run(f"sleep {duration}", timeout=1)
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed <= 2.5, f"timed out after {elapsed:.2f} s"
        for _ in range(60):
            if not await listed_with(sbx, duration):
                break
            await asyncio.sleep(0.05)
        assert not await listed_with(sbx, duration)

    try:
        run_async(test)
        assert wait_until(lambda: not live_processes("sleep", duration), 3)
    finally:
        kill_leftovers("sleep", duration)


async def listed_with(sbx, word: str):
    return [p for p in await sbx.commands.list() if word in " ".join(p.args)]


def test_async_many_concurrent_commands(envd):
    async def test(sbx):
        started = time.monotonic()
        results = await asyncio.gather(
            *(sbx.commands.run(f"sleep 0.5; echo {i}") for i in range(20))
        )
        elapsed = time.monotonic() - started
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(20)]
        assert elapsed < 5, f"20 concurrent commands took {elapsed:.1f} s"

    run_async(test)


def test_async_user_cwd_envs(envd):
    async def test(sbx):
        root = await sbx.commands.run("whoami; pwd", user="root", cwd="/tmp")
        assert root.stdout == "root\n/tmp\n"
        default = await sbx.commands.run('whoami; echo "$A"', envs={"A": "x y"})
        assert default.stdout == "user\nx y\n"
        with pytest.raises(InvalidArgumentException):
            await sbx.commands.run("pwd", cwd=f"/tmp/envd-missing-{uuid.uuid4().hex}")

    run_async(test)
