"""Benchmark: many live sandboxes on one `firkin serve` on its defaults, through the real `e2b`
Python SDK (creates, kills) and the REST routes a dashboard polls (list, metrics).

The daemon runs with no setting but its state directory, listener and envd. Sandboxes are
created one after another with `Sandbox.create()` and left idle; at 10, 500 and 1,000 live
(FIRKIN_BENCH_LEVELS) the run measures, with the others idle around them:

  create at N live:  n = FIRKIN_BENCH_SAMPLES (default 100) `Sandbox.create()` + `kill()`
                     pairs (only the create is timed), so the live count stays at N;
  list at N live:    the same number of `GET /sandboxes` (v1: every running sandbox in one
                     answer) and of `GET /metrics`;
  phases at N live:  the mean of each create phase over those creates (the daemon's
                     per-phase histograms in /metrics: warm hand-outs have `claim`, cold
                     starts `dirs`, `cgroup`, `slot`, `launch`);
  memory at N live:  the host's memory in use (MemTotal - MemAvailable) and the daemon's RSS,
                     against the start, per live sandbox.

Then ten sandboxes picked across the run each run a command (they still work), and all are
killed through the SDK. Run (as root, after a release build):

  cargo build --release -p firkin && scripts/build-envd
  target/sdk-venv/bin/python crates/e2b/benches/sdk_scale.py

Percentiles are nearest-rank. The run fails (exit 1) if a create fails or a sandbox is left.
"""

import os
import pathlib
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from sdk_create import percentile, start_daemon  # noqa: E402

SAMPLES = int(os.environ.get("FIRKIN_BENCH_SAMPLES", "100"))
LEVELS = [int(n) for n in os.environ.get("FIRKIN_BENCH_LEVELS", "10,500,1000").split(",")]


def meminfo():
    fields = {}
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) * 1024
    return fields["MemTotal"] - fields["MemAvailable"]


def rss(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def phase_totals(client):
    """(sum seconds, count) per create phase, from the daemon's /metrics."""
    totals = {}
    for line in client.get("/metrics").text.splitlines():
        for kind in ("sum", "count"):
            prefix = f"firkin_sandbox_create_phase_seconds_{kind}{{phase=\""
            if line.startswith(prefix):
                phase = line[len(prefix):].split('"', 1)[0]
                totals.setdefault(phase, [0.0, 0])[0 if kind == "sum" else 1] = float(line.rsplit(" ", 1)[1])
    return totals


def phase_means(before, after):
    means = []
    for phase, (total, count) in sorted(after.items()):
        old_total, old_count = before.get(phase, (0.0, 0))
        if count > old_count:
            means.append(f"{phase} {(total - old_total) / (count - old_count) * 1000:.2f}")
    return ", ".join(means)


def stats(name, values, unit="ms"):
    ms = [v * 1000 for v in values]
    return (f"| {name:<34} | {len(ms):>5} | {percentile(ms, 50):8.2f} | {percentile(ms, 95):8.2f}"
            f" | {percentile(ms, 99):8.2f} | {max(ms):8.2f} |")


def main():
    if os.geteuid() != 0:
        sys.exit("needs root")
    import httpx
    from e2b import Sandbox

    work = pathlib.Path(tempfile.mkdtemp(prefix="firkin-scale-bench-"))
    work.chmod(0o755)
    daemon, params = start_daemon(work / "state", [])
    client = httpx.Client(base_url=params["api_url"], headers={"X-API-KEY": params["api_key"]},
                          timeout=60)
    time.sleep(1)  # the warm pool fills
    base_memory, base_rss = meminfo(), rss(daemon.pid)
    live = []
    rows, memory_rows, phase_rows = [], [], []
    failed = False
    try:
        for level in LEVELS:
            while len(live) < level:
                live.append(Sandbox.create(**params))
            time.sleep(2)  # idle: the warm pool refills, creates settle
            used, daemon_rss = meminfo(), rss(daemon.pid)
            memory_rows.append((level, (used - base_memory) / level, daemon_rss, daemon_rss - base_rss))
            creates = []
            phases_before = phase_totals(client)
            for _ in range(SAMPLES):
                started = time.perf_counter()
                sandbox = Sandbox.create(**params)
                creates.append(time.perf_counter() - started)
                sandbox.kill()
            phase_rows.append(f"| {level} | {phase_means(phases_before, phase_totals(client))} |")
            lists, metrics = [], []
            for _ in range(SAMPLES):
                started = time.perf_counter()
                listed = client.get("/sandboxes")
                lists.append(time.perf_counter() - started)
                assert listed.status_code == 200 and len(listed.json()) == level, listed.text[:200]
                started = time.perf_counter()
                scraped = client.get("/metrics")
                metrics.append(time.perf_counter() - started)
                assert scraped.status_code == 200
            rows += [stats(f"create at {level} live", creates),
                     stats(f"GET /sandboxes at {level} live", lists),
                     stats(f"GET /metrics at {level} live", metrics)]
            print(rows[-3], rows[-2], rows[-1], sep="\n", flush=True)
        for sandbox in random.sample(live, min(10, len(live))):
            out = sandbox.commands.run("echo still here").stdout
            assert out == "still here\n", out
    except Exception as error:  # report what was measured, then clean up
        failed = True
        print(f"FAILED at {len(live)} live: {error!r}", file=sys.stderr)
    finally:
        kills = []
        for sandbox in live:
            started = time.perf_counter()
            try:
                sandbox.kill()
            except Exception as error:
                failed = True
                print(f"kill {sandbox.sandbox_id}: {error!r}", file=sys.stderr)
            kills.append(time.perf_counter() - started)
        left = client.get("/sandboxes").json()
        daemon.terminate()
        daemon.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    print("| operation                          |     n |   p50 ms |   p95 ms |   p99 ms |   max ms |")
    print("|------------------------------------|------:|---------:|---------:|---------:|---------:|")
    for line in rows:
        print(line)
    if kills:
        print(stats(f"kill, {len(kills)} one after another", kills))
    print()
    print("| live sandboxes | host memory per sandbox | daemon RSS | daemon RSS growth |")
    print("|---------------:|------------------------:|-----------:|------------------:|")
    for level, per, daemon_rss, growth in memory_rows:
        print(f"| {level:>14} | {per / 2**20:19.2f} MiB | {daemon_rss / 2**20:6.1f} MiB"
              f" | {growth / 2**20:13.1f} MiB |")
    print()
    print("| live sandboxes | mean ms per create phase (of the creates that had it) |")
    print("|---:|---|")
    for line in phase_rows:
        print(line)
    if left:
        failed = True
        print(f"{len(left)} sandboxes left after the kills", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
