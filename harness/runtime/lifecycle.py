"""The runtime's in-process API: the OCI lifecycle operations over a state directory.

`Runtime(root).run(bundle, id)` is what the container platform calls; the CLI
(`isobench-runtime`) is a thin shell over the same methods. Each operation
checks the container's status first (state.require), so an illegal transition
raises StateError and changes nothing.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.errors import ContainerError, IsobenchError, StateError, UserError
from harness.runtime import state as st
from harness.runtime.cgroups.base import CgroupManager
from harness.runtime.hooks import hook_from_dict, hook_to_dict, run_hooks
from harness.runtime.pid1 import exit_code
from harness.runtime.rootfs import STANDARD_DEVICE_RULES
from harness.runtime.spawn import Spawned, SpawnRequest, spawn, wait_started
from harness.runtime.spec import DeviceRule, Resources, Spec
from harness.runtime.spec_load import load_bundle
from harness.runtime.syscalls import SyscallLayer, linux

CGROUP_PARENT = (
    "/isobench-runtime"  # default cgroupsPath is <this>/<id>: `isobench cleanup` sweeps it
)
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0

ManagerFactory = Callable[[str], CgroupManager]


def _default_manager(cgroups_path: str) -> CgroupManager:
    from harness.runtime.cgroups.base import new_manager

    return new_manager(cgroups_path)


@dataclass
class Runtime:
    """One state directory's worth of containers."""

    root: str = field(default_factory=st.default_root)
    sys: SyscallLayer = field(default_factory=linux)
    cgroups: ManagerFactory = _default_manager
    # Inits this process forked: it must reap them (and can report their exit status).
    children: dict[str, Spawned] = field(default_factory=dict)

    # ------------------------------------------------------------- create/start

    def create(
        self,
        bundle: str | Spec,
        container_id: str,
        pid_file: str | None = None,
        start_now: bool = False,
        console_socket: str | None = None,
        console: Console | None = None,
        rootfs_overlay: str | None = None,
        stdio: tuple[int, int, int] | None = None,
    ) -> st.ContainerState:
        """OCI `create`: everything but the user process, which waits for `start` (unless start_now).

        With process.terminal the container gets a new pty: its master goes to
        `console_socket` (runc's protocol: SCM_RIGHTS over a unix socket), or,
        for a foreground run, into `console`, which relays it to this process's stdio.
        rootfs_overlay (overlayfs mount data) mounts the root inside the container's
        mount namespace instead of binding root.path (harness.image.containers uses it).
        stdio: fds that become the container's 0, 1, 2 (platforms capture tool output).
        """
        spec = bundle if isinstance(bundle, Spec) else load_bundle(bundle)
        state_dir = st.StateDir(self.root, container_id)
        if spec.process.terminal and console_socket is None and console is None:
            raise UserError(
                "config.json: process.terminal is true but no --console-socket was given; "
                "accepted: terminal false, or a console socket (or a foreground `run`)"
            )
        if not spec.process.terminal and console_socket is not None:
            raise UserError(
                "--console-socket given but config.json: process.terminal is false; accepted: one or the other"
            )
        state_dir.claim()
        cgroup: CgroupManager | None = None
        spawned: Spawned | None = None
        ours = theirs = None
        try:
            if spec.process.terminal:
                import socket

                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            cgroups_path = spec.linux.cgroups_path or f"{CGROUP_PARENT}/{container_id}"
            cgroup = self.cgroups(cgroups_path)
            cgroup.create()
            cgroup.set(_with_standard_devices(spec.linux.resources))
            fifo = None
            if not start_now:
                fifo = str(state_dir.fifo)
                os.mkfifo(fifo, 0o600)
            annotations = dict(spec.annotations)

            def state_for_hooks(pid: int, status: str) -> dict[str, object]:
                return {
                    "ociVersion": st.OCI_VERSION,
                    "id": container_id,
                    "status": status,
                    "pid": pid,
                    "bundle": spec.bundle,
                    "annotations": annotations,
                }

            request = SpawnRequest(
                spec,
                container_id,
                cgroup,
                fifo,
                state_for_hooks,
                theirs.fileno() if theirs else None,
                rootfs_overlay,
                stdio,
            )
            spawned = spawn(request, self.sys)
            if ours is not None:
                import socket

                _, fds, _, _ = socket.recv_fds(ours, 64, 1)
                if console_socket is not None:
                    _send_console(console_socket, fds[0])
                    os.close(fds[0])
                elif console is not None:
                    console.master = fds[0]
            start_time = st.proc_start_time(spawned.pid)
            record = st.ContainerState(
                id=container_id,
                pid=spawned.pid,
                pid_start_time=start_time if start_time is not None else -1,
                bundle=spec.bundle,
                rootfs=spec.root.path,
                created=st.now_rfc3339(),
                cgroups_path=cgroups_path,
                cgroup_paths=cgroup.paths(),
                annotations=annotations,
                poststart_hooks=[hook_to_dict(h) for h in spec.hooks.poststart],
                poststop_hooks=[hook_to_dict(h) for h in spec.hooks.poststop],
            )
            state_dir.write(record)
            if pid_file:
                _write_pid_file(pid_file, spawned.pid)
        except BaseException:
            if spawned is not None:
                _kill_reap(spawned.pid)
                os.close(spawned.sync_fd)
            if cgroup is not None:
                with contextlib.suppress(IsobenchError):
                    cgroup.destroy()
            state_dir.remove()
            raise
        finally:
            for end in (ours, theirs):
                if end is not None:
                    end.close()
        self.children[container_id] = spawned
        return record

    def start(self, container_id: str) -> None:
        """OCI `start`: release the waiting init to exec the user process; run poststart hooks."""
        state_dir = st.StateDir(self.root, container_id)
        record = state_dir.load()
        st.require(self._status(record, state_dir), "start", container_id)
        try:
            fd = os.open(state_dir.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StateError(f"container {container_id} has already been started") from None
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not select.select([fd], [], [], 0.05)[0]:
                if st.proc_start_time(record.pid) != record.pid_start_time:
                    raise ContainerError(f"container {container_id} init exited before start")
                if time.monotonic() > deadline:
                    raise ContainerError(f"container {container_id} did not take the start signal")
            os.read(fd, 1)
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(state_dir.fifo)
        spawned = self.children.get(container_id)
        if spawned is not None:
            wait_started(spawned)
        self._poststart(record)

    def run(
        self,
        bundle: str | Spec,
        container_id: str,
        pid_file: str | None = None,
        on_created: Callable[[int], None] | None = None,
        keep: bool = False,
        rootfs_overlay: str | None = None,
        stdio: tuple[int, int, int] | None = None,
    ) -> int:
        """create + start + wait + delete; returns the exit status (128+N for signal N).

        on_created(pid) runs as soon as the init exists (the CLI installs its
        signal forwarding there); keep=True leaves the stopped container for `delete`.
        """
        console = Console()
        record = self.create(
            bundle,
            container_id,
            pid_file=pid_file,
            start_now=True,
            console=console,
            rootfs_overlay=rootfs_overlay,
            stdio=stdio,
        )
        try:
            if console.master >= 0:
                console.relay()
            if on_created is not None:
                on_created(record.pid)
            wait_started(self.children[container_id])
            self._poststart(record)
            return self.wait(container_id)
        finally:
            console.close()
            if not keep:
                self.delete(container_id, force=True)

    def wait(self, container_id: str) -> int:
        """Wait for a container whose init this process forked; its exit status."""
        spawned = self.children.get(container_id)
        if spawned is None:
            raise StateError(
                f"container {container_id} was not created by this process: cannot wait for it"
            )
        status = _waitpid(spawned.pid)
        self._forget(container_id)
        if status is None:
            raise ContainerError(
                f"container {container_id}: its init is not a child of this process"
            )
        return exit_code(status)

    # ------------------------------------------------------------ kill/delete

    def kill(self, container_id: str, signum: int, all_processes: bool = False) -> None:
        """OCI `kill`: send a signal to the init (or to every process of the container)."""
        state_dir = st.StateDir(self.root, container_id)
        record = state_dir.load()
        status = self._status(record, state_dir)
        if status == st.STOPPED:
            raise StateError(f"container {container_id} is stopped: cannot kill it")
        if all_processes:
            self.cgroups(record.cgroups_path).kill_all(signum)
            return
        try:
            os.kill(record.pid, signum)
        except ProcessLookupError:
            raise StateError(f"container {container_id} is stopped: cannot kill it") from None

    def delete(self, container_id: str, force: bool = False) -> None:
        """OCI `delete`: remove what create made; --force kills a container that is not stopped."""
        state_dir = st.StateDir(self.root, container_id)
        record = state_dir.load()
        status = self._status(record, state_dir)
        if status != st.STOPPED:
            if not force:
                raise StateError(
                    f"container {container_id} is {status}: cannot delete it (stop it first, or --force)"
                )
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
        self._await_exit(container_id, record)
        cgroup = self.cgroups(record.cgroups_path)
        with contextlib.suppress(IsobenchError):
            cgroup.kill_all(signal.SIGKILL)  # stragglers when the container had no PID namespace
        cgroup.destroy()
        state_dir.remove()
        self._run_logged("poststop", record.poststop_hooks, record, st.STOPPED)

    def pause(self, container_id: str) -> None:
        """Freeze every process of the container (cgroup freezer)."""
        state_dir = st.StateDir(self.root, container_id)
        record = state_dir.load()
        st.require(self._status(record, state_dir), "pause", container_id)
        self.cgroups(record.cgroups_path).freeze()

    def resume(self, container_id: str) -> None:
        """Thaw a paused container."""
        state_dir = st.StateDir(self.root, container_id)
        record = state_dir.load()
        st.require(self._status(record, state_dir), "resume", container_id)
        self.cgroups(record.cgroups_path).thaw()

    # ---------------------------------------------------------------- queries

    def state(self, container_id: str) -> dict[str, object]:
        """OCI `state`: the state document."""
        state_dir = st.StateDir(self.root, container_id)
        record = state_dir.load()
        return st.oci_state(record, self._status(record, state_dir))

    def list(self) -> builtins.list[dict[str, object]]:
        """Every container in this root, with its status."""
        out: list[dict[str, object]] = []
        if not os.path.isdir(self.root):
            return out
        for name in sorted(os.listdir(self.root)):
            with contextlib.suppress(IsobenchError, OSError, ValueError, TypeError):
                out.append(self.state(name))
        return out

    # --------------------------------------------------------------- helpers

    def _status(self, record: st.ContainerState, state_dir: st.StateDir) -> str:
        spawned = self.children.get(record.id)
        if spawned is not None:
            # Our own child: reap it if it has exited, or it stays a zombie.
            with contextlib.suppress(ChildProcessError):
                pid, _ = os.waitpid(spawned.pid, os.WNOHANG)
                if pid:
                    self._forget(record.id)
        return st.status_of(record, state_dir, frozen=_is_frozen(record))

    def _await_exit(self, container_id: str, record: st.ContainerState) -> None:
        if container_id in self.children:
            reaped = _waitpid(self.children[container_id].pid) is not None
            self._forget(container_id)
            if reaped:
                return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while st.proc_start_time(record.pid) == record.pid_start_time:
            if time.monotonic() > deadline:
                raise ContainerError(
                    f"container {container_id} init {record.pid} did not exit after SIGKILL"
                )
            time.sleep(0.002)

    def _forget(self, container_id: str) -> None:
        spawned = self.children.pop(container_id, None)
        if spawned is not None:
            with contextlib.suppress(OSError):
                os.close(spawned.sync_fd)

    def _poststart(self, record: st.ContainerState) -> None:
        self._run_logged("poststart", record.poststart_hooks, record, st.RUNNING)

    def _run_logged(
        self,
        phase: str,
        hooks: builtins.list[dict[str, object]],
        record: st.ContainerState,
        status: str,
    ) -> None:
        """poststart and poststop failures are warnings: the spec says the lifecycle continues."""
        if not hooks:
            return
        doc = st.oci_state(record, status)
        try:
            run_hooks(phase, [hook_from_dict(h) for h in hooks], doc)
        except ContainerError as exc:
            os.write(2, f"isobench-runtime: warning: {exc}\n".encode())


def _with_standard_devices(resources: Resources | None) -> Resources:
    """Deny all, the spec's device rules, then the standard devices (runc appends its AllowedDevices too)."""
    resources = resources or Resources()
    rules = (DeviceRule(allow=False), *resources.devices, *STANDARD_DEVICE_RULES)
    return dataclasses.replace(resources, devices=rules)


def _is_frozen(record: st.ContainerState) -> bool:
    for controller, path in record.cgroup_paths.items():
        name = (
            "freezer.state"
            if controller == "freezer"
            else ("cgroup.freeze" if controller == "" else None)
        )
        if name is None:
            continue
        try:
            with open(os.path.join(path, name)) as f:
                value = f.read().strip()
        except OSError:
            return False
        return value in ("FROZEN", "1")
    return False


def _waitpid(pid: int) -> int | None:
    """The wait status of our child pid, or None if it is not our child (never a made-up 0)."""
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def _kill_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _write_pid_file(path: str, pid: int) -> None:
    """runc writes the bare number, atomically (tools poll for the file)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.replace(tmp, path)


@dataclass
class Console:
    """A foreground run's pty master, relayed to and from this process's stdio."""

    master: int = -1
    _threads: list[Any] = field(default_factory=list)

    def relay(self) -> None:
        """Copy stdin -> pty and pty -> stdout in background threads until the pty closes."""
        import threading

        out = threading.Thread(target=self._copy, args=(self.master, 1), daemon=True)
        out.start()
        self._threads.append(out)
        # stdin is not joined: a reader blocked on a terminal must not hold up exit.
        threading.Thread(target=self._copy, args=(0, self.master), daemon=True).start()

    def close(self) -> None:
        """Wait for the output to drain (the pty reports EIO once every slave fd is closed)."""
        for thread in self._threads:
            thread.join(timeout=2.0)
        if self.master >= 0:
            os.close(self.master)
            self.master = -1

    @staticmethod
    def _copy(src: int, dst: int) -> None:
        while True:
            try:
                data = os.read(src, 65536)
            except OSError:
                return
            if not data:
                return
            try:
                os.write(dst, data)
            except OSError:
                return


def _send_console(socket_path: str, master: int) -> None:
    """runc's console-socket protocol: the pty master as SCM_RIGHTS, name "/dev/ptmx"."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(socket_path)
        except OSError as exc:
            raise UserError(
                f"--console-socket {socket_path}: cannot connect: {exc.strerror}; accepted: a listening unix socket"
            ) from None
        socket.send_fds(sock, [b"/dev/ptmx"], [master])
