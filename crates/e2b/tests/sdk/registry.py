"""A local OCI registry for the SDK tests: Debian's `docker-registry` (scripts/setup installs it)
on a free loopback port with its own storage, and a push of an OCI image layout into it over
the distribution API (plain HTTP, as only loopback is involved)."""

import json
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request


class Registry:
    def __init__(self, process, address: str, storage: pathlib.Path):
        self.process, self.address, self.storage = process, address, storage

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.storage, ignore_errors=True)

    def push_layout(self, layout: pathlib.Path, repository: str, tag: str) -> str:
        """Push the only image of the OCI layout `layout` as `repository:tag`; its reference."""
        index = json.loads((layout / "index.json").read_text())
        descriptor = index["manifests"][0]
        manifest_bytes = blob_path(layout, descriptor["digest"]).read_bytes()
        manifest = json.loads(manifest_bytes)
        for blob in [manifest["config"], *manifest["layers"]]:
            self.push_blob(repository, blob["digest"], blob_path(layout, blob["digest"]))
        request = urllib.request.Request(
            f"http://{self.address}/v2/{repository}/manifests/{tag}",
            data=manifest_bytes,
            method="PUT",
            headers={"Content-Type": descriptor["mediaType"]},
        )
        urllib.request.urlopen(request, timeout=60).close()
        return f"{self.address}/{repository}:{tag}"

    def push_blob(self, repository: str, digest: str, path: pathlib.Path) -> None:
        base = f"http://{self.address}/v2/{repository}/blobs"
        try:
            urllib.request.urlopen(urllib.request.Request(f"{base}/{digest}", method="HEAD"), timeout=30).close()
            return
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise
        started = urllib.request.urlopen(
            urllib.request.Request(f"{base}/uploads/", data=b"", method="POST"), timeout=30
        )
        location = started.headers["Location"]
        started.close()
        if location.startswith("/"):
            location = f"http://{self.address}{location}"
        separator = "&" if "?" in location else "?"
        with path.open("rb") as body:
            request = urllib.request.Request(
                f"{location}{separator}digest={digest}",
                data=body,
                method="PUT",
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(path.stat().st_size),
                },
            )
            urllib.request.urlopen(request, timeout=600).close()


def blob_path(layout: pathlib.Path, digest: str) -> pathlib.Path:
    algorithm, hex_digest = digest.split(":", 1)
    return layout / "blobs" / algorithm / hex_digest


def start_registry() -> Registry:
    """A registry on 127.0.0.1, answering within 20 s."""
    storage = pathlib.Path(tempfile.mkdtemp(prefix="firkin-sdk-registry-"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    config = storage / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {storage / 'data'}\nhttp:\n  addr: {address}\n"
    )
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    registry = Registry(process, address, storage)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://{address}/v2/", timeout=2).close()
            return registry
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline or process.poll() is not None:
                registry.stop()
                raise RuntimeError(f"docker-registry did not answer on {address} within 20 s")
            time.sleep(0.1)
