"""`filesystem.Filesystem` through the real `e2b` SDK (sync and async) against a real envd.

envd runs on this host as root, so the tests prepare and check files with plain Python
(running as root too) and with `commands.run` (running as the sandbox's default user,
`user`). Requests without `user=` act as the default user, with that user's rights.
"""

import asyncio
import base64
import json
import os
import pwd
import struct
import time
import uuid

import httpx
import pytest
from e2b import (
    FileNotFoundException,
    FilesystemEventType,
    FileType,
    InvalidArgumentException,
    NotFoundException,
    SandboxException,
)

from conftest import ENVD_PORT

# -- helpers ------------------------------------------------------------------------------


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Poll `predicate` until it returns something truthy; return it, or the last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def write(path: str, data: str = "hello") -> None:
    with open(path, "w") as f:
        f.write(data)


def default_user():
    return pwd.getpwnam("user")


def inotify_fds(pid: int) -> int:
    """How many inotify instances process `pid` holds."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                count += 1
        except OSError:
            pass
    return count


def collect_events(handle, until, timeout: float = 5.0):
    """Poll a sync watch handle until `until(events)` holds; return all events seen."""
    events = []

    def done():
        events.extend(handle.get_new_events())
        return until(events)

    wait_until(done, timeout=timeout, interval=0.05)
    return events


def has(events, name, kind):
    return any(e.name == name and e.type == kind for e in events)


def envelope(message: dict) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack(">BI", 0, len(payload)) + payload


def read_envelopes(response):
    """Yield (flags, message) from a Connect streaming response as they arrive."""
    buffer = b""
    for chunk in response.iter_raw():
        buffer += chunk
        while len(buffer) >= 5:
            flags, length = struct.unpack(">BI", buffer[:5])
            if len(buffer) < 5 + length:
                break
            yield flags, json.loads(buffer[5 : 5 + length])
            buffer = buffer[5 + length :]


# -- stat and exists ------------------------------------------------------------------------


def test_exists_and_info_of_a_file(sandbox, workdir):
    path = f"{workdir}/a.txt"
    sandbox.commands.run(f"printf hello > {path}")
    assert sandbox.files.exists(path)
    assert not sandbox.files.exists(f"{workdir}/missing.txt")
    # A path below a file does not exist either.
    assert not sandbox.files.exists(f"{path}/below")

    info = sandbox.files.get_info(path)
    assert info.name == "a.txt"
    assert info.type == FileType.FILE
    assert info.path == path
    assert info.size == 5
    assert info.mode == 0o644
    assert info.permissions == "-rw-r--r--"
    assert info.owner == "user"
    assert info.group == "user"
    assert info.modified_time.tzinfo is not None
    assert abs(info.modified_time.timestamp() - os.stat(path).st_mtime) < 0.001
    assert info.symlink_target is None
    assert info.metadata is None


def test_info_of_a_directory_and_of_missing_paths(sandbox, workdir):
    info = sandbox.files.get_info(workdir)
    assert info.type == FileType.DIR
    assert info.name == os.path.basename(workdir)
    assert info.mode == 0o777
    assert info.permissions == "drwxrwxrwx"
    assert info.owner == "root" and info.group == "root"
    assert info.size > 0

    with pytest.raises(FileNotFoundException) as raised:
        sandbox.files.get_info(f"{workdir}/nope")
    assert isinstance(raised.value, NotFoundException)
    assert f"{workdir}/nope" in str(raised.value)


def test_numeric_owner_when_the_account_is_unknown(sandbox, workdir):
    path = f"{workdir}/orphan"
    write(path)
    os.chown(path, 54321, 54322)
    info = sandbox.files.get_info(path)
    assert (info.owner, info.group) == ("54321", "54322")


def test_metadata_xattrs_are_reported(sandbox, workdir):
    path = f"{workdir}/tagged"
    write(path)
    try:
        os.setxattr(path, "user.e2b.owner", b"ada")
    except OSError:
        pytest.skip("this file system has no user xattrs")
    assert sandbox.files.get_info(path).metadata == {"owner": "ada"}


def test_relative_paths_and_tilde_resolve_against_the_users_home(sandbox):
    name = f"fs-test-{uuid.uuid4().hex[:10]}"
    home = default_user().pw_dir
    try:
        assert sandbox.files.make_dir(name)
        info = sandbox.files.get_info(f"~/{name}")
        assert info.path == f"{home}/{name}"
        assert info.owner == "user"
        # root's relative paths are under root's home.
        assert not sandbox.files.exists(name, user="root")
    finally:
        sandbox.files.remove(name)
    assert not os.path.exists(f"{home}/{name}")


# -- make_dir -----------------------------------------------------------------------------


def test_make_dir_creates_parents_owned_by_the_user(sandbox, workdir):
    nested = f"{workdir}/p/q/r"
    assert sandbox.files.make_dir(nested) is True
    assert sandbox.files.make_dir(nested) is False
    uid, gid = default_user().pw_uid, default_user().pw_gid
    for path in (f"{workdir}/p", f"{workdir}/p/q", nested):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (uid, gid), path
        assert st.st_mode & 0o777 == 0o755
    info = sandbox.files.get_info(nested)
    assert info.type == FileType.DIR
    assert info.permissions == "drwxr-xr-x"
    assert (info.owner, info.group) == ("user", "user")

    # Already existing, but not as a directory.
    write(f"{workdir}/file")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.make_dir(f"{workdir}/file")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.make_dir(f"{workdir}/file/sub")


def test_make_dir_as_root_is_owned_by_root(sandbox, workdir):
    assert sandbox.files.make_dir(f"{workdir}/r1/r2", user="root")
    assert os.stat(f"{workdir}/r1").st_uid == 0
    assert sandbox.files.get_info(f"{workdir}/r1/r2", user="root").owner == "root"


# -- list ---------------------------------------------------------------------------------


def test_list_depth_one_two_and_three(sandbox, workdir):
    for sub in ("subdir1/subdir1_1", "subdir1/subdir1_2", "subdir2/subdir2_1"):
        os.makedirs(f"{workdir}/{sub}")
    write(f"{workdir}/file1.txt", "Hello, world!")
    write(f"{workdir}/subdir1/subdir1_1/deep.txt")

    def listing(depth):
        return [(e.path, e.type) for e in sandbox.files.list(workdir, depth=depth)]

    level1 = [
        (f"{workdir}/file1.txt", FileType.FILE),
        (f"{workdir}/subdir1", FileType.DIR),
        (f"{workdir}/subdir2", FileType.DIR),
    ]
    assert listing(None) == level1
    assert listing(1) == level1
    level2 = [
        (f"{workdir}/file1.txt", FileType.FILE),
        (f"{workdir}/subdir1", FileType.DIR),
        (f"{workdir}/subdir1/subdir1_1", FileType.DIR),
        (f"{workdir}/subdir1/subdir1_2", FileType.DIR),
        (f"{workdir}/subdir2", FileType.DIR),
        (f"{workdir}/subdir2/subdir2_1", FileType.DIR),
    ]
    assert listing(2) == level2
    level3 = level2[:3] + [(f"{workdir}/subdir1/subdir1_1/deep.txt", FileType.FILE)]
    assert listing(3) == level3 + level2[3:]

    with pytest.raises(InvalidArgumentException, match="depth should be at least 1"):
        sandbox.files.list(workdir, depth=0)


def test_list_entry_fields(sandbox, workdir):
    sandbox.commands.run(f"mkdir {workdir}/d && printf 'Hello, World!' > {workdir}/d/test.txt")
    entries = sandbox.files.list(f"{workdir}/d")
    assert len(entries) == 1
    entry = entries[0]
    assert entry.name == "test.txt"
    assert entry.path == f"{workdir}/d/test.txt"
    assert entry.type == FileType.FILE
    assert entry.size == 13
    assert entry.mode == 0o644
    assert entry.permissions == "-rw-r--r--"
    assert (entry.owner, entry.group) == ("user", "user")
    assert entry.modified_time is not None
    assert entry.symlink_target is None


def test_list_errors(sandbox, workdir):
    with pytest.raises(FileNotFoundException):
        sandbox.files.list(f"{workdir}/missing")
    write(f"{workdir}/plain")
    with pytest.raises(InvalidArgumentException, match="not a directory"):
        sandbox.files.list(f"{workdir}/plain")


# -- rename and remove --------------------------------------------------------------------


def test_rename(sandbox, workdir):
    write(f"{workdir}/old.txt", "content")
    info = sandbox.files.rename(f"{workdir}/old.txt", f"{workdir}/new.txt")
    assert info.path == f"{workdir}/new.txt"
    assert info.name == "new.txt"
    assert info.type == FileType.FILE
    assert not sandbox.files.exists(f"{workdir}/old.txt")
    assert open(f"{workdir}/new.txt").read() == "content"

    # Missing parents of the destination are created (as E2B's envd does).
    info = sandbox.files.rename(f"{workdir}/new.txt", f"{workdir}/x/y/moved.txt")
    assert info.path == f"{workdir}/x/y/moved.txt"
    assert os.stat(f"{workdir}/x").st_uid == default_user().pw_uid

    # Directories move too.
    info = sandbox.files.rename(f"{workdir}/x", f"{workdir}/z")
    assert info.type == FileType.DIR
    assert os.path.exists(f"{workdir}/z/y/moved.txt")

    with pytest.raises(FileNotFoundException):
        sandbox.files.rename(f"{workdir}/missing", f"{workdir}/other")


def test_remove_files_and_trees(sandbox, workdir):
    write(f"{workdir}/f")
    sandbox.files.remove(f"{workdir}/f")
    assert not sandbox.files.exists(f"{workdir}/f")

    sandbox.commands.run(f"mkdir -p {workdir}/tree/a/b && touch {workdir}/tree/a/b/c")
    sandbox.files.remove(f"{workdir}/tree")
    assert not os.path.exists(f"{workdir}/tree")

    # Like E2B's envd (and its SDK tests), removing what is not there succeeds.
    sandbox.files.remove(f"{workdir}/never-existed")


# -- users and permissions ----------------------------------------------------------------


@pytest.fixture
def root_only(workdir):
    """A root-owned 0755 directory with a root-owned file in it."""
    path = f"{workdir}/root-only"
    os.mkdir(path)
    os.chmod(path, 0o755)
    write(f"{path}/keep")
    return path


def test_the_default_user_cannot_write_where_it_has_no_permission(sandbox, root_only):
    with pytest.raises(SandboxException, match="permission denied") as raised:
        sandbox.files.make_dir(f"{root_only}/sub")
    assert not isinstance(raised.value, NotFoundException)
    assert not os.path.exists(f"{root_only}/sub")

    with pytest.raises(SandboxException, match="permission denied"):
        sandbox.files.remove(f"{root_only}/keep")
    assert os.path.exists(f"{root_only}/keep")

    with pytest.raises(SandboxException, match="permission denied"):
        sandbox.files.rename(f"{root_only}/keep", f"{root_only}/moved")
    assert os.path.exists(f"{root_only}/keep")

    with pytest.raises(SandboxException, match="permission denied"):
        sandbox.files.remove("/etc/hostname")

    # Reading is allowed by the mode: the user can look.
    assert [e.name for e in sandbox.files.list(root_only)] == ["keep"]


def test_root_can_do_what_the_user_cannot(sandbox, root_only):
    assert sandbox.files.make_dir(f"{root_only}/sub", user="root")
    sandbox.files.rename(f"{root_only}/keep", f"{root_only}/moved", user="root")
    sandbox.files.remove(f"{root_only}/moved", user="root")
    assert os.listdir(root_only) == ["sub"]


def test_a_private_directory_cannot_be_read_by_the_user(sandbox, workdir):
    private = f"{workdir}/private"
    os.mkdir(private)
    os.chmod(private, 0o700)
    write(f"{private}/secret")
    with pytest.raises(SandboxException, match="permission denied"):
        sandbox.files.list(private)
    with pytest.raises(SandboxException, match="permission denied"):
        sandbox.files.get_info(f"{private}/secret")
    assert sandbox.files.exists(f"{private}/secret", user="root")


def test_an_unknown_user_is_refused(sandbox, workdir):
    with pytest.raises(Exception, match="does not exist"):
        sandbox.files.get_info(workdir, user="no-such-user-xyz")


# -- symlinks -----------------------------------------------------------------------------


def test_symlinks(sandbox, workdir):
    write(f"{workdir}/target.txt", "12345")
    os.mkdir(f"{workdir}/dir")
    os.symlink("target.txt", f"{workdir}/link")
    os.symlink("dir", f"{workdir}/dirlink")
    os.symlink("nowhere", f"{workdir}/dangling")

    link = sandbox.files.get_info(f"{workdir}/link")
    assert link.type == FileType.SYMLINK  # the SDK maps isSymlink to SYMLINK
    assert link.symlink_target == f"{workdir}/target.txt"
    assert link.name == "link"
    assert link.path == f"{workdir}/link"
    assert link.permissions.startswith("l")
    assert link.mode == 0o644  # the target's

    dirlink = sandbox.files.get_info(f"{workdir}/dirlink")
    assert dirlink.type == FileType.SYMLINK
    assert dirlink.symlink_target == f"{workdir}/dir"

    dangling = sandbox.files.get_info(f"{workdir}/dangling")
    assert dangling.type == FileType.SYMLINK
    assert dangling.symlink_target == f"{workdir}/nowhere"
    assert sandbox.files.exists(f"{workdir}/dangling")

    # Listed (dangling too), never entered.
    write(f"{workdir}/dir/inside")
    names = [(e.name, e.type) for e in sandbox.files.list(workdir, depth=3)]
    assert names == [
        ("dangling", FileType.SYMLINK),
        ("dir", FileType.DIR),
        ("inside", FileType.FILE),
        ("dirlink", FileType.SYMLINK),
        ("link", FileType.SYMLINK),
        ("target.txt", FileType.FILE),
    ]
    # Listing through a link shows paths under the link.
    assert [e.path for e in sandbox.files.list(f"{workdir}/dirlink")] == [
        f"{workdir}/dirlink/inside"
    ]

    # Removing a link leaves its target.
    sandbox.files.remove(f"{workdir}/dirlink")
    assert os.path.exists(f"{workdir}/dir/inside")


# -- watching: the sync SDK (CreateWatcher / GetWatcherEvents / RemoveWatcher) -------------


def test_sync_watch_reports_changes(sandbox, workdir, envd):
    before = inotify_fds(envd.pid)
    handle = sandbox.files.watch_dir(workdir)
    assert inotify_fds(envd.pid) == before + 1

    write(f"{workdir}/w.txt")
    events = collect_events(handle, lambda ev: has(ev, "w.txt", FilesystemEventType.WRITE))
    assert [(e.name, e.type) for e in events] == [
        ("w.txt", FilesystemEventType.CREATE),
        ("w.txt", FilesystemEventType.WRITE),
    ]
    assert all(e.entry is None for e in events)

    os.chmod(f"{workdir}/w.txt", 0o600)
    os.rename(f"{workdir}/w.txt", f"{workdir}/v.txt")
    os.remove(f"{workdir}/v.txt")
    events = collect_events(handle, lambda ev: has(ev, "v.txt", FilesystemEventType.REMOVE))
    assert [(e.name, e.type) for e in events] == [
        ("w.txt", FilesystemEventType.CHMOD),
        ("w.txt", FilesystemEventType.RENAME),
        ("v.txt", FilesystemEventType.CREATE),
        ("v.txt", FilesystemEventType.REMOVE),
    ]
    assert handle.get_new_events() == []

    handle.stop()
    assert wait_until(lambda: inotify_fds(envd.pid) == before)
    with pytest.raises(SandboxException, match="already stopped"):
        handle.get_new_events()
    # The watcher is gone on the server too.
    with pytest.raises(NotFoundException):
        handle.stop()


def test_sync_watch_recursive_including_new_directories(sandbox, workdir):
    os.makedirs(f"{workdir}/nested")
    handle = sandbox.files.watch_dir(workdir, recursive=True)
    try:
        write(f"{workdir}/nested/f.txt")
        events = collect_events(
            handle, lambda ev: has(ev, "nested/f.txt", FilesystemEventType.WRITE)
        )
        assert events[0].name == "nested/f.txt"
        assert events[0].type == FilesystemEventType.CREATE

        assert sandbox.files.make_dir(f"{workdir}/later/deeper")
        events = collect_events(
            handle, lambda ev: has(ev, "later/deeper", FilesystemEventType.CREATE)
        )
        assert has(events, "later", FilesystemEventType.CREATE)
        write(f"{workdir}/later/deeper/g.txt")
        events = collect_events(
            handle, lambda ev: has(ev, "later/deeper/g.txt", FilesystemEventType.WRITE)
        )
        assert has(events, "later/deeper/g.txt", FilesystemEventType.WRITE)
    finally:
        handle.stop()


def test_sync_watch_is_not_recursive_by_default(sandbox, workdir):
    os.makedirs(f"{workdir}/nested")
    handle = sandbox.files.watch_dir(workdir)
    try:
        write(f"{workdir}/nested/hidden")
        write(f"{workdir}/marker")
        events = collect_events(handle, lambda ev: has(ev, "marker", FilesystemEventType.WRITE))
        assert not any("hidden" in e.name for e in events)
    finally:
        handle.stop()


def test_sync_watch_with_entries(sandbox, workdir):
    handle = sandbox.files.watch_dir(workdir, include_entry=True)
    try:
        write(f"{workdir}/e.txt", "abc")
        events = collect_events(handle, lambda ev: has(ev, "e.txt", FilesystemEventType.WRITE))
        write_event = [e for e in events if e.type == FilesystemEventType.WRITE][-1]
        assert write_event.entry is not None
        assert write_event.entry.path == f"{workdir}/e.txt"
        assert write_event.entry.type == FileType.FILE
        os.remove(f"{workdir}/e.txt")
        events = collect_events(handle, lambda ev: has(ev, "e.txt", FilesystemEventType.REMOVE))
        assert [e.entry for e in events if e.type == FilesystemEventType.REMOVE] == [None]
    finally:
        handle.stop()


def test_watch_errors(sandbox, workdir):
    with pytest.raises(FileNotFoundException):
        sandbox.files.watch_dir(f"{workdir}/missing")
    write(f"{workdir}/file")
    with pytest.raises(InvalidArgumentException, match="not a directory"):
        sandbox.files.watch_dir(f"{workdir}/file")


# -- watching: the async SDK (the WatchDir stream) -----------------------------------------


def test_async_watch_recursive(async_sandbox_factory, workdir, envd):
    async def main():
        sbx = await async_sandbox_factory()
        os.makedirs(f"{workdir}/nested")
        os.chmod(f"{workdir}/nested", 0o777)
        before = inotify_fds(envd.pid)
        seen = []
        got_it = asyncio.Event()

        def on_event(event):
            seen.append((event.name, event.type))
            if event.name == "nested/new/f.txt" and event.type == FilesystemEventType.WRITE:
                got_it.set()

        handle = await sbx.files.watch_dir(workdir, on_event, recursive=True)
        assert inotify_fds(envd.pid) == before + 1
        await sbx.files.make_dir(f"{workdir}/nested/new")
        for _ in range(100):
            if ("nested/new", FilesystemEventType.CREATE) in seen:
                break
            await asyncio.sleep(0.02)
        write(f"{workdir}/nested/new/f.txt")
        await asyncio.wait_for(got_it.wait(), 5)
        assert seen[0] == ("nested/new", FilesystemEventType.CREATE)
        assert ("nested/new/f.txt", FilesystemEventType.CREATE) in seen

        await handle.stop()
        # The server drops the watch (and its inotify instance) when the client goes away.
        for _ in range(250):
            if inotify_fds(envd.pid) == before:
                break
            await asyncio.sleep(0.02)
        assert inotify_fds(envd.pid) == before

    asyncio.run(main())


def test_async_watch_with_entry_and_errors(async_sandbox_factory, workdir):
    async def main():
        sbx = await async_sandbox_factory()
        got = asyncio.Queue()
        handle = await sbx.files.watch_dir(
            workdir, lambda event: got.put_nowait(event), include_entry=True
        )
        write(f"{workdir}/x.txt", "xyz")
        while True:
            event = await asyncio.wait_for(got.get(), 5)
            if event.type == FilesystemEventType.WRITE:
                break
        assert event.name == "x.txt"
        assert event.entry.name == "x.txt" and event.entry.size == 3
        await handle.stop()

        with pytest.raises(FileNotFoundException):
            await sbx.files.watch_dir(f"{workdir}/missing", lambda e: None)
        with pytest.raises(SandboxException):
            await sbx.files.watch_dir(f"{workdir}/x.txt", lambda e: None)

    asyncio.run(main())


def test_async_watch_ends_when_the_directory_is_deleted(async_sandbox_factory, workdir):
    async def main():
        sbx = await async_sandbox_factory()
        os.mkdir(f"{workdir}/doomed")
        ended = asyncio.get_running_loop().create_future()
        seen = []
        handle = await sbx.files.watch_dir(
            f"{workdir}/doomed",
            lambda event: seen.append((event.name, event.type)),
            on_exit=lambda error: ended.set_result(error),
        )
        os.rmdir(f"{workdir}/doomed")
        assert await asyncio.wait_for(ended, 5) is None
        assert (".", FilesystemEventType.REMOVE) in seen
        await handle.stop()

    asyncio.run(main())


# -- the wire: keepalives and stream framing -----------------------------------------------


def test_watch_stream_sends_start_then_keepalives(workdir, envd):
    body = envelope({"path": workdir})
    headers = {
        "Content-Type": "application/connect+json",
        "Keepalive-Ping-Interval": "1",
        "Authorization": "Basic " + base64.b64encode(b"root:").decode(),
    }
    before = inotify_fds(envd.pid)
    url = f"http://127.0.0.1:{ENVD_PORT}/filesystem.Filesystem/WatchDir"
    with httpx.stream("POST", url, content=body, headers=headers, timeout=10) as response:
        assert response.status_code == 200
        messages = read_envelopes(response)
        assert next(messages) == (0, {"start": {}})
        started = time.monotonic()
        assert next(messages) == (0, {"keepalive": {}})
        assert 0.5 < time.monotonic() - started < 3
        write(f"{workdir}/k")
        assert next(messages) == (
            0,
            {"filesystem": {"name": "k", "type": "EVENT_TYPE_CREATE"}},
        )
    assert wait_until(lambda: inotify_fds(envd.pid) == before)


def test_watch_stream_deadline(workdir):
    body = envelope({"path": workdir})
    headers = {"Content-Type": "application/connect+json", "Connect-Timeout-Ms": "500"}
    url = f"http://127.0.0.1:{ENVD_PORT}/filesystem.Filesystem/WatchDir"
    with httpx.stream("POST", url, content=body, headers=headers, timeout=10) as response:
        messages = list(read_envelopes(response))
    assert messages[0] == (0, {"start": {}})
    flags, end = messages[-1]
    assert flags == 2
    assert end["error"]["code"] == "deadline_exceeded"


def test_unknown_watcher_ids_are_not_found(workdir):
    url = f"http://127.0.0.1:{ENVD_PORT}/filesystem.Filesystem/GetWatcherEvents"
    response = httpx.post(url, json={"watcherId": "wnope"})
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    url = f"http://127.0.0.1:{ENVD_PORT}/filesystem.Filesystem/RemoveWatcher"
    assert httpx.post(url, json={"watcherId": "wnope"}).status_code == 404
