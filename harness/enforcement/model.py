"""What an enforcement test asks a platform to run, and the record it writes for each verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, NOT_APPLICABLE = "pass", "fail", "not applicable"
VERDICTS = (PASS, FAIL, NOT_APPLICABLE)

# The time-series columns every job records (cgroup counters, sampled from the host).
BASE_COLUMNS = ("t_s", "cpu_ns", "memory_bytes")


@dataclass(frozen=True)
class Job:
    """One load under one set of limits: the OCI linux.resources and an argv run in the image.

    resources is OCI JSON (linux.resources), so every adapter gets the very same
    request: the in-house runtime and runc parse it from a spec, bare writes it
    with the cgroup driver, a VM adapter maps it to libvirt's tunables.
    """

    name: str  # short, goes into the instance id
    argv: tuple[str, ...]
    resources: dict[str, Any] = field(default_factory=dict)
    block_device: str | None = None  # a host block device made visible at /dev/isobench-io
    columns: tuple[str, ...] = ()  # extra series columns (CgroupStats fields) beyond BASE_COLUMNS
    effective_files: tuple[str, ...] = ()  # cgroup files read back once as the effective limits
    timeout_s: float = 120.0


@dataclass
class Finished:
    """What a job gave: exit status, output, its sampled series and the limits the cgroup held."""

    exit_code: int
    stdout: str
    stderr: str
    series: dict[str, list[Any]]
    effective: dict[str, str]
    wall_s: float


@dataclass
class Record:
    """One test on one platform, as it goes into isobench.enforcement in the results file."""

    test: str
    platform: str
    verdict: str
    reason: str
    requested: float | None = None
    measured: float | None = None
    unit: str = ""
    tolerance_pct: float | None = None  # percent of the requested value
    effective: dict[str, str] = field(default_factory=dict)  # cgroup files as the kernel holds them
    details: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[Any]] = field(default_factory=dict)
    setup: str = ""  # what was run, with the durations used

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r}; accepted: {', '.join(VERDICTS)}")

    def to_json(self) -> dict[str, Any]:
        """The record as plain JSON data."""
        return asdict(self)


def not_applicable(test: str, platform: str, reason: str, setup: str = "") -> Record:
    """A record saying this platform (or host) has no equivalent of the limit, and why."""
    return Record(test=test, platform=platform, verdict=NOT_APPLICABLE, reason=reason, setup=setup)


RECORD_KEYS: dict[str, type | tuple[type, ...]] = {
    "test": str,
    "platform": str,
    "verdict": str,
    "reason": str,
    "unit": str,
    "series": dict,
}


def check_record(raw: object, where: str) -> dict[str, Any]:
    """A loaded isobench.enforcement entry, checked; ValueError naming what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where} is not an object")
    for key, kind in RECORD_KEYS.items():
        if not isinstance(raw.get(key), kind):
            raise ValueError(f"{where} has no {key!r} of type {getattr(kind, '__name__', kind)}")
    if raw["verdict"] not in VERDICTS:
        raise ValueError(f"{where} verdict {raw['verdict']!r} is not one of {', '.join(VERDICTS)}")
    return raw
