"""OCI image layouts the template tests make: one layer, one image, a ref name."""

import hashlib
import json
import pathlib


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def write_layout(
    dest: pathlib.Path,
    layer: pathlib.Path,
    diff_id: str,
    media_type: str,
    env: list[str],
    ref_name: str,
    **config: object,
) -> None:
    """An OCI image layout at `dest` whose only image, `ref_name`, has the one layer `layer`
    (moved into the layout; `diff_id` is the digest of its uncompressed tar), the environment
    `env` and any other image `config` keys (WorkingDir, User, ...)."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layer_digest, layer_size = sha256_of(layer), layer.stat().st_size
    layer.rename(blobs / layer_digest.removeprefix("sha256:"))

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
        return digest

    image_config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": env, **config},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": blob(image_config),
            "size": len(image_config),
        },
        "layers": [{"mediaType": media_type, "digest": layer_digest, "size": layer_size}],
    }).encode()
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dest / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": blob(manifest),
            "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": ref_name},
        }],
    }))
