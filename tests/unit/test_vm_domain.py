"""Domain XML against libvirt's built-in fake hypervisor test:///default (no root, no QEMU)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.errors import EnvironmentError_, UserError
from harness.vm.connection import embed_root, open_connection, prepare_embed_root
from harness.vm.domain import (
    AGENT_CHANNEL,
    SCRATCH_SERIAL,
    BlkioLimit,
    DomainSpec,
    domain_name,
    owner_of,
)


def spec(**changes: Any) -> DomainSpec:
    base: dict[str, Any] = dict(
        name=domain_name("20260101T000000Z-abc123", 0),
        run_id="20260101T000000Z-abc123",
        vcpus=2,
        memory_mib=1024,
        kernel=Path("/k/vmlinuz"),
        initrd=Path("/w/initrd.gz"),
        cmdline="console=ttyS0 panic=-1",
        disk=Path("/w/scratch.raw"),
        agent_socket=Path("/w/agent.sock"),
        console_log=Path("/w/console.log"),
    )
    return DomainSpec(**{**base, **changes})


@pytest.fixture
def conn() -> Iterator[Any]:
    c = open_connection("test:///default")
    yield c
    for dom in c.listAllDomains():
        if dom.name().startswith("isobench-"):
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefine()
    c.close()


def defined(conn: Any, s: DomainSpec) -> ET.Element:
    """Define s on the fake hypervisor and parse what libvirt gives back."""
    dom = conn.defineXML(s.to_xml())
    return ET.fromstring(dom.XMLDesc(0))


def test_tcg_guest_reads_back_with_the_run_id_limits_kernel_and_devices(conn: Any) -> None:
    back = defined(conn, spec())
    assert back.get("type") == "qemu"
    assert back.findtext("name") == "isobench-20260101T000000Z-abc123-vm0"
    assert back.findtext("vcpu") == "2"
    assert back.find("memory") is not None and back.findtext("memory") == str(1024 * 1024)
    assert back.findtext("os/kernel") == "/k/vmlinuz"
    assert back.findtext("os/initrd") == "/w/initrd.gz"
    assert back.findtext("os/cmdline") == "console=ttyS0 panic=-1"
    assert back.find("cpu") is None  # QEMU's default model under TCG
    assert back.findtext("on_poweroff") == "destroy"
    assert back.find("features/acpi") is not None
    disk = back.find("devices/disk")
    assert disk is not None
    driver = disk.find("driver")
    assert driver is not None
    assert (driver.get("type"), driver.get("cache"), driver.get("io")) == ("raw", "none", "native")
    assert disk.findtext("serial") == SCRATCH_SERIAL
    target = disk.find("target")
    assert target is not None and target.get("bus") == "virtio"
    channel = back.find("devices/channel")
    assert channel is not None
    source, ctarget = channel.find("source"), channel.find("target")
    assert source is not None and source.get("path") == "/w/agent.sock"
    assert ctarget is not None and ctarget.get("name") == AGENT_CHANNEL
    serial = back.find("devices/serial")
    assert serial is not None and serial.get("type") == "file"
    assert back.find("devices/interface") is None and back.find("devices/graphics") is None
    assert owner_of(ET.tostring(back, encoding="unicode")) == (
        "20260101T000000Z-abc123",
        spec().owner_pid,
    )


def test_kvm_guest_gets_host_passthrough_and_the_optional_tunables(conn: Any) -> None:
    s = spec(
        accel="kvm",
        vcpupin=(1, 0),
        emulatorpin="1",
        hugepages=False,
        cpu_period_us=100_000,
        cpu_quota_us=50_000,
        memory_hard_limit_kib=2 << 20,
        blkio_weight=300,
        disk_cache="writeback",
        disk_io="threads",
    )
    back = defined(conn, s)
    assert back.get("type") == "kvm"
    cpu = back.find("cpu")
    assert cpu is not None and cpu.get("mode") == "host-passthrough"
    pins = {p.get("vcpu"): p.get("cpuset") for p in back.iterfind("cputune/vcpupin")}
    assert pins == {"0": "1", "1": "0"}
    emulator = back.find("cputune/emulatorpin")
    assert emulator is not None and emulator.get("cpuset") == "1"
    assert back.findtext("cputune/period") == "100000"
    assert back.findtext("cputune/quota") == "50000"
    assert back.findtext("memtune/hard_limit") == str(2 << 20)
    assert back.findtext("blkiotune/weight") == "300"
    driver = back.find("devices/disk/driver")
    assert driver is not None and (driver.get("cache"), driver.get("io")) == (
        "writeback",
        "threads",
    )


def test_blkio_device_limits_and_hugepages_are_written() -> None:
    xml = spec(
        hugepages=True, blkio_limits=(BlkioLimit("/dev/vda", read_bytes_sec=10 << 20),)
    ).to_xml()
    root = ET.fromstring(xml)
    assert root.find("memoryBacking/hugepages") is not None
    assert root.findtext("blkiotune/device/path") == "/dev/vda"
    assert root.findtext("blkiotune/device/read_bytes_sec") == str(10 << 20)
    assert root.find("blkiotune/device/write_bytes_sec") is None


def test_tcg_named_cpu_model_reads_back(conn: Any) -> None:
    back = defined(conn, spec(cpu_model="qemu64"))
    assert back.findtext("cpu/model") == "qemu64"


def test_hashes_are_stable_and_the_shape_ignores_the_run() -> None:
    a, b = spec(), spec(run_id="other", name=domain_name("other", 0), disk=Path("/x/d.raw"))
    assert a.hashes() == spec().hashes()  # deterministic XML
    assert a.hashes()["xml_sha256"] != b.hashes()["xml_sha256"]
    assert a.hashes()["shape_sha256"] == b.hashes()["shape_sha256"]
    assert a.hashes()["shape_sha256"] != spec(vcpus=1).hashes()["shape_sha256"]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"accel": "hvf"}, "accepted: kvm, tcg"),
        ({"disk_cache": "fast"}, "disk cache 'fast'; accepted"),
        ({"disk_io": "aio"}, "disk io 'aio'; accepted"),
        ({"vcpus": 0}, "accepted: >= 1 vCPU"),
        ({"vcpupin": (0,)}, "one host CPU per vCPU"),
        ({"accel": "kvm", "cpu_model": "qemu64"}, "cpu_model is for TCG"),
    ],
)
def test_bad_specs_are_refused_with_what_is_accepted(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(UserError, match=match):
        spec(**changes)


def test_owner_of_ignores_foreign_domains() -> None:
    assert owner_of("<domain><name>other</name></domain>") is None
    assert owner_of("not xml") is None


def test_embed_uri_root_parsing_and_conf(tmp_path: Path) -> None:
    assert embed_root("qemu:///system") is None
    assert embed_root("qemu:///embed?root=/var/lib/isobench/libvirt") == Path(
        "/var/lib/isobench/libvirt"
    )
    with pytest.raises(UserError, match="accepted: qemu:///embed"):
        embed_root("qemu:///embed?root=relative")
    # CI's pytest tmp dirs once made a root whose monitor socket path was 118 bytes long.
    long_root = "/tmp/pytest-of-root/pytest-0/test_cli_smoke_run_on_vm_is_la0/embed"
    with pytest.raises(UserError, match=r"embed root is 66 bytes long.*at most 51"):
        embed_root(f"qemu:///embed?root={long_root}")
    prepare_embed_root(tmp_path / "r")
    assert 'stdio_handler = "file"' in (tmp_path / "r" / "etc" / "qemu.conf").read_text()


def test_unreachable_uri_is_one_line_environment_error() -> None:
    with pytest.raises(EnvironmentError_, match=r"^libvirt bogus:///x: cannot connect: [^\n]+$"):
        open_connection("bogus:///x")
