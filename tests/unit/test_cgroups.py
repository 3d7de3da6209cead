"""The cgroup drivers without root: conversions, mountinfo, and both drivers on fake trees.

A fake tree is plain directories under tmp_path. It has no kernel behind it: files
do not appear on mkdir, and a write simply replaces the content. Where the kernel
would provide a file, the test writes it first.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from pathlib import Path

import pytest

from harness.errors import EnvironmentError_, OSFailure, UserError
from harness.runtime.cgroups import CgroupStats, new_manager, v1, v2
from harness.runtime.cgroups.base import detect_version
from harness.runtime.cgroups.conversions import (
    blkio_weight_to_io_weight,
    cpu_max,
    memory_swap_to_v2,
    pids_max,
    shares_to_weight,
    shares_to_weight_linear,
    weight_to_shares,
)
from harness.runtime.spec import (
    BlockIOResources,
    CpuResources,
    DeviceRule,
    MemoryResources,
    PidsResources,
    Resources,
    ThrottleDevice,
    WeightDevice,
)

MIB = 1 << 20
V1_UNLIMITED = 9223372036854771712  # what v1 memory.limit_in_bytes reads when unset

# ---------------------------------------------------------------- conversions


# opencontainers/cgroups v0.0.5 utils_test.go TestConvertCPUSharesToCgroupV2Value (runc 1.3.2+).
@pytest.mark.parametrize(
    ("shares", "weight"),
    [
        (0, 0),
        (1, 1),
        (2, 1),
        (3, 2),
        (1024, 100),
        (262143, 10000),
        (262144, 10000),
        (262145, 10000),
    ],
)
def test_shares_to_weight_matches_runc_table(shares: int, weight: int) -> None:
    assert shares_to_weight(shares) == weight


def test_shares_to_weight_linear_is_older_runc() -> None:
    assert [shares_to_weight_linear(s) for s in (0, 2, 1024, 262144)] == [0, 1, 39, 10000]


def test_weight_to_shares_inverts_the_quadratic_formula() -> None:
    assert [weight_to_shares(w) for w in (0, 1, 100, 10000)] == [0, 2, 1024, 262144]
    for shares in (512, 2048, 3072, 100000):
        back = weight_to_shares(shares_to_weight(shares))
        assert abs(back - shares) / shares < 0.02


def test_blkio_weight_to_io_weight() -> None:
    assert [blkio_weight_to_io_weight(w) for w in (0, 10, 500, 1000)] == [0, 1, 4950, 10000]


@pytest.mark.parametrize(
    ("swap", "limit", "expected"),
    [
        (-1, 0, "max"),
        (-1, -1, "max"),
        (-1, 1000, "max"),
        (1000, 1000, "0"),
        (500, 200, "300"),
        (300, -1, "300"),  # unlimited memory: swap as is
    ],
)
def test_memory_swap_to_v2(swap: int, limit: int, expected: str) -> None:
    assert memory_swap_to_v2(swap, limit) == expected


@pytest.mark.parametrize(("swap", "limit"), [(300, 400), (300, 0), (300, None)])
def test_memory_swap_to_v2_rejects_swap_below_limit_or_without_limit(
    swap: int, limit: int | None
) -> None:
    with pytest.raises(UserError, match=r"memory\.(swap|limit)"):
        memory_swap_to_v2(swap, limit)


def test_cpu_max_and_pids_max() -> None:
    assert cpu_max(50000, 100000) == "50000 100000"
    assert cpu_max(-1, 100000) == "max 100000"
    assert cpu_max(None, None) == "max"
    assert cpu_max(50000, None) == "50000"
    assert [pids_max(n) for n in (-1, 0, 32)] == ["max", "max", "32"]


# ---------------------------------------------------------------- mountinfo and the factory

# This CI host: cgroup v1 hybrid, cpu and cpuacct mounted separately.
HYBRID_MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 23 0:28 / {root} rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / {root}/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / {root}/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / {root}/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / {root}/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / {root}/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / {root}/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / {root}/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / {root}/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / {root}/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / {root}/unified rw,relatime - cgroup2 cgroup2 rw
"""

# Debian/Ubuntu-style v1: cpu and cpuacct co-mounted, optional fields present.
COMOUNTED_MOUNTINFO = """\
25 24 0:22 / {root} ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
27 25 0:24 / {root}/cpu,cpuacct rw,nosuid shared:11 - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / {root}/pids rw,nosuid shared:12 - cgroup cgroup rw,pids
29 25 0:26 / {root}/systemd rw,nosuid shared:13 - cgroup cgroup rw,xattr,name=systemd
"""

PURE_V2_MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 23 0:26 / {root} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""


def test_detect_version() -> None:
    root = Path("/sys/fs/cgroup")
    assert detect_version(root, HYBRID_MOUNTINFO.format(root=root)) == 1
    assert detect_version(root, COMOUNTED_MOUNTINFO.format(root=root)) == 1
    assert detect_version(root, PURE_V2_MOUNTINFO.format(root=root)) == 2


def test_hierarchies_include_named_ones_and_ignore_unified() -> None:
    root = Path("/sys/fs/cgroup")
    found = v1.hierarchies(root, HYBRID_MOUNTINFO.format(root=root))
    assert sorted(found) == sorted([*v1.CONTROLLER_NAMES, "name=systemd"])
    assert found["name=systemd"] == "/sys/fs/cgroup/systemd"
    assert found["cpu"] == "/sys/fs/cgroup/cpu" and found["cpuacct"] == "/sys/fs/cgroup/cpuacct"


def test_hierarchies_co_mounted_and_escaped() -> None:
    found = v1.hierarchies(Path("/a b"), COMOUNTED_MOUNTINFO.format(root="/a\\040b"))
    assert found == {
        "cpu": "/a b/cpu,cpuacct",
        "cpuacct": "/a b/cpu,cpuacct",
        "pids": "/a b/pids",
        "name=systemd": "/a b/systemd",
    }


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("system.slice:docker:abc", "systemd"),
        ("isobench/ctr", "absolute"),
        ("/isobench/../etc", r"'\.\.'"),
        ("/", "below the cgroup root"),
    ],
)
def test_invalid_cgroups_path_is_rejected(path: str, match: str) -> None:
    mountinfo = PURE_V2_MOUNTINFO.format(root="/sys/fs/cgroup")
    with pytest.raises(UserError, match=match):
        new_manager(path, mountinfo=mountinfo)


def test_new_manager_picks_the_driver(tmp_path: Path) -> None:
    hybrid = new_manager(
        "/x//y/./z", root=tmp_path, mountinfo=HYBRID_MOUNTINFO.format(root=tmp_path)
    )
    assert (hybrid.version, hybrid.path) == (1, "/x/y/z")
    assert hybrid.paths()["memory"] == f"{tmp_path}/memory/x/y/z"
    pure = new_manager("/x", root=tmp_path, mountinfo=PURE_V2_MOUNTINFO.format(root=tmp_path))
    assert (pure.version, pure.paths()) == (2, {"": f"{tmp_path}/x"})


# ---------------------------------------------------------------- v1 on a fake tree

FULL = Resources(
    cpu=CpuResources(shares=512, quota=50000, period=100000, cpus="1", mems="0"),
    memory=MemoryResources(
        limit=64 * MIB, reservation=32 * MIB, swap=128 * MIB, swappiness=10, disable_oom_killer=True
    ),
    pids=PidsResources(limit=32),
    block_io=BlockIOResources(
        weight=500,
        weight_device=(WeightDevice(8, 0, weight=300),),
        throttle_read_bps_device=(ThrottleDevice(8, 0, MIB), ThrottleDevice(8, 16, 2 * MIB)),
        throttle_write_bps_device=(ThrottleDevice(8, 0, 3 * MIB),),
        throttle_read_iops_device=(ThrottleDevice(8, 16, 100),),
        throttle_write_iops_device=(ThrottleDevice(8, 0, 200),),
    ),
    devices=(
        DeviceRule(allow=False),
        DeviceRule(allow=True, type="c", major=1, minor=3, access="rwm"),
        DeviceRule(allow=False, type="b", access="m"),
    ),
)


def fake_v1(root: Path, mountinfo: str = HYBRID_MOUNTINFO) -> str:
    """Make the hierarchy directories and the root cpuset files; return the mountinfo."""
    for name in (*v1.CONTROLLER_NAMES, "systemd", "unified"):
        (root / name).mkdir()
    (root / "cpuset" / "cpuset.cpus").write_text("0-1\n")
    (root / "cpuset" / "cpuset.mems").write_text("0\n")
    return mountinfo.format(root=root)


def kernel_files_v1(paths: dict[str, str], *, memsw: bool = True) -> None:
    """The files the kernel creates with a new v1 cgroup that the driver checks or reads."""
    Path(paths["memory"], "memory.limit_in_bytes").write_text(f"{V1_UNLIMITED}\n")
    if memsw:
        Path(paths["memory"], "memory.memsw.limit_in_bytes").write_text(f"{V1_UNLIMITED}\n")
    Path(paths["blkio"], "blkio.weight").write_text("500\n")
    Path(paths["blkio"], "blkio.weight_device").write_text("")


def read(directory: str, name: str) -> str:
    return Path(directory, name).read_text()


def test_v1_create_copies_cpuset_into_each_new_level(tmp_path: Path) -> None:
    mountinfo = fake_v1(tmp_path)
    (tmp_path / "cpuset" / "isobench").mkdir()  # an existing level, set up by someone else
    (tmp_path / "cpuset" / "isobench" / "cpuset.cpus").write_text("1\n")
    (tmp_path / "cpuset" / "isobench" / "cpuset.mems").write_text("0\n")
    m = new_manager("/isobench/run/ctr", root=tmp_path, mountinfo=mountinfo)
    m.create()
    for level in ("isobench/run", "isobench/run/ctr"):
        assert read(f"{tmp_path}/cpuset/{level}", "cpuset.cpus") == "1"
        assert read(f"{tmp_path}/cpuset/{level}", "cpuset.mems") == "0"
    assert all(os.path.isdir(d) for d in m.paths().values())
    # The named systemd hierarchy is joined too (as runc does); the cgroup2 mount is not.
    assert (tmp_path / "systemd" / "isobench" / "run" / "ctr").is_dir()
    assert not (tmp_path / "unified" / "isobench").exists()


def test_v1_set_writes_every_controller_file(tmp_path: Path) -> None:
    m = new_manager("/isobench/ctr", root=tmp_path, mountinfo=fake_v1(tmp_path))
    m.create()
    paths = m.paths()
    kernel_files_v1(paths)
    m.set(FULL)
    expected = {
        ("cpu", "cpu.shares"): "512",
        ("cpu", "cpu.cfs_period_us"): "100000",
        ("cpu", "cpu.cfs_quota_us"): "50000",
        ("cpuset", "cpuset.cpus"): "1",
        ("cpuset", "cpuset.mems"): "0",
        ("memory", "memory.limit_in_bytes"): str(64 * MIB),
        ("memory", "memory.memsw.limit_in_bytes"): str(128 * MIB),
        ("memory", "memory.soft_limit_in_bytes"): str(32 * MIB),
        ("memory", "memory.swappiness"): "10",
        ("memory", "memory.oom_control"): "1",
        ("pids", "pids.max"): "32",
        ("blkio", "blkio.weight"): "500",
        ("blkio", "blkio.weight_device"): "8:0 300\n",
        ("blkio", "blkio.throttle.read_bps_device"): f"8:0 {MIB}\n8:16 {2 * MIB}\n",
        ("blkio", "blkio.throttle.write_bps_device"): f"8:0 {3 * MIB}\n",
        ("blkio", "blkio.throttle.read_iops_device"): "8:16 100\n",
        ("blkio", "blkio.throttle.write_iops_device"): "8:0 200\n",
    }
    assert {key: read(paths[key[0]], key[1]) for key in expected} == expected


def record_writes(monkeypatch: pytest.MonkeyPatch, module: object) -> list[tuple[str, str]]:
    """Record (file name, value) of every write_file call the module makes, still writing."""
    calls: list[tuple[str, str]] = []
    real = v1.write_file

    def recording(directory: str, name: str, value: str) -> None:
        calls.append((name, value))
        real(directory, name, value)

    monkeypatch.setattr(module, "write_file", recording)
    return calls


def test_v1_devices_deny_all_then_rules_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v1(tmp_path))
    m.create()
    calls = record_writes(monkeypatch, v1)
    m.set(Resources(devices=FULL.devices))
    assert calls == [
        ("devices.deny", "a"),
        ("devices.deny", "a *:* rwm"),
        ("devices.allow", "c 1:3 rwm"),
        ("devices.deny", "b *:* m"),
    ]


def test_v1_memory_and_swap_are_written_in_an_order_the_kernel_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v1(tmp_path))
    m.create()
    kernel_files_v1(m.paths())
    calls = record_writes(monkeypatch, v1)
    limits = Resources(memory=MemoryResources(limit=64 * MIB, swap=128 * MIB))
    m.set(limits)  # from unlimited: the limit first, or memsw would drop below it
    grow = Resources(memory=MemoryResources(limit=256 * MIB, swap=512 * MIB))
    m.set(grow)  # from 64 MiB: memsw first, or the limit would exceed the old memsw
    assert [name for name, _ in calls] == [
        "memory.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
        "memory.limit_in_bytes",
    ]


def test_v1_swap_without_swap_accounting(tmp_path: Path) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v1(tmp_path))
    m.create()
    kernel_files_v1(m.paths(), memsw=False)
    with pytest.raises(EnvironmentError_, match="swap accounting"):
        m.set(Resources(memory=MemoryResources(limit=64 * MIB, swap=128 * MIB)))
    m.set(Resources(memory=MemoryResources(limit=64 * MIB, swap=64 * MIB)))
    m.set(Resources(memory=MemoryResources(limit=64 * MIB, swap=-1)))
    assert not Path(m.paths()["memory"], "memory.memsw.limit_in_bytes").exists()


def test_v1_blkio_weight_falls_back_to_bfq_and_else_says_why(tmp_path: Path) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v1(tmp_path))
    m.create()
    weighted = Resources(block_io=BlockIOResources(weight=300))
    with pytest.raises(EnvironmentError_, match="CFQ or BFQ"):
        m.set(weighted)
    Path(m.paths()["blkio"], "blkio.bfq.weight").write_text("100\n")
    m.set(weighted)
    assert read(m.paths()["blkio"], "blkio.bfq.weight") == "300"


def test_v1_missing_controller_fails_only_when_asked_for(tmp_path: Path) -> None:
    mountinfo = "\n".join(line for line in HYBRID_MOUNTINFO.splitlines() if "pids" not in line)
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v1(tmp_path, mountinfo))
    m.create()
    assert "pids" not in m.paths()
    m.set(Resources(cpu=CpuResources(shares=512)))
    with pytest.raises(EnvironmentError_, match="pids"):
        m.set(Resources(pids=PidsResources(limit=10)))


def test_v1_write_error_names_the_file(tmp_path: Path) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v1(tmp_path))
    m.create()
    Path(m.paths()["cpu"], "cpu.shares").mkdir()  # any write to it fails (EISDIR)
    with pytest.raises(OSFailure) as failure:
        m.set(Resources(cpu=CpuResources(shares=512)))
    assert failure.value.op == "write"
    assert failure.value.path == f"{tmp_path}/cpu/ctr/cpu.shares"
    assert failure.value.errno == errno.EISDIR


def test_v1_stats_from_kernel_files(tmp_path: Path) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v1(tmp_path))
    m.create()
    files = {
        ("cpuacct", "cpuacct.usage"): "3000000000\n",
        ("cpuacct", "cpuacct.usage_user"): "2000000000\n",
        ("cpuacct", "cpuacct.usage_sys"): "1000000000\n",
        ("cpuacct", "cpuacct.stat"): "user 190\nsystem 95\n",
        ("cpu", "cpu.stat"): "nr_periods 50\nnr_throttled 7\nthrottled_time 123456789\n",
        ("memory", "memory.usage_in_bytes"): f"{30 * MIB}\n",
        ("memory", "memory.max_usage_in_bytes"): f"{32 * MIB}\n",
        ("memory", "memory.limit_in_bytes"): f"{32 * MIB}\n",
        ("memory", "memory.failcnt"): "12\n",
        ("memory", "memory.oom_control"): "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        ("pids", "pids.current"): "3\n",
        ("pids", "pids.max"): "max\n",
        ("blkio", "blkio.throttle.io_service_bytes"): (
            "8:16 Read 4096\n8:16 Write 8192\n8:16 Sync 0\n8:16 Async 12288\n"
            "8:16 Discard 0\n8:16 Total 12288\n8:0 Read 100\n8:0 Write 0\n8:0 Total 100\n"
            "Total 12388\n"
        ),
        ("blkio", "blkio.throttle.io_serviced"): (
            "8:16 Read 1\n8:16 Write 2\n8:16 Total 3\n8:0 Read 4\n8:0 Total 4\nTotal 7\n"
        ),
    }
    for (controller, name), text in files.items():
        Path(m.paths()[controller], name).write_text(text)
    assert m.stats() == CgroupStats(
        cpu_usage_user_ns=2_000_000_000,
        cpu_usage_system_ns=1_000_000_000,
        cpu_usage_total_ns=3_000_000_000,
        cpu_nr_periods=50,
        cpu_nr_throttled=7,
        cpu_throttled_ns=123456789,
        memory_current_bytes=30 * MIB,
        memory_peak_bytes=32 * MIB,
        memory_limit_bytes=32 * MIB,
        memory_oom_events=12,
        memory_oom_kill=2,
        pids_current=3,
        pids_limit=-1,
        io_read_bytes=4196,
        io_write_bytes=8192,
        io_read_ops=5,
        io_write_ops=2,
    )
    # Older kernels: no usage_user/usage_sys, only USER_HZ ticks; unlimited memory reads -1.
    Path(m.paths()["cpuacct"], "cpuacct.usage_user").unlink()
    Path(m.paths()["memory"], "memory.limit_in_bytes").write_text(f"{V1_UNLIMITED}\n")
    stats = m.stats()
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert (stats.cpu_usage_user_ns, stats.cpu_usage_system_ns) == (190 * tick_ns, 95 * tick_ns)
    assert stats.memory_limit_bytes == -1


def test_v1_co_mounted_cpu_cpuacct_share_one_directory(tmp_path: Path) -> None:
    (tmp_path / "cpu,cpuacct").mkdir()
    (tmp_path / "pids").mkdir()
    m = new_manager("/ctr", root=tmp_path, mountinfo=COMOUNTED_MOUNTINFO.format(root=tmp_path))
    m.create()
    m.apply(4242)
    assert m.paths()["cpu"] == m.paths()["cpuacct"] == f"{tmp_path}/cpu,cpuacct/ctr"
    assert read(m.paths()["cpu"], "cgroup.procs") == "4242"
    assert m.pids() == [4242]


def test_v1_freeze_and_thaw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v1(tmp_path))
    m.create()
    m.freeze()  # on the fake tree the state reads back FROZEN at once
    assert read(m.paths()["freezer"], "freezer.state") == "FROZEN"
    m.thaw()
    assert read(m.paths()["freezer"], "freezer.state") == "THAWED"
    # A cgroup that stays FREEZING: bounded wait, then thawed and an error.
    monkeypatch.setattr(v1, "FREEZE_TIMEOUT_S", 0.02)
    monkeypatch.setattr(v1, "read_file", lambda directory, name: "FREEZING\n")
    with pytest.raises(OSFailure) as failure:
        m.freeze()
    assert failure.value.errno == errno.ETIMEDOUT
    assert read(m.paths()["freezer"], "freezer.state") == "THAWED"


def test_kill_all_signals_the_listed_processes(tmp_path: Path) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v1(tmp_path))
    m.create()
    child = subprocess.Popen(["sleep", "30"])
    try:
        Path(m.paths()["pids"], "cgroup.procs").write_text(f"{child.pid}\n999999999\n")
        m.kill_all(signal.SIGTERM)  # the second pid does not exist: skipped
        assert child.wait(timeout=5) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()


def test_kill_all_sigkill_gives_up_after_a_bounded_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v1(tmp_path))
    m.create()
    child = subprocess.Popen(["sleep", "30"])
    try:
        # The fake cgroup.procs never empties, as if the process could not die.
        Path(m.paths()["pids"], "cgroup.procs").write_text(f"{child.pid}\n")
        monkeypatch.setattr(v1, "KILL_TIMEOUT_S", 0.05)
        with pytest.raises(OSFailure) as failure:
            m.kill_all(signal.SIGKILL)
        assert failure.value.errno == errno.EBUSY
        assert child.wait(timeout=5) == -signal.SIGKILL
        assert read(m.paths()["freezer"], "freezer.state") == "THAWED"
    finally:
        child.kill()
        child.wait()


def test_v1_destroy_removes_only_the_leaf(tmp_path: Path) -> None:
    m = new_manager("/isobench/ctr", root=tmp_path, mountinfo=fake_v1(tmp_path))
    m.create()
    for directory in m.paths().values():  # cgroupfs control files vanish with the directory
        for entry in Path(directory).iterdir():
            entry.unlink()
    m.destroy()
    assert not m.exists()
    assert (tmp_path / "memory" / "isobench").is_dir()
    m.destroy()  # already gone is fine
    (tmp_path / "pids" / "isobench" / "other").mkdir()  # another container still there
    for directory in set(m.paths().values()):
        mountpoint = directory.removesuffix(m.path)
        v1.remove_empty_parents(directory, mountpoint)
    assert not (tmp_path / "memory" / "isobench").exists()
    assert (tmp_path / "pids" / "isobench" / "other").is_dir()
    assert (tmp_path / "memory").is_dir()


def test_rmdir_retries_ebusy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    real_rmdir = os.rmdir
    attempts: list[str] = []

    def busy_twice(path: str) -> None:
        attempts.append(path)
        if len(attempts) <= 2:
            raise OSError(errno.EBUSY, "busy")
        real_rmdir(path)

    monkeypatch.setattr(os, "rmdir", busy_twice)
    v1.rmdir(str(target))
    assert len(attempts) == 3 and not target.exists()

    target.mkdir()

    def always_busy(path: str) -> None:
        attempts.append(path)
        raise OSError(errno.EBUSY, "busy")

    attempts.clear()
    monkeypatch.setattr(os, "rmdir", always_busy)
    with pytest.raises(OSFailure) as failure:
        v1.rmdir(str(target))
    assert failure.value.errno == errno.EBUSY
    assert len(attempts) == v1.RMDIR_RETRIES


# ---------------------------------------------------------------- v2 on a fake tree


def fake_v2(root: Path, controllers: str = "cpuset cpu io memory hugetlb pids rdma misc") -> str:
    (root / "cgroup.controllers").write_text(controllers + "\n")
    return PURE_V2_MOUNTINFO.format(root=root)


def test_v2_create_enables_controllers_in_every_ancestor(tmp_path: Path) -> None:
    m = new_manager("/isobench/run/ctr", root=tmp_path, mountinfo=fake_v2(tmp_path))
    m.create()
    for level in ("", "isobench", "isobench/run"):
        assert read(f"{tmp_path}/{level}", "cgroup.subtree_control") == (
            "+cpu +cpuset +memory +pids +io"
        )
    assert not (tmp_path / "isobench" / "run" / "ctr" / "cgroup.subtree_control").exists()


def test_v2_create_enables_only_what_the_root_has(tmp_path: Path) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v2(tmp_path, "memory pids"))
    m.create()
    assert read(str(tmp_path), "cgroup.subtree_control") == "+memory +pids"


def test_v2_set_writes_converted_values(tmp_path: Path) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v2(tmp_path))
    m.create()
    resources = Resources(
        cpu=CpuResources(shares=1024, quota=50000, period=100000, cpus="1", mems="0"),
        memory=MemoryResources(limit=64 * MIB, reservation=32 * MIB, swap=128 * MIB),
        pids=PidsResources(limit=-1),
        block_io=FULL.block_io,
        devices=FULL.devices,
        unified=(("memory.high", "50331648"), ("cpu.weight", "7")),
    )
    m.set(resources)
    directory = m.paths()[""]
    assert {
        name: read(directory, name)
        for name in (
            "cpu.max",
            "cpuset.cpus",
            "cpuset.mems",
            "memory.max",
            "memory.low",
            "memory.swap.max",
            "memory.high",
            "pids.max",
            "io.weight",
            "io.max",
            "cpu.weight",
        )
    } == {
        "cpu.max": "50000 100000",
        "cpuset.cpus": "1",
        "cpuset.mems": "0",
        "memory.max": str(64 * MIB),
        "memory.low": str(32 * MIB),
        "memory.swap.max": str(64 * MIB),  # OCI swap is memory+swap
        "memory.high": "50331648",
        "pids.max": "max",
        "io.weight": "default 4950\n8:0 2930\n",  # 1 + (300 - 10) * 9999 // 990
        "io.max": (f"8:0 rbps={MIB} wbps={3 * MIB} wiops=200\n8:16 rbps={2 * MIB} riops=100\n"),
        "cpu.weight": "7",  # unified is written last and wins
    }
    # Devices need eBPF on v2: accepted, nothing written.
    assert not [p for p in os.listdir(directory) if p.startswith("devices")]


def test_v2_cpu_weight_formula(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v2(tmp_path))
    m.create()
    m.set(Resources(cpu=CpuResources(shares=1024)))
    assert read(m.paths()[""], "cpu.weight") == "100"
    monkeypatch.setattr(v2, "SHARES_TO_WEIGHT", shares_to_weight_linear)
    m.set(Resources(cpu=CpuResources(shares=1024)))
    assert read(m.paths()[""], "cpu.weight") == "39"


@pytest.mark.parametrize("key", ["../cgroup.procs", "sub/memory.max", "..", ""])
def test_v2_bad_unified_key_is_rejected_before_any_write(tmp_path: Path, key: str) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v2(tmp_path))
    m.create()
    with pytest.raises(UserError, match="unified"):
        m.set(Resources(pids=PidsResources(limit=5), unified=((key, "1"),)))
    assert not Path(m.paths()[""], "pids.max").exists()


def test_v2_missing_controller_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v2(tmp_path))
    m.create()
    Path(m.paths()[""], "cgroup.controllers").write_text("cpu memory pids\n")

    def no_such_file(directory: str, name: str, lines: list[str]) -> None:
        raise OSFailure("write", f"{directory}/{name}", errno.ENOENT)

    monkeypatch.setattr(v2, "write_lines", no_such_file)
    with pytest.raises(EnvironmentError_, match="the io cgroup controller"):
        m.set(Resources(block_io=BlockIOResources(weight=100)))


def test_v2_swap_without_swap_accounting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v2(tmp_path))
    m.create()
    real = v1.write_file

    def no_swap_file(directory: str, name: str, value: str) -> None:
        if name == "memory.swap.max":
            raise OSFailure("write", f"{directory}/{name}", errno.ENOENT)
        real(directory, name, value)

    monkeypatch.setattr(v2, "write_file", no_swap_file)
    m.set(Resources(memory=MemoryResources(limit=64 * MIB, swap=64 * MIB)))
    assert read(m.paths()[""], "memory.max") == str(64 * MIB)
    with pytest.raises(EnvironmentError_, match="swap"):
        m.set(Resources(memory=MemoryResources(limit=64 * MIB, swap=128 * MIB)))


def test_v2_stats_from_kernel_files(tmp_path: Path) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v2(tmp_path))
    m.create()
    directory = m.paths()[""]
    files = {
        "cpu.stat": (
            "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\n"
            "core_sched.force_idle_usec 0\nnr_periods 50\nnr_throttled 7\n"
            "throttled_usec 12345\nnr_bursts 0\nburst_usec 0\n"
        ),
        "memory.current": f"{30 * MIB}\n",
        "memory.peak": f"{32 * MIB}\n",
        "memory.max": "max\n",
        "memory.events": "low 0\nhigh 4\nmax 9\noom 1\noom_kill 1\noom_group_kill 0\n",
        "pids.current": "3\n",
        "pids.max": "32\n",
        "io.stat": (
            "8:16 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"
            "8:0 rbytes=100 wbytes=0 rios=4 wios=0 dbytes=0 dios=0\n"
        ),
    }
    for name, text in files.items():
        Path(directory, name).write_text(text)
    assert m.stats() == CgroupStats(
        cpu_usage_user_ns=2_000_000_000,
        cpu_usage_system_ns=1_000_000_000,
        cpu_usage_total_ns=3_000_000_000,
        cpu_nr_periods=50,
        cpu_nr_throttled=7,
        cpu_throttled_ns=12_345_000,
        memory_current_bytes=30 * MIB,
        memory_peak_bytes=32 * MIB,
        memory_limit_bytes=-1,
        memory_oom_events=1,
        memory_oom_kill=1,
        memory_high_events=4,
        pids_current=3,
        pids_limit=32,
        io_read_bytes=4196,
        io_write_bytes=8192,
        io_read_ops=5,
        io_write_ops=2,
    )


def test_v2_freeze_waits_for_frozen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v2(tmp_path))
    m.create()
    events = Path(m.paths()[""], "cgroup.events")
    events.write_text("populated 1\nfrozen 1\n")
    m.freeze()
    assert read(m.paths()[""], "cgroup.freeze") == "1"
    m.thaw()
    assert read(m.paths()[""], "cgroup.freeze") == "0"
    events.write_text("populated 1\nfrozen 0\n")
    monkeypatch.setattr(v2, "FREEZE_TIMEOUT_S", 0.02)
    with pytest.raises(OSFailure) as failure:
        m.freeze()
    assert failure.value.errno == errno.ETIMEDOUT
    assert read(m.paths()[""], "cgroup.freeze") == "0"


def test_v2_kill_all_uses_cgroup_kill(tmp_path: Path) -> None:
    m = new_manager("/ctr", root=tmp_path, mountinfo=fake_v2(tmp_path))
    m.create()
    Path(m.paths()[""], "cgroup.kill").write_text("")
    Path(m.paths()[""], "cgroup.procs").write_text("")
    m.kill_all(signal.SIGKILL)
    assert read(m.paths()[""], "cgroup.kill") == "1"


def test_v2_destroy(tmp_path: Path) -> None:
    m = new_manager("/isobench/ctr", root=tmp_path, mountinfo=fake_v2(tmp_path))
    m.create()
    m.destroy()
    assert not m.exists() and (tmp_path / "isobench").is_dir()


def test_read_optional_treats_a_removed_cgroup_as_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kernfs answers ENODEV for a file of a cgroup removed between open and read."""
    import builtins

    from harness.runtime.cgroups import fs

    (tmp_path / "cgroup.procs").write_text("1\n")
    real_open = builtins.open

    def failing_open(path: object, *args: object, **kwargs: object) -> object:
        if str(path).endswith("cgroup.procs"):
            raise OSError(errno.ENODEV, "No such device")
        if str(path).endswith("memory.stat"):
            raise OSError(errno.EIO, "I/O error")
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", failing_open)
    assert fs.read_optional(str(tmp_path), "cgroup.procs") is None
    assert fs.read_pids(str(tmp_path)) == []
    with pytest.raises(OSFailure):  # other errors still are errors
        fs.read_optional(str(tmp_path), "memory.stat")
