"""Per-platform adapters: "apply limit X, run this load, read the counters", behind one protocol.

A test (suite.py) never knows how a platform applies a limit: it hands an
adapter a Job (OCI linux.resources + argv) and gets back a Launched handle
whose cgroup it samples. A platform with no equivalent of a feature says so
through not_applicable(), and the test records "not applicable" with that
reason. A `vm` adapter (libvirt <cputune>, <memtune>, <vcpupin>, <blkiotune>)
plugs in here: its launch() maps the same resources to the domain XML, its
cgroup is the one libvirt makes for the domain, and what has no libvirt
equivalent comes back from not_applicable().

The registry is the literal ADAPTERS dict at the bottom.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from harness.enforcement.model import Job
from harness.errors import IsobenchError, UserError
from harness.platforms.base import RunContext
from harness.platforms.common import read_text
from harness.runtime.cgroups.base import CgroupManager

IO_DEVICE = "/dev/isobench-io"  # where a job's block device appears inside the platform

# Features a test may need beyond cpu/memory/pids: an adapter answers not_applicable(feature).
FEATURES = ("memory.high", "cpu.weight", "cpuset", "blkio", "freeze", "kill", "monitoring")


@dataclass
class Exit:
    """How a launched job ended."""

    exit_code: int
    stdout: str
    stderr: str
    wall_s: float
    timed_out: bool = False


class Launched:
    """A job running in a thread of this process: its cgroup, and freeze/thaw/kill for it.

    The adapters give the blocking call that runs the job to its end and the
    three control calls; this class only holds the thread and the result.
    """

    def __init__(
        self,
        cgroup: CgroupManager,
        body: Callable[[], int],
        outputs: tuple[Path, Path],
        controls: dict[str, Callable[[], None]],
    ) -> None:
        self.cgroup = cgroup
        self._body = body
        self._outputs = outputs
        self._controls = controls
        self._code: int | None = None
        self._error: BaseException | None = None
        self._start = time.perf_counter()
        self._wall_s = 0.0
        self._thread = threading.Thread(target=self._run, name="isobench-job", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._code = self._body()
        except BaseException as exc:  # re-raised by wait() in the caller's thread
            self._error = exc
        self._wall_s = time.perf_counter() - self._start

    def running(self) -> bool:
        """True until the job has ended."""
        return self._thread.is_alive()

    def freeze(self) -> None:
        """Freeze every task of the job (the platform's own pause)."""
        self._controls["freeze"]()

    def thaw(self) -> None:
        """Resume a frozen job."""
        self._controls["thaw"]()

    def kill(self) -> None:
        """SIGKILL every task of the job (the platform's own kill)."""
        self._controls["kill"]()

    def wait(self, timeout_s: float) -> Exit:
        """Wait for the end (killing the job at the timeout); the exit status and output."""
        self._thread.join(timeout_s)
        timed_out = self._thread.is_alive()
        if timed_out:
            with contextlib.suppress(IsobenchError, OSError):
                self.kill()
            self._thread.join()
        if self._error is not None:
            raise self._error
        out, err = self._outputs
        return Exit(
            exit_code=124 if timed_out else (self._code if self._code is not None else -1),
            stdout=read_text(out),
            stderr=read_text(err),
            wall_s=self._wall_s,
            timed_out=timed_out,
        )


class Adapter(Protocol):
    """One platform's way to apply a Job's limits, run its load, and expose its cgroup."""

    name: str

    def available(self) -> tuple[bool, str]:
        """Whether the platform runs here; the reason when not."""

    def prepare(self, ctx: RunContext) -> None:
        """Once per run: the image's files, state dirs."""

    def not_applicable(self, feature: str) -> str | None:
        """None when the platform enforces feature (one of FEATURES); else why it cannot."""

    def launch(self, job: Job, instance: str) -> Launched:
        """Start the job (instance: unique within the run, goes into ids); returns at once."""

    def describe(self) -> dict[str, object]:
        """How limits are applied on this platform, for the results file."""

    def teardown(self) -> None:
        """Remove everything prepare() and launch() made; safe to call twice."""


V1_NO_MEMORY_HIGH = (
    "cgroup v1 has no memory.high; memory.soft_limit_in_bytes only reclaims under global "
    "memory pressure (this host has none), so it is not a throttle that can be tested"
)


def memory_high_reason() -> str | None:
    """Why memory.high cannot be tested on this host's cgroups (None on v2)."""
    from harness.runtime.cgroups import new_manager
    from harness.runtime.lifecycle import CGROUP_PARENT

    return V1_NO_MEMORY_HIGH if new_manager(f"{CGROUP_PARENT}/probe").version == 1 else None


def _container() -> Adapter:
    from harness.enforcement.adapter_container import ContainerAdapter

    return ContainerAdapter()


def _oci(runtime: str) -> Callable[[], Adapter]:
    def make() -> Adapter:
        from harness.enforcement.adapter_oci import OciAdapter

        return OciAdapter(runtime)

    return make


def _bare() -> Adapter:
    from harness.enforcement.adapter_bare import BareAdapter

    return BareAdapter()


# Order: the default column order of the table.
ADAPTERS: dict[str, Callable[[], Adapter]] = {
    "container": _container,
    "oci:runc": _oci("runc"),
    "oci:crun": _oci("crun"),
    "bare": _bare,
}


def select_adapters(names: list[str] | None) -> list[Adapter]:
    """Adapters for the named platforms (default: all); UserError for a name without one."""
    names = list(ADAPTERS) if names is None else names
    unknown = [n for n in names if n not in ADAPTERS]
    if unknown:
        raise UserError(
            f"no enforcement adapter for platform {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(ADAPTERS)}"
        )
    return [ADAPTERS[n]() for n in dict.fromkeys(names)]
