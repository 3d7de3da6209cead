"""libvirt guests as an enforcement adapter: a Job's linux.resources become the domain's tunables.

Each job boots a fresh guest of the run's image (TCG here, ~8 s), applies the
limits as libvirt does, runs the job's argv through the guest agent and
destroys the guest. The mapping (`tuning()`), requested and effective side by side:

- CPU quota -> `<cputune>` period/quota, which libvirt applies per vCPU: q CPUs
  become ceil(q) vCPUs at q/ceil(q) of a CPU each (0.5 -> 1 x 50000/100000,
  1.5 -> 2 x 75000/100000). cpu.shares -> the domain's cpu_shares (live).
- cpuset -> `<vcpupin>` of every vCPU and `<emulatorpin>` onto those CPUs.
- memory limit -> `<memtune><hard_limit>`, which bounds QEMU's whole memory
  (its own, and the guest RAM it has touched). It is set live once the guest
  has booted, at what the cgroup then holds plus the request: the test's "64
  MiB" is what the job may add on top of the booted guest. Past it the host
  OOM-kills QEMU, so the whole guest dies: the limit holds, with the VM as the
  unit of failure; that is recorded as enforced.
- blkio throttle -> `<blkiotune>` on the host disk holding the guest's raw
  disk file (cache=none: QEMU's IO is direct, so the throttle sees it); the
  guest's fio writes and reads that virtio disk (a link at /dev/isobench-io).

Freeze and thaw are virDomainSuspend/Resume, kill is virDomainDestroy. The
counters come from the cgroup libvirt made for the domain (vm_cgroup.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.enforcement.adapters import IO_DEVICE, V1_NO_MEMORY_HIGH, Launched
from harness.enforcement.model import Job
from harness.enforcement.vm_cgroup import KernelLog, VmCgroup, oom_kills_logged, qemu_pid
from harness.errors import EnvironmentError_, IsobenchError, StateError
from harness.image.store import ImageStore
from harness.platforms.base import RunContext
from harness.vm.domain import BlkioLimit, DomainSpec

GUEST_MEMORY_MIB = 512  # room for the image's initramfs and a 256 MiB buffer
DISK_MIB = 16  # an unused disk (a DomainSpec has one): sparse, never read
IO_DISK_MIB = 128  # written out in full, so the guest's reads reach the host disk
ENDED_WAIT_S = 5.0  # QEMU's end reaches libvirt through its monitor: not at once
KILLED = 128 + 9  # the exit status of a job whose guest was destroyed or OOM-killed

# Test groups and features a guest has no equivalent of (see not_applicable()).
NOT_APPLICABLE = {
    "memory.high": V1_NO_MEMORY_HIGH
    + "; libvirt's <memtune> soft_limit is that same v1 soft limit",
    "pids": "a guest's tasks are not host tasks: its own kernel bounds them, and the host "
    "cgroup holds only QEMU (libvirt has no pids tunable)",
    "memory.accounting": "the host sees QEMU's resident memory: it grows when the guest first "
    "touches a page and never shrinks when the guest frees one (no balloon), so the guest's "
    "anonymous memory is not what a host cgroup counts",
    "monitoring.memory": "as memory.accounting: the host counts QEMU's touched guest RAM, "
    "not the guest's memory in use",
    "cpu.weight": "three TCG guests booted at once on one pinned CPU take ~30 s before their "
    "loads can overlap, and each guest's emulator work competes outside the vCPU threads the "
    "shares would be compared on; not run",
    "cpuset": "the pinning is applied (<vcpupin>/<emulatorpin> onto the host CPU), but the test "
    "checks the affinity seen inside against host CPU numbers, and a guest sees only its own "
    "virtual CPUs (vCPU 0), and cpuacct per-CPU time (no cpuacct group for the domain here)",
}


@dataclass(frozen=True)
class VmTuning:
    """A Job's resources as libvirt tunables: what the guest gets, beside what was asked."""

    requested: dict[str, Any]
    vcpus: int = 1
    cpu_period_us: int | None = None
    cpu_quota_us: int | None = None  # per vCPU
    cpu_shares: int | None = None
    vcpupin: tuple[int, ...] = ()
    emulatorpin: str | None = None
    memory_limit_bytes: int | None = None  # above the booted guest's usage
    read_bps: int = 0
    write_bps: int = 0

    def apply(self, spec: DomainSpec, disk_device: str) -> DomainSpec:
        """The run's spec with this tuning (the hard limit and shares are set live after boot)."""
        limits = (BlkioLimit(disk_device, self.read_bps, self.write_bps),)
        return dataclasses.replace(
            spec,
            vcpus=self.vcpus,
            memory_mib=GUEST_MEMORY_MIB,
            cpu_period_us=self.cpu_period_us,
            cpu_quota_us=self.cpu_quota_us,
            vcpupin=self.vcpupin,
            emulatorpin=self.emulatorpin,
            blkio_limits=limits if self.read_bps or self.write_bps else (),
        )

    def effective(self) -> dict[str, Any]:
        """What the guest holds: vCPUs and per-vCPU quota, the CPUs the total quota adds up to."""
        out: dict[str, Any] = {"vcpus": self.vcpus, "guest_memory_mib": GUEST_MEMORY_MIB}
        if self.cpu_quota_us is not None and self.cpu_period_us:
            out |= {"quota_per_vcpu_us": self.cpu_quota_us, "period_us": self.cpu_period_us,
                    "total_cpus": self.vcpus * self.cpu_quota_us / self.cpu_period_us}  # fmt: skip
        if self.vcpupin:
            out |= {"vcpupin": list(self.vcpupin), "emulatorpin": self.emulatorpin}
        if self.memory_limit_bytes is not None:
            out["hard_limit"] = "booted usage + requested limit (set live)"
        if self.read_bps or self.write_bps:
            out["blkiotune"] = {"read_bytes_sec": self.read_bps, "write_bytes_sec": self.write_bps}
        return out


def tuning(resources: dict[str, Any]) -> VmTuning:
    """Map OCI linux.resources to a VmTuning; EnvironmentError_ for a limit with no libvirt form."""
    extra = sorted(set(resources) - {"cpu", "memory", "blockIO", "devices"})
    if extra:
        raise EnvironmentError_(f"vm: no libvirt tunable for linux.resources {', '.join(extra)}")
    cpu, memory, blkio = (resources.get(k) or {} for k in ("cpu", "memory", "blockIO"))
    pins = _cpu_list(cpu["cpus"]) if cpu.get("cpus") else []
    vcpus, period, quota = max(1, len(pins)), None, None
    if cpu.get("quota", -1) > 0:
        period = int(cpu.get("period") or 100_000)
        cpus = cpu["quota"] / period
        vcpus = max(1, math.ceil(cpus))
        quota = max(1000, round(cpu["quota"] / vcpus))  # libvirt's minimum quota is 1000 us
    rates = {k: sum(d["rate"] for d in blkio.get(k, [])) for k in ("throttleReadBpsDevice", "throttleWriteBpsDevice")}  # fmt: skip
    return VmTuning(
        requested=resources,
        vcpus=vcpus,
        cpu_period_us=period,
        cpu_quota_us=quota,
        cpu_shares=cpu.get("shares"),
        vcpupin=tuple(pins[i % len(pins)] for i in range(vcpus)) if pins else (),
        emulatorpin=cpu.get("cpus") or None,
        memory_limit_bytes=memory.get("limit"),
        read_bps=rates["throttleReadBpsDevice"],
        write_bps=rates["throttleWriteBpsDevice"],
    )


def _cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def disk_device(path: Path) -> str:
    """The host's whole-disk block device holding a file (where blkio throttles apply)."""
    dev = os.stat(path).st_dev
    sys_dir = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
    if (sys_dir / "partition").exists():
        sys_dir = sys_dir.parent
    device = Path("/dev") / sys_dir.name
    if not device.exists():
        raise EnvironmentError_(f"vm: {path} is on {sys_dir.name}, which has no block device node")
    return str(device)


class VmAdapter:
    """Jobs in fresh libvirt guests (see the module docstring)."""

    def __init__(self, store: ImageStore | None = None, uri: str | None = None) -> None:
        from harness.platforms.vm import VmOptions, VmPlatform

        self.name = "vm"
        self._store = store
        self._platform = VmPlatform(VmOptions(uri=uri, boot_run_guest=False), store)
        self._ctx: RunContext | None = None
        self._dir: Path | None = None
        self._env: dict[str, str] = {}
        self._guests: list[Any] = []
        self._tunings: dict[str, dict[str, Any]] = {}

    def available(self) -> tuple[bool, str]:
        """libvirt and QEMU installed, root, and libvirt's cgroup v1 layout readable."""
        if os.geteuid() != 0:
            return False, "reading and tuning the guests' cgroups needs root"
        if not os.path.isdir("/sys/fs/cgroup/memory"):
            return False, "the vm adapter reads libvirt's cgroup v1 layout; no v1 memory hierarchy"
        return self._platform.available()

    def prepare(self, ctx: RunContext) -> None:
        """Kernel, initramfs and accelerator through the vm platform (no guest booted yet)."""
        from harness.platforms.bare import _image_env
        from harness.platforms.common import checked_digest

        store = self._store or ImageStore()
        self._env = _image_env(store, checked_digest(store, ctx))
        self._platform.prepare(ctx)
        self._ctx = ctx
        self._dir = ctx.workdir / f"enforce-vm-{ctx.run_id}"
        self._dir.mkdir(parents=True, exist_ok=True)

    def not_applicable(self, feature: str) -> str | None:
        """Why a guest has no equivalent of a feature or test group; None where it has one."""
        return NOT_APPLICABLE.get(feature)

    def launch(self, job: Job, instance: str) -> Launched:
        """Boot a guest with the job's tunables, set the live ones, start the job's argv in it."""
        if self._ctx is None or self._dir is None:
            raise StateError("vm adapter: prepare() has not run")
        tune = tuning(job.resources)
        disk = self._disk(instance, full=bool(tune.read_bps or tune.write_bps))
        device = disk_device(disk)
        guest = self._platform.boot_guest(disk, lambda spec: tune.apply(spec, device))
        self._guests.append(guest)
        cgroup = VmCgroup(qemu_pid(guest.spec.name), tune.vcpus)
        if tune.cpu_shares is not None:
            guest.domain.setSchedulerParameters({"cpu_shares": tune.cpu_shares})
        if job.block_device:
            guest.client.run(["ln", "-sf", "/dev/vda", IO_DEVICE], env=self._env)
        cgroup.start_job()
        if tune.memory_limit_bytes is not None:
            hard_kib = (cgroup.baseline_bytes + tune.memory_limit_bytes) // 1024
            guest.domain.setMemoryParameters({"hard_limit": hard_kib}, 1)  # 1: AFFECT_LIVE
        self._tunings[instance] = {
            "domain": guest.spec.name,
            "requested": tune.requested,
            "effective": {**tune.effective(), **_live(guest.domain)},
            "baseline_bytes": cgroup.baseline_bytes,
        }
        out, err = self._dir / f"{instance}.out", self._dir / f"{instance}.err"
        kmsg = KernelLog()
        killed: list[bool] = []

        def body() -> int:
            try:
                result = guest.client.run(list(job.argv), env=self._env, timeout_s=job.timeout_s)
                out.write_text(result.stdout)
                err.write_text(result.stderr)
                return KILLED if result.timed_out else result.exit_code
            except EnvironmentError_ as exc:  # the channel closed: the guest is gone
                err.write_text(f"vm: guest ended during the job: {exc}\n")
                # Killed by us, or by the OOM killer (libvirt notices QEMU's end a little later).
                if not killed and not _ended(guest.domain, ENDED_WAIT_S):
                    raise
                return KILLED
            finally:
                cgroup.end(oom_kills_logged(kmsg.read_new(), cgroup.pid))
                kmsg.close()
                self._platform.destroy_guest(guest)

        def kill() -> None:
            killed.append(True)
            guest.domain.destroy()

        controls = {"freeze": guest.domain.suspend, "thaw": guest.domain.resume, "kill": kill}
        return Launched(cgroup, body, (out, err), controls)

    def _disk(self, instance: str, full: bool) -> Path:
        """The guest's raw disk: sparse and unused, or written out for the IO tests."""
        assert self._dir is not None
        path = self._dir / f"{instance}.raw"
        with open(path, "wb") as f:
            if full:  # real extents: reads of a hole would never reach the disk
                block = b"\0" * (1 << 20)
                for _ in range(IO_DISK_MIB):
                    f.write(block)
                os.fsync(f.fileno())
            else:
                f.truncate(DISK_MIB << 20)
        return path

    def describe(self) -> dict[str, object]:
        """How limits are applied, the platform's facts, and each job's requested vs effective."""
        platform = self._platform.describe()
        keep = ("accel", "accel_reason", "versions", "uri", "kernel")
        return {
            "name": self.name,
            "limits": "libvirt tunables of a fresh guest per job (see harness/enforcement/adapter_vm.py)",
            "cgroup": "libvirt's /machine/qemu-*.libvirt-qemu (v1); CPU = the vCPU threads' time",
            "freeze/kill": "virDomainSuspend / virDomainResume / virDomainDestroy",
            **{k: platform[k] for k in keep if k in platform},
            "jobs": dict(self._tunings),
        }

    def teardown(self) -> None:
        """Destroy every guest still there, then the platform's files."""
        for guest in self._guests:
            with contextlib.suppress(IsobenchError, OSError):
                self._platform.destroy_guest(guest)
        self._guests.clear()
        self._platform.teardown()


def _ended(domain: Any, wait_s: float) -> bool:
    """True once the domain is no longer running (waiting up to wait_s for libvirt to see it)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if not domain.isActive():
                return True
        except Exception:  # libvirtError: a transient domain that ended is gone
            return True
        time.sleep(0.05)
    return False


def _live(domain: Any) -> dict[str, Any]:
    """The tunables libvirt reports for the running domain (what it really wrote)."""
    out: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        sched = domain.schedulerParameters()
        out["libvirt_sched"] = {k: sched[k] for k in ("cpu_shares", "vcpu_period", "vcpu_quota") if k in sched}  # fmt: skip
    with contextlib.suppress(Exception):
        out["libvirt_memtune_kib"] = {k: v for k, v in domain.memoryParameters(0).items() if k == "hard_limit"}  # fmt: skip
    return out
