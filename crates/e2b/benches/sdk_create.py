"""Benchmark: the real `e2b` Python SDK against `firkin serve`, side by side in the same run
with `runc run` of a busybox root file system running `echo hi` (the bare engine a user would
otherwise script). Call by call, interleaved:

  firkin: Sandbox.create() then commands.run("echo hi")   (create + first command)
          sandbox.kill()                                   (kill)
          once against a daemon with its default warm pool (2 sandboxes started ahead) and
          once against a second daemon with --warm-pool 0 (every create starts its sandbox)
  runc:   runc run of a busybox bundle running `echo hi`   (create + first command + delete)

Run (as root, after scripts/bench-runc-setup and a release build):
  cargo build --release -p firkin
  FIRKIN_BENCH_SAMPLES=200 target/sdk-venv/bin/python crates/e2b/benches/sdk_create.py

With FIRKIN_BENCH_BASELINE=<another checkout, built the same way> two more daemons run that
checkout's firkin (default warm pool, and --warm-pool 0), interleaved too, to compare two
commits in one run.

Percentiles are nearest-rank over the samples; the first 5 of each kind are warm-up.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[3]
SAMPLES = int(os.environ.get("FIRKIN_BENCH_SAMPLES", "200"))
WARMUP = 5


def percentile(values, p):
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def row(name, values):
    ms = [v * 1000 for v in values]
    print(
        f"| {name:<44} | {len(ms):>5} | {percentile(ms, 50):7.2f} | {percentile(ms, 95):7.2f}"
        f" | {percentile(ms, 99):7.2f} | {max(ms):7.2f} |"
    )


def busybox_bundle(root: pathlib.Path) -> pathlib.Path:
    busybox = shutil.which("busybox")
    if busybox is None:
        sys.exit("no busybox: apt-get install busybox-static (scripts/bench-runc-setup does)")
    bundle = root / "busybox-bundle"
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    for sub in ("proc", "dev", "sys", "tmp"):
        (rootfs / sub).mkdir()
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for tool in ("sh", "echo"):
        (rootfs / "bin" / tool).symlink_to("busybox")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/echo", "hi"]
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def start_daemon(state: pathlib.Path, extra: list[str], repo: pathlib.Path = REPO):
    firkin = repo / "target/release/firkin"
    envd = repo / "target/x86_64-unknown-linux-gnu/envd/firkin-envd"
    for binary in (firkin, envd):
        if not binary.is_file():
            sys.exit(f"{binary} missing: cargo build --release -p firkin; scripts/build-envd")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [str(firkin), "serve", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}",
         "--envd-bin", str(envd), *extra],
        # The key in the environment: never on a command line.
        env={**os.environ, "FIRKIN_API_KEY": "bench"},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    for line in process.stdout:
        if "E2B_API_KEY" in line:  # the banner's last line: the daemon serves
            break
    url = f"http://127.0.0.1:{port}"
    return process, {"api_url": url, "sandbox_url": url, "api_key": "bench"}


def main():
    if os.geteuid() != 0:
        sys.exit("needs root")
    if shutil.which("runc") is None:
        sys.exit("no runc: scripts/bench-runc-setup installs it (benchmark only)")
    work = pathlib.Path(tempfile.mkdtemp(prefix="firkin-sdk-bench-"))
    work.chmod(0o755)
    bundle = busybox_bundle(work)
    warm, warm_params = start_daemon(work / "state", [])
    # Its own state directory and slot range: a second slot pool instance beside the first.
    cold, cold_params = start_daemon(work / "state-cold", ["--warm-pool", "0", "--slot-range", "10.211.0.0/16"])
    daemons = [warm, cold]
    baseline_repo = os.environ.get("FIRKIN_BENCH_BASELINE")
    if baseline_repo:
        base, base_params = start_daemon(
            work / "state-base", ["--slot-range", "10.212.0.0/16"], pathlib.Path(baseline_repo)
        )
        base_cold, base_cold_params = start_daemon(
            work / "state-base-cold", ["--warm-pool", "0", "--slot-range", "10.213.0.0/16"],
            pathlib.Path(baseline_repo)
        )
        daemons += [base, base_cold]
    from e2b import Sandbox

    def create_run_kill(params):
        started = time.perf_counter()
        sandbox = Sandbox.create(**params)
        out = sandbox.commands.run("echo hi").stdout
        created = time.perf_counter()
        sandbox.kill()
        killed = time.perf_counter()
        assert out == "hi\n", out
        return created - started, killed - created

    create_run, kill, cold_create_run, cold_kill, runc = [], [], [], [], []
    base_create_run, base_kill, base_cold_create_run = [], [], []
    try:
        time.sleep(1)  # the warm pool fills
        for i in range(SAMPLES + WARMUP):
            made, killed = create_run_kill(warm_params)
            cold_made, cold_killed = create_run_kill(cold_params)
            if baseline_repo:
                base_made, base_killed = create_run_kill(base_params)
                base_cold_made, _ = create_run_kill(base_cold_params)
            started_runc = time.perf_counter()
            result = subprocess.run(
                ["runc", "--root", str(work / "runc-state"), "run", "--bundle", str(bundle), f"bench-{i}"],
                capture_output=True, text=True,
            )
            finished_runc = time.perf_counter()
            assert result.stdout == "hi\n", (result.stdout, result.stderr)
            if i >= WARMUP:
                create_run.append(made)
                kill.append(killed)
                cold_create_run.append(cold_made)
                cold_kill.append(cold_killed)
                runc.append(finished_runc - started_runc)
                if baseline_repo:
                    base_create_run.append(base_made)
                    base_kill.append(base_killed)
                    base_cold_create_run.append(base_cold_made)
    finally:
        for daemon in daemons:
            daemon.terminate()
            daemon.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print("| operation                                    |     n |  p50 ms |  p95 ms |  p99 ms |  max ms |")
    print("|----------------------------------------------|------:|--------:|--------:|--------:|--------:|")
    row('SDK Sandbox.create() + commands.run("echo hi")', create_run)
    row("SDK sandbox.kill()", kill)
    row("same, --warm-pool 0: create + echo", cold_create_run)
    row("same, --warm-pool 0: kill", cold_kill)
    if baseline_repo:
        row("baseline checkout: create + echo", base_create_run)
        row("baseline checkout: kill", base_kill)
        row("baseline, --warm-pool 0: create + echo", base_cold_create_run)
    row("baseline: runc run busybox `echo hi`", runc)
    print(f"p50 ratio runc / firkin create+run: {percentile(runc, 50) / percentile(create_run, 50):.2f} warm, "
          f"{percentile(runc, 50) / percentile(cold_create_run, 50):.2f} without the warm pool")


if __name__ == "__main__":
    main()
