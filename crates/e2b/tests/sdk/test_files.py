"""Files in sandboxes of `firkin serve` through the real `e2b` SDK (envd's /files and the
filesystem RPCs, through the daemon's proxy)."""

import asyncio
import hashlib
import os

import pytest
from e2b import AsyncSandbox, FileNotFoundException, FileType


def test_write_and_read_text(sandbox):
    info = sandbox.files.write("/tmp/hello.txt", "hello, firkin\n")
    assert info.path == "/tmp/hello.txt"
    assert sandbox.files.read("/tmp/hello.txt") == "hello, firkin\n"
    assert sandbox.commands.run("cat /tmp/hello.txt").stdout == "hello, firkin\n"


def test_write_and_read_bytes(sandbox):
    data = bytes(range(256)) * 4
    sandbox.files.write("/tmp/blob.bin", data)
    read = sandbox.files.read("/tmp/blob.bin", format="bytes")
    assert bytes(read) == data


def test_relative_paths_are_in_the_home_directory(sandbox):
    sandbox.files.write("notes.txt", "at home")
    assert sandbox.commands.run("cat /home/user/notes.txt").stdout == "at home"
    assert sandbox.files.read("notes.txt") == "at home"


def test_list_exists_and_remove(sandbox):
    sandbox.files.make_dir("/tmp/dir/sub")
    sandbox.files.write("/tmp/dir/a.txt", "a")
    sandbox.files.write("/tmp/dir/b.txt", "bb")

    entries = {e.name: e for e in sandbox.files.list("/tmp/dir")}
    assert set(entries) == {"a.txt", "b.txt", "sub"}
    assert entries["a.txt"].type == FileType.FILE
    assert entries["b.txt"].size == 2
    assert entries["sub"].type == FileType.DIR
    assert entries["a.txt"].path == "/tmp/dir/a.txt"

    assert sandbox.files.exists("/tmp/dir/a.txt")
    assert sandbox.files.exists("/tmp/dir/sub")
    assert not sandbox.files.exists("/tmp/dir/nope")

    sandbox.files.remove("/tmp/dir/a.txt")
    assert not sandbox.files.exists("/tmp/dir/a.txt")
    with pytest.raises(FileNotFoundException):
        sandbox.files.read("/tmp/dir/a.txt")
    sandbox.files.remove("/tmp/dir")
    assert not sandbox.files.exists("/tmp/dir")


def test_written_files_belong_to_the_default_user(sandbox):
    sandbox.files.write("/tmp/owned.txt", "x")
    assert sandbox.commands.run("stat -c %U /tmp/owned.txt").stdout == "user\n"


def test_ten_mib_round_trip(sandbox):
    data = os.urandom(10 << 20)
    sandbox.files.write("/tmp/big.bin", data)
    digest = sandbox.commands.run("sha256sum /tmp/big.bin").stdout.split()[0]
    assert digest == hashlib.sha256(data).hexdigest()
    read = sandbox.files.read("/tmp/big.bin", format="bytes")
    assert len(read) == len(data)
    assert hashlib.sha256(read).digest() == hashlib.sha256(data).digest()


def test_sandboxes_do_not_share_files(make_sandbox):
    a, b = make_sandbox(), make_sandbox()
    a.files.write("/tmp/mine.txt", "a")
    assert not b.files.exists("/tmp/mine.txt")


def test_async_files(meta):
    async def main():
        sbx = await AsyncSandbox.create(metadata=meta, timeout=60)
        try:
            await sbx.files.write("/tmp/a.txt", "async text")
            assert await sbx.files.read("/tmp/a.txt") == "async text"
            await sbx.files.write("/tmp/b.bin", b"\x00\x01\xff")
            assert bytes(await sbx.files.read("/tmp/b.bin", format="bytes")) == b"\x00\x01\xff"
            names = {e.name for e in await sbx.files.list("/tmp")}
            assert {"a.txt", "b.bin"} <= names
            assert await sbx.files.exists("/tmp/a.txt")
            await sbx.files.remove("/tmp/a.txt")
            assert not await sbx.files.exists("/tmp/a.txt")
        finally:
            await sbx.kill()

    asyncio.run(main())
