"""`isobench cleanup`: remove what crashed runs left behind.

Everything the runtime makes is findable by name: state directories under the
state root, cgroups under CGROUP_PARENT (`/isobench-runtime/<id>`) in every
hierarchy, network namespaces under /run/netns and veths (by the run's
record). Containers whose id carries the isobench prefix are the harness's
own and are killed if still running (by the pid their state file recorded,
checked against its start time); any other id is removed only once stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness.errors import IsobenchError
from harness.runtime import state as st
from harness.runtime.cgroups.base import CGROUP_ROOT, detect_version, new_manager
from harness.runtime.lifecycle import CGROUP_PARENT, Runtime

HARNESS_PREFIX = "isobench-"  # ids the harness makes: isobench-<run id>-<n>


def _hierarchy_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        mountinfo = f.read()
    if detect_version(CGROUP_ROOT, mountinfo) == 2:
        return [str(CGROUP_ROOT)]
    from harness.runtime.cgroups.v1 import hierarchies

    return sorted(set(hierarchies(CGROUP_ROOT, mountinfo).values()))


def _cgroup_dirs(prefix: str) -> set[str]:
    """cgroupsPaths that exist under `prefix` in any hierarchy (the union over v1 controllers)."""
    found: set[str] = set()
    for mount in _hierarchy_mounts():
        parent = Path(mount) / prefix.lstrip("/")
        if parent.is_dir():
            found.update(f"{prefix}/{child.name}" for child in parent.iterdir() if child.is_dir())
    return found


def cleanup(
    root: str | None = None, dry_run: bool = False, everything: bool = False
) -> Iterator[str]:
    """Remove leftover containers, cgroups and state dirs; yield one line per thing removed.

    everything=True also kills running containers whose id lacks the harness prefix.
    """
    runtime = Runtime(root=root) if root else Runtime()
    referenced: set[str] = set()
    if os.path.isdir(runtime.root):
        for name in sorted(os.listdir(runtime.root)):
            line = _sweep_container(runtime, name, dry_run, everything, referenced)
            if line:
                yield line
    for path in sorted(_cgroup_dirs(CGROUP_PARENT) - referenced):
        manager = new_manager(path)
        busy = bool(manager.pids())
        if busy and not everything:
            # Processes but no state dir here: a container of another state root
            # (another run, another user's --root). Not ours to kill.
            yield f"kept cgroup {path}: it has processes and no container in {runtime.root} (--all removes it)"
            continue
        if not dry_run:
            if busy:
                with contextlib.suppress(IsobenchError):
                    manager.kill_all(signal.SIGKILL)
            manager.destroy()
        yield f"{'would remove' if dry_run else 'removed'} cgroup {path}"
    if not dry_run:
        # The shared parent cgroup, once no container uses it (delete leaves it:
        # removing it there would race with a concurrent create).
        for mount in _hierarchy_mounts():
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(mount, CGROUP_PARENT.lstrip("/")))
        if os.path.isdir(runtime.root) and not os.listdir(runtime.root):
            with contextlib.suppress(OSError):
                os.rmdir(runtime.root)
    yield from _sweep_image_store(runtime, dry_run, everything)
    yield from _sweep_run_workdirs(dry_run)
    yield from _sweep_network(dry_run)


def _sweep_network(dry_run: bool) -> Iterator[str]:
    """Peer and platform network namespaces and veths of killed runs (harness.platforms.network)."""
    from harness.platforms.network import sweep

    yield from sweep(dry_run)


def _sweep_run_workdirs(dry_run: bool) -> Iterator[str]:
    """Work dirs of `isobench run`s that were killed (their pid is gone): mounts first, then files."""
    from harness.runner import WORKDIR_PREFIX

    base = Path(tempfile.gettempdir())
    for entry in sorted(base.glob(f"{WORKDIR_PREFIX}*")):
        pid = entry.name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists() or not entry.is_dir():
            continue
        if not dry_run:
            _unmount_below(entry)
            shutil.rmtree(entry, ignore_errors=True)
        yield f"{'would remove' if dry_run else 'removed'} work dir of a killed run {entry}"


def _sweep_image_store(runtime: Runtime, dry_run: bool, everything: bool) -> Iterator[str]:
    """Overlay roots of image containers whose run crashed, and half-written staging entries."""
    from harness.image.containers import remove_stale, stale_containers
    from harness.image.store import ImageStore, default_home

    if not default_home().is_dir():
        return
    store = ImageStore()
    stale = stale_containers(store, runtime, everything=everything)
    if stale and not dry_run:
        remove_stale(store, runtime, stale)
    for name in stale:
        yield f"{'would remove' if dry_run else 'removed'} image container {name} (overlay root and upper dir)"
    for entry in store.stale_tmp():  # only entries whose creating process is gone
        if not dry_run:
            if entry.is_dir() and not entry.is_symlink():
                _unmount_below(entry)
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        yield f"{'would remove' if dry_run else 'removed'} staging entry {entry}"


def _unmount_below(path: Path) -> None:
    """Detach any mount at or under path (a merged view left by a killed `image bundle`)."""
    from harness.platforms.common import mounts_under
    from harness.runtime.syscalls import MNT_DETACH, linux

    # The shared listing decodes mountinfo's escapes (a path with a space is \040 there).
    for point in reversed(mounts_under(path)):  # deepest first
        with contextlib.suppress(IsobenchError):
            linux().umount2(point, MNT_DETACH)


def _sweep_container(
    runtime: Runtime, name: str, dry_run: bool, everything: bool, referenced: set[str]
) -> str | None:
    try:
        state_dir = st.StateDir(runtime.root, name)
    except IsobenchError:
        return f"kept {Path(runtime.root) / name}: not a container id, not made by the runtime"
    try:
        record = state_dir.load()
    except (IsobenchError, ValueError, TypeError):
        # A directory without a readable state file: a create that crashed midway.
        if not dry_run:
            state_dir.remove()
        return f"{'would remove' if dry_run else 'removed'} half-created state dir {state_dir.path}"
    status = st.status_of(record, state_dir)
    ours = name.startswith(HARNESS_PREFIX)
    if status != st.STOPPED and not (ours or everything):
        referenced.add(record.cgroups_path)
        return f"kept running container {name} (not made by the harness; --all removes it)"
    if dry_run:
        return f"would remove container {name} ({status})"
    runtime.delete(name, force=True)
    return f"removed container {name} (was {status})"
