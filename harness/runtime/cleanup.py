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
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from harness.errors import IsobenchError
from harness.runtime import state as st
from harness.runtime.cgroups import fs as cgroup_fs
from harness.runtime.cgroups.base import CGROUP_ROOT, detect_version, new_manager
from harness.runtime.cgroups.fs import parse_mountinfo
from harness.runtime.lifecycle import CGROUP_PARENT, Runtime

HARNESS_PREFIX = "isobench-"  # ids the harness makes: isobench-<run id>-<n>


def _hierarchy_mounts() -> list[str]:
    return _mounts()[0]


def _sweep_mounts() -> list[str]:
    """The hierarchies, plus the unified one a v1-hybrid host mounts beside them.

    Nothing of ours is controlled there, but runc and libvirt make their cgroups
    in it too (with no controllers), and those are left when theirs are.
    """
    hierarchy, unified = _mounts()
    return hierarchy + unified


def _mounts() -> tuple[list[str], list[str]]:
    """(the hierarchies we drive, the cgroup2 mounts beside them on a v1-hybrid host)."""
    with open("/proc/self/mountinfo") as f:
        mountinfo = f.read()
    if detect_version(CGROUP_ROOT, mountinfo) == 2:
        return [str(CGROUP_ROOT)], []
    from harness.runtime.cgroups.v1 import hierarchies

    prefix = str(CGROUP_ROOT) + "/"
    unified = sorted({m.mountpoint for m in parse_mountinfo(mountinfo) if m.fstype == "cgroup2"})
    return sorted(set(hierarchies(CGROUP_ROOT, mountinfo).values())), [
        mount for mount in unified if mount.startswith(prefix)
    ]


def _cgroup_dirs(prefix: str) -> set[str]:
    """cgroupsPaths that exist under `prefix` in any hierarchy (the union over v1 controllers)."""
    found: set[str] = set()
    for mount in _sweep_mounts():
        parent = Path(mount) / prefix.lstrip("/")
        if parent.is_dir():
            found.update(f"{prefix}/{child.name}" for child in parent.iterdir() if child.is_dir())
    return found


def cleanup(
    root: str | None = None,
    dry_run: bool = False,
    everything: bool = False,
    libvirt_uri: str | None = None,
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
    unified = _mounts()[1]
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
            for mount in unified:  # runc's twin in the hybrid unified tree
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(mount, path.lstrip("/")))
        yield f"{'would remove' if dry_run else 'removed'} cgroup {path}"
    if not dry_run:
        # The shared parent cgroup, once no container uses it (delete leaves it:
        # removing it there would race with a concurrent create).
        for mount in _sweep_mounts():
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(mount, CGROUP_PARENT.lstrip("/")))
        if os.path.isdir(runtime.root) and not os.listdir(runtime.root):
            with contextlib.suppress(OSError):
                os.rmdir(runtime.root)
    yield from _sweep_image_store(runtime, dry_run, everything)
    yield from _sweep_vms(libvirt_uri, dry_run)
    yield from sweep_machine_cgroups(_sweep_mounts(), dry_run)
    yield from _sweep_run_workdirs(dry_run)
    yield from _sweep_network(dry_run)


def _sweep_network(dry_run: bool) -> Iterator[str]:
    """Peer and platform network namespaces and veths of killed runs (harness.platforms.network)."""
    from harness.platforms.network import sweep

    yield from sweep(dry_run)


def _sweep_run_workdirs(dry_run: bool) -> Iterator[str]:
    """Work dirs of `isobench run`s that were killed (their pid is gone): mounts first, then files."""
    from harness.enforcement.iodev import detach_loops_under
    from harness.runner import WORKDIR_PREFIX

    base = Path(tempfile.gettempdir())
    for entry in sorted(base.glob(f"{WORKDIR_PREFIX}*")):
        pid = entry.name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists() or not entry.is_dir():
            continue
        if not dry_run:
            _unmount_below(entry)
            detach_loops_under(entry)  # the enforcement IO tests' loop device
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


def _sweep_vms(uri: str | None, dry_run: bool) -> Iterator[str]:
    """Guests of killed runs: their domains through libvirt, then any QEMU left by its pidfile.

    An embed root that never held one of our guests is not opened (that would
    start the driver and probe QEMU for nothing); one held by a live process is
    that process's (libvirt lets one process at a time open it) and is kept.
    Opening an embed root whose owner was killed makes libvirt reconnect to its
    guests, and it stops those it cannot take back itself: what the root's
    state files named before the open is therefore what gets reported.
    """
    from harness.vm.connection import default_uri, embed_root, open_connection

    uri = uri or default_uri()
    root = embed_root(uri)
    state = root / "run" / "qemu" if root is not None else None
    left = _qemu_pidfiles(state) if state is not None else {}
    if state is not None and not left:
        return
    try:
        conn = open_connection(uri)
    except IsobenchError as exc:
        yield f"kept the guests of {uri}: {exc}"
        return
    try:
        reported = set()
        for line in sweep_domains(conn, dry_run):
            reported.add(line.rsplit(" ", 1)[-1])
            yield line
        present = {d.name() for d in conn.listAllDomains()}
    finally:
        conn.close()
    for name, pid in sorted(left.items()):
        if name not in present and name not in reported:
            yield f"removed domain {name} (libvirt stopped it when it reconnected)"
        if _is_qemu_of(pid, name):
            if not dry_run:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            yield f"{'would kill' if dry_run else 'killed'} QEMU {pid} of domain {name}"


# The cgroups libvirt's QEMU driver makes itself (no systemd machined): on v1 and v2
# alike /machine/qemu-[embed-<hash>-]<domain id>-<domain name>.libvirt-qemu.
MACHINE_CGROUP_MIN_AGE_S = 60.0
_MACHINE_CGROUP = re.compile(r"^qemu-(?:embed-[0-9a-f]+-)?\d+-(isobench-[^/]*)\.libvirt-qemu$")


def sweep_machine_cgroups(
    mounts: list[str],
    dry_run: bool = False,
    run_id: str | None = None,
    min_age_s: float = MACHINE_CGROUP_MIN_AGE_S,
) -> Iterator[str]:
    """Empty libvirt cgroups of isobench guests (of run_id only, when given).

    libvirt removes a guest's cgroup when the guest stops, but not when QEMU dies
    while no driver is watching it (its run was SIGKILLed, or the host OOM killer
    took QEMU while the driver was busy): those stay, empty, under /machine. One
    with a process in it belongs to a live guest and is kept, and so is one made
    less than min_age_s ago: another run's guest may be starting in it (libvirt
    makes the cgroup before it moves QEMU in). A run sweeping its own guests at
    its end passes run_id and no minimum age.
    """
    found: dict[str, list[Path]] = {}
    for mount in mounts:
        parent = Path(mount) / "machine"
        with contextlib.suppress(OSError):
            for child in parent.iterdir():
                match = _MACHINE_CGROUP.match(child.name)
                if match and child.is_dir() and (run_id is None or run_id in match[1]):
                    found.setdefault(child.name, []).append(child)
    now = time.time()
    for name, paths in sorted(found.items()):
        if any(_has_processes(path) for path in paths):
            yield f"kept cgroup /machine/{name}: a guest still runs in it"
            continue
        if any(now - _mtime(path) < min_age_s for path in paths):
            yield f"kept cgroup /machine/{name}: made less than {min_age_s:g} s ago"
            continue
        if not dry_run:
            for path in paths:
                _remove_tree(path)
        yield f"{'would remove' if dry_run else 'removed'} cgroup /machine/{name}"


def sweep_run_machine_cgroups(run_id: str) -> list[str]:
    """What sweep_machine_cgroups removed of one run's guests, on this host's hierarchies."""
    return list(sweep_machine_cgroups(_sweep_mounts(), run_id=run_id, min_age_s=0))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _has_processes(path: Path) -> bool:
    for procs in path.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            if procs.read_text().strip():
                return True
    return False


def _remove_tree(path: Path) -> None:
    """rmdir a cgroup and its children, deepest first (cgroupfs refuses rmtree's unlinks)."""
    children = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for directory in [*children, path]:
        with contextlib.suppress(IsobenchError):  # a guest starting in it after all: kept
            cgroup_fs.rmdir(str(directory))


def sweep_domains(conn: object, dry_run: bool = False) -> Iterator[str]:
    """Destroy (and undefine) isobench-* domains whose owning process is gone."""
    from harness.vm.domain import owner_of
    from harness.vm.qemu_direct import process_alive

    for domain in conn.listAllDomains():  # type: ignore[attr-defined]
        name = domain.name()
        if not name.startswith(HARNESS_PREFIX):
            continue
        with contextlib.suppress(Exception):  # it may end while we look
            owner = owner_of(domain.XMLDesc(0))
            if owner is not None and owner[1] != os.getpid() and process_alive(owner[1]):
                yield f"kept domain {name}: its run (pid {owner[1]}) is alive"
                continue
            if not dry_run:
                if domain.isActive():
                    domain.destroy()
                if domain.isPersistent():
                    domain.undefine()
            yield f"{'would remove' if dry_run else 'removed'} domain {name}"


def _qemu_pidfiles(state: Path) -> dict[str, int]:
    """Domain name -> QEMU pid, from the pidfiles libvirt keeps for running isobench-* guests."""
    found = {}
    for pidfile in state.glob(f"{HARNESS_PREFIX}*.pid"):
        with contextlib.suppress(OSError, ValueError):
            found[pidfile.name[: -len(".pid")]] = int(pidfile.read_text().strip())
    return found


def _is_qemu_of(pid: int, name: str) -> bool:
    """Whether pid is still the QEMU of domain name (not gone, not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return f"guest={name},".encode() in cmdline
