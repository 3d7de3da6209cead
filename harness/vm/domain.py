"""A guest as data: `DomainSpec` -> libvirt domain XML (xml.etree), and its hashes.

One spec is one benchmark guest: direct kernel boot of the image's initramfs,
vCPUs and memory equal to the run's limits, a raw scratch disk on virtio-blk,
the agent's virtio-serial channel and a serial console written to a file. No
network, no graphics, no USB, no balloon: every device a plain QEMU launch of
the same guest would not have is left out, so the two compare.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError

NAME_PREFIX = "isobench-"  # then <run id>-vm<n>: cleanup finds a run's domains by it
AGENT_CHANNEL = "org.isobench.agent.0"
SCRATCH_SERIAL = "isobench-scratch"
METADATA_NS = "https://isobench.invalid/xmlns/run/1"
ACCELS = ("kvm", "tcg")
DISK_CACHES = ("none", "writeback", "writethrough", "directsync", "unsafe")
DISK_IOS = ("native", "threads", "io_uring")


def domain_name(run_id: str, n: int) -> str:
    """The n-th domain of a run: the run id in its name, so a sweep can find it."""
    return f"{NAME_PREFIX}{run_id}-vm{n}"


@dataclass(frozen=True)
class BlkioLimit:
    """A `<blkiotune><device>` entry: byte-rate caps on one host block device (0: none)."""

    path: str
    read_bytes_sec: int = 0
    write_bytes_sec: int = 0


@dataclass(frozen=True)
class DomainSpec:
    """Everything that makes one guest; `to_xml()` is the only place that knows libvirt's schema."""

    name: str
    run_id: str
    vcpus: int
    memory_mib: int
    kernel: Path
    initrd: Path
    cmdline: str
    disk: Path  # raw file, the guest's /scratch
    agent_socket: Path  # host end of the agent channel (libvirt binds it)
    console_log: Path  # the guest's ttyS0
    accel: str = "tcg"  # "kvm" -> domain type kvm, host-passthrough CPU; "tcg" -> type qemu
    cpu_model: str | None = None  # TCG only: a named model; None: QEMU's default
    disk_cache: str = "none"
    disk_io: str = "native"
    vcpupin: tuple[int, ...] = ()  # host CPU of vCPU i
    emulatorpin: str | None = None  # cpuset of QEMU's own threads ("1" or "0-1")
    hugepages: bool = False
    # The cgroup-facing knobs (enforcement issue): None leaves libvirt's defaults.
    cpu_period_us: int | None = None
    cpu_quota_us: int | None = None  # per vCPU, unlike cgroup cpu.max
    memory_hard_limit_kib: int | None = None  # includes QEMU's own memory
    blkio_weight: int | None = None
    blkio_limits: tuple[BlkioLimit, ...] = ()
    owner_pid: int = dataclasses.field(default_factory=os.getpid)  # the isobench that made it

    def __post_init__(self) -> None:
        if self.accel not in ACCELS:
            raise UserError(f"accelerator {self.accel!r}; accepted: {', '.join(ACCELS)}")
        if self.disk_cache not in DISK_CACHES:
            raise UserError(f"disk cache {self.disk_cache!r}; accepted: {', '.join(DISK_CACHES)}")
        if self.disk_io not in DISK_IOS:
            raise UserError(f"disk io {self.disk_io!r}; accepted: {', '.join(DISK_IOS)}")
        if self.vcpus < 1 or self.memory_mib < 64:
            raise UserError(
                f"guest of {self.vcpus} vCPUs and {self.memory_mib} MiB; accepted: >= 1 vCPU, >= 64 MiB"
            )
        if self.vcpupin and len(self.vcpupin) != self.vcpus:
            raise UserError(
                f"vcpupin {self.vcpupin}: one host CPU per vCPU ({self.vcpus}); accepted: {self.vcpus} entries"
            )
        if self.cpu_model is not None and self.accel == "kvm":
            raise UserError("cpu_model is for TCG; under KVM the CPU is host-passthrough")

    def to_xml(self) -> str:
        """The domain XML libvirt defines (deterministic: the same spec gives the same bytes)."""
        dom = ET.Element("domain", type="kvm" if self.accel == "kvm" else "qemu")
        _text(dom, "name", self.name)
        meta = ET.SubElement(dom, "metadata")
        ET.SubElement(
            meta,
            f"{{{METADATA_NS}}}run",
            {"id": self.run_id, "pid": str(self.owner_pid)},
        )
        _text(dom, "memory", str(self.memory_mib), unit="MiB")
        _text(dom, "currentMemory", str(self.memory_mib), unit="MiB")
        if self.hugepages:
            ET.SubElement(ET.SubElement(dom, "memoryBacking"), "hugepages")
        _text(dom, "vcpu", str(self.vcpus), placement="static")
        self._tunables(dom)
        os_el = ET.SubElement(dom, "os")
        _text(os_el, "type", "hvm", arch="x86_64")
        _text(os_el, "kernel", str(self.kernel))
        _text(os_el, "initrd", str(self.initrd))
        _text(os_el, "cmdline", self.cmdline)
        # Without ACPI libvirt passes -no-acpi and a guest's poweroff only halts it.
        ET.SubElement(ET.SubElement(dom, "features"), "acpi")
        if self.accel == "kvm":
            ET.SubElement(dom, "cpu", mode="host-passthrough", check="none")
        elif self.cpu_model:
            cpu = ET.SubElement(dom, "cpu", mode="custom", match="exact", check="none")
            _text(cpu, "model", self.cpu_model, fallback="forbid")
        for event in ("on_poweroff", "on_reboot", "on_crash"):
            # A guest that reboots or panics is finished: destroyed, never restarted.
            _text(dom, event, "destroy")
        self._devices(dom)
        ET.register_namespace("isobench", METADATA_NS)
        ET.indent(dom)
        return ET.tostring(dom, encoding="unicode") + "\n"

    def _tunables(self, dom: ET.Element) -> None:
        cputune = ET.Element("cputune")
        for vcpu, host_cpu in enumerate(self.vcpupin):
            ET.SubElement(cputune, "vcpupin", vcpu=str(vcpu), cpuset=str(host_cpu))
        if self.emulatorpin:
            ET.SubElement(cputune, "emulatorpin", cpuset=self.emulatorpin)
        if self.cpu_period_us is not None:
            _text(cputune, "period", str(self.cpu_period_us))
        if self.cpu_quota_us is not None:
            _text(cputune, "quota", str(self.cpu_quota_us))
        if len(cputune):
            dom.append(cputune)
        if self.memory_hard_limit_kib is not None:
            memtune = ET.SubElement(dom, "memtune")
            _text(memtune, "hard_limit", str(self.memory_hard_limit_kib), unit="KiB")
        if self.blkio_weight is not None or self.blkio_limits:
            blkio = ET.SubElement(dom, "blkiotune")
            if self.blkio_weight is not None:
                _text(blkio, "weight", str(self.blkio_weight))
            for limit in self.blkio_limits:
                device = ET.SubElement(blkio, "device")
                _text(device, "path", limit.path)
                if limit.read_bytes_sec:
                    _text(device, "read_bytes_sec", str(limit.read_bytes_sec))
                if limit.write_bytes_sec:
                    _text(device, "write_bytes_sec", str(limit.write_bytes_sec))

    def _devices(self, dom: ET.Element) -> None:
        devices = ET.SubElement(dom, "devices")
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(
            disk, "driver", name="qemu", type="raw", cache=self.disk_cache, io=self.disk_io
        )
        ET.SubElement(disk, "source", file=str(self.disk))
        ET.SubElement(disk, "target", dev="vda", bus="virtio")
        _text(disk, "serial", SCRATCH_SERIAL)
        channel = ET.SubElement(devices, "channel", type="unix")
        ET.SubElement(channel, "source", mode="bind", path=str(self.agent_socket))
        ET.SubElement(channel, "target", type="virtio", name=AGENT_CHANNEL)
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=str(self.console_log))
        ET.SubElement(serial, "target", port="0")
        # libvirt adds a USB controller, a balloon and (with no graphics) nothing else
        # by default; the first two are switched off, video is made explicit.
        ET.SubElement(devices, "controller", type="usb", model="none")
        ET.SubElement(devices, "memballoon", model="none")
        ET.SubElement(ET.SubElement(devices, "video"), "model", type="none")

    def shape(self) -> DomainSpec:
        """The same spec with the run's name, id, pid and paths replaced by fixed placeholders."""
        return dataclasses.replace(
            self,
            name="isobench-RUN-vm",
            run_id="RUN",
            owner_pid=0,
            kernel=Path("/KERNEL"),
            initrd=Path("/INITRD"),
            disk=Path("/DISK"),
            agent_socket=Path("/SOCKET"),
            console_log=Path("/CONSOLE"),
            blkio_limits=tuple(dataclasses.replace(b, path="/DEV") for b in self.blkio_limits),
        )

    def hashes(self) -> dict[str, str]:
        """sha256 of the exact XML, and of its shape (equal across runs of the same configuration)."""
        return {
            "xml_sha256": _sha256(self.to_xml()),
            "shape_sha256": _sha256(self.shape().to_xml()),
        }


def owner_of(xml: str) -> tuple[str, int] | None:
    """(run id, pid) from a domain's isobench metadata; None for domains we did not make."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    run = root.find(f"metadata/{{{METADATA_NS}}}run")
    if run is None:
        return None
    pid = run.get("pid", "")
    return (run.get("id", ""), int(pid)) if pid.isdigit() else None


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    element.text = text
    return element


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
