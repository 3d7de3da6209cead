"""OCI (cgroup v1 shaped) resource values -> cgroup v2 file values, following runc.

The OCI spec was written for cgroup v1, so a v2 driver has to translate. Every
formula here names its source, because the numbers we report depend on it.
"""

from __future__ import annotations

import math

from harness.errors import UserError

SHARES_MIN = 2  # kernel MIN_SHARES
SHARES_MAX = 262144  # kernel MAX_SHARES = 1 << 18
WEIGHT_MIN = 1  # cgroup v2 CGROUP_WEIGHT_MIN
WEIGHT_MAX = 10000  # CGROUP_WEIGHT_MAX


def shares_to_weight(shares: int) -> int:
    """cpu.shares -> cpu.weight, runc >= 1.3.2 (opencontainers/cgroups >= v0.0.5).

    weight = ceil(10 ** ((l*l + 125*l) / 612 - 7/34)) with l = log2(shares): a
    quadratic in log space through (2, 1), (1024, 100) and (262144, 10000), so the
    v1 default 1024 lands on the v2 default 100 (the linear formula gives 39).
    0 means unset and stays 0; values outside 2..262144 are clamped.
    """
    if shares == 0:
        return 0
    if shares <= SHARES_MIN:
        return WEIGHT_MIN
    if shares >= SHARES_MAX:
        return WEIGHT_MAX
    log2 = math.log2(shares)
    return math.ceil(math.pow(10, (log2 * log2 + 125 * log2) / 612.0 - 7.0 / 34.0))


def shares_to_weight_linear(shares: int) -> int:
    """cpu.shares -> cpu.weight, runc < 1.3.2: 1 + ((shares - 2) * 9999) // 262142; 0 stays 0."""
    if shares == 0:
        return 0
    shares = min(max(shares, SHARES_MIN), SHARES_MAX)
    return 1 + ((shares - 2) * 9999) // 262142


def weight_to_shares(weight: int) -> int:
    """cpu.weight -> cpu.shares for reporting: the inverse of shares_to_weight (rounded).

    Solves l*l + 125*l = 612 * (log10(weight) + 7/34) for l and returns round(2 ** l);
    1 -> 2, 100 -> 1024, 10000 -> 262144. 0 means unset and stays 0.
    """
    if weight == 0:
        return 0
    weight = min(max(weight, WEIGHT_MIN), WEIGHT_MAX)
    rhs = 612.0 * (math.log10(weight) + 7.0 / 34.0)
    log2 = (-125.0 + math.sqrt(125.0 * 125.0 + 4.0 * rhs)) / 2.0
    return round(math.pow(2, log2))


def blkio_weight_to_io_weight(weight: int) -> int:
    """blkio.weight 10..1000 -> io.weight 1..10000: 1 + (w - 10) * 9999 // 990.

    Source: runc ConvertBlkIOToIOWeightValue. 0 means unset and stays 0.
    """
    if weight == 0:
        return 0
    weight = min(max(weight, 10), 1000)
    return 1 + (weight - 10) * 9999 // 990


def memory_swap_to_v2(swap: int, limit: int | None) -> str:
    """OCI memory.swap (memory+swap) -> v2 memory.swap.max (swap alone) = swap - limit.

    Follows runc ConvertMemorySwapToCgroupV2Value: -1 -> "max"; with an unlimited
    (-1) memory limit the swap value is used as is; swap == limit -> "0" (no swap).
    """
    if swap == -1:
        return "max"
    if limit is None or limit == 0:
        raise UserError(
            "linux.resources.memory.swap needs linux.resources.memory.limit "
            "(OCI swap is memory+swap); set a limit or use swap -1"
        )
    if limit == -1:
        return str(swap)
    if swap < limit:
        raise UserError(
            f"linux.resources.memory.swap ({swap}) is memory+swap and must be >= "
            f"memory.limit ({limit}), or -1 for unlimited"
        )
    return str(swap - limit)


def cpu_max(quota: int | None, period: int | None) -> str:
    """OCI cpu quota/period (us) -> v2 cpu.max: "50000 100000"; quota unset or <= 0 -> "max".

    Without a period only the quota is written and the kernel keeps the current period (as runc).
    """
    quota_text = "max" if quota is None or quota <= 0 else str(quota)
    return quota_text if period is None else f"{quota_text} {period}"


def pids_max(limit: int) -> str:
    """OCI pids.limit -> pids.max: -1 or 0 (older specs) mean no limit -> "max"."""
    return "max" if limit <= 0 else str(limit)
