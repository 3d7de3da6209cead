"""The ordered steps that turn a validated spec into a container's PID 1.

Parent side (`spawn`): fork the container's init, in a new PID namespace, and
read its progress over a sync pipe. Child side (`_init_steps`), in order:

    cgroup -> namespaces -> [parent: id maps, prestart/createRuntime hooks]
    -> / private -> rootfs bind -> spec mounts -> /dev -> createContainer hooks
    -> pivot_root -> sysctl -> masked/readonly paths -> hostname -> cwd
    -> "created" -> [wait for start] -> startContainer hooks
    -> drop privileges (rlimits, user, capabilities, no_new_privs, seccomp)
    -> spawn the user process -> stay as PID 1: reap orphans, forward signals (pid1.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from harness.errors import ContainerError, IsobenchError, UserError
from harness.runtime import pid1, rootfs
from harness.runtime import syscalls as sc
from harness.runtime.cgroups.base import CgroupManager
from harness.runtime.hooks import run_hooks
from harness.runtime.pid1 import send
from harness.runtime.spec import Spec
from harness.runtime.syscalls import SyscallLayer

# unshare(CLONE_NEWPID) changes the namespace of the *next* fork of the whole
# process; this lock keeps two threads' creates from interleaving there.
_PID_NS_LOCK = threading.Lock()
_OWN_PID_NS_FD: int | None = None


class _Reader:
    """Reads newline-framed JSON messages from the sync pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def next(self) -> dict[str, object] | None:
        while b"\n" not in self.buf:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        message: dict[str, object] = json.loads(line)
        return message


@dataclass(frozen=True)
class SpawnRequest:
    """Everything the init process needs; built by the lifecycle code in the parent."""

    spec: Spec
    container_id: str
    cgroup: CgroupManager | None
    fifo: str | None  # exec FIFO to wait on before the user process starts; None = start at once
    state_for_hooks: Callable[[int, str], dict[str, object]]
    # process.terminal: where the init sends the pty master it makes.
    console_sock: int | None = None
    # overlayfs mount data: the root is mounted as this overlay inside the container's
    # own mount namespace (it vanishes with it; nothing on the host to unmount or leak).
    rootfs_overlay: str | None = None
    # fds to become the container's stdin, stdout and stderr (None: the runtime's own).
    stdio: tuple[int, int, int] | None = None


@dataclass
class Spawned:
    """The parent's handle on a created container init."""

    pid: int
    sync_fd: int  # read end of the sync pipe; "started" / exec errors arrive here
    reader: _Reader  # holds what was read past "created"


def _own_pid_ns_fd() -> int:
    global _OWN_PID_NS_FD
    if _OWN_PID_NS_FD is None:
        _OWN_PID_NS_FD = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    return _OWN_PID_NS_FD


def _preload_for_child(req: SpawnRequest) -> None:
    """Import in the parent what the init imports lazily.

    After pivot_root the init cannot find modules, and in a user namespace it
    may not be allowed to read the host's standard library at all.
    """
    net = req.spec.linux.namespace("network")
    if req.console_sock is not None or (net is not None and net.path is None):
        import fcntl  # noqa: F401
        import socket  # noqa: F401
        import struct  # noqa: F401
        import termios  # noqa: F401
    if req.spec.hooks.start_container or req.spec.hooks.create_container:
        import subprocess  # noqa: F401
    if req.spec.linux.seccomp is not None:
        from harness.runtime import seccomp

        seccomp.load_library()


def spawn(req: SpawnRequest, sys: SyscallLayer) -> Spawned:
    """Fork the container's init and return once it reports "created" (or raise)."""
    spec = req.spec
    _preload_for_child(req)
    r_sync, w_sync = os.pipe2(os.O_CLOEXEC)
    r_go, w_go = os.pipe2(os.O_CLOEXEC)
    pid_ns = spec.linux.namespace("pid")
    user_ns = spec.linux.namespace("user")
    # The new PID namespace is made here, in the parent, so that the forked init
    # is PID 1 at once with no second fork; the parent then returns to its own
    # namespace. With a user namespace the PID namespace must be owned by it,
    # so then the child makes it and forks once more.
    parent_makes_pid_ns = pid_ns is not None and user_ns is None
    if pid_ns is not None and not parent_makes_pid_ns:
        # The init will be our grandchild; as a subreaper we inherit it when the
        # intermediate exits, and can wait for its exit status (runc run does this).
        sys.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    with _PID_NS_LOCK:
        if parent_makes_pid_ns:
            assert pid_ns is not None
            _enter_pid_ns_for_children(pid_ns.path, sys)
        pid = -1
        try:
            pid = os.fork()
        finally:
            if parent_makes_pid_ns and pid != 0:
                sys.setns(_own_pid_ns_fd(), sc.CLONE_NEWPID)
    if pid == 0:  # the container's init
        os.close(r_sync)
        os.close(w_go)
        code = 1
        try:
            code = _init_steps(
                req,
                sys,
                w_sync,
                r_go,
                child_makes_pid_ns=pid_ns is not None and not parent_makes_pid_ns,
            )
        except IsobenchError as exc:
            send(w_sync, {"type": "error", "message": str(exc), "user": isinstance(exc, UserError)})
        except BaseException as exc:
            send(
                w_sync, {"type": "error", "message": f"{type(exc).__name__}: {exc}", "user": False}
            )
        os._exit(code)

    os.close(w_sync)
    os.close(r_go)
    reader = _Reader(r_sync)
    init_pid = pid
    try:
        while True:
            message = reader.next()
            if message is None:
                raise ContainerError("container init exited before it was created")
            kind = message.get("type")
            if kind == "error":
                text = str(message.get("message"))
                raise UserError(text) if message.get("user") else ContainerError(text)
            if kind == "need-maps":
                _write_id_maps(pid, spec)
                send(w_go, {"type": "go"})
            elif kind == "run-hooks":
                state = req.state_for_hooks(pid, "created")
                run_hooks("prestart", spec.hooks.prestart, state)
                run_hooks("createRuntime", spec.hooks.create_runtime, state)
                send(w_go, {"type": "go"})
            elif kind == "forked":
                # User-namespace path: the init's child is PID 1; reap the intermediate.
                init_pid = int(message["pid"])  # type: ignore[call-overload]
                os.waitpid(pid, 0)
            elif kind == "created":
                break
    except BaseException:
        _kill_and_reap(init_pid)
        if init_pid != pid:
            _kill_and_reap(pid)
        os.close(r_sync)
        os.close(w_go)
        raise
    os.close(w_go)
    return Spawned(pid=init_pid, sync_fd=r_sync, reader=reader)


def wait_started(spawned: Spawned) -> None:
    """Block until the init has spawned the user process, or raise what went wrong."""
    message = spawned.reader.next()
    if message is None:
        return  # init exited without a word (killed); its exit status tells the rest
    if message.get("type") == "error":
        raise ContainerError(str(message.get("message")))


def _kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _enter_pid_ns_for_children(path: str | None, sys: SyscallLayer) -> None:
    if path is None:
        sys.unshare(sc.CLONE_NEWPID)
        return
    fd = _open_ns(path)
    try:
        sys.setns(fd, sc.CLONE_NEWPID)
    finally:
        os.close(fd)


def _open_ns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UserError(
            f"config.json: linux.namespaces: cannot open namespace path {path}: {exc.strerror}; "
            "accepted: a /proc/<pid>/ns/<type> file or a bind mount of one"
        ) from None


def _write_id_maps(pid: int, spec: Spec) -> None:
    """Written by the parent, which has CAP_SETUID/CAP_SETGID in the parent user namespace."""
    for name, mappings in (
        ("uid_map", spec.linux.uid_mappings),
        ("gid_map", spec.linux.gid_mappings),
    ):
        text = "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in mappings)
        if text:
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)


# ------------------------------------------------------------------ child side


def _init_steps(
    req: SpawnRequest, sys: SyscallLayer, w_sync: int, r_go: int, child_makes_pid_ns: bool
) -> int:
    spec = req.spec
    os.umask(0o022)
    # The init must not be dumpable: its /proc/1/exe is the host's interpreter
    # (runc CVE-2019-5736; runc init does the same).
    sys.prctl(sc.PR_SET_DUMPABLE, 0)
    pid1.rename_process(pid1.INIT_NAME, sys)
    if req.stdio is not None:
        for target, fd in enumerate(req.stdio):
            if fd != target:
                os.dup2(fd, target)
    if req.cgroup is not None:
        req.cgroup.apply(0)
    go = _Reader(r_go)
    _enter_namespaces(spec, sys, w_sync, go)
    if child_makes_pid_ns:
        pid = os.fork()
        if pid != 0:
            send(w_sync, {"type": "forked", "pid": pid})
            return 0
    if spec.hooks.prestart or spec.hooks.create_runtime:
        send(w_sync, {"type": "run-hooks"})
        if go.next() is None:
            return 1
    _prepare_rootfs(req, sys)
    fifo_fd = os.open(req.fifo, os.O_PATH | os.O_CLOEXEC) if req.fifo else None
    rootfs.pivot_root(spec.root.path, sys)
    _finish_filesystem(spec, sys)
    if spec.hostname is not None:
        sys.sethostname(spec.hostname)
    if spec.domainname is not None:
        sys.setdomainname(spec.domainname)
    if req.console_sock is not None:
        _make_console(req.console_sock, sys)
    rootfs.enter_cwd(spec.process.cwd)
    send(w_sync, {"type": "created"})
    if fifo_fd is not None:
        _wait_for_start(fifo_fd)
    run_hooks("startContainer", spec.hooks.start_container, req.state_for_hooks(1, "running"))
    return pid1.become_pid1(spec, sys, w_sync)


TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431


def _make_console(sock: int, sys: SyscallLayer) -> None:
    """process.terminal: a pty from the container's own devpts becomes stdio and controlling tty.

    It must come from the container's devpts (opened after pivot_root), or
    ttyname() inside would name a host /dev/pts entry that does not exist there.
    The master goes back to the runtime over `sock` (runc does the same).
    """
    import fcntl  # preloaded by _preload_for_child: after pivot_root no module can be found
    import socket
    import struct
    import termios

    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0\0\0\0"))[0]
    os.setsid()
    slave_path = f"/dev/pts/{number}"
    slave = os.open(slave_path, os.O_RDWR)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    # The OCI spec: with a terminal, /dev/console is the pty (runc's mountConsole).
    os.close(os.open("/dev/console", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    sys.mount(slave_path, "/dev/console", None, sc.MS_BIND, None)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)
    socket.send_fds(socket.socket(fileno=sock), [b"/dev/ptmx"], [master])
    os.close(master)


def _enter_namespaces(spec: Spec, sys: SyscallLayer, w_sync: int, go: _Reader) -> None:
    """Join the namespaces that have a path, create the others (user first: it owns the rest)."""
    user_ns = spec.linux.namespace("user")
    if user_ns is not None:
        if user_ns.path:
            fd = _open_ns(user_ns.path)
            sys.setns(fd, sc.CLONE_NEWUSER)
            os.close(fd)
        else:
            sys.unshare(sc.CLONE_NEWUSER)
            send(w_sync, {"type": "need-maps"})
            if go.next() is None:
                raise ContainerError("runtime went away while writing id maps")
        # Become root of the new user namespace, so that the rest is allowed.
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    flags = 0
    for ns in spec.linux.namespaces:
        if ns.type == "user":
            continue
        if ns.type == "pid" and user_ns is None:
            continue  # made by the parent before the fork
        if ns.path:
            fd = _open_ns(ns.path)
            sys.setns(fd, sc.NAMESPACE_FLAGS[ns.type])
            os.close(fd)
        else:
            flags |= sc.NAMESPACE_FLAGS[ns.type]
    if flags:
        sys.unshare(flags)
    if flags & sc.CLONE_NEWNET:
        _loopback_up()


def _loopback_up() -> None:
    """A new network namespace has `lo` down; runc brings it up (its "loopback" network), so do we."""
    import fcntl  # preloaded by _preload_for_child
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def _prepare_rootfs(req: SpawnRequest, sys: SyscallLayer) -> None:
    spec = req.spec
    in_user_ns = spec.linux.namespace("user") is not None
    rootfs.set_root_propagation(spec, sys)
    if req.rootfs_overlay is not None:
        sys.mount("overlay", spec.root.path, "overlay", 0, req.rootfs_overlay)
    else:
        rootfs.bind_rootfs(spec.root.path, sys)
    cgroup = rootfs.CgroupView(
        version=req.cgroup.version if req.cgroup is not None else 2,
        paths=req.cgroup.paths() if req.cgroup is not None else {},
        namespaced=spec.linux.namespace("cgroup") is not None,
    )
    dev_is_tmpfs = False
    for mount in spec.mounts:
        rootfs.mount_one(spec.root.path, mount, cgroup, sys)
        if mount.destination.rstrip("/") == "/dev" and mount.type == "tmpfs":
            dev_is_tmpfs = True
    if dev_is_tmpfs or spec.linux.devices:
        rootfs.create_devices(spec.root.path, spec.linux.devices, sys, bind=in_user_ns)
    if spec.hooks.create_container:
        run_hooks(
            "createContainer",
            spec.hooks.create_container,
            req.state_for_hooks(os.getpid(), "created"),
        )


def _finish_filesystem(spec: Spec, sys: SyscallLayer) -> None:
    """After pivot_root: sysctls (before /proc/sys turns read-only), masks, read-only paths."""
    rootfs.write_sysctls(spec.linux.sysctl)
    rootfs.mask_paths(spec.linux.masked_paths, sys)
    rootfs.readonly_paths(spec.linux.readonly_paths, sys)
    if spec.root.readonly:
        rootfs.remount_root_readonly(sys)


def _wait_for_start(fifo_fd: int) -> None:
    """Block until `start` opens the FIFO for reading (runc's exec.fifo handshake)."""
    fd = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
    os.write(fd, b"0")
    os.close(fd)
    os.close(fifo_fd)
