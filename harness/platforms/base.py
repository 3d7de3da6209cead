"""The Platform protocol: one small interface that bare metal, containers, OCI runtimes and VMs share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from harness.workloads.base import Workload

if TYPE_CHECKING:
    from harness.platforms.burst import Burst


@dataclass(frozen=True)
class Limits:
    """The resources every platform gets, so they compete on equal terms (VM: vCPUs and memory)."""

    cpus: int | None = None  # None: all host CPUs
    memory_bytes: int | None = None  # None: no limit


@dataclass
class RunContext:
    """What a platform needs to prepare: the image, the run's identity and where to put things."""

    image_ref: str  # a reference into the image store (tag or digest)
    image_digest: str
    run_id: str  # carried in the name of everything the run creates
    workdir: Path  # the run's own scratch space on the host (removed at the end)
    limits: Limits = field(default_factory=Limits)


@dataclass
class Outcome:
    """What one run of a workload gave: the tool's exit status and output, and the wall time around it."""

    exit_code: int
    stdout: str
    stderr: str
    wall_s: float
    resources: dict[str, float] = field(default_factory=dict)  # e.g. cgroup CPU time, peak memory
    # The workload the platform really ran when it had to change it (a VM under TCG runs
    # smoke sizes): its parser, which checks the sizes asked for, reads the output.
    ran: Workload | None = None


class Platform(Protocol):
    """One way to run the workload image."""

    name: str  # "bare", "container", "oci:runc", "oci:crun", "vm"
    # A platform may also set `cold_starts_per_block: int` (read with getattr by the
    # scheduler) when its cold start is too slow for the profile's count: a VM under TCG.

    def available(self) -> tuple[bool, str]:
        """Whether this host can run the platform, and if not, a one-line reason."""

    def prepare(self, ctx: RunContext) -> None:
        """Once per run: whatever the platform needs before its first workload."""

    def run(self, workload: Workload) -> Outcome:
        """Run one workload to completion inside the platform; never raises for a failing tool."""

    def launch_latency(self) -> float:
        """Seconds from launch to exit of /bin/true in a fresh instance (one cold start)."""

    def launch_burst(self, count: int) -> Burst:
        """count cold starts of /bin/true launched at once, each timed to its exit.

        Raises errors.NotApplicable (recorded with the sample) where the platform cannot.
        """

    def teardown(self) -> None:
        """Remove everything prepare() and run() made; safe to call twice."""

    def describe(self) -> dict[str, object]:
        """Recorded with the results: versions, isolation in force, limits, how it is run."""
