"""Pieces every platform shares: the image check, limits, output files, timeouts, mount listing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from harness.errors import UserError
from harness.image import overlay
from harness.image.store import ImageStore
from harness.platforms.base import Limits, RunContext
from harness.runtime.state import check_id

TIMED_OUT = 124  # as timeout(1): a run stopped at its timeout


def checked_digest(store: ImageStore, ctx: RunContext) -> str:
    """The manifest digest ctx.image_ref resolves to, which must be ctx.image_digest (when given)."""
    check_id(f"isobench-{ctx.run_id}")  # the run id goes into ids, paths and cgroup names
    digest = store.resolve(ctx.image_ref)
    if ctx.image_digest and digest != ctx.image_digest:
        raise UserError(
            f"image {ctx.image_ref} is {digest} in {store.home}, but the run records "
            f"{ctx.image_digest}; accepted: the same image everywhere (rebuild or pass the digest)"
        )
    return digest


def cpuset_for(limits: Limits) -> str | None:
    """The cpuset ("0-1") that gives limits.cpus CPUs: the first ones this process may use."""
    if limits.cpus is None:
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= limits.cpus <= len(allowed):
        raise UserError(f"limits.cpus {limits.cpus}; accepted: 1 to {len(allowed)} on this host")
    return ",".join(str(cpu) for cpu in allowed[: limits.cpus])


def limits_record(limits: Limits, how: str) -> dict[str, object]:
    """The limits in force, for describe()."""
    return {
        "cpus": limits.cpus,
        "cpuset": cpuset_for(limits),
        "memory_bytes": limits.memory_bytes,
        "how": how if limits.cpus or limits.memory_bytes else "none requested",
    }


def reset_dir(path: Path) -> None:
    """Make path an empty directory (its entries removed, the directory and its mode kept)."""
    path.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def read_text(path: Path) -> str:
    """A captured output file as text ("" when it was never written)."""
    try:
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


def timeout_note(timeout_s: float) -> str:
    """What stderr gets appended when a run was stopped at its timeout."""
    return f"\nisobench: stopped after the workload's timeout of {timeout_s:g} s\n"


# ---------------------------------------------------------------- the platform


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path in this process's mount namespace."""
    prefix = os.path.realpath(path)
    with open("/proc/self/mountinfo", "rb") as f:
        points = overlay.mount_points(f.read())
    return sorted(p for p in points if p == prefix or p.startswith(prefix + "/"))
