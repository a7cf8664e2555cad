"""Benchmark: bursts of concurrent creates through the real `e2b` Python SDK against
`firkin serve` on its defaults, beside creates one at a time, in the same run.

Each round, against each daemon in turn:
  one at a time:  BURST (20) x `Sandbox.create()` (timed) then `kill()`, one after another;
  burst:          BURST processes (agents are processes) call `Sandbox.create()` at once,
                  each timed from the common start; then all are killed and the daemon gets a
                  second to refill its pool.

The SDK's own work (about 7 ms of CPU per create in Python here) runs on the same 2 CPUs as
the daemon, so a burst's client-side times include the clients waiting for CPU; the daemon's
own create times during the same phases come from its /metrics histogram and are printed
after the table.

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
import multiprocessing
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from sdk_create import percentile, row, start_daemon  # noqa: E402

import httpx  # noqa: E402  (the e2b package's own HTTP client)

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


def _agent(gate, tasks, results):
    """One agent of the bursts, a process of its own (as agents are), started once: for each
    burst, wait for the others, create one sandbox, report."""
    from e2b import Sandbox
    # Untimed, against a daemon of its own: the SDK's first create sets up what later ones
    # reuse, which would otherwise weigh on the first measured burst only.
    params = tasks.get()
    gate.wait()
    Sandbox.create(**params).kill()
    results.put("ready")
    while (params := tasks.get()) is not None:
        gate.wait()
        started = time.perf_counter()
        try:
            sandbox = Sandbox.create(**params)
            results.put((time.perf_counter() - started, sandbox.sandbox_id, None))
        except Exception as error:  # counted, reported, and failing the run
            results.put((None, None, repr(error)))


class Agents:
    """BURST agent processes, spawned fresh (a fork of a process that used the SDK can hang)."""

    def __init__(self):
        context = multiprocessing.get_context("spawn")
        self.gate = context.Barrier(BURST + 1)
        self.results = context.Queue()
        self.tasks = [context.Queue() for _ in range(BURST)]
        self.processes = [context.Process(target=_agent, args=(self.gate, tasks, self.results))
                          for tasks in self.tasks]
        for process in self.processes:
            process.start()

    def warm_up(self, params):
        for tasks in self.tasks:
            tasks.put(params)
        self.gate.wait()
        for _ in self.tasks:
            self.results.get(timeout=120)

    def burst(self, params):
        for tasks in self.tasks:
            tasks.put(params)
        self.gate.wait()  # every agent has imported the SDK and waits: go
        outcomes = [self.results.get(timeout=120) for _ in self.tasks]
        times = [elapsed for elapsed, _, error in outcomes if error is None]
        errors = [error for _, _, error in outcomes if error is not None]
        with httpx.Client(base_url=params["api_url"],
                          headers={"X-API-KEY": params["api_key"]}) as api:
            for _, sandbox_id, error in outcomes:
                if error is None:
                    api.delete(f"/sandboxes/{sandbox_id}")
        time.sleep(1)
        return times, errors

    def stop(self):
        for tasks in self.tasks:
            tasks.put(None)
        for process in self.processes:
            process.join(timeout=30)


def server_histogram(params):
    """The daemon's own create latency histogram: {upper bound in seconds: cumulative count}."""
    text = httpx.get(f"{params['api_url']}/metrics").text
    buckets = {}
    for line in text.splitlines():
        if line.startswith('firkin_sandbox_create_seconds_bucket{le="'):
            bound = line.split('"')[1]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = int(line.rsplit(" ", 1)[1])
    return buckets


def bound_of(before, after, p):
    """The smallest histogram bound holding p% of the creates between two scrapes, in ms."""
    total = after[float("inf")] - before.get(float("inf"), 0)
    for bound in sorted(after):
        if (after[bound] - before.get(bound, 0)) * 100 >= p * total:
            return "+Inf" if bound == float("inf") else f"{bound * 1000:g}"
    return "?"


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
    # The daemon's side of the same creates: histograms scraped around each kind of phase.
    server = {name: {"seq": [], "later": []} for name in daemons}
    failures = []
    agents = Agents()
    try:
        warm_up, warm_up_params = start_daemon(
            work / "state-warm-up", ["--warm-pool", "0", "--slot-range", "10.214.0.0/16"])
        try:
            agents.warm_up(warm_up_params)
        finally:
            warm_up.terminate()
            warm_up.wait(timeout=60)
        time.sleep(1)  # warm pools fill
        for round_ in range(ROUNDS):
            for name, (_, params) in daemons.items():
                before = server_histogram(params)
                results[name]["seq"] += one_at_a_time(params)
                server[name]["seq"].append((before, server_histogram(params)))
            for name, (_, params) in daemons.items():
                before = server_histogram(params)
                times, errors = agents.burst(params)
                results[name]["first" if round_ == 0 else "later"] += times
                if round_ > 0:
                    server[name]["later"].append((before, server_histogram(params)))
                failures += [f"{name}: {error}" for error in errors]
    finally:
        agents.stop()
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
    print()
    print("The daemon's own create time (request in to response out), from its /metrics histogram")
    print("(bounds 1, 2, 5, 10, 20, 50, 100 ms...): the smallest bound holding 50% / 95% of them.")
    for name, kinds in server.items():
        for kind, label in (("seq", "one at a time"), ("later", f"{BURST} at once, later bursts")):
            pairs = kinds[kind]
            if not pairs:
                continue
            # Phases of the other kind ran in between: add up each pair's own deltas.
            deltas = {bound: sum(a.get(bound, 0) - b.get(bound, 0) for b, a in pairs)
                      for bound in pairs[-1][1]}
            print(f"{name}, {label}: p50 <= {bound_of({}, deltas, 50)} ms, "
                  f"p95 <= {bound_of({}, deltas, 95)} ms (n = {deltas[float('inf')]})")
    if failures:
        print(f"{len(failures)} creates failed: {failures[:3]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
