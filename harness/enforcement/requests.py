"""The OCI linux.resources each enforcement test asks for: one place, the values of MEASUREMENT.md's table."""

from __future__ import annotations

from typing import Any

MIB = 1 << 20
PERIOD_US = 100_000
OOM_LIMIT_BYTES = 64 * MIB
HIGH_BYTES = 32 * MIB
PIDS_LIMIT = 32
IO_RATE_BPS = 10 * MIB

Resources = dict[str, Any]


def memory_limit(limit_bytes: int = OOM_LIMIT_BYTES) -> Resources:
    """A hard limit with no swap (OCI swap is memory+swap: equal to the limit means none)."""
    return {"memory": {"limit": limit_bytes, "swap": limit_bytes}}


def memory_high(high_bytes: int = HIGH_BYTES) -> Resources:
    """memory.high, which has no OCI field: through linux.resources.unified (cgroup v2 only)."""
    return {"unified": {"memory.high": str(high_bytes)}}


MAX_SHARES = 262144  # cpu.shares' maximum (v2: cpu.weight 10000)


def cpu_quota(cpus: float) -> Resources:
    """A CFS quota of cpus CPUs per PERIOD_US, at the maximum weight.

    The weight is no cap: without contention it changes nothing. With other
    work on the host it lets the hog win the CPU it competes for, so the quota
    (the only cap) is what stops it, and not the neighbours.
    """
    return {"cpu": {"quota": int(cpus * PERIOD_US), "period": PERIOD_US, "shares": MAX_SHARES}}


def cpu_shares(shares: int, cpuset: str) -> Resources:
    """cpu.shares (v2: the weight the driver converts it to) on a pinned cpuset."""
    return {"cpu": {"shares": shares, "cpus": cpuset}}


def cpuset(cpus: str) -> Resources:
    """cpuset.cpus only."""
    return {"cpu": {"cpus": cpus}}


def pids(limit: int = PIDS_LIMIT) -> Resources:
    """pids.max."""
    return {"pids": {"limit": limit}}


def io_throttle(direction: str, major: int, minor: int, rate_bps: int = IO_RATE_BPS) -> Resources:
    """A read or write bytes/s throttle on one block device, and the device rule to use it."""
    key = {"read": "throttleReadBpsDevice", "write": "throttleWriteBpsDevice"}[direction]
    dev = {"major": major, "minor": minor}
    return {
        "blockIO": {key: [{**dev, "rate": rate_bps}]},
        "devices": [{"allow": True, "type": "b", **dev, "access": "rw"}],
    }
