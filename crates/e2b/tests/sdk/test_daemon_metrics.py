"""The daemon's own Prometheus metrics (`GET /metrics`): live sandboxes by state, the create
latency histogram and proxy traffic move as a user creates, uses and pauses a sandbox."""

import os
import re
import urllib.request


def scrape() -> dict[str, float]:
    with urllib.request.urlopen(os.environ["E2B_API_URL"] + "/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_follow_creates_proxy_traffic_and_pauses(sandbox):
    before = scrape()
    sandbox.commands.run("head -c 100000 /dev/zero | base64 > /dev/null; echo done")
    sandbox.files.write("/tmp/blob", b"x" * 50_000)
    after = scrape()
    assert after['firkin_sandboxes{state="running"}'] >= 1
    assert after["firkin_sandbox_create_seconds_count"] >= 1
    assert after['firkin_sandbox_create_seconds_bucket{le="+Inf"}'] == after["firkin_sandbox_create_seconds_count"]
    buckets = sorted(
        (float(re.search(r'le="([^"]+)"', k).group(1)), v)
        for k, v in after.items()
        if k.startswith("firkin_sandbox_create_seconds_bucket") and "+Inf" not in k
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets), "buckets are not cumulative"
    # Every phase of a create has its histogram. Each create either handed out a warm sandbox
    # (claim) or started one (dirs, cgroup, slot, launch); all of them waited for envd.
    count = after["firkin_sandbox_create_seconds_count"]

    def phase_count(phase: str) -> float:
        return after.get(f'firkin_sandbox_create_phase_seconds_count{{phase="{phase}"}}', 0)

    for phase in ("admission", "envd_ready", "persist"):
        assert phase_count(phase) == count, phase
    started = phase_count("launch")
    for phase in ("dirs", "cgroup", "slot"):
        assert phase_count(phase) == started, phase
    assert phase_count("claim") + started == count
    assert after["firkin_proxy_requests_total"] >= before["firkin_proxy_requests_total"] + 2
    to_sandbox = 'firkin_proxy_bytes_total{direction="to_sandbox"}'
    assert after[to_sandbox] - before[to_sandbox] >= 50_000

    running = after['firkin_sandboxes{state="running"}']
    sandbox.pause()
    paused = scrape()
    assert paused['firkin_sandboxes{state="paused"}'] >= 1
    assert paused['firkin_sandboxes{state="running"}'] == running - 1


def test_metrics_show_the_warm_pool_refilling_after_a_create():
    import time

    from e2b import Sandbox

    def pool():
        samples = scrape()
        return samples["firkin_warm_sandboxes_ready"], samples["firkin_warm_sandboxes_target"]

    def wait_full():
        deadline = time.monotonic() + 20
        while True:
            ready, target = pool()
            if ready == target:
                return
            assert time.monotonic() < deadline, f"the warm pool stayed at {ready} of {target}"
            time.sleep(0.05)

    # The daemon runs with its default pool of 2 (and spare network slots besides); an
    # earlier burst of creates may have grown it for a minute (it follows demand).
    assert pool()[1] >= 2
    assert "firkin_spare_network_slots" in scrape()
    wait_full()
    claims = 'firkin_sandbox_create_phase_seconds_count{phase="claim"}'
    claimed_before = scrape().get(claims, 0)
    sandbox = Sandbox.create()
    try:
        # With the pool full, the create handed out a warm sandbox, renamed to its id; the
        # filler then starts another.
        assert scrape()[claims] == claimed_before + 1
        assert sandbox.commands.run("hostname").stdout.strip() == sandbox.sandbox_id
        wait_full()
    finally:
        sandbox.kill()
