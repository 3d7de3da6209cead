"""The vm platform: the workload image booted as a libvirt guest, workloads run through its agent.

prepare() finds a kernel, builds (or reuses) the guest initramfs of the run's
image, picks the accelerator (accel.py), formats the raw scratch disk and boots
one guest for the whole run; run() sends each workload's argv to the guest
agent over virtio-serial while libvirt's stats are sampled. launch_latency() is
one cold boot of a fresh domain to the exit of /bin/true. Every domain is named
isobench-<run id>-vm<n> and carries the owning pid in its metadata, so
`isobench cleanup` can tell a killed run's guests from a live run's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.errors import EnvironmentError_, IsobenchError, NotApplicable, UserError
from harness.image.store import ImageStore, default_home
from harness.platforms.bare import _image_env
from harness.platforms.base import Limits, Outcome, RunContext
from harness.platforms.burst import Burst
from harness.platforms.common import TIMED_OUT, checked_digest, limits_record, timeout_note
from harness.vm import accel as accel_mod
from harness.vm.connection import default_uri, open_connection, versions
from harness.vm.domain import DomainSpec, domain_name
from harness.vm.monitor import StatsSampler, domain_stats
from harness.workloads.base import Workload

READY_TIMEOUT_S = 120.0  # TCG boots here in ~5 s; a guest that takes this long is broken
DEFAULT_MEMORY_MIB = 1024  # when the run sets no memory limit (a guest needs a size)
SCRATCH_MIB = 2048  # the scratch disk: fio's largest file at full size, and room
STARTUP_DISK_MIB = 16  # the cold-start guests' own (empty) scratch disk
EXIT_TIMEOUT_S = 60.0
# An emulated cold boot takes 8-15 s here: a profile's 10 a block would be most of quick's
# 10 minutes. Under TCG the scheduler gives the vm this many (recorded in describe()).
TCG_COLD_STARTS_PER_BLOCK = 1
INITRAMFS_CACHE = "vm-initramfs"  # under the isobench home


@dataclass(frozen=True)
class VmOptions:
    """The vm platform's command-line choices."""

    uri: str | None = None  # None: the embedded driver in the isobench home
    accel: str = "auto"
    guest_kernel: Path | None = None
    results_dir: Path | None = None  # where a failed boot's console log is saved
    ready_timeout_s: float = READY_TIMEOUT_S
    include_tcg: bool = False  # the report then puts this run's TCG figures into ratios
    boot_run_guest: bool = True  # False: prepare() boots nothing (a caller using boot_guest())


@dataclass
class _Guest:
    """One running domain, its agent connection and when it was created and became ready."""

    spec: DomainSpec
    domain: Any
    client: Any
    created_s: float
    ready_s: float
    boot_s: float  # the guest's own clock at readiness


@dataclass
class _ColdStart:
    create_to_ready_s: float
    create_to_exit_s: float
    guest_boot_s: float


@dataclass
class _State:
    ctx: RunContext
    dir: Path
    kernel: Any
    initrd: Path
    decision: accel_mod.Decision
    vcpus: int
    memory_mib: int
    env: dict[str, str]
    cold_starts: list[_ColdStart] = field(default_factory=list)
    resized: dict[str, str] = field(default_factory=dict)  # benchmark -> what was changed


class VmPlatform:
    """Workloads in a libvirt guest (see the module docstring)."""

    def __init__(self, options: VmOptions | None = None, store: ImageStore | None = None) -> None:
        self.name = "vm"
        self.options = options or VmOptions()
        self._store = store
        self._conn: Any = None
        self._state: _State | None = None
        self._guest: _Guest | None = None
        self._next = 0
        self._versions: dict[str, str] = {}
        # Read by the scheduler (scheduler.launch_cap); set once the accelerator is known.
        self.cold_starts_per_block: int | None = None

    def available(self) -> tuple[bool, str]:
        """libvirt-python and qemu-system-x86_64 installed (the kernel is found in prepare)."""
        import importlib.util

        if importlib.util.find_spec("libvirt") is None:
            return False, "libvirt-python is not installed (pip install libvirt-python)"
        if shutil.which("qemu-system-x86_64") is None:
            return False, "qemu-system-x86_64 missing (Debian package qemu-system-x86)"
        if shutil.which("mkfs.ext4") is None:
            return False, "mkfs.ext4 missing (Debian package e2fsprogs)"
        return True, ""

    @property
    def uri(self) -> str:
        """The libvirt URI this platform connects to."""
        return self.options.uri or default_uri()

    def prepare(self, ctx: RunContext) -> None:
        """Kernel, initramfs, accelerator, scratch disk; then boot the run's guest (bounded)."""
        from harness.vm.guest import build_guest_initramfs
        from harness.vm.kernel import default_cache_dir, find_kernel
        from harness.vm.qemu_direct import make_scratch_disk

        store = self._store or ImageStore()
        digest = checked_digest(store, ctx)
        try:
            self._conn = open_connection(self.uri)
            from harness.runtime.cleanup import sweep_domains

            # Guests of runs killed before they could tear down (the next run sweeps them).
            for line in sweep_domains(self._conn):
                if line.startswith("removed"):
                    print(f"isobench: {line}", file=sys.stderr)
            self._versions = versions(self._conn)
            kernel = find_kernel(self.options.guest_kernel, default_cache_dir())
            initrd = build_guest_initramfs(
                store, ctx.image_ref, kernel, default_home() / INITRAMFS_CACHE
            )
            # Short paths: the agent's UNIX socket path must fit in 108 bytes.
            work = ctx.workdir / "vm"
            work.mkdir(parents=True, exist_ok=True)
            self._state = _State(
                ctx=ctx,
                dir=work,
                kernel=kernel,
                initrd=initrd,
                decision=accel_mod.Decision("tcg", "not decided yet"),
                vcpus=_vcpus(ctx.limits),
                memory_mib=(ctx.limits.memory_bytes >> 20)
                if ctx.limits.memory_bytes
                else DEFAULT_MEMORY_MIB,
                env=_image_env(store, digest),
            )
            make_scratch_disk(work / "scratch.raw", SCRATCH_MIB)
            make_scratch_disk(work / "startup.raw", STARTUP_DISK_MIB)
            self._state.decision = self._decide_accel()  # a KVM probe boots on startup.raw
            if self._state.decision.accel == "tcg":
                self.cold_starts_per_block = TCG_COLD_STARTS_PER_BLOCK
            if self.options.boot_run_guest:
                self._guest = self._boot(work / "scratch.raw", self._state.decision.accel)
                self._loopback_up(self._guest)
        except BaseException:
            self.teardown()
            raise

    def _decide_accel(self) -> accel_mod.Decision:
        from harness.host import DEV_KVM, tool_version

        qemu = tool_version("qemu-system-x86_64", ["--version"]) or "unknown"
        return accel_mod.decide(
            self.options.accel,
            dev_kvm=DEV_KVM,
            probe=self._kvm_probe,
            cache_file=default_home() / accel_mod.CACHE_NAME,
            key=accel_mod.cache_key(qemu),
        )

    def _kvm_probe(self) -> tuple[bool, str]:
        """Boot a KVM guest and wait PROBE_BOUND_S for its agent."""
        assert self._state is not None
        try:
            guest = self._boot(
                self._state.dir / "startup.raw", "kvm", accel_mod.PROBE_BOUND_S, keep_log=False
            )
        except EnvironmentError_ as exc:
            return False, str(exc).split(" (console", 1)[0]
        self._destroy(guest)
        return True, f"agent ready {guest.ready_s - guest.created_s:.2f} s after create"

    def _spec(self, disk: Path, accel: str) -> DomainSpec:
        from harness.vm.guest import GUEST_CMDLINE

        assert self._state is not None
        n, self._next = self._next, self._next + 1
        ctx = self._state.ctx
        return DomainSpec(
            name=domain_name(ctx.run_id, n),
            run_id=ctx.run_id,
            vcpus=self._state.vcpus,
            memory_mib=self._state.memory_mib,
            kernel=self._state.kernel.vmlinuz,
            initrd=self._state.initrd,
            cmdline=GUEST_CMDLINE,
            disk=disk,
            agent_socket=self._state.dir / f"a{n}.sock",
            console_log=self._state.dir / f"console{n}.log",
            accel=accel,
            disk_cache="none",
            disk_io="threads",  # as qemu_direct, the plain-QEMU baseline
        )

    def boot_guest(self, disk: Path, tune: Callable[[DomainSpec], DomainSpec]) -> _Guest:
        """A fresh guest of the run on disk, its spec changed by tune; the caller destroys it."""
        assert self._state is not None, "prepare() has not run"
        return self._boot(disk, self._state.decision.accel, tune=tune)

    def destroy_guest(self, guest: _Guest) -> None:
        """Destroy a guest of boot_guest() (already gone is fine)."""
        self._destroy(guest)

    def _boot(
        self,
        disk: Path,
        accel: str,
        timeout_s: float | None = None,
        keep_log: bool = True,
        tune: Callable[[DomainSpec], DomainSpec] | None = None,
    ) -> _Guest:
        """Create a transient domain and wait for its agent; on failure nothing of it is left."""
        from harness.vm.agent import AgentClient

        spec = self._spec(disk, accel)
        spec = tune(spec) if tune is not None else spec
        timeout_s = timeout_s or self.options.ready_timeout_s
        created = time.perf_counter()
        try:
            domain = self._conn.createXML(spec.to_xml(), 0)
        except Exception as exc:  # libvirtError: bad kernel path, QEMU refused the config
            raise EnvironmentError_(f"vm: cannot start {spec.name}: {_one_line(exc)}") from exc
        client = None
        try:
            client = AgentClient.connect(spec.agent_socket, timeout_s)
            left_s = max(0.1, timeout_s - (time.perf_counter() - created))
            ready = client.wait_ready(left_s)
        except BaseException as exc:
            if client is not None:
                client.close()
            saved = self._save_console(spec) if keep_log else None
            _destroy_domain(domain)
            if isinstance(exc, IsobenchError):
                where = f" (console log: {saved})" if saved else ""
                raise EnvironmentError_(
                    f"vm: guest {spec.name} not ready within {timeout_s:g} s: "
                    f"{_one_line(exc)}{where}"
                ) from None
            raise
        return _Guest(spec, domain, client, created, time.perf_counter(), ready.boot_s)

    def _loopback_up(self, guest: _Guest) -> None:
        """lo up, as every container's network namespace has it (the loopback benchmarks use it)."""
        result = guest.client.run(["/bin/busybox", "ip", "link", "set", "lo", "up"], timeout_s=30)
        if result.exit_code != 0:
            raise EnvironmentError_(
                f"vm: `ip link set lo up` in the guest exited {result.exit_code}: "
                f"{result.stderr.strip()}"
            )

    def _save_console(self, spec: DomainSpec) -> Path | None:
        """The failed guest's console log, copied into the results folder (else left in place)."""
        target_dir = self.options.results_dir
        if target_dir is None or not spec.console_log.exists():
            return spec.console_log if spec.console_log.exists() else None
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{spec.name}-console.log"
        shutil.copyfile(spec.console_log, target)
        return target

    def run(self, workload: Workload) -> Outcome:
        """The workload's argv through the agent, libvirt's stats sampled meanwhile."""
        if self._guest is None or self._state is None:
            raise EnvironmentError_("vm platform: prepare() has not run")
        if workload.peer_argv is not None:
            raise NotApplicable(
                "vm: the guest has no network device, so no host-side peer can reach it"
            )
        workload = self._fitted(workload)
        guest = self._guest
        env = {**self._state.env, **dict(workload.env)}
        # As bare empties its scratch dir: every run starts from an empty /scratch.
        guest.client.run(["/bin/sh", "-c", "rm -rf /scratch/* /var/tmp/isobench-io"], env=env)
        stats = StatsSampler(lambda: domain_stats(self._conn, guest.domain))
        start = time.perf_counter()
        with stats:
            result = guest.client.run(
                list(workload.argv), env=env, cwd="/", timeout_s=workload.timeout_s
            )
        wall_s = time.perf_counter() - start
        stderr = result.stderr + (timeout_note(workload.timeout_s) if result.timed_out else "")
        resources = {"guest_wall_s": result.guest_wall_s, **stats.summary()}
        if result.truncated:
            resources["output_truncated"] = 1.0
        return Outcome(
            exit_code=TIMED_OUT if result.timed_out else result.exit_code,
            stdout=result.stdout,
            stderr=stderr,
            wall_s=wall_s,
            resources=resources,
            ran=workload,
        )

    def _fitted(self, workload: Workload) -> Workload:
        """The workload as this guest can run it; every change is recorded (describe())."""
        assert self._state is not None
        from harness.workloads import storage
        from harness.workloads import workloads as select_workloads

        if self._state.decision.accel == "tcg":
            # Emulated, every workload is many times slower: smoke sizes keep a run bounded.
            smoke = select_workloads([workload.benchmark], "smoke")[0]
            if smoke.sizes != workload.sizes:
                self._state.resized[workload.benchmark] = "smoke sizes (TCG)"
                workload = smoke
        if workload.scratch == "root" and workload.benchmark.startswith("io.fio."):
            # The guest's root is the initramfs (tmpfs): no O_DIRECT there.
            kind = workload.benchmark.split(".")[2]
            profile = (
                "smoke" if workload.benchmark in self._state.resized else _profile_of(workload)
            )
            buffered = storage.fio_workload(kind, "root", profile, direct=False)
            workload = replace(buffered, timeout_s=workload.timeout_s)
            note = "buffered IO (root is the initramfs tmpfs, no O_DIRECT)"
            prev = self._state.resized.get(workload.benchmark)
            if prev is None or note not in prev:
                self._state.resized[workload.benchmark] = f"{prev}; {note}" if prev else note
        return workload

    def launch_latency(self) -> float:
        """One cold boot: create a fresh domain, wait for its agent, run /bin/true, wait for it to end."""
        assert self._state is not None
        guest = self._boot(self._state.dir / "startup.raw", self._state.decision.accel)
        try:
            result = guest.client.run(["/bin/true"], timeout_s=EXIT_TIMEOUT_S)
            if result.exit_code != 0:
                raise EnvironmentError_(f"vm: /bin/true exited {result.exit_code} in the guest")
            guest.client.poweroff()
            _wait_gone(guest.domain, EXIT_TIMEOUT_S)
            exited = time.perf_counter()
        finally:
            self._destroy(guest)
        self._state.cold_starts.append(
            _ColdStart(guest.ready_s - guest.created_s, exited - guest.created_s, guest.boot_s)
        )
        return exited - guest.created_s

    def launch_burst(self, count: int) -> Burst:
        """Not taken: count guests at once do not fit a benchmark host's memory and cores."""
        raise NotApplicable(
            f"vm: {count} guests at once would need {count} x {self._memory_mib()} MiB; "
            "VM startup is measured by cold boots one at a time"
        )

    def _memory_mib(self) -> int:
        return self._state.memory_mib if self._state else DEFAULT_MEMORY_MIB

    def _destroy(self, guest: _Guest) -> None:
        with contextlib.suppress(Exception):
            guest.client.close()
        _destroy_domain(guest.domain)
        guest.spec.agent_socket.unlink(missing_ok=True)

    def teardown(self) -> None:
        """Destroy (and undefine) every domain of the run; remove its files. Safe to call twice."""
        if self._guest is not None:
            self._destroy(self._guest)
            self._guest = None
        if self._conn is not None and self._state is not None:
            prefix = domain_name(self._state.ctx.run_id, 0)[: -len("0")]
            for domain in self._conn.listAllDomains():
                if domain.name().startswith(prefix):
                    _destroy_domain(domain)
        if self._state is not None:
            from harness.runtime.cleanup import sweep_run_machine_cgroups

            # A guest whose QEMU died unwatched leaves libvirt's cgroup behind.
            sweep_run_machine_cgroups(self._state.ctx.run_id)
            shutil.rmtree(self._state.dir, ignore_errors=True)

    def describe(self) -> dict[str, object]:
        """Accelerator and why, versions, URI, XML hash, guest size, disk modes, kernel, cold starts."""
        state, guest = self._state, self._guest
        desc: dict[str, object] = {
            "name": self.name,
            "isolation": "a virtual machine: its own kernel, no network device",
            "uri": self.uri,
            "versions": self._versions,
        }
        if state is None:
            return desc
        spec = guest.spec if guest else None
        desc.update(
            {
                "accel": state.decision.accel,
                "accel_reason": state.decision.reason,
                "accel_probe": "cached" if state.decision.cached else state.decision.probed,
                "include_tcg": self.options.include_tcg,
                "vcpus": state.vcpus,
                "memory_mib": state.memory_mib,
                "limits": limits_record(state.ctx.limits, "guest vCPUs and memory"),
                "kernel": {
                    "version": state.kernel.version,
                    "source": state.kernel.source,
                    "path": str(state.kernel.vmlinuz),
                },
                "initramfs": state.initrd.name,
                "disk": {"cache": "none", "io": "threads", "format": "raw", "bus": "virtio-blk"},
                "scratch": {
                    "volume": "/scratch: ext4 on the virtio-blk raw disk",
                    "root": "/var/tmp on the initramfs (tmpfs in guest RAM), buffered IO",
                },
                "network": "no device: loopback only (set up by isobench); host-peer benchmarks not applicable",
                "workload_changes": dict(state.resized),
                "cold_starts": _cold_start_summary(state.cold_starts),
                "cold_starts_per_block": self.cold_starts_per_block or "the profile's",
                "image_digest": state.ctx.image_digest,
            }
        )
        if spec is not None:
            desc.update(spec.hashes())
            desc["domain_xml"] = spec.shape().to_xml()
        return desc


def _vcpus(limits: Limits) -> int:
    return limits.cpus or len(os.sched_getaffinity(0))


def _profile_of(workload: Workload) -> str:
    from harness.workloads import workloads as select_workloads

    for profile in ("smoke", "quick", "full"):
        if select_workloads([workload.benchmark], profile)[0].sizes == workload.sizes:
            return profile
    raise UserError(f"{workload.benchmark}: sizes {workload.sizes} match no profile")


def _cold_start_summary(starts: list[_ColdStart]) -> dict[str, object]:
    if not starts:
        return {}
    out: dict[str, object] = {"count": len(starts)}
    for name in ("create_to_ready_s", "create_to_exit_s", "guest_boot_s"):
        values = sorted(getattr(s, name) for s in starts)
        out[name] = {
            "p50": statistics.median(values),
            "p99": values[min(len(values) - 1, round(0.99 * (len(values) - 1)))],
            "all": values,
        }
    return out


def _wait_gone(domain: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if not domain.isActive():
                return
        except Exception:
            return  # a transient domain that ended no longer exists
        if time.monotonic() > deadline:
            raise EnvironmentError_(f"vm: {domain.name()} still running {timeout_s:g} s after poweroff")  # fmt: skip
        time.sleep(0.01)


def _destroy_domain(domain: Any) -> None:
    """Destroy (and undefine, if persistent) a domain; already gone is fine."""
    with contextlib.suppress(Exception):
        domain.destroy()
    with contextlib.suppress(Exception):
        if domain.isPersistent():
            domain.undefine()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
