"""How big a benchmark is: the profiles' time limits and the memory footprint rule.

Each factory holds its own per-profile sizes next to its command line; what is
shared lives here. The memory benchmarks must miss the caches, so their arrays
are at least 4x the host's last-level cache (the STREAM rule) with a floor,
except in smoke, whose tiny sizes check that everything runs, not what memory
costs: there they are a quarter of that (about the cache's size).
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.errors import UserError
from harness.workloads.base import PROFILES

MIB = 1024 * 1024
CACHE_SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")
# Floor for the cache-missing arrays: hosts that report no cache (some VMs) still miss it.
MEMORY_FLOOR_MIB = 64
SMOKE_ARRAY_DIVISOR = 4
# The platform's kill deadline per profile; generous, a run that needs it has hung.
TIMEOUT_S = {"smoke": 60.0, "quick": 180.0, "full": 1800.0}

_SIZE = re.compile(r"^(\d+)([KMG]?)$")
_UNIT = {"": 1, "K": 1024, "M": MIB, "G": 1024 * MIB}


def check_profile(profile: str) -> str:
    """profile itself, or a UserError naming the accepted ones."""
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}; accepted: {', '.join(PROFILES)}")
    return profile


def last_level_cache_bytes(cache_dir: Path = CACHE_SYSFS) -> int | None:
    """Size of the highest-level cache of CPU 0 from sysfs ("32768K"), or None if not reported."""
    best: tuple[int, int] | None = None
    for index in sorted(cache_dir.glob("index*")):
        try:
            level = int((index / "level").read_text())
            match = _SIZE.match((index / "size").read_text().strip())
        except (OSError, ValueError):
            continue
        if match and (best is None or level > best[0]):
            best = (level, int(match[1]) * _UNIT[match[2]])
    return best[1] if best else None


def memory_array_mib(cache_dir: Path = CACHE_SYSFS, *, profile: str = "quick") -> int:
    """One array of a memory benchmark: 4x the last-level cache, at least MEMORY_FLOOR_MIB.

    smoke takes a quarter of it: its figures are not for reading (the arrays partly
    fit in the cache) and the smoke profile has two minutes for every benchmark.
    """
    llc = last_level_cache_bytes(cache_dir) or 0
    size = max(MEMORY_FLOOR_MIB, -(-4 * llc // MIB))
    return size // SMOKE_ARRAY_DIVISOR if check_profile(profile) == "smoke" else size
