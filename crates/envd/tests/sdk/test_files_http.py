"""envd's plain HTTP endpoints through the real SDK: `/files` (read, write, multipart,
octet-stream, gzip, metadata, users, signed URLs), and `/init`, `/envs`, `/metrics` directly.

The signed-URL and `/init` tests need an envd with an access token; they start their own
beside the session's (on FIRKIN_ENVD_TEST_PORT + 1 and + 2).
"""

import gzip
import hashlib
import io
import json
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from e2b import (
    AuthenticationException,
    FileNotFoundException,
    InvalidArgumentException,
    NotEnoughSpaceException,
    SandboxException,
)

from conftest import ENVD_PORT, REPO, envd_binary, wait_for_port

TOKEN_PORT = int(os.environ.get("FIRKIN_ENVD_TOKEN_TEST_PORT", ENVD_PORT + 1))
INIT_PORT = int(os.environ.get("FIRKIN_ENVD_INIT_TEST_PORT", ENVD_PORT + 2))
TOKEN = "test-token-" + uuid.uuid4().hex
MIB = 1024 * 1024


# --- helpers -------------------------------------------------------------------------------


def user_ids(name="user"):
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def http(method, url, body=None, headers=None, timeout=30):
    """(status, headers, body bytes) of a plain request, errors included."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def files_url(port, **query):
    return f"http://127.0.0.1:{port}/files?" + urllib.parse.urlencode(query)


def multipart(parts):
    """A multipart/form-data body from (field name, filename or None, bytes) parts."""
    boundary = uuid.uuid4().hex
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def chunks(total, chunk=MIB, seed=7):
    """`total` deterministic pseudo-random bytes in `chunk`-sized pieces."""
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        yield rng.randbytes(size)
        sent += size


def digest_of(iterable):
    h = hashlib.sha256()
    size = 0
    for piece in iterable:
        h.update(piece)
        size += len(piece)
    return h.hexdigest(), size


def file_digest(path):
    with open(path, "rb") as f:
        return digest_of(iter(lambda: f.read(MIB), b""))


class GeneratedReader(io.RawIOBase):
    """A binary file-like object producing `chunks(total)` without holding more than a chunk
    (so httpx streams it in a multipart body)."""

    def __init__(self, total):
        self._chunks = chunks(total)
        self._pending = b""

    def readable(self):
        return True

    def readinto(self, buffer):
        if not self._pending:
            self._pending = next(self._chunks, b"")
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def start_envd(port, *args, token=None):
    """envd on `port`; `token` goes in through a pipe (--access-token-fd), as the driver's."""
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            pytest.fail(f"port {port} is taken: stop whatever listens there")
    log = open(REPO / "target" / f"envd-sdk-tests-{port}.log", "wb")
    pass_fds = ()
    if token is not None:
        read_end, write_end = os.pipe()
        os.write(write_end, token.encode())
        os.close(write_end)
        args = (*args, "--access-token-fd", str(read_end))
        pass_fds = (read_end,)
    try:
        process = subprocess.Popen(
            [str(envd_binary()), "--listen", f"127.0.0.1:{port}", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FIRKIN_ENVD_LOG": "info"},
            pass_fds=pass_fds,
        )
    finally:
        for fd in pass_fds:
            os.close(fd)
    wait_for_port(port)
    return process, log


def stop_envd(process, log):
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


# --- reading and writing ------------------------------------------------------------------


def test_write_str_then_read_text(sandbox, workdir):
    path = f"{workdir}/hello.txt"
    info = sandbox.files.write(path, "héllo\nwörld")
    assert (info.path, info.name, info.type.value) == (path, "hello.txt", "file")
    assert sandbox.files.read(path) == "héllo\nwörld"
    # Written as the default user, and owned by it.
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == user_ids()


def test_write_bytes_then_read_bytes(sandbox, workdir):
    data = bytes(range(256)) * 1000
    sandbox.files.write(f"{workdir}/bin", data)
    got = sandbox.files.read(f"{workdir}/bin", format="bytes")
    assert isinstance(got, bytearray) and got == data


def test_empty_file(sandbox, workdir):
    sandbox.files.write(f"{workdir}/empty", b"")
    assert os.path.getsize(f"{workdir}/empty") == 0
    assert sandbox.files.read(f"{workdir}/empty", format="bytes") == b""


def test_file_like_and_iterables_stream_as_octet_stream(sandbox, workdir):
    sandbox.files.write(f"{workdir}/from-bytesio", io.BytesIO(b"binary file-like"))
    sandbox.files.write(f"{workdir}/from-stringio", io.StringIO("text file-like ü"))
    # A generator has no length: httpx sends it chunked.
    sandbox.files.write(f"{workdir}/from-generator", (b"part%d;" % i for i in range(1000)))
    with open(f"{workdir}/from-bytesio", "rb") as f:
        assert f.read() == b"binary file-like"
    with open(f"{workdir}/from-stringio", encoding="utf-8") as f:
        assert f.read() == "text file-like ü"
    with open(f"{workdir}/from-generator", "rb") as f:
        assert f.read() == b"".join(b"part%d;" % i for i in range(1000))


def test_multipart_streams_a_binary_file_object(sandbox, workdir):
    total = 3 * MIB + 17
    sandbox.files.write(
        f"{workdir}/multi.bin", GeneratedReader(total), use_octet_stream=False
    )
    assert file_digest(f"{workdir}/multi.bin") == digest_of(chunks(total))


def test_write_files_many_in_one_multipart_request(sandbox, workdir):
    entries = [
        {"path": f"{workdir}/many/{i % 4}/file-{i}.txt", "data": f"content {i}"}
        for i in range(25)
    ]
    entries.append({"path": f"{workdir}/many/raw.bin", "data": b"\x00\xff"})
    infos = sandbox.files.write_files(entries)
    assert [info.path for info in infos] == [entry["path"] for entry in entries]
    assert all(info.type.value == "file" for info in infos)
    for entry in entries:
        data = entry["data"]
        expected = data.encode() if isinstance(data, str) else data
        with open(entry["path"], "rb") as f:
            assert f.read() == expected
    # New parent directories belong to the user too.
    assert os.stat(f"{workdir}/many/3").st_uid == user_ids()[0]


def test_write_files_refuses_the_same_path_twice(sandbox, workdir):
    with pytest.raises(InvalidArgumentException, match="same path"):
        sandbox.files.write_files(
            [{"path": f"{workdir}/dup", "data": "a"}, {"path": f"{workdir}/dup", "data": "b"}]
        )


def test_overwrite_and_create_parents(sandbox, workdir):
    path = f"{workdir}/a/b/c/d.txt"
    sandbox.files.write(path, "first, longer content")
    sandbox.files.write(path, "second")
    assert sandbox.files.read(path) == "second"


def test_read_stream(sandbox, workdir):
    data = os.urandom(2 * MIB + 3)
    with open(f"{workdir}/s.bin", "wb") as f:
        f.write(data)
    with sandbox.files.read(f"{workdir}/s.bin", format="stream") as stream:
        got = b"".join(stream)
    assert got == data


def test_relative_paths_are_in_the_users_home(sandbox):
    name = f"envd-http-test-{uuid.uuid4().hex[:8]}.txt"
    home_user = pwd.getpwnam("user").pw_dir
    try:
        info = sandbox.files.write(name, "at home")
        assert info.path == f"{home_user}/{name}"
        assert sandbox.files.read(f"~/{name}") == "at home"
        info = sandbox.files.write(name, "root's home", user="root")
        assert info.path == f"/root/{name}"
        assert sandbox.files.read(name, user="root") == "root's home"
    finally:
        for path in (f"{home_user}/{name}", f"/root/{name}"):
            if os.path.exists(path):
                os.remove(path)


def test_100_mib_round_trip(sandbox, workdir):
    """100 MiB up (streamed octet-stream, chunked) and down (streamed), compared by sha256;
    neither side holds more than a chunk."""
    total = 100 * MIB
    expected = digest_of(chunks(total))
    path = f"{workdir}/big.bin"

    started = time.monotonic()
    sandbox.files.write(path, chunks(total))
    upload = time.monotonic() - started
    assert file_digest(path) == expected

    started = time.monotonic()
    with sandbox.files.read(path, format="stream") as stream:
        got = digest_of(stream)
    download = time.monotonic() - started
    assert got == expected
    print(
        f"\n100 MiB: upload {total / MIB / upload:.0f} MiB/s, "
        f"download {total / MIB / download:.0f} MiB/s"
    )


def test_100_mib_multipart_upload(sandbox, workdir):
    total = 100 * MIB
    path = f"{workdir}/big-multipart.bin"
    started = time.monotonic()
    sandbox.files.write(path, GeneratedReader(total), use_octet_stream=False)
    elapsed = time.monotonic() - started
    assert file_digest(path) == digest_of(chunks(total))
    print(f"\n100 MiB multipart upload: {total / MIB / elapsed:.0f} MiB/s")


# --- gzip ----------------------------------------------------------------------------------


def test_gzip_read(sandbox, workdir):
    data = b"compressible " * 100_000
    with open(f"{workdir}/z.txt", "wb") as f:
        f.write(data)
    assert sandbox.files.read(f"{workdir}/z.txt", format="bytes", gzip=True) == data
    with sandbox.files.read(f"{workdir}/z.txt", format="stream", gzip=True) as stream:
        assert b"".join(stream) == data

    # On the wire: gzip only when asked for, with the headers the contract names.
    url = files_url(ENVD_PORT, path=f"{workdir}/z.txt")
    status, headers, body = http("GET", url, headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert len(body) < len(data) // 10
    assert gzip.decompress(body) == data
    status, headers, body = http("GET", url)
    assert status == 200
    assert headers.get("Content-Encoding") is None
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"] == 'inline; filename="z.txt"'
    assert int(headers["Content-Length"]) == len(data)
    assert body == data


def test_gzip_write(sandbox, workdir):
    sandbox.files.write(f"{workdir}/gz-bytes", b"gzipped bytes " * 1000, gzip=True)
    with open(f"{workdir}/gz-bytes", "rb") as f:
        assert f.read() == b"gzipped bytes " * 1000
    total = 5 * MIB
    sandbox.files.write(f"{workdir}/gz-stream", chunks(total), gzip=True)
    assert file_digest(f"{workdir}/gz-stream") == digest_of(chunks(total))


def test_corrupt_gzip_body_is_400(sandbox, workdir):
    url = files_url(ENVD_PORT, path=f"{workdir}/bad-gz")
    status, _, body = http(
        "POST",
        url,
        b"this is not gzip",
        {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"},
    )
    assert status == 400
    assert json.loads(body)["code"] == 400
    assert not os.path.exists(f"{workdir}/bad-gz")


# --- metadata ------------------------------------------------------------------------------


def test_metadata_is_stored_as_xattrs(sandbox, workdir):
    path = f"{workdir}/meta.txt"
    info = sandbox.files.write(path, "with metadata", metadata={"Owner": "ada", "purpose": "test"})
    # Keys come back lowercase (they travel as header names).
    assert info.metadata == {"owner": "ada", "purpose": "test"}
    assert os.getxattr(path, "user.e2b.owner") == b"ada"
    assert os.getxattr(path, "user.e2b.purpose") == b"test"
    infos = sandbox.files.write_files(
        [{"path": f"{workdir}/m1", "data": "1"}, {"path": f"{workdir}/m2", "data": b"2"}],
        metadata={"batch": "7"},
    )
    assert [i.metadata for i in infos] == [{"batch": "7"}, {"batch": "7"}]
    assert os.getxattr(f"{workdir}/m2", "user.e2b.batch") == b"7"


def test_metadata_in_get_info(sandbox, workdir):
    path = f"{workdir}/meta-info.txt"
    sandbox.files.write(path, "x", metadata={"owner": "ada"})
    assert sandbox.files.get_info(path).metadata == {"owner": "ada"}


# --- errors --------------------------------------------------------------------------------


def test_missing_file_is_file_not_found(sandbox, workdir):
    with pytest.raises(FileNotFoundException, match="does not exist"):
        sandbox.files.read(f"{workdir}/nope.txt")
    status, headers, body = http("GET", files_url(ENVD_PORT, path=f"{workdir}/nope.txt"))
    assert status == 404
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {
        "code": 404,
        "message": f"path '{workdir}/nope.txt' does not exist",
    }


def test_reading_a_directory_is_400(sandbox, workdir):
    with pytest.raises(InvalidArgumentException, match="is a directory"):
        sandbox.files.read(workdir)


def test_writing_onto_a_directory_or_below_a_file_is_400(sandbox, workdir):
    os.makedirs(f"{workdir}/dir")
    with pytest.raises(InvalidArgumentException, match="directory"):
        sandbox.files.write(f"{workdir}/dir", "x")
    with pytest.raises(InvalidArgumentException, match="directory"):
        sandbox.files.write(f"{workdir}/dir", io.BytesIO(b"x"))
    sandbox.files.write(f"{workdir}/plain", "x")
    with pytest.raises(InvalidArgumentException, match="is a file"):
        sandbox.files.write(f"{workdir}/plain/below", "x")


def test_raw_upload_needs_a_path_and_a_known_content_type(sandbox):
    url = f"http://127.0.0.1:{ENVD_PORT}/files"
    status, _, body = http("POST", url, b"x", {"Content-Type": "application/octet-stream"})
    assert (status, json.loads(body)["code"]) == (400, 400)
    status, _, body = http("POST", url + "?path=/tmp/x", b"x", {"Content-Type": "text/plain"})
    assert status == 400 and "content type" in json.loads(body)["message"]
    status, _, body = http(
        "POST", url, b"--x\r\nbroken", {"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert status == 400 and json.loads(body)["code"] == 400
    status, _, body = http("PUT", url, b"x")
    assert status == 405 and json.loads(body)["code"] == 405


def test_multipart_rules(sandbox, workdir):
    """Parts not named `file` are skipped; without `path` each filename is its destination;
    with `path`, it names the (single) file."""
    body, content_type = multipart(
        [
            ("comment", None, b"ignored"),
            ("file", f"{workdir}/mp/one.txt", b"one"),
            ("file", f"{workdir}/mp/two.txt", b"two"),
        ]
    )
    url = f"http://127.0.0.1:{ENVD_PORT}/files"
    status, _, answer = http("POST", url, body, {"Content-Type": content_type})
    assert status == 200, answer
    assert json.loads(answer) == [
        {"path": f"{workdir}/mp/one.txt", "name": "one.txt", "type": "file"},
        {"path": f"{workdir}/mp/two.txt", "name": "two.txt", "type": "file"},
    ]
    body, content_type = multipart([("file", "whatever.txt", b"renamed")])
    status, _, answer = http(
        "POST",
        files_url(ENVD_PORT, path=f"{workdir}/mp/chosen.txt"),
        body,
        {"Content-Type": content_type},
    )
    assert status == 200, answer
    with open(f"{workdir}/mp/chosen.txt", "rb") as f:
        assert f.read() == b"renamed"
    body, content_type = multipart([("file", None, b"no name")])
    status, _, answer = http("POST", url, body, {"Content-Type": content_type})
    assert status == 400, answer


def test_disk_full_is_507_and_leaves_no_partial_file(sandbox):
    mount = tempfile.mkdtemp(prefix="envd-full-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=1777", "tmpfs", mount])
    if mounted.returncode != 0:
        os.rmdir(mount)
        pytest.skip("cannot mount a small tmpfs here")
    try:
        with pytest.raises(NotEnoughSpaceException):
            sandbox.files.write(f"{mount}/big-stream", chunks(4 * MIB))
        assert not os.path.exists(f"{mount}/big-stream")
        with pytest.raises(NotEnoughSpaceException):
            sandbox.files.write(f"{mount}/big-multipart", b"x" * (4 * MIB))
        assert not os.path.exists(f"{mount}/big-multipart")
        # The space is back: a small file still fits.
        sandbox.files.write(f"{mount}/small", "fits")
        assert sandbox.files.read(f"{mount}/small") == "fits"
    finally:
        subprocess.run(["umount", mount], check=False)
        os.rmdir(mount)


# --- users ---------------------------------------------------------------------------------


def test_user_switching_and_ownership(sandbox, workdir):
    sandbox.files.write(f"{workdir}/by-user", "u")
    sandbox.files.write(f"{workdir}/by-root", "r", user="root")
    assert os.stat(f"{workdir}/by-user").st_uid == user_ids()[0]
    assert os.stat(f"{workdir}/by-root").st_uid == 0
    # Root may overwrite the user's file, which then is root's (as E2B's envd does).
    sandbox.files.write(f"{workdir}/by-user", "now root's", user="root")
    assert os.stat(f"{workdir}/by-user").st_uid == 0
    assert sandbox.files.read(f"{workdir}/by-user", user="user") == "now root's"


def test_the_users_permissions_are_honoured(sandbox):
    secret = f"/root/envd-http-test-{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(SandboxException, match="403.*permission denied"):
            sandbox.files.write(f"{secret}/x.txt", "no")
        assert not os.path.exists(secret)
        with pytest.raises(SandboxException, match="403.*permission denied"):
            sandbox.files.write("/etc/envd-http-test-forbidden", io.BytesIO(b"no"))
        assert not os.path.exists("/etc/envd-http-test-forbidden")
        sandbox.files.write(f"{secret}/x.txt", "root may", user="root")
        with pytest.raises(SandboxException, match="403.*permission denied"):
            sandbox.files.read(f"{secret}/x.txt")
        assert sandbox.files.read(f"{secret}/x.txt", user="root") == "root may"
    finally:
        shutil.rmtree(secret, ignore_errors=True)


def test_unknown_user_is_401(sandbox, workdir):
    with pytest.raises(AuthenticationException):
        sandbox.files.write(f"{workdir}/x", "x", user="no-such-user")
    with pytest.raises(AuthenticationException):
        sandbox.files.read(f"{workdir}/x", user="no-such-user")


# --- access token and signed URLs ------------------------------------------------------------


@pytest.fixture(scope="module")
def secured_envd(envd):
    process, log = start_envd(TOKEN_PORT, token=TOKEN)
    yield process
    stop_envd(process, log)


@pytest.fixture
def secured(secured_envd):
    """An SDK sandbox for the envd with a token (what a create response with
    `envdAccessToken` gives)."""
    from e2b import Sandbox
    from e2b.connection_config import ConnectionConfig
    from packaging.version import Version

    config = ConnectionConfig(
        sandbox_url=f"http://127.0.0.1:{TOKEN_PORT}",
        extra_sandbox_headers={
            "X-Access-Token": TOKEN,
            "E2b-Sandbox-Id": "debug_sandbox_id",
            "E2b-Sandbox-Port": "49983",
        },
    )
    return Sandbox(
        sandbox_id="debug_sandbox_id",
        sandbox_domain=None,
        envd_version=Version("99.99.99"),
        envd_access_token=TOKEN,
        connection_config=config,
    )


def test_secured_envd_works_with_the_token(secured, workdir):
    secured.files.write(f"{workdir}/t.txt", "with token")
    assert secured.files.read(f"{workdir}/t.txt") == "with token"


def test_wrong_or_missing_token_is_401(secured_envd, workdir):
    with open(f"{workdir}/f", "w") as f:
        f.write("x")
    url = files_url(TOKEN_PORT, path=f"{workdir}/f")
    status, _, body = http("GET", url)
    assert status == 401
    assert json.loads(body) == {"code": 401, "message": "missing signature query parameter"}
    status, _, body = http("GET", url, headers={"X-Access-Token": "wrong"})
    assert status == 401 and json.loads(body)["code"] == 401
    status, _, body = http("POST", url, b"x", {"Content-Type": "application/octet-stream"})
    assert status == 401
    status, _, body = http("GET", f"http://127.0.0.1:{TOKEN_PORT}/envs")
    assert status == 401 and json.loads(body)["code"] == 401
    status, _, _ = http("GET", url, headers={"X-Access-Token": TOKEN})
    assert status == 200
    # /health needs nothing.
    assert http("GET", f"http://127.0.0.1:{TOKEN_PORT}/health")[0] == 204


def test_a_refused_large_upload_still_gets_its_answer(secured_envd, workdir):
    """envd reads the rest of a refused body, so a client still sending it sees the 401
    instead of a reset connection."""
    import httpx

    response = httpx.post(
        files_url(TOKEN_PORT, path=f"{workdir}/refused.bin"),
        content=chunks(48 * MIB),
        headers={"Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert response.status_code == 401
    assert response.json()["code"] == 401
    assert not os.path.exists(f"{workdir}/refused.bin")


def test_sdk_with_a_wrong_token_gets_authentication_errors(secured_envd, workdir):
    from e2b import Sandbox
    from e2b.connection_config import ConnectionConfig
    from packaging.version import Version

    config = ConnectionConfig(
        sandbox_url=f"http://127.0.0.1:{TOKEN_PORT}",
        extra_sandbox_headers={"X-Access-Token": "wrong"},
    )
    wrong = Sandbox(
        sandbox_id="debug_sandbox_id",
        sandbox_domain=None,
        envd_version=Version("99.99.99"),
        envd_access_token="wrong",
        connection_config=config,
    )
    with pytest.raises(AuthenticationException):
        wrong.files.write(f"{workdir}/x", "x")
    with pytest.raises(AuthenticationException):
        wrong.files.read(f"{workdir}/x")


def test_download_url_without_the_token_header(secured, workdir):
    secured.files.write(f"{workdir}/signed.txt", "signed content")
    url = secured.download_url(f"{workdir}/signed.txt")
    assert "signature=v1_" in url
    status, headers, body = http("GET", url)
    assert (status, body) == (200, b"signed content")
    # With an expiry in the future; and as another user.
    status, _, body = http("GET", secured.download_url(f"{workdir}/signed.txt", use_signature_expiration=60))
    assert (status, body) == (200, b"signed content")
    status, _, body = http("GET", secured.download_url(f"{workdir}/signed.txt", user="root"))
    assert (status, body) == (200, b"signed content")


def test_upload_url_without_the_token_header(secured, workdir):
    url = secured.upload_url(f"{workdir}/up/multipart.txt")
    body, content_type = multipart([("file", "local-name.txt", b"uploaded by URL")])
    status, _, answer = http("POST", url, body, {"Content-Type": content_type})
    assert status == 200, answer
    assert json.loads(answer)[0]["path"] == f"{workdir}/up/multipart.txt"
    with open(f"{workdir}/up/multipart.txt", "rb") as f:
        assert f.read() == b"uploaded by URL"
    assert os.stat(f"{workdir}/up/multipart.txt").st_uid == user_ids()[0]

    url = secured.upload_url(f"{workdir}/up/raw.bin", user="root", use_signature_expiration=60)
    status, _, answer = http("POST", url, b"raw", {"Content-Type": "application/octet-stream"})
    assert status == 200, answer
    assert os.stat(f"{workdir}/up/raw.bin").st_uid == 0


def test_signatures_are_bound_to_path_operation_user_and_time(secured, workdir):
    secured.files.write(f"{workdir}/b.txt", "b")
    read_url = secured.download_url(f"{workdir}/b.txt")
    # A read signature does not allow a write.
    status, _, body = http("POST", read_url, b"x", {"Content-Type": "application/octet-stream"})
    assert status == 401 and json.loads(body) == {"code": 401, "message": "invalid signature"}
    # Nor another path, nor another user.
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(read_url).query))
    assert http("GET", files_url(TOKEN_PORT, **{**query, "path": f"{workdir}/other"}))[0] == 401
    assert http("GET", files_url(TOKEN_PORT, **{**query, "username": "root"}))[0] == 401
    # A tampered signature.
    assert http("GET", files_url(TOKEN_PORT, **{**query, "signature": "v1_AAAA"}))[0] == 401
    # A signed URL whose expiry has passed (signed by the SDK with a negative lifetime).
    expired = secured.download_url(f"{workdir}/b.txt", use_signature_expiration=-10)
    status, _, body = http("GET", expired)
    assert status == 401
    assert json.loads(body) == {"code": 401, "message": "signature is already expired"}
    # Moving the expiry forward breaks the signature.
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(expired).query))
    query["signature_expiration"] = str(int(time.time()) + 3600)
    status, _, body = http("GET", files_url(TOKEN_PORT, **query))
    assert status == 401 and json.loads(body)["message"] == "invalid signature"


# --- /init, /envs, /metrics ------------------------------------------------------------------


@pytest.fixture
def fresh_envd(envd):
    """An envd of its own, started without a token, for tests that change its settings."""
    process, log = start_envd(INIT_PORT)
    yield f"http://127.0.0.1:{INIT_PORT}"
    stop_envd(process, log)


def post_init(base, payload, token=None):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Access-Token"] = token
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return http("POST", f"{base}/init", body, headers)


def test_init_sets_the_token_once_then_requires_it(fresh_envd):
    status, headers, body = post_init(fresh_envd, {"accessToken": "T1", "envVars": {"A": "1"}})
    assert (status, body) == (204, b"")
    # Now everything needs the token.
    assert http("GET", f"{fresh_envd}/envs")[0] == 401
    status, _, body = http("GET", f"{fresh_envd}/envs", headers={"X-Access-Token": "T1"})
    assert status == 200 and json.loads(body) == {"A": "1"}
    # Taking the sandbox over with another token is refused...
    status, _, body = post_init(fresh_envd, {"accessToken": "evil"})
    assert status == 401 and json.loads(body)["code"] == 401
    status, _, _ = post_init(fresh_envd, {"accessToken": "evil"}, token="wrong")
    assert status == 401
    status, _, _ = http("GET", f"{fresh_envd}/envs", headers={"X-Access-Token": "evil"})
    assert status == 401
    # ...but the holder of the current token may change it.
    assert post_init(fresh_envd, {"accessToken": "T2"}, token="T1")[0] == 204
    assert http("GET", f"{fresh_envd}/envs", headers={"X-Access-Token": "T1"})[0] == 401
    # The orchestrator's way: the current token in the body, with more env vars.
    assert post_init(fresh_envd, {"accessToken": "T2", "envVars": {"B": "2"}})[0] == 204
    status, _, body = http("GET", f"{fresh_envd}/envs", headers={"X-Access-Token": "T2"})
    assert json.loads(body) == {"A": "1", "B": "2"}
    # The other token-guarded endpoints take it too.
    status, _, body = http(
        "GET",
        f"{fresh_envd}/metrics",
        headers={"X-Access-Token": "T2"},
    )
    assert status == 200


def test_init_rejects_bad_json_with_a_json_error(fresh_envd):
    for payload in (b"{not json", b'{"envVars": {"A": 1}}', b"[1, 2]"):
        status, headers, body = post_init(fresh_envd, payload)
        assert status == 400, payload
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body)["code"] == 400
    # An empty body, or unknown keys, are fine.
    assert post_init(fresh_envd, b"")[0] == 204
    assert post_init(fresh_envd, {"hyperloopIP": "10.0.0.1", "timestamp": "2025-01-01T00:00:00Z", "x": 1})[0] == 204
    # A body over the limit.
    status, _, body = post_init(fresh_envd, b'{"envVars": {"A": "' + b"x" * (2 * MIB) + b'"}}')
    assert status == 413 and json.loads(body)["code"] == 413


def test_init_sets_default_user_and_workdir(fresh_envd, workdir):
    assert post_init(fresh_envd, {"defaultUser": "root", "defaultWorkdir": workdir})[0] == 204
    status, _, body = http(
        "POST",
        files_url(INIT_PORT, path=f"{workdir}/as-default.txt"),
        b"x",
        {"Content-Type": "application/octet-stream"},
    )
    assert status == 200, body
    assert os.stat(f"{workdir}/as-default.txt").st_uid == 0


def test_metrics(fresh_envd):
    status, headers, body = http("GET", f"{fresh_envd}/metrics")
    assert status == 200
    metrics = json.loads(body)
    for key in ("ts", "cpu_count", "cpu_used_pct", "mem_total", "mem_used", "disk_used", "disk_total"):
        assert key in metrics, key
    assert metrics["cpu_count"] == os.cpu_count()
    assert 0 < metrics["mem_used"] < metrics["mem_total"]
    usage = shutil.disk_usage("/")
    assert metrics["disk_total"] == usage.total
    assert abs(metrics["ts"] - time.time()) < 5
    assert 0 <= metrics["cpu_used_pct"] <= 100
