"""Benchmark: bursts of concurrent creates through the real `e2b` Python SDK against
`firkin serve` on its defaults, beside creates one at a time, in the same run.

Each round, against each daemon in turn:
  one at a time:  BURST (20) x `Sandbox.create()` (timed) then `kill()`, one after another;
  burst:          BURST threads call `Sandbox.create()` at once (each timed from the common
                  start), then all are killed and the daemon gets a second to refill its pool.

Rounds: FIRKIN_BENCH_ROUNDS (default 10), so n = 200 per row. The first burst of a daemon
finds its warm pool at its floor (2); the pool then follows demand, so it is reported on its
own. With FIRKIN_BENCH_BASELINE=<another checkout, built the same way> that checkout's
daemon runs too, interleaved round by round, to compare two commits in one run.

  cargo build --release -p firkin && scripts/build-envd
  target/sdk-venv/bin/python crates/e2b/benches/sdk_burst.py

Percentiles are nearest-rank.
"""

import os
import pathlib
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from sdk_create import percentile, row, start_daemon  # noqa: E402

BURST = int(os.environ.get("FIRKIN_BENCH_BURST", "20"))
ROUNDS = int(os.environ.get("FIRKIN_BENCH_ROUNDS", "10"))


def one_at_a_time(params):
    from e2b import Sandbox
    times = []
    for _ in range(BURST):
        started = time.perf_counter()
        sandbox = Sandbox.create(**params)
        times.append(time.perf_counter() - started)
        sandbox.kill()
    return times


def burst(params):
    from e2b import Sandbox
    gate = threading.Barrier(BURST + 1)
    times, sandboxes, errors = [], [], []
    lock = threading.Lock()

    def create():
        gate.wait()
        started = time.perf_counter()
        try:
            sandbox = Sandbox.create(**params)
        except Exception as error:  # counted, reported, and failing the run
            with lock:
                errors.append(repr(error))
            return
        elapsed = time.perf_counter() - started
        with lock:
            times.append(elapsed)
            sandboxes.append(sandbox)

    threads = [threading.Thread(target=create) for _ in range(BURST)]
    for thread in threads:
        thread.start()
    gate.wait()
    for thread in threads:
        thread.join()
    for sandbox in sandboxes:
        sandbox.kill()
    time.sleep(1)
    return times, errors


def main():
    if os.geteuid() != 0:
        sys.exit("needs root")
    work = pathlib.Path(tempfile.mkdtemp(prefix="firkin-burst-bench-"))
    work.chmod(0o755)
    daemons = {"this checkout": start_daemon(work / "state", [])}
    baseline = os.environ.get("FIRKIN_BENCH_BASELINE")
    if baseline:
        daemons["baseline checkout"] = start_daemon(
            work / "state-base", ["--slot-range", "10.212.0.0/16"], pathlib.Path(baseline))
    results = {name: {"seq": [], "first": [], "later": []} for name in daemons}
    failures = []
    try:
        time.sleep(1)  # warm pools fill
        for round_ in range(ROUNDS):
            for name, (_, params) in daemons.items():
                results[name]["seq"] += one_at_a_time(params)
            for name, (_, params) in daemons.items():
                times, errors = burst(params)
                results[name]["first" if round_ == 0 else "later"] += times
                failures += [f"{name}: {error}" for error in errors]
    finally:
        for process, _ in daemons.values():
            process.terminate()
            process.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    print("| operation                                    |     n |  p50 ms |  p95 ms |  p99 ms |  max ms |")
    print("|----------------------------------------------|------:|--------:|--------:|--------:|--------:|")
    for name, rows in results.items():
        row(f"{name}: create one at a time", rows["seq"])
        row(f"{name}: {BURST} at once, first burst", rows["first"])
        if rows["later"]:
            row(f"{name}: {BURST} at once, later bursts", rows["later"])
            ratio = percentile(rows["later"], 95) / percentile(rows["seq"], 95)
            print(f"{name}: p95 of later bursts / p95 one at a time = {ratio:.2f}")
    if failures:
        print(f"{len(failures)} creates failed: {failures[:3]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
