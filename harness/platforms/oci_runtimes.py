"""External OCI runtimes (runc, crun) driven through their CLIs, for comparison.

crun refuses cgroup v1-hybrid hosts ("cgroups in hybrid mode not supported")
because a cgroup2 mount sits at /sys/fs/cgroup/unified. On such hosts crun is
run from a helper process in a private mount namespace where that one mount is
detached, so crun sees plain cgroup v1, like runc and isobench do. The host's
mounts are untouched, and the fact is recorded in `describe()`.

Two ways to run a container: `run()` times a launch-to-exit and raises when it
fails (the startup benchmarks), `execute()` runs a workload with its output in
files and a timeout, and reports whatever happened (the oci platform).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from harness.errors import IsobenchError
from harness.platforms.burst import Burst, burst_of_children
from harness.runtime import syscalls as sc

UNIFIED = "/sys/fs/cgroup/unified"
HYBRID_REFUSAL = "hybrid mode not supported"
TIMED_OUT = 124  # the exit code timeout(1) gives, used for a run stopped at its timeout
CLEANUP_TIMEOUT_S = 30.0


def _is_hybrid() -> bool:
    return os.path.ismount(UNIFIED)


@dataclass(frozen=True)
class Execution:
    """One container run through the CLI: its exit status, wall time and the CPU of what ran it."""

    exit_code: int  # the container process's status (the runtime's own, should it fail first)
    wall_s: float
    timed_out: bool
    stderr: str  # the runtime's stderr when it was not sent to a file
    cpu_user_s: float  # reaped children of whichever process ran the CLI: runtime + container
    cpu_system_s: float


@dataclass
class ReferenceRuntime:
    """One external runtime: `run(bundle, id)` runs a container to completion and times it."""

    name: str
    root: str
    binary: str | None = None
    _helper: _PrivateNsHelper | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.binary = self.binary or shutil.which(self.name)

    @property
    def hides_cgroup2(self) -> bool:
        """Whether containers run from the private mount namespace without the cgroup2 mount."""
        return self._helper is not None

    def available(self, bundle: str) -> tuple[bool, str]:
        """Whether this runtime runs `bundle` here; the reason when it does not."""
        if self.binary is None:
            return False, f"{self.name} not installed (Debian package {self.name})"
        try:
            code, err = self._run_once(bundle, f"isobench-probe-{os.getpid()}")
            if code != 0 and self.name == "crun" and HYBRID_REFUSAL in err and _is_hybrid():
                self._helper = _PrivateNsHelper()
                code, err = self._run_once(bundle, f"isobench-probe-{os.getpid()}-ns")
        except (OSError, RuntimeError) as exc:
            return False, f"{self.name}: {exc}"
        if code != 0:
            return (
                False,
                f"{self.name} run failed: {err.strip().splitlines()[-1] if err.strip() else code}",
            )
        return True, ""

    def argv(self, bundle: str, container_id: str) -> list[str]:
        """The command line that runs one container from bundle in the foreground."""
        assert self.binary is not None
        return [self.binary, "--root", self.root, "run", "--bundle", bundle, container_id]

    def run(self, bundle: str, container_id: str) -> float:
        """Seconds from launch to exit of one container; raises if it fails."""
        if self._helper is not None:
            return self._helper.timed(self.argv(bundle, container_id))
        start = time.perf_counter()
        proc = subprocess.run(self.argv(bundle, container_id), capture_output=True, check=False)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(
                f"{self.name} run {container_id}: {proc.stderr.decode(errors='replace')}"
            )
        return elapsed

    def execute(
        self,
        bundle: str,
        container_id: str,
        *,
        stdout: str | None = None,
        stderr: str | None = None,
        timeout_s: float | None = None,
    ) -> Execution:
        """Run one container to completion, stdout/stderr into those files; never raises for its status.

        At the timeout the container is force-deleted (`delete --force` kills it
        and removes its cgroup and state), so nothing outlives the call.
        """
        assert self.binary is not None
        request = _Request(
            argv=self.argv(bundle, container_id),
            cleanup=[self.binary, "--root", self.root, "delete", "--force", container_id],
            stdout=stdout,
            stderr=stderr,
            timeout_s=timeout_s,
        )
        return self._helper.execute(request) if self._helper is not None else _execute(request)

    def burst(self, runs: list[tuple[str, str]]) -> Burst:
        """`run` of each (bundle, container id) started at once, each timed to its exit."""
        argvs = [self.argv(bundle, container_id) for bundle, container_id in runs]
        return self._helper.burst(argvs) if self._helper is not None else spawn_burst(argvs)

    def force_delete(self, container_id: str) -> None:
        """`delete --force`: kill the container if it still runs and remove its state and cgroup."""
        assert self.binary is not None
        argv = [self.binary, "--root", self.root, "delete", "--force", container_id]
        request = _Request(argv=argv, cleanup=argv, timeout_s=CLEANUP_TIMEOUT_S)
        if self._helper is not None:
            self._helper.execute(request)
        else:
            _execute(request)

    def _run_once(self, bundle: str, container_id: str) -> tuple[int, str]:
        if self._helper is not None:
            try:
                self._helper.timed(self.argv(bundle, container_id))
                return 0, ""
            except RuntimeError as exc:
                return 1, str(exc)
        proc = subprocess.run(self.argv(bundle, container_id), capture_output=True, check=False)
        return proc.returncode, proc.stderr.decode(errors="replace")

    def version(self) -> str:
        """The first line of `<runtime> --version`, or "" when it cannot be run."""
        if not self.binary:
            return ""
        try:
            out = subprocess.run(
                [self.binary, "--version"], capture_output=True, text=True, check=False, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.splitlines()[0] if out.stdout else ""

    def describe(self) -> dict[str, object]:
        """Recorded with results: version and how it was run."""
        return {
            "name": self.name,
            "version": self.version(),
            "private_mount_ns_without_cgroup2": self._helper is not None,
        }

    def close(self) -> None:
        """Stop the helper process, if one was started."""
        if self._helper is not None:
            self._helper.close()
            self._helper = None


@dataclass(frozen=True)
class _Request:
    """What `_execute` runs; plain data, so it crosses to the helper process as JSON."""

    argv: list[str]
    cleanup: list[str]  # run at the timeout, before the CLI is waited for again
    stdout: str | None = None  # a file path; None: discarded
    stderr: str | None = None  # a file path; None: returned in Execution.stderr
    timeout_s: float | None = None


def _execute(request: _Request) -> Execution:
    """Run request.argv with output to files and a timeout; in this process or in the helper."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    timed_out = False
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(request.stdout, "wb")) if request.stdout else None
        err = stack.enter_context(open(request.stderr, "wb")) if request.stderr else None
        start = time.perf_counter()
        proc = subprocess.Popen(
            request.argv,
            stdin=subprocess.DEVNULL,
            stdout=out or subprocess.DEVNULL,
            stderr=err or subprocess.PIPE,
        )
        try:
            _, err_bytes = proc.communicate(timeout=request.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            # Killing the CLI would leave its container running: delete it through the runtime.
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    request.cleanup, capture_output=True, check=False, timeout=CLEANUP_TIMEOUT_S
                )
            try:
                _, err_bytes = proc.communicate(timeout=CLEANUP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err_bytes = proc.communicate()
        wall_s = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    code = proc.returncode
    return Execution(
        exit_code=TIMED_OUT if timed_out else (128 - code if code < 0 else code),
        wall_s=wall_s,
        timed_out=timed_out,
        stderr=(err_bytes or b"").decode(errors="replace"),
        cpu_user_s=after.ru_utime - before.ru_utime,
        cpu_system_s=after.ru_stime - before.ru_stime,
    )


def spawn_burst(argvs: list[list[str]]) -> Burst:
    """Spawn every argv at once (stdio on /dev/null), then time each to its exit."""
    started: dict[int, float] = {}
    with open(os.devnull, "r+b") as null:
        actions = [(os.POSIX_SPAWN_DUP2, null.fileno(), fd) for fd in (0, 1, 2)]
        for argv in argvs:
            launched = time.perf_counter()
            started[os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)] = launched
    return burst_of_children(started, os.path.basename(argvs[0][0]) if argvs else "burst")


class _PrivateNsHelper:
    """A forked child in its own mount namespace, cgroup2 mount detached, running commands on request.

    The parent sends a `_Request` as JSON; the child runs it with `_execute`
    and answers with the `Execution` as JSON (or {"error": ...}).
    """

    def __init__(self) -> None:
        self._to_child_r, self._to_child_w = os.pipe()
        self._from_child_r, self._from_child_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self._to_child_w)
            os.close(self._from_child_r)
            code = 0
            try:
                self._serve()
            except BaseException:
                code = 1
            os._exit(code)
        os.close(self._to_child_r)
        os.close(self._from_child_w)

    def _serve(self) -> None:
        ops = sc.linux()
        ops.unshare(sc.CLONE_NEWNS)
        ops.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE, None)
        ops.umount2(UNIFIED, sc.MNT_DETACH)
        while True:
            request = _read_frame(self._to_child_r)
            if request is None:
                return
            try:
                fields = json.loads(request)
                if "burst" in fields:
                    reply = dataclasses.asdict(spawn_burst(fields["burst"]))
                else:
                    reply = dataclasses.asdict(_execute(_Request(**fields)))
            except (OSError, ValueError, TypeError, IsobenchError) as exc:  # the parent waits
                reply = {"error": str(exc)}
            _write_frame(self._from_child_w, json.dumps(reply).encode())

    def _ask(self, request: dict[str, object]) -> dict[str, Any]:
        """Send one request, wait for its reply; the child's errors are raised here."""
        _write_frame(self._to_child_w, json.dumps(request).encode())
        frame = _read_frame(self._from_child_r)
        if frame is None:
            raise RuntimeError("private-namespace helper exited")
        reply: dict[str, Any] = json.loads(frame)
        if "error" in reply:
            raise RuntimeError(f"private-namespace helper: {reply['error']}")
        return reply

    def execute(self, request: _Request) -> Execution:
        """Run one `_execute` request in the private namespace."""
        return Execution(**self._ask(dataclasses.asdict(request)))

    def burst(self, argvs: list[list[str]]) -> Burst:
        """spawn_burst(argvs) in the private namespace."""
        reply = self._ask({"burst": argvs})
        return Burst(float(reply["total_s"]), tuple(float(v) for v in reply["per_launch_s"]))

    def timed(self, argv: list[str]) -> float:
        """Seconds from launch to exit of argv; raises with its stderr if it fails."""
        result = self.execute(_Request(argv=argv, cleanup=[]))
        if result.exit_code != 0:
            raise RuntimeError(result.stderr)
        return result.wall_s

    def close(self) -> None:
        os.close(self._to_child_w)
        os.close(self._from_child_r)
        os.waitpid(self.pid, 0)


def _write_frame(fd: int, payload: bytes) -> None:
    data = struct.pack("I", len(payload)) + payload
    while data:
        data = data[os.write(fd, data) :]


def _read_exact(fd: int, size: int) -> bytes | None:
    buf = b""
    while len(buf) < size:
        chunk = os.read(fd, size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _read_frame(fd: int) -> bytes | None:
    header = _read_exact(fd, 4)
    if header is None:
        return None
    (size,) = struct.unpack("I", header)
    return _read_exact(fd, size) if size else b""
