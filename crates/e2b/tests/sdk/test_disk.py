"""A sandbox's disk as a user meets it: `diskSizeMB` and the metrics report the daemon's
`--disk-size-mb` (not the host's free space), `df /` inside shows it, and once it is full a
command gets "No space left on device" and `files.write` raises NotEnoughSpaceException
(507) leaving no partial file, while a neighbour sandbox writes on."""

import json
import os
import urllib.request

import pytest
from e2b import CommandExitException, NotEnoughSpaceException

from conftest import DISK_SIZE_MB

MIB = 1 << 20


def detail(sandbox_id: str) -> dict:
    request = urllib.request.Request(
        f"{os.environ['E2B_API_URL']}/sandboxes/{sandbox_id}",
        headers={"X-API-KEY": os.environ["E2B_API_KEY"]},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_a_full_disk_is_the_sandboxs_own(make_sandbox):
    full, neighbour = make_sandbox(), make_sandbox()
    assert detail(full.sandbox_id)["diskSizeMB"] == DISK_SIZE_MB
    size = int(full.commands.run("df -B1M --output=size / | tail -1").stdout)
    assert DISK_SIZE_MB * 9 // 10 <= size <= DISK_SIZE_MB, size
    [metric] = full.get_metrics()
    assert metric.disk_total == DISK_SIZE_MB * MIB

    # Fill all but 1 MiB without writing it (fallocate), then write past the end.
    full.commands.run(
        "fallocate -l $(( $(df -B1 --output=avail / | tail -1) - 1048576 )) /home/user/filler"
    )
    with pytest.raises(CommandExitException) as failed:
        full.commands.run("dd if=/dev/zero of=/home/user/more bs=1M count=4")
    assert "No space left on device" in failed.value.stderr
    with pytest.raises(NotEnoughSpaceException):
        full.files.write("/home/user/upload.bin", b"x" * (4 * MIB))
    assert not full.files.exists("/home/user/upload.bin")
    neighbour.files.write("/home/user/upload.bin", b"x" * (4 * MIB))
    assert neighbour.files.exists("/home/user/upload.bin")

    # Space freed inside is the sandbox's again.
    full.commands.run("rm -f /home/user/filler /home/user/more")
    full.files.write("/home/user/upload.bin", b"x" * (4 * MIB))
