"""The bare platform: host processes chrooted into the workload image's files.

The workload's binaries are the image's files, the same bytes the containers
run, but nothing is isolated: host PID, network, IPC and UTS namespaces, the
host's /proc and /sys, copies of the host's standard device nodes. The root is
a writable overlay of the image's layers (upper dir under the run's workdir),
like a container's, so "root" IO workloads write to the same kind of
filesystem; /scratch is a host directory bound in. With limits, the tool runs
in a host cgroup `/isobench-bare-<run id>` that it joins before exec (a host
/bin/sh writes its own pid into cgroup.procs, then execs chroot), so no
instruction of the tool runs outside it.

Also here: the few helpers the container and oci platforms share.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import EnvironmentError_, IsobenchError, OSFailure, StateError
from harness.image import overlay
from harness.image.store import ImageStore
from harness.platforms.base import Limits, Outcome, RunContext
from harness.platforms.burst import Burst, burst_of_children
from harness.platforms.common import (
    TIMED_OUT,
    checked_digest,
    cpuset_for,
    limits_record,
    mounts_under,
    read_text,
    reset_dir,
    timeout_note,
)
from harness.platforms.peer import run_with_peer
from harness.runtime.cgroups import CgroupManager, new_manager
from harness.runtime.spec import CpuResources, MemoryResources, Resources
from harness.runtime.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REMOUNT,
    SyscallLayer,
    linux,
)
from harness.workloads.base import Workload

CHROOT = "/usr/sbin/chroot"  # coreutils on the host; it execs the image's binaries
NSENTER = "/usr/bin/nsenter"  # util-linux on the host: joins a network namespace, then execs
# Bare shares the host's network namespace, where isobench adds no address: its
# host <-> platform path is loopback, what a process on bare metal gets.
LOOPBACK = "127.0.0.1"
HOST_SH = "/bin/sh"
# The standard devices of a container (runc's defaults, without the pty ones).
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}
# Joins every cgroup directory given before "--", then execs the rest: the tool
# starts inside the cgroup, without a preexec_fn in this (threaded) process.
JOIN_CGROUP = (
    'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; done; '
    'shift; exec "$@"'
)


# ---------------------------------------------------------------- shared helpers


class BarePlatform:
    """Host processes chrooted into an overlay of the image (see the module docstring)."""

    def __init__(self, store: ImageStore | None = None, syscalls: SyscallLayer | None = None):
        self.name = "bare"
        self._store = store
        self._sys = syscalls or linux()
        self._ctx: RunContext | None = None
        self._dir: Path | None = None
        self._overlay: overlay.Overlay | None = None
        self._mounts: list[Path] = []  # below the root, in the order they were made
        self._cgroup: CgroupManager | None = None
        self._env: dict[str, str] = {}
        self.scratch: Path | None = None  # the host side of /scratch

    def available(self) -> tuple[bool, str]:
        """Root (mounts and chroot) and the host's chroot binary."""
        if os.geteuid() != 0:
            return False, "needs root (mounts an overlay of the image and chroots into it)"
        if not os.access(CHROOT, os.X_OK):
            return False, f"{CHROOT} not found (Debian package coreutils)"
        return True, ""

    @property
    def root(self) -> Path:
        """The chroot: the image's layers plus an upper dir, mounted under the workdir."""
        if self._overlay is None:
            raise StateError("bare platform: prepare() has not run")
        return self._overlay.target

    def prepare(self, ctx: RunContext) -> None:
        """Mount the overlay root, /proc, /dev, /sys and /scratch; the cgroup when limits are set.

        Every mount is made private at once, so none propagates to or from the host.
        """
        store = self._store or ImageStore()
        digest = checked_digest(store, ctx)
        self._ctx = ctx
        self._dir = ctx.workdir / f"bare-{ctx.run_id}"
        self._dir.mkdir(parents=True, exist_ok=True)
        try:
            self._overlay = overlay.mount_overlay(
                store.layer_dirs(digest),
                self._dir / "upper",
                self._dir / "work",
                self._dir / "root",
            )
            # Private: nothing mounted below propagates out, nor does its unmount.
            self._sys.mount(None, str(self.root), None, MS_PRIVATE, None)
            self._mount_below(self.root / "proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            self._make_dev(self.root / "dev")
            self._mount_below(self.root / "sys", "/sys", None, MS_BIND, readonly=True)
            self.scratch = self._dir / "scratch"
            self.scratch.mkdir(exist_ok=True)
            (self.root / "scratch").mkdir(exist_ok=True)  # in the upper dir: the image has none
            self._mount_below(self.root / "scratch", str(self.scratch), None, MS_BIND)
            self._env = _image_env(store, digest)
            self._cgroup = self._make_cgroup(ctx)
        except BaseException:
            self.teardown()
            raise

    def _make_dev(self, dev: Path) -> None:
        """A tmpfs with copies of the host's standard device nodes, and a tmpfs at /dev/shm.

        Not a bind of the host's /dev: anything deleting the workdir (a crashed
        run's sweep, another test session's tmp cleanup) would then delete the
        host's device nodes through it. Copies (mknod, same numbers) behave the same.
        """
        self._mount_below(dev, "tmpfs", "tmpfs", MS_NOSUID, "mode=755,size=64k")
        for name in DEV_NODES:
            host = os.stat(f"/dev/{name}")
            os.mknod(dev / name, host.st_mode, host.st_rdev)
            os.chmod(dev / name, stat.S_IMODE(host.st_mode))  # mknod applies the umask
        for name, target in DEV_LINKS.items():
            os.symlink(target, dev / name)
        (dev / "shm").mkdir()
        self._mount_below(dev / "shm", "shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")

    def _mount_below(
        self,
        target: Path,
        source: str,
        fstype: str | None,
        flags: int,
        data: str | None = None,
        readonly: bool = False,
    ) -> None:
        self._sys.mount(source, str(target), fstype, flags, data)
        self._mounts.append(target)
        self._sys.mount(None, str(target), None, MS_PRIVATE, None)
        if readonly:  # MS_RDONLY is ignored on the first MS_BIND: a remount sets it
            self._sys.mount(None, str(target), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)

    def _make_cgroup(self, ctx: RunContext) -> CgroupManager | None:
        cpus = cpuset_for(ctx.limits)
        if cpus is None and ctx.limits.memory_bytes is None:
            return None
        manager = new_manager(f"/isobench-bare-{ctx.run_id}")
        manager.create()
        self._cgroup = manager  # teardown removes it even if set() fails
        manager.set(
            Resources(
                cpu=CpuResources(cpus=cpus) if cpus else None,
                memory=(
                    MemoryResources(limit=ctx.limits.memory_bytes)
                    if ctx.limits.memory_bytes
                    else None
                ),
            )
        )
        return manager

    def run(self, workload: Workload) -> Outcome:
        """chroot into the root and run the workload's argv (its host-side server first, on loopback)."""
        if self._dir is None:
            raise StateError("bare platform: prepare() has not run")
        return run_with_peer(workload, LOOPBACK, None, self.start_peer, self._dir, self._run_client)

    def start_peer(
        self, argv: list[str], netns_path: str | None, stdout: Path, stderr: Path
    ) -> subprocess.Popen[bytes]:
        """Start a host-side server chrooted into the root, in netns_path (None: the host's netns).

        Outside the platform's cgroup: the server is the host, not the platform measured.
        """
        command = [CHROOT, str(self.root), *argv]
        if netns_path is not None:
            command = [NSENTER, f"--net={netns_path}", *command]
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self._env,
                start_new_session=True,
            )

    def _run_client(self, workload: Workload) -> Outcome:
        assert self._dir is not None and self.scratch is not None
        reset_dir(self.scratch)
        reset_dir(self.root / "var" / "tmp")  # through the overlay: whiteouts, not upper edits
        argv = [CHROOT, str(self.root), *workload.argv]
        if self._cgroup is not None:
            dirs = list(dict.fromkeys(self._cgroup.paths().values()))
            argv = [HOST_SH, "-c", JOIN_CGROUP, "isobench-join", *dirs, "--", *argv]
        env = {**self._env, **dict(workload.env)}
        out_path, err_path = self._dir / "stdout", self._dir / "stderr"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,  # its own process group: killed as one
            )
        # Wait on a pidfd, not waitpid: the exit is seen without reaping, so the
        # group is killed (at the timeout, or what it left in the background, as a
        # container's end would) while the zombie still holds its pid.
        pidfd = os.pidfd_open(proc.pid)
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            timed_out = not poller.poll(workload.timeout_s * 1000)
            wall_s = time.perf_counter() - start
            self._kill(proc.pid)
        finally:
            os.close(pidfd)
        code = proc.wait()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        stderr = read_text(err_path)
        if timed_out:
            stderr += timeout_note(workload.timeout_s)
        return Outcome(
            exit_code=TIMED_OUT if timed_out else (128 - code if code < 0 else code),
            stdout=read_text(out_path),
            stderr=stderr,
            wall_s=wall_s,
            resources={
                "cpu_user_s": after.ru_utime - before.ru_utime,
                "cpu_system_s": after.ru_stime - before.ru_stime,
            },
        )

    def _kill(self, pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        if self._cgroup is not None:
            with contextlib.suppress(IsobenchError):
                self._cgroup.kill_all(signal.SIGKILL)

    def launch_latency(self) -> float:
        """posix_spawn of `chroot <root> /bin/true` to its exit (two execs: chroot, then true)."""
        argv = [CHROOT, str(self.root), "/bin/true"]
        start = time.perf_counter()
        pid = os.posix_spawn(CHROOT, argv, self._env)
        _, status = os.waitpid(pid, 0)
        elapsed = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise EnvironmentError_(f"bare: {' '.join(argv)} exited with status {status}")
        return elapsed

    def launch_burst(self, count: int) -> Burst:
        """count posix_spawns of `chroot <root> /bin/true` at once, each timed to its exit."""
        argv = [CHROOT, str(self.root), "/bin/true"]
        started: dict[int, float] = {}
        for _ in range(count):
            launched = time.perf_counter()
            started[os.posix_spawn(CHROOT, argv, self._env)] = launched
        return burst_of_children(started, "bare")

    def teardown(self) -> None:
        """Kill the cgroup's processes, unmount in reverse order, remove the cgroup and the dir.

        Every step is tried even when an earlier one fails; the first failure is raised.
        """
        errors: list[BaseException] = []
        if self._cgroup is not None:
            with contextlib.suppress(IsobenchError):
                self._cgroup.kill_all(signal.SIGKILL)
            _attempt(errors, self._cgroup.destroy)
            self._cgroup = None
        while self._mounts:
            _attempt(errors, _unmount, self._sys, self._mounts.pop())
        if self._overlay is not None:
            _attempt(errors, overlay.unmount, self._overlay, True, syscalls=self._sys)
            self._overlay = None
        if self._dir is not None:
            for point in reversed(mounts_under(self._dir)):  # what a failed unmount above left
                with contextlib.suppress(IsobenchError):
                    self._sys.umount2(point, MNT_DETACH)
            left = mounts_under(self._dir)
            if left:  # rmtree would reach into them
                errors.append(
                    EnvironmentError_(f"bare: still mounted after teardown: {', '.join(left)}")
                )
            else:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
        self.scratch = None
        if errors:
            raise errors[0]

    def describe(self) -> dict[str, object]:
        """Isolation (none), the root filesystem, the mounts, the cgroup and the limits."""
        ctx = self._ctx
        return {
            "name": self.name,
            "isolation": "none: host pid, network, ipc, uts and mount namespaces; chroot only",
            "launcher": f"{CHROOT} <root> <argv> (host coreutils); the tool is the image's file",
            "root_filesystem": "overlayfs: the image's layers + an upper dir under the run's workdir",
            "mounts": {
                "/proc": "proc of the host pid namespace",
                "/dev": "tmpfs with copies of the host's null, zero, full, random, urandom, tty",
                "/dev/shm": "a tmpfs of its own (size: the kernel default, half of RAM)",
                "/sys": "read-only bind of the host's /sys (without its submounts)",
                "/scratch": "bind of a host dir under the workdir, emptied before each run",
                "/var/tmp": "on the overlay root, emptied before each run",
            },
            "network": {
                "path": "loopback: the host's own network namespace (isobench adds no address "
                "there); the host-side server of a network benchmark listens on 127.0.0.1",
                "peer_address": LOOPBACK,
                "mtu": _loopback_mtu(),
            },
            "cgroup": self._cgroup.path if self._cgroup else None,
            "limits": limits_record(
                ctx.limits if ctx else Limits(),
                "host cgroup joined before exec (cpuset.cpus, memory limit)",
            ),
            "launch_latency": "posix_spawn of chroot <root> /bin/true to its exit",
            "image_digest": ctx.image_digest if ctx else None,
        }


def _loopback_mtu() -> int | None:
    try:
        return int(Path("/sys/class/net/lo/mtu").read_text())
    except (OSError, ValueError):
        return None


def _image_env(store: ImageStore, digest: str) -> dict[str, str]:
    """The image config's Env as a dict: what the container platforms give the process too."""
    config = store.config(digest).get("config", {})
    env = config.get("Env", []) if isinstance(config, dict) else []
    return dict(str(item).partition("=")[::2] for item in env)


def _attempt(errors: list[BaseException], fn: Callable[..., object], *args: Any, **kw: Any) -> None:
    """fn(*args, **kw), its IsobenchError or OSError appended to errors instead of raised."""
    try:
        fn(*args, **kw)
    except (IsobenchError, OSError) as exc:
        errors.append(exc)


def _unmount(syscalls: SyscallLayer, target: Path) -> None:
    """umount, detaching when busy; already gone is fine."""
    try:
        syscalls.umount2(str(target), 0)
    except OSFailure as e:
        if e.errno == errno.EBUSY:
            syscalls.umount2(str(target), MNT_DETACH)
        elif e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
