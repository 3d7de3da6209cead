"""PID 1 of a container: drop privileges, start the user process, then reap and forward signals.

The init stays as PID 1 (like tini / docker --init) so that orphans are reaped
and the container's exit status is the user process's, signal deaths as 128+N.
It runs after pivot_root: every module it needs is imported at the top.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal

from harness.errors import ContainerError
from harness.runtime import security
from harness.runtime import syscalls as sc
from harness.runtime.spec import Spec
from harness.runtime.syscalls import SyscallLayer

# Signals PID 1 passes on to the user process (tini's set: everything catchable
# that is not about the init itself).
FORWARDED_SIGNALS: tuple[int, ...] = tuple(
    s
    for s in signal.valid_signals()
    if isinstance(s, signal.Signals)
    and s
    not in (
        signal.SIGKILL,
        signal.SIGSTOP,
        signal.SIGCHLD,
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGILL,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGTSTP,
        # The init's own writes to a closed sync pipe (the `create` process has
        # exited) raise SIGPIPE; passed on, it would kill the user process.
        signal.SIGPIPE,
    )
)
EXEC_FAILED = 127


def send(fd: int, message: dict[str, object]) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(message) + "\n").encode())


def resolve_executable(arg0: str, env: tuple[str, ...]) -> str:
    """args[0] through the container's PATH (from process.env), as runc's exec.LookPath does."""
    if "/" in arg0:
        return arg0
    path = next((e[5:] for e in env if e.startswith("PATH=")), "/usr/local/bin:/usr/bin:/bin")
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", arg0)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ContainerError(f'exec: "{arg0}": executable file not found in $PATH')


def become_pid1(spec: Spec, sys: SyscallLayer, w_sync: int) -> int:
    """Drop privileges, start the user process, then reap and forward signals until it exits."""
    proc = spec.process
    child: list[int] = []
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child[0], signum)
        else:
            pending.append(signum)

    for signum in FORWARDED_SIGNALS:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, forward)
    executable = resolve_executable(proc.args[0], proc.env)
    security.finalize_process(proc, spec.linux.seccomp, sys, keep_fds=(w_sync,))
    env = dict(e.partition("=")[::2] for e in proc.env)
    # runc sets HOME from the container's /etc/passwd when the spec does not.
    env.setdefault("HOME", home_directory(proc.user.uid))
    try:
        child.append(
            os.posix_spawn(
                executable,
                list(proc.args),
                env,
                setsigdef=(*FORWARDED_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ),
                setsigmask=(),
            )
        )
    except OSError as exc:
        message = f'exec: "{proc.args[0]}": {exc.strerror}'
        send(w_sync, {"type": "error", "message": message})
        os.write(2, f"isobench-runtime: {message}\n".encode())
        return EXEC_FAILED
    send(w_sync, {"type": "started", "pid": child[0]})
    os.close(w_sync)
    for signum in pending:
        forward(signum, None)
    return _reap_until(child[0])


def home_directory(uid: int, passwd: str = "/etc/passwd") -> str:
    """The home directory of uid in the (container's) passwd file, "/" when absent."""
    try:
        with open(passwd) as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2] == str(uid):
                    return fields[5] or "/"
    except OSError:
        pass
    return "/"


INIT_NAME = "isobench-init"


def rename_process(name: str, sys: SyscallLayer) -> None:
    """Show `name` as this process's command line (and comm), as setproctitle does.

    The init is a fork of the launching program; without this, `ps` inside the
    container would show that program's argv, host paths included. The argv
    area at /proc/self/stat's arg_start..arg_end is overwritten in place;
    CPython keeps its own decoded copy of argv, so nothing reads the old bytes.
    """
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # Fields 48 and 49 (1-based) of stat; `fields` starts at field 3.
    arg_start, arg_end = int(fields[45]), int(fields[46])
    size = arg_end - arg_start
    raw = name.encode()[: max(size - 1, 0)]
    if size > 0:
        ctypes.memmove(arg_start, raw + b"\0" * (size - len(raw)), size)
    comm = ctypes.create_string_buffer(name.encode()[:15])
    sys.prctl(sc.PR_SET_NAME, ctypes.addressof(comm))


def _reap_until(main_pid: int) -> int:
    """Reap every child (orphans re-parent to PID 1); return when the main one has exited."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        if pid == main_pid:
            return exit_code(status)


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N for death by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)
