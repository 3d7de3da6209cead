"""External OCI runtimes (runc, crun) driven through their CLIs, for comparison.

crun refuses cgroup v1-hybrid hosts ("cgroups in hybrid mode not supported")
because a cgroup2 mount sits at /sys/fs/cgroup/unified. On such hosts crun is
run from a helper process in a private mount namespace where that one mount is
detached, so crun sees plain cgroup v1, like runc and isobench do. The host's
mounts are untouched, and the fact is recorded in `describe()`.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass, field

from harness.runtime import syscalls as sc

UNIFIED = "/sys/fs/cgroup/unified"
HYBRID_REFUSAL = "hybrid mode not supported"


def _is_hybrid() -> bool:
    return os.path.ismount(UNIFIED)


@dataclass
class ReferenceRuntime:
    """One external runtime: `run(bundle, id)` runs a container to completion and times it."""

    name: str
    root: str
    binary: str | None = None
    _helper: _PrivateNsHelper | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.binary = self.binary or shutil.which(self.name)

    def available(self, bundle: str) -> tuple[bool, str]:
        """Whether this runtime runs `bundle` here; the reason when it does not."""
        if self.binary is None:
            return False, f"{self.name} not installed (Debian package {self.name})"
        try:
            code, err = self._run_once(bundle, f"isobench-probe-{os.getpid()}")
        except OSError as exc:
            return False, f"{self.name}: {exc}"
        if code != 0 and self.name == "crun" and HYBRID_REFUSAL in err and _is_hybrid():
            self._helper = _PrivateNsHelper()
            code, err = self._run_once(bundle, f"isobench-probe-{os.getpid()}-ns")
        if code != 0:
            return (
                False,
                f"{self.name} run failed: {err.strip().splitlines()[-1] if err.strip() else code}",
            )
        return True, ""

    def argv(self, bundle: str, container_id: str) -> list[str]:
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

    def _run_once(self, bundle: str, container_id: str) -> tuple[int, str]:
        if self._helper is not None:
            try:
                self._helper.timed(self.argv(bundle, container_id))
                return 0, ""
            except RuntimeError as exc:
                return 1, str(exc)
        proc = subprocess.run(self.argv(bundle, container_id), capture_output=True, check=False)
        return proc.returncode, proc.stderr.decode(errors="replace")

    def describe(self) -> dict[str, object]:
        """Recorded with results: version and how it was run."""
        version = ""
        if self.binary:
            out = subprocess.run(
                [self.binary, "--version"], capture_output=True, text=True, check=False
            )
            version = out.stdout.splitlines()[0] if out.stdout else ""
        return {
            "name": self.name,
            "version": version,
            "private_mount_ns_without_cgroup2": self._helper is not None,
        }

    def close(self) -> None:
        """Stop the helper process, if one was started."""
        if self._helper is not None:
            self._helper.close()
            self._helper = None


class _PrivateNsHelper:
    """A forked child in its own mount namespace, cgroup2 mount detached, running commands on request.

    The parent sends a NUL-separated argv; the child runs it and answers with
    the elapsed seconds (a float, negative on failure) and stderr.
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
            argv = [a.decode() for a in request.split(b"\0")]
            start = time.perf_counter()
            proc = subprocess.run(argv, capture_output=True, check=False)
            elapsed = time.perf_counter() - start
            value = elapsed if proc.returncode == 0 else -1.0
            _write_frame(self._from_child_w, struct.pack("d", value) + proc.stderr)

    def timed(self, argv: list[str]) -> float:
        _write_frame(self._to_child_w, b"\0".join(a.encode() for a in argv))
        reply = _read_frame(self._from_child_r)
        if reply is None:
            raise RuntimeError("private-namespace helper exited")
        (value,) = struct.unpack("d", reply[:8])
        if value < 0:
            raise RuntimeError(reply[8:].decode(errors="replace"))
        return float(value)

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
