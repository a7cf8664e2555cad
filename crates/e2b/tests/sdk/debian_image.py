"""A real Debian userland as an OCI image layout, made by the tests from Debian's packages:
`mmdebstrap` (scripts/setup installs it) builds bookworm with python3, pip and node, one
uncompressed layer. It is cached in /var/cache/firkin-tests between runs (a fresh machine
builds it, in about a minute).

The image trusts what this host trusts (the host's CA bundle is copied in), so that a build
sandbox reaches PyPI through whatever TLS-inspecting egress the host sits behind, and pip may
install into the system Python (Debian's EXTERNALLY-MANAGED marker is removed), as in the
python images E2B users start from.
"""

import pathlib
import shutil
import subprocess

from oci import sha256_of, write_layout

CACHE = pathlib.Path("/var/cache/firkin-tests")
PACKAGES = "python3,python3-pip,nodejs,ca-certificates,tar"
VERSION = "bookworm-python-node-1"


def debian_layout() -> pathlib.Path:
    """The cached layout directory, made first when missing."""
    layout = CACHE / f"debian-{VERSION}"
    if (layout / "index.json").is_file():
        return layout
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = CACHE / f".debian-{VERSION}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    rootfs = CACHE / f".debian-{VERSION}.tar"
    subprocess.run(
        [
            "mmdebstrap", "--variant=minbase", f"--include={PACKAGES}", "--quiet",
            "--aptopt=Acquire::https::CaInfo \"/etc/ssl/certs/ca-certificates.crt\"",
            "--customize-hook=copy-in /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs",
            "--customize-hook=rm -f \"$1\"/usr/lib/python3*/EXTERNALLY-MANAGED",
            "bookworm", str(rootfs), "http://deb.debian.org/debian",
        ],
        check=True,
        timeout=900,
    )
    write_layout(
        partial / "layout",
        rootfs,
        sha256_of(rootfs),
        "application/vnd.oci.image.layer.v1.tar",
        ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
        "bookworm",
    )
    (partial / "layout").rename(layout)
    shutil.rmtree(partial)
    return layout
