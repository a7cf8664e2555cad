"""A pytest plugin: with FIRKIN_REQUIRE_ROOT_TESTS=1, a skipped test fails the run unless its
reason matches an entry of scripts/allowed-skips.txt.

The SDK tests are isolation and wire tests against real sandboxes; a run where they skipped
proved nothing, so `scripts/test` (and CI) must not pass it. Load it with
`-p no_unlisted_skips`, with `scripts/pytest` on PYTHONPATH.
"""

import os
from pathlib import Path

ALLOW_LIST = Path(__file__).resolve().parent.parent / "allowed-skips.txt"

# "<test id>: <reason>" of every skip the allow-list does not cover, in this session.
_unlisted = []


def allowed_patterns():
    """(substring of a skip reason, why it may skip) for each entry of the allow-list."""
    entries = []
    for line in ALLOW_LIST.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pattern, _, why = line.partition("\t")
        if not why.strip():
            raise ValueError(f"{ALLOW_LIST}: entry without a reason: {line!r}")
        if not pattern.strip():
            # An empty pattern is a substring of every reason: it would allow every skip.
            raise ValueError(f"{ALLOW_LIST}: entry without a pattern: {line!r}")
        entries.append((pattern, why.strip()))
    return entries


def pytest_runtest_logreport(report):
    _check(report)


def pytest_collectreport(report):
    # A module that skips itself as it is collected (`pytest.skip(allow_module_level=True)`,
    # `importorskip`) reports here, not per test.
    _check(report)


def _check(report):
    if not report.skipped or os.environ.get("FIRKIN_REQUIRE_ROOT_TESTS") != "1":
        return
    if hasattr(report, "wasxfail"):  # an expected failure, not a skip
        return
    # The `longrepr` of a skip is (file, line, "Skipped: <reason>").
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not any(pattern in reason for pattern, _ in allowed_patterns()):
        _unlisted.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if _unlisted:
        print(
            f"\n{len(_unlisted)} test(s) skipped under FIRKIN_REQUIRE_ROOT_TESTS=1 for a reason"
            f" not in {ALLOW_LIST}:"
        )
        for line in _unlisted:
            print(f"  {line}")
        session.exitstatus = 1
