"""`isobench cleanup`'s mount sweep on paths the kernel escapes in mountinfo."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.platforms.common import mounts_under
from harness.runtime.cleanup import _unmount_below

pytestmark = pytest.mark.requires("root")


def test_mounts_under_a_path_with_a_space_are_detached(tmp_path: Path) -> None:
    base = tmp_path / "killed run"  # mountinfo writes this as killed\040run
    inner = base / "view" / "proc"
    inner.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(base / "view")], check=True)
    try:
        inner.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(inner)], check=True)
        assert len(mounts_under(base)) == 2
        _unmount_below(base)
        assert mounts_under(base) == []
    finally:
        subprocess.run(["umount", "-R", str(base / "view")], capture_output=True, check=False)
