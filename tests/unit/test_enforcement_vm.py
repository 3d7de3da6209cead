"""The vm enforcement adapter's logic: linux.resources -> libvirt tunables, read back by test:///default."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.enforcement import requests as rq
from harness.enforcement.adapter_vm import GUEST_MEMORY_MIB, NOT_APPLICABLE, VmAdapter, tuning
from harness.enforcement.suite import TESTS
from harness.enforcement.vm_cgroup import oom_kills_logged, parse_proc_cgroup
from harness.errors import EnvironmentError_
from harness.vm.connection import open_connection
from harness.vm.domain import DomainSpec, domain_name

RUN = "20260101T000000Z-abc123"


def spec() -> DomainSpec:
    return DomainSpec(
        name=domain_name(RUN, 0), run_id=RUN, vcpus=2, memory_mib=1024,
        kernel=Path("/k/vmlinuz"), initrd=Path("/w/initrd.gz"), cmdline="console=ttyS0",
        disk=Path("/w/d.raw"), agent_socket=Path("/w/a.sock"), console_log=Path("/w/c.log"),
    )  # fmt: skip


@pytest.fixture
def conn() -> Iterator[Any]:
    c = open_connection("test:///default")
    yield c
    for dom in c.listAllDomains():
        if dom.name().startswith("isobench-"):
            dom.undefine()
    c.close()


def read_back(conn: Any, resources: dict[str, Any]) -> ET.Element:
    """The tuned spec defined on the fake hypervisor, as libvirt gives it back."""
    tuned = tuning(resources).apply(spec(), "/dev/vda")
    return ET.fromstring(conn.defineXML(tuned.to_xml()).XMLDesc(0))


def test_half_a_cpu_is_one_vcpu_at_half_its_period(conn: Any) -> None:
    back = read_back(conn, rq.cpu_quota(0.5))
    assert back.findtext("vcpu") == "1"
    assert back.findtext("cputune/period") == "100000"
    assert back.findtext("cputune/quota") == "50000"
    assert tuning(rq.cpu_quota(0.5)).effective()["total_cpus"] == 0.5


def test_one_and_a_half_cpus_are_two_vcpus_at_three_quarters_each(conn: Any) -> None:
    back = read_back(conn, rq.cpu_quota(1.5))
    assert back.findtext("vcpu") == "2"
    assert back.findtext("cputune/quota") == "75000"
    effective = tuning(rq.cpu_quota(1.5)).effective()
    assert (effective["vcpus"], effective["quota_per_vcpu_us"], effective["total_cpus"]) == (2, 75000, 1.5)  # fmt: skip


def test_a_cpuset_pins_every_vcpu_and_the_emulator(conn: Any) -> None:
    back = read_back(conn, rq.cpuset("1"))
    assert back.findtext("vcpu") == "1"
    assert [p.get("cpuset") for p in back.findall("cputune/vcpupin")] == ["1"]
    assert back.find("cputune/emulatorpin") is not None
    assert back.find("cputune/emulatorpin").get("cpuset") == "1"  # type: ignore[union-attr]


def test_an_io_throttle_is_blkiotune_on_the_disk_holding_the_guest_disk(conn: Any) -> None:
    back = read_back(conn, rq.io_throttle("write", 7, 3))
    assert back.findtext("blkiotune/device/path") == "/dev/vda"
    assert back.findtext("blkiotune/device/write_bytes_sec") == str(rq.IO_RATE_BPS)
    assert back.find("blkiotune/device/read_bytes_sec") is None


def test_a_memory_limit_sizes_the_guest_and_is_set_live_not_in_the_xml(conn: Any) -> None:
    back = read_back(conn, rq.memory_limit())
    assert back.findtext("memory") == str(GUEST_MEMORY_MIB * 1024)
    # hard_limit includes QEMU's own memory: set after boot, at the booted usage + the request.
    assert back.find("memtune") is None
    assert tuning(rq.memory_limit()).memory_limit_bytes == rq.OOM_LIMIT_BYTES


def test_a_limit_with_no_libvirt_tunable_is_refused() -> None:
    with pytest.raises(EnvironmentError_, match="pids"):
        tuning(rq.pids())


def test_every_not_applicable_name_is_a_test_group_or_feature_and_pids_is_one() -> None:
    from harness.enforcement.adapters import FEATURES

    assert set(NOT_APPLICABLE) <= set(TESTS) | set(FEATURES)
    adapter = VmAdapter()
    assert adapter.not_applicable("pids")
    for applicable in ("cpu.quota", "memory.hard_limit", "io", "blkio", "freeze_kill"):
        assert adapter.not_applicable(applicable) is None


def test_proc_cgroup_and_the_oom_line_of_one_pid() -> None:
    text = (
        "4:memory:/machine/q.libvirt-qemu\n1:cpu:/machine/q.libvirt-qemu/emulator\n0::/machine/q\n"
    )
    assert parse_proc_cgroup(text) == {
        "memory": "/machine/q.libvirt-qemu",
        "cpu": "/machine/q.libvirt-qemu/emulator",
    }
    log = [
        "3,1,2,-;Memory cgroup out of memory: Killed process 4242 (qemu-system-x86) total-vm:1kB",
        "3,1,2,-;Memory cgroup out of memory: Killed process 42 (sh) total-vm:1kB",
    ]
    assert oom_kills_logged(log, 4242) == 1
    assert oom_kills_logged(log, 424) == 0
