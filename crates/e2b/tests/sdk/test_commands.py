"""Commands in sandboxes of `firkin serve` through the real `e2b` SDK: the envd RPCs reach
the sandbox through the daemon's proxy (E2B_SANDBOX_URL + E2b-Sandbox-Id headers)."""

import asyncio
import time

import pytest
from e2b import AsyncSandbox, CommandExitException, TimeoutException


def test_echo(sandbox):
    result = sandbox.commands.run("echo hi")
    assert result.stdout == "hi\n"
    assert result.stderr == ""
    assert result.exit_code == 0


def test_stdout_and_stderr_are_separate(sandbox):
    result = sandbox.commands.run("echo out; echo err >&2")
    assert (result.stdout, result.stderr) == ("out\n", "err\n")


def test_non_zero_exit_raises_with_the_code(sandbox):
    with pytest.raises(CommandExitException) as exited:
        sandbox.commands.run("echo partial; echo oops >&2; exit 3")
    assert exited.value.exit_code == 3
    assert exited.value.stdout == "partial\n"
    assert exited.value.stderr == "oops\n"
    # The sandbox is still usable afterwards.
    assert sandbox.commands.run("true").exit_code == 0


def test_envs_given_at_create_are_seen_by_commands(make_sandbox):
    sbx = make_sandbox(envs={"FIRKIN_A": "one", "FIRKIN_B": "two words"})
    assert sbx.commands.run('echo "$FIRKIN_A|$FIRKIN_B"').stdout == "one|two words\n"
    # Per-command envs add to them and win over them.
    result = sbx.commands.run('echo "$FIRKIN_A|$FIRKIN_C"', envs={"FIRKIN_A": "1", "FIRKIN_C": "3"})
    assert result.stdout == "1|3\n"
    # ...for that command only.
    assert sbx.commands.run("echo $FIRKIN_A").stdout == "one\n"


def test_cwd(sandbox):
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert sandbox.commands.run("pwd", cwd="/").stdout == "/\n"


def test_default_user_and_root(sandbox):
    # The base template's default user is `user`, in its home (E2B-CONTRACT.md §8).
    assert sandbox.commands.run("whoami").stdout == "user\n"
    assert sandbox.commands.run("pwd").stdout == "/home/user\n"
    assert sandbox.commands.run("whoami", user="root").stdout == "root\n"
    assert sandbox.commands.run("id -u", user="root").stdout == "0\n"


def test_background_command_and_kill(sandbox):
    handle = sandbox.commands.run("sleep 300", background=True)
    assert handle.pid > 0
    assert handle.pid in [p.pid for p in sandbox.commands.list()]
    assert handle.kill() is True
    with pytest.raises(CommandExitException) as killed:
        handle.wait()
    assert killed.value.exit_code == -1
    deadline = time.monotonic() + 3
    while handle.pid in [p.pid for p in sandbox.commands.list()] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handle.pid not in [p.pid for p in sandbox.commands.list()]
    assert sandbox.commands.kill(handle.pid) is False


def test_background_command_output(sandbox):
    handle = sandbox.commands.run("sleep 0.3; echo done", background=True)
    result = handle.wait()
    assert (result.stdout, result.exit_code) == ("done\n", 0)


def test_command_timeout(sandbox):
    start = time.monotonic()
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 5", timeout=1)
    elapsed = time.monotonic() - start
    assert elapsed < 4, f"a 1 s command timeout took {elapsed:.1f} s"
    # The sandbox survives its command's timeout.
    assert sandbox.commands.run("echo still here").stdout == "still here\n"


def test_stdout_streams_through_callbacks(sandbox):
    out = []
    result = sandbox.commands.run("for i in 1 2 3; do echo $i; sleep 0.1; done", on_stdout=out.append)
    assert "".join(out) == result.stdout == "1\n2\n3\n"


def test_async_commands(meta):
    async def main():
        sbx = await AsyncSandbox.create(metadata=meta, timeout=60)
        try:
            assert (await sbx.commands.run("echo hi")).stdout == "hi\n"
            with pytest.raises(CommandExitException) as exited:
                await sbx.commands.run("exit 7")
            assert exited.value.exit_code == 7
            assert (await sbx.commands.run("whoami", user="root")).stdout == "root\n"
            with pytest.raises(TimeoutException):
                await sbx.commands.run("sleep 5", timeout=1)
            handle = await sbx.commands.run("sleep 300", background=True)
            assert await handle.kill() is True
        finally:
            await sbx.kill()

    asyncio.run(main())
