"""The sampler on a fake v2 cgroup directory: columns, timestamps, and limits read as last written."""

from __future__ import annotations

import time
from pathlib import Path

from harness.enforcement.sampler import PERIOD_S, Sampler, cgroup_file, host_busy_cpus
from harness.runtime.cgroups import v2


def test_sampler_records_columns_and_the_last_effective_limits(tmp_path: Path) -> None:
    d = tmp_path / "ctr"
    d.mkdir()
    (d / "cpu.stat").write_text("usage_usec 1000\nnr_throttled 0\n")
    (d / "memory.current").write_text("4096\n")
    (d / "cpu.weight").write_text("100\n")  # the default, before the platform writes the limit
    manager = v2.Manager("/ctr", tmp_path)
    sampler = Sampler(manager, ("cpu_nr_throttled",), ("cpu.weight", "cpu.max"))
    sampler.start()
    time.sleep(3 * PERIOD_S)
    (d / "cpu.weight").write_text("200\n")
    (d / "cpu.stat").write_text("usage_usec 5000\nnr_throttled 3\n")
    time.sleep(3 * PERIOD_S)
    sampler.stop()
    series = sampler.series
    assert set(series) == {"t_s", "cpu_ns", "memory_bytes", "cpu_nr_throttled"}
    assert len(series["t_s"]) >= 4 and series["t_s"] == sorted(series["t_s"])
    assert series["cpu_ns"][0] == 1_000_000 and series["cpu_ns"][-1] == 5_000_000
    assert series["memory_bytes"][-1] == 4096 and series["cpu_nr_throttled"][-1] == 3
    assert sampler.effective == {"cpu.weight": "200"}  # cpu.max was never there


def test_sampler_takes_nothing_while_the_cgroup_is_missing(tmp_path: Path) -> None:
    sampler = Sampler(v2.Manager("/gone", tmp_path), ())
    sampler.start()
    time.sleep(2 * PERIOD_S)
    sampler.stop()
    assert sampler.series["t_s"] == [] and sampler.effective == {}
    assert cgroup_file(v2.Manager("/gone", tmp_path), "cpu.max") is None


def test_host_busy_cpus() -> None:
    assert host_busy_cpus((0, 0), (50, 100)) > 0
    assert host_busy_cpus((0, 0), (0, 0)) == 0.0
