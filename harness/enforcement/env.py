"""What every enforcement test shares: durations per profile, the per-platform Env, record helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.enforcement.adapters import Adapter
from harness.enforcement.jobs import run_jobs
from harness.enforcement.model import Finished, Job, Record


@dataclass(frozen=True)
class Durations:
    """Seconds each timed load runs (the table's values by default)."""

    cpu_quota_s: float = 5.0
    cpu_weight_s: float = 10.0
    io_s: float = 5.0
    cpuset_s: float = 3.0
    monitoring_s: float = 3.0


PROFILE_DURATIONS = {
    "smoke": Durations(cpu_quota_s=3.0, cpu_weight_s=4.0, io_s=3.0, cpuset_s=2.0, monitoring_s=2.0),
    "quick": Durations(),
    "full": Durations(),
}


@dataclass
class Env:
    """What the tests of one platform share: durations, the IO device, instance names."""

    durations: Durations
    io_device: str | None  # a host block device for the IO tests (a loop device), or None
    io_reason: str = ""  # why there is none
    counter: list[int] = field(default_factory=lambda: [0])

    def instance(self, name: str) -> str:
        """A unique instance name for a job of this run."""
        self.counter[0] += 1
        return f"{name}-{self.counter[0]}"


Test = Callable[[Adapter, Env], list[Record]]


def record(test: str, adapter: Adapter, done: Finished, **kw: Any) -> Record:
    return Record(
        test=test, platform=adapter.name, effective=done.effective, series=done.series, **kw
    )


def one(adapter: Adapter, env: Env, job: Job) -> Finished:
    return run_jobs(adapter, [(job, env.instance(job.name))])[0]


def last(series: dict[str, list[Any]], column: str) -> Any:
    values = [x for x in series.get(column, []) if x is not None]
    return values[-1] if values else None
