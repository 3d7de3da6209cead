"""Cgroup drivers for the in-house runtime: `new_manager` picks v1 or v2 for this host."""

from harness.runtime.cgroups.base import CgroupManager, CgroupStats, new_manager

__all__ = ["CgroupManager", "CgroupStats", "new_manager"]
