"""A real Debian userland as an OCI image layout, made by the tests from Debian's packages:
`mmdebstrap` (scripts/setup installs it) builds bookworm with python3, pip and node, one
uncompressed layer. It is cached in /var/cache/firkin-tests between runs (a fresh machine
builds it, in about a minute).

The image trusts what this host trusts (the host's CA bundle is copied in), so that a build
sandbox reaches PyPI through whatever TLS-inspecting egress the host sits behind, and pip may
install into the system Python (Debian's EXTERNALLY-MANAGED marker is removed), as in the
python images E2B users start from.
"""

import hashlib
import json
import pathlib
import shutil
import subprocess

CACHE = pathlib.Path("/var/cache/firkin-tests")
PACKAGES = "python3,python3-pip,nodejs,ca-certificates,tar"
VERSION = "bookworm-python-node-1"


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def debian_layout() -> pathlib.Path:
    """The cached layout directory, made first when missing."""
    layout = CACHE / f"debian-{VERSION}"
    if (layout / "index.json").is_file():
        return layout
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = CACHE / f".debian-{VERSION}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    blobs = partial / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    rootfs = partial / "rootfs.tar"
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
    layer_digest = sha256_of(rootfs)
    layer_size = rootfs.stat().st_size
    rootfs.rename(blobs / layer_digest.removeprefix("sha256:"))

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
        return digest

    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": blob(config),
            "size": len(config),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }],
    }).encode()
    (partial / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (partial / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": blob(manifest),
            "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": "bookworm"},
        }],
    }))
    partial.rename(layout)
    return layout
