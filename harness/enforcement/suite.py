"""The enforcement tests, in the order they run: one literal registry (MEASUREMENT.md's table)."""

from __future__ import annotations

from harness.enforcement import suite_cpu_memory as cm
from harness.enforcement import suite_tasks_io as tio
from harness.enforcement.env import Test
from harness.errors import UserError

# Test group name -> the function that runs it on one adapter (it may give several records).
TESTS: dict[str, Test] = {
    "memory.hard_limit": cm.memory_hard_limit,
    "memory.accounting": cm.memory_accounting,
    "memory.high": cm.memory_high,
    "cpu.quota": cm.cpu_quota,
    "cpu.weight": cm.cpu_weight,
    "cpuset": cm.cpuset,
    "pids": tio.pids,
    "io": tio.io_throttle,
    "monitoring.cpu": tio.monitoring_cpu,
    "monitoring.memory": tio.monitoring_memory,
    "freeze_kill": tio.freeze_kill,
}


def select_tests(names: list[str] | None) -> dict[str, Test]:
    """The named test groups (default: all), in registry order; UserError for an unknown one."""
    if names is None:
        return dict(TESTS)
    unknown = [n for n in names if n not in TESTS]
    if unknown:
        raise UserError(
            f"unknown enforcement test {', '.join(map(repr, unknown))}; accepted: {', '.join(TESTS)}"
        )
    return {n: t for n, t in TESTS.items() if n in names}
