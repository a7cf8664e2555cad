"""The smallest image the template tests use: Debian's static busybox (scripts/setup installs
`busybox-static`) with its applets as links, as an OCI image layout made here from nothing on
the internet. busybox has no bash, and the SDK runs every command as `/bin/bash -l -c`: the
image's `/bin/bash` is a two-line script that hands its arguments to busybox's `sh`."""

import gzip
import hashlib
import io
import pathlib
import tarfile

import oci

BUSYBOX = pathlib.Path("/bin/busybox")
APPLETS = [
    "sh", "cat", "echo", "env", "id", "whoami", "ls", "pwd", "mkdir", "rm", "sleep", "test",
    "stat", "hostname", "touch", "grep", "wc", "head", "chown", "adduser", "addgroup", "httpd",
    "wget", "cp", "tar",
]
BASH = b'#!/bin/sh\nexec /bin/sh "$@"\n'
IMAGE_ENV = "hello from the image"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name, data=None, mode=0o644, kind=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, link
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        for directory in ["bin", "etc", "root", "srv", "usr", "usr/share"]:
            add(directory, mode=0o755, kind=tarfile.DIRTYPE)
        add("bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
        for applet in APPLETS:
            add(f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
        add("bin/bash", BASH, mode=0o755)
        add("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
        add("etc/group", b"root:x:0:\nsudo:x:27:\nnogroup:x:65534:\n")
        add("etc/os-release", b"ID=firkin-busybox-test\n")
        add("usr/share/greeting.txt", b"a file of the image\n")
    return out.getvalue()


def write_layout(dest: pathlib.Path) -> None:
    """An OCI image layout holding one image, ref name `latest`, of one gzip layer."""
    tar = layer_tar()
    dest.mkdir(parents=True)
    layer = dest.parent / f"{dest.name}.layer.tar.gz"
    layer.write_bytes(gzip.compress(tar, mtime=0))
    oci.write_layout(
        dest,
        layer,
        sha256(tar),
        "application/vnd.oci.image.layer.v1.tar+gzip",
        ["PATH=/usr/local/bin:/usr/bin:/bin", f"GREETING={IMAGE_ENV}"],
        "latest",
        WorkingDir="/srv",
        User="nobody",
    )
