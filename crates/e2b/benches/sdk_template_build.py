"""Benchmark: template builds through the real `e2b` Python SDK against `firkin serve`.

A six-step template (two COPY, ENV, two RUN, a WORKDIR that makes its directory) on a busybox
template imported with `firkin template import` (the image the SDK tests use):

  first build          Template.build of it, nothing cached (n = 1 per run; its five
                       layer-making steps: the COPYs, the RUNs, the WORKDIR's new directory)
  rebuild              Template.build of the unchanged template under a new tag, each step
                       from the build cache (n = FIRKIN_BENCH_SAMPLES, default 100)
  rebuild, in daemon   the same rebuilds, from the build's first log line to its last (the
                       daemon's own time: the SDK polls the status every 0.2 s, which the
                       rows above include)
  create from it       Sandbox.create() of the built template + kill, its warm pool on

Run (as root, after a release build and scripts/build-envd):
  cargo build --release -p firkin
  FIRKIN_BENCH_SAMPLES=100 target/sdk-venv/bin/python crates/e2b/benches/sdk_template_build.py

Percentiles are nearest-rank.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "crates/e2b/benches"))
sys.path.insert(0, str(REPO / "crates/e2b/tests/sdk"))

from busybox_image import write_layout  # noqa: E402
from sdk_create import row, start_daemon  # noqa: E402

SAMPLES = int(os.environ.get("FIRKIN_BENCH_SAMPLES", "100"))


def main():
    if os.geteuid() != 0:
        sys.exit("needs root")
    work = pathlib.Path(tempfile.mkdtemp(prefix="firkin-build-bench-"))
    work.chmod(0o755)
    state = work / "state"
    daemon, params = start_daemon(state, [])
    try:
        from e2b import Sandbox, Template

        os.environ["E2B_API_URL"] = params["api_url"]
        os.environ["E2B_SANDBOX_URL"] = params["sandbox_url"]
        os.environ["E2B_API_KEY"] = params["api_key"]
        layout = work / "layout"
        write_layout(layout)
        subprocess.run(
            [str(REPO / "target/release/firkin"), "template", "--state-dir", str(state),
             "import", str(layout), "--name", "bench-base:v1"],
            check=True, stdout=subprocess.DEVNULL,
        )
        context = work / "context"
        (context / "site").mkdir(parents=True)
        (context / "notes.txt").write_text("notes\n")
        (context / "site" / "index.html").write_text("<p>hi</p>\n")
        template = (
            Template(file_context_path=str(context))
            .from_template("bench-base:v1")
            .copy("notes.txt", "notes.txt")
            .copy("site", "/srv/www/")
            .set_envs({"MODE": "bench"})
            .run_cmd('echo "$MODE" > mode.txt')
            .run_cmd("mkdir -p /opt/tool && echo 1 > /opt/tool/version", user="root")
            .set_workdir("/srv/app")
        )

        def build(tag: str):
            lines = []
            started = time.perf_counter()
            info = Template.build(template, f"bench-app:{tag}", on_build_logs=lines.append)
            took = time.perf_counter() - started
            return took, info, lines

        first, _, first_lines = build("first")
        cached_steps = []
        rebuilds, in_daemon = [], []
        for i in range(SAMPLES):
            took, info, lines = build(f"r{i}")
            rebuilds.append(took)
            # The daemon's log lines (the SDK's own have no step): first to last.
            stamps = [line.timestamp.timestamp() for line in lines
                      if line.message.startswith(("[base]", "Build finished"))]
            in_daemon.append(max(stamps) - min(stamps))
            cached_steps.append(sum(line.message.startswith("CACHED") for line in lines))
        creates = []
        for _ in range(SAMPLES):
            started = time.perf_counter()
            sbx = Sandbox.create(template="bench-app:first")
            creates.append(time.perf_counter() - started)
            sbx.kill()
        print(f"first build: {first * 1000:.0f} ms ({len(first_lines)} log lines); "
              f"cached steps per rebuild: {min(cached_steps)}..{max(cached_steps)} of the 5 that make a layer")
        print("| operation                                    |     n |  p50 ms |  p95 ms |  p99 ms |  max ms |")
        print("|----------------------------------------------|------:|--------:|--------:|--------:|--------:|")
        row("rebuild, unchanged (SDK Template.build)", rebuilds)
        row("rebuild, in the daemon (first to last log)", in_daemon)
        row("Sandbox.create() of the built template", creates)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
