"""Sandbox lifecycle through the real `e2b` SDK against `firkin serve`: create, info, list
(filters and pagination), connect, kill, timeouts, auto-pause, pause and resume."""

import asyncio
import re
import time
from datetime import datetime, timedelta, timezone

import pytest
from e2b import (
    AsyncSandbox,
    NotFoundException,
    Sandbox,
    SandboxQuery,
    SandboxState,
)

# What a DNS label may be (the id goes into `<port>-<id>.<domain>` host names).
DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
SEMVER = re.compile(r"\d+\.\d+\.\d+")


def now() -> datetime:
    return datetime.now(timezone.utc)


def value(enum_or_str) -> str:
    """The wire value of an SDK enum (or a plain string)."""
    return getattr(enum_or_str, "value", enum_or_str)


def listed(query: SandboxQuery, **kwargs) -> list:
    """Every SandboxInfo the list returns, over all pages."""
    paginator = Sandbox.list(query=query, **kwargs)
    items = []
    while paginator.has_next:
        items += paginator.next_items()
    return items


def listed_ids(query: SandboxQuery, **kwargs) -> list[str]:
    return [info.sandbox_id for info in listed(query, **kwargs)]


def wait_for(predicate, timeout: float, interval: float = 0.1):
    """Poll `predicate` until it returns something truthy; return it, or the last value."""
    deadline = time.monotonic() + timeout
    result = predicate()
    while not result and time.monotonic() < deadline:
        time.sleep(interval)
        result = predicate()
    return result


def state_of(sandbox_id: str):
    """The sandbox's state, or None once it is gone."""
    try:
        return Sandbox.get_info(sandbox_id).state
    except NotFoundException:
        return None


def assert_close(actual: datetime, expected: datetime, slack_s: float = 3.0) -> None:
    delta = abs((actual - expected).total_seconds())
    assert delta <= slack_s, f"{actual.isoformat()} is {delta:.1f} s from {expected.isoformat()}"


# -- create and info ------------------------------------------------------------------------


def test_create_and_get_info(make_sandbox, meta):
    before = now()
    sbx = make_sandbox(timeout=120)
    info = sbx.get_info()

    assert info.sandbox_id == sbx.sandbox_id
    assert DNS_LABEL.fullmatch(sbx.sandbox_id), f"{sbx.sandbox_id!r} is not DNS-label safe"
    assert 8 <= len(sbx.sandbox_id) <= 63
    assert info.template_id == "base"
    assert info.state == SandboxState.RUNNING
    assert isinstance(info.cpu_count, int) and not isinstance(info.cpu_count, bool)
    assert info.cpu_count >= 1
    assert isinstance(info.memory_mb, int) and info.memory_mb >= 64
    assert SEMVER.fullmatch(info.envd_version), info.envd_version
    assert info.metadata == meta
    # startedAt is now (same clock: same host), endAt is startedAt + timeout.
    assert info.started_at.tzinfo is not None
    assert before - timedelta(seconds=2) <= info.started_at <= now() + timedelta(seconds=2)
    assert_close(info.end_at, info.started_at + timedelta(seconds=120), slack_s=2)
    assert value(info.lifecycle["on_timeout"]) == "kill"
    assert sbx.is_running()


def test_default_timeout_is_300_s(make_sandbox):
    sbx = make_sandbox(timeout=None)
    info = sbx.get_info()
    assert_close(info.end_at, info.started_at + timedelta(seconds=300), slack_s=2)


def test_sandbox_ids_are_unique(make_sandbox):
    ids = {make_sandbox().sandbox_id for _ in range(3)}
    assert len(ids) == 3


# -- list -----------------------------------------------------------------------------------


def test_list_filters_by_metadata(make_sandbox, meta):
    # A value with spaces and URL syntax checks the SDK's triple encoding end to end.
    odd = "a b&c=d/é%"
    a = make_sandbox(metadata={"role": "a", "odd": odd})
    b = make_sandbox(metadata={"role": "b"})

    assert sorted(listed_ids(SandboxQuery(metadata=meta))) == sorted([a.sandbox_id, b.sandbox_id])
    assert listed_ids(SandboxQuery(metadata={**meta, "role": "a"})) == [a.sandbox_id]
    assert listed_ids(SandboxQuery(metadata={**meta, "role": "b"})) == [b.sandbox_id]
    assert listed_ids(SandboxQuery(metadata={**meta, "odd": odd})) == [a.sandbox_id]
    assert listed_ids(SandboxQuery(metadata={**meta, "role": "nobody"})) == []

    [info] = listed(SandboxQuery(metadata={**meta, "role": "a"}))
    assert info.metadata == {**meta, "role": "a", "odd": odd}
    assert info.template_id == "base"
    assert info.state == SandboxState.RUNNING
    assert info.started_at <= info.end_at


def test_list_filters_by_state(make_sandbox, meta):
    running = make_sandbox()
    paused = make_sandbox()
    assert paused.pause() is True

    query = lambda *states: SandboxQuery(metadata=meta, state=list(states) or None)  # noqa: E731
    assert listed_ids(query(SandboxState.RUNNING)) == [running.sandbox_id]
    assert listed_ids(query(SandboxState.PAUSED)) == [paused.sandbox_id]
    both = {info.sandbox_id: info.state for info in listed(query())}
    assert both == {running.sandbox_id: SandboxState.RUNNING, paused.sandbox_id: SandboxState.PAUSED}
    both = listed_ids(query(SandboxState.RUNNING, SandboxState.PAUSED))
    assert sorted(both) == sorted([running.sandbox_id, paused.sandbox_id])


def test_list_paginates(make_sandbox, meta):
    ids = [make_sandbox().sandbox_id for _ in range(3)]
    query = SandboxQuery(metadata=meta)

    paginator = Sandbox.list(query=query, limit=2, order="asc")
    assert paginator.has_next
    first = [info.sandbox_id for info in paginator.next_items()]
    assert len(first) == 2
    assert paginator.has_next and paginator.next_token
    second = [info.sandbox_id for info in paginator.next_items()]
    assert len(second) == 1
    assert not paginator.has_next
    # Oldest first, each sandbox exactly once.
    assert first + second == ids

    assert listed_ids(query, limit=2, order="desc") == ids[::-1]
    assert listed_ids(query, limit=1, order="asc") == ids
    # A token from one page resumes the listing where it stopped.
    resumed = Sandbox.list(query=query, limit=2, order="asc", next_token=paginator_token(query))
    assert [info.sandbox_id for info in resumed.next_items()] == ids[2:]


def paginator_token(query: SandboxQuery) -> str:
    paginator = Sandbox.list(query=query, limit=2, order="asc")
    paginator.next_items()
    assert paginator.next_token
    return paginator.next_token


# -- kill and connect -----------------------------------------------------------------------


def test_kill_is_true_then_false(make_sandbox, meta):
    sbx = make_sandbox()
    assert sbx.kill() is True
    assert sbx.kill() is False
    assert Sandbox.kill(sbx.sandbox_id) is False
    assert not sbx.is_running()
    with pytest.raises(NotFoundException):
        sbx.get_info()
    assert listed_ids(SandboxQuery(metadata=meta)) == []


def test_connect_to_a_running_sandbox_by_id(make_sandbox):
    sbx = make_sandbox(timeout=60)
    sbx.files.write("/tmp/marker", "from the first handle")

    other = Sandbox.connect(sbx.sandbox_id)
    assert other.sandbox_id == sbx.sandbox_id
    assert other.files.read("/tmp/marker") == "from the first handle"
    assert other.commands.run("cat /tmp/marker").stdout == "from the first handle"
    assert other.get_info().state == SandboxState.RUNNING


def test_connect_timeout_only_extends(make_sandbox):
    sbx = make_sandbox(timeout=60)
    Sandbox.connect(sbx.sandbox_id, timeout=600)
    assert_close(sbx.get_info().end_at, now() + timedelta(seconds=600))
    # A shorter timeout on connect leaves the later end in place.
    Sandbox.connect(sbx.sandbox_id, timeout=30)
    assert_close(sbx.get_info().end_at, now() + timedelta(seconds=600))


# -- timeouts -------------------------------------------------------------------------------


def test_set_timeout_extends_and_shortens(make_sandbox, meta):
    sbx = make_sandbox(timeout=60)
    sbx.set_timeout(600)
    assert_close(sbx.get_info().end_at, now() + timedelta(seconds=600))

    start = time.monotonic()
    sbx.set_timeout(2)
    assert_close(sbx.get_info().end_at, now() + timedelta(seconds=2), slack_s=1.5)
    assert sbx.is_running()
    assert wait_for(lambda: state_of(sbx.sandbox_id) is None, timeout=8), "still alive after 8 s"
    elapsed = time.monotonic() - start
    assert elapsed >= 1.5, f"killed after {elapsed:.1f} s, before its 2 s timeout"
    assert not sbx.is_running()
    with pytest.raises(NotFoundException):
        sbx.get_info()
    assert Sandbox.kill(sbx.sandbox_id) is False
    assert listed_ids(SandboxQuery(metadata=meta)) == []


def test_auto_pause_at_the_timeout_then_connect_resumes(make_sandbox):
    sbx = make_sandbox(timeout=2, lifecycle={"on_timeout": "pause"})
    info = sbx.get_info()
    assert value(info.lifecycle["on_timeout"]) == "pause"
    sbx.files.write("/tmp/kept", "before the pause")

    start = time.monotonic()
    assert wait_for(lambda: state_of(sbx.sandbox_id) == SandboxState.PAUSED, timeout=8), (
        f"state is {state_of(sbx.sandbox_id)} 8 s after a 2 s timeout with on_timeout=pause"
    )
    assert time.monotonic() - start >= 1, "paused before its timeout"

    resumed = Sandbox.connect(sbx.sandbox_id, timeout=60)
    assert resumed.sandbox_id == sbx.sandbox_id
    assert resumed.get_info().state == SandboxState.RUNNING
    assert resumed.commands.run("echo back").stdout == "back\n"
    assert resumed.files.read("/tmp/kept") == "before the pause"
    assert resumed.get_info().end_at > now() + timedelta(seconds=30)


# -- pause and resume -----------------------------------------------------------------------


def test_pause_then_connect_resumes(make_sandbox, meta):
    sbx = make_sandbox()
    sbx.files.write("/tmp/kept", "state")
    sleeper = sbx.commands.run("sleep 1000", background=True)

    assert sbx.pause() is True
    assert sbx.get_info().state == SandboxState.PAUSED
    # Pausing a paused sandbox is a 409, which the SDK answers with False.
    assert sbx.pause() is False
    assert Sandbox.pause(sbx.sandbox_id) is False
    assert listed_ids(SandboxQuery(metadata=meta, state=[SandboxState.PAUSED])) == [sbx.sandbox_id]

    again = sbx.connect()
    assert again.sandbox_id == sbx.sandbox_id
    assert sbx.get_info().state == SandboxState.RUNNING
    assert sbx.commands.run("cat /tmp/kept").stdout == "state"
    # The pause kept memory: the process started before it still runs.
    assert sleeper.pid in [p.pid for p in sbx.commands.list()]
    assert sleeper.kill() is True


def test_pause_unknown_sandbox_is_not_found():
    with pytest.raises(NotFoundException):
        Sandbox.pause("nosuchsandbox0000000")


# -- async SDK ------------------------------------------------------------------------------


def test_async_lifecycle(meta):
    async def main():
        sbx = await AsyncSandbox.create(metadata=meta, timeout=60, envs={"GREETING": "hello"})
        try:
            info = await sbx.get_info()
            assert info.template_id == "base"
            assert info.state == SandboxState.RUNNING
            assert info.metadata == meta
            assert await sbx.is_running()

            result = await sbx.commands.run("echo $GREETING")
            assert result.stdout == "hello\n"
            await sbx.files.write("/tmp/async.txt", "async")
            assert await sbx.files.read("/tmp/async.txt") == "async"

            paginator = AsyncSandbox.list(query=SandboxQuery(metadata=meta))
            ids = []
            while paginator.has_next:
                ids += [i.sandbox_id for i in await paginator.next_items()]
            assert ids == [sbx.sandbox_id]

            other = await AsyncSandbox.connect(sbx.sandbox_id)
            assert (await other.commands.run("cat /tmp/async.txt")).stdout == "async"

            assert await sbx.pause() is True
            assert (await sbx.get_info()).state == SandboxState.PAUSED
            assert await sbx.pause() is False
            await sbx.connect()
            assert (await sbx.get_info()).state == SandboxState.RUNNING
            assert (await sbx.commands.run("echo resumed")).stdout == "resumed\n"

            await sbx.set_timeout(120)
            assert_close((await sbx.get_info()).end_at, now() + timedelta(seconds=120))
        finally:
            killed = await sbx.kill()
        assert killed is True
        assert await sbx.kill() is False
        assert await AsyncSandbox.kill(sbx.sandbox_id) is False
        with pytest.raises(NotFoundException):
            await AsyncSandbox.get_info(sbx.sandbox_id)

    asyncio.run(main())


def test_async_creates_in_parallel(meta):
    async def main():
        sandboxes = await asyncio.gather(
            *(AsyncSandbox.create(metadata=meta, timeout=60) for _ in range(3))
        )
        try:
            assert len({s.sandbox_id for s in sandboxes}) == 3
            outs = await asyncio.gather(*(s.commands.run("echo $((6*7))") for s in sandboxes))
            assert [o.stdout for o in outs] == ["42\n"] * 3
        finally:
            results = await asyncio.gather(*(s.kill() for s in sandboxes))
        assert results == [True] * 3

    asyncio.run(main())
