"""The block device the IO throttle tests read and write: a loop device over a file in the run's workdir.

blkio/io throttles act on a block device's bios; a loop device with direct IO
gives one on any host without a scratch disk. Its backing file carries the run
id and lives in the run's workdir, so it goes with the workdir.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

SIZE_BYTES = 256 << 20  # 10 MiB/s for 5 s is 50 MiB: room for reads and writes


@contextlib.contextmanager
def loop_device(workdir: Path, run_id: str) -> Iterator[tuple[str | None, str]]:
    """(device path, "") for the run, detached at the end; (None, reason) when none can be made."""
    losetup = shutil.which("losetup")
    if losetup is None:
        yield None, "losetup not found (Debian package util-linux)"
        return
    backing = workdir / f"isobench-io-{run_id}.img"
    with open(backing, "wb") as f:
        f.truncate(SIZE_BYTES)
    proc = subprocess.run(
        [losetup, "--find", "--show", "--direct-io=on", str(backing)],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    if proc.returncode != 0:
        backing.unlink(missing_ok=True)
        yield None, f"losetup could not attach a loop device: {proc.stderr.strip()}"
        return
    device = proc.stdout.strip()
    try:
        yield device, ""
    finally:
        subprocess.run([losetup, "-d", device], capture_output=True, check=False, timeout=30)
        backing.unlink(missing_ok=True)


def detach_loops_under(directory: Path) -> list[str]:
    """Detach every loop device whose backing file is below directory (a killed run's); their names."""
    losetup = shutil.which("losetup")
    if losetup is None:
        return []
    listing = subprocess.run(
        [losetup, "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    prefix = str(directory).rstrip("/") + "/"
    detached = []
    for line in listing.stdout.splitlines():
        name, _, backing = line.strip().partition(" ")
        backing = backing.strip().removesuffix(" (deleted)")
        if backing.startswith(prefix):
            subprocess.run([losetup, "-d", name], capture_output=True, check=False, timeout=30)
            detached.append(name)
    return detached
