"""Benchmark: pull and unpack of a real image from a registry on loopback, `firkin template
pull` side by side with `skopeo copy` + `umoci unpack` of the same image, interleaved run by
run, each into a fresh directory.

The image is the SDK tests' Debian bookworm with python3, pip and node (debian_image.py,
made with mmdebstrap and cached in /var/cache/firkin-tests), pushed once as one gzip layer
(as registries serve most images) to Debian's `docker-registry` on a free loopback port.

  firkin            firkin template pull (download, digests checked, unpacked with ownership
                    shifted into the sandboxes' range, synced, renamed into the store, plus
                    the system layer and the catalog's build record)
  skopeo + umoci    skopeo copy docker://... oci:<dir> (download, digests checked), then
                    umoci unpack (unpack to a bundle's rootfs)

Run (as root, after a release build; skopeo and umoci are benchmark-only tools):
  apt-get install skopeo umoci
  cargo build --release -p firkin
  FIRKIN_BENCH_SAMPLES=10 target/sdk-venv/bin/python crates/image/benches/pull_compare.py

MB/s is the layer's compressed size over the time (and the unpacked tar's size, in brackets).
"""

import gzip
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "crates/e2b/tests/sdk"))

import oci  # noqa: E402
from debian_image import debian_layout  # noqa: E402
from registry import start_registry  # noqa: E402

SAMPLES = int(os.environ.get("FIRKIN_BENCH_SAMPLES", "10"))


def gzip_layout(source: pathlib.Path, dest: pathlib.Path) -> tuple[int, int]:
    """The Debian layout again with its layer gzip'd; (compressed, uncompressed) sizes."""
    [tar] = [p for p in (source / "blobs/sha256").iterdir() if p.stat().st_size > 1 << 20]
    packed = dest.parent / "layer.tar.gz"
    with tar.open("rb") as raw, packed.open("wb") as file, gzip.GzipFile(
        fileobj=file, mode="wb", compresslevel=6, mtime=0
    ) as out:
        shutil.copyfileobj(raw, out, 1 << 20)
    sizes = (packed.stat().st_size, tar.stat().st_size)
    oci.write_layout(
        dest, packed, "sha256:" + tar.name, "application/vnd.oci.image.layer.v1.tar+gzip",
        ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "bookworm",
    )
    return sizes


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main():
    if os.geteuid() != 0:
        sys.exit("needs root")
    for tool in ("skopeo", "umoci"):
        if shutil.which(tool) is None:
            sys.exit(f"no {tool}: apt-get install skopeo umoci (benchmark only)")
    firkin = REPO / "target/release/firkin"
    if not firkin.is_file():
        sys.exit(f"{firkin} missing: cargo build --release -p firkin")
    work = pathlib.Path(tempfile.mkdtemp(prefix="firkin-pull-bench-"))
    registry = start_registry()
    try:
        compressed, uncompressed = gzip_layout(debian_layout(), work / "layout")
        reference = registry.push_layout(work / "layout", "bench/debian", "gz")
        rows = {"firkin template pull": [], "skopeo copy": [], "umoci unpack": [],
                "skopeo copy + umoci unpack": []}
        for i in range(SAMPLES):
            state = work / f"state-{i}"
            rows["firkin template pull"].append(timed([
                str(firkin), "template", "--state-dir", str(state), "pull", reference,
                "--name", "debian", "--insecure-registry", registry.address,
            ]))
            oci_dir, bundle = work / f"oci-{i}", work / f"bundle-{i}"
            copy = timed(["skopeo", "copy", "--src-tls-verify=false", f"docker://{reference}",
                          f"oci:{oci_dir}:debian"])
            unpack = timed(["umoci", "unpack", "--image", f"{oci_dir}:debian", str(bundle)])
            rows["skopeo copy"].append(copy)
            rows["umoci unpack"].append(unpack)
            rows["skopeo copy + umoci unpack"].append(copy + unpack)
            for path in (state, oci_dir, bundle):
                shutil.rmtree(path, ignore_errors=True)
        mb = 1 << 20
        print(f"image: one gzip layer, {compressed / mb:.1f} MiB ({uncompressed / mb:.1f} MiB unpacked); n = {SAMPLES}")
        print("| operation                       |  n | median s | min s | max s | MB/s (unpacked) |")
        print("|---------------------------------|---:|---------:|------:|------:|----------------:|")
        for name, values in rows.items():
            median = statistics.median(values)
            print(f"| {name:<31} | {len(values):>2} | {median:8.2f} | {min(values):5.2f} |"
                  f" {max(values):5.2f} | {compressed / mb / median:6.1f} ({uncompressed / mb / median:6.1f}) |")
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
