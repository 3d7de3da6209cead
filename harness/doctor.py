"""`isobench doctor`: what this host can run, why not, and what makes its numbers noisy.

It reports, never fails (pyperf's `system show`): one line per finding, advice
after a colon where there is something to do. Each platform's own
`available()` decides whether it runs here; doctor only prints the answer.
"""

from __future__ import annotations

import contextlib

from harness.errors import IsobenchError
from harness.host import UNKNOWN, host_facts
from harness.platforms import PLATFORMS

GIB = 1 << 30


def doctor_lines() -> list[str]:
    """The report, one finding per line."""
    facts = host_facts()
    tools = facts["tools"]
    assert isinstance(tools, dict)
    lines = [
        f"host: {facts['cpu_model']}, {facts['cores']} logical cores "
        f"({facts['physical_cores']} physical), {_gib(facts['memory_bytes'])} memory, "
        f"kernel {facts['kernel']}, machine id {facts['machine_id']}",
        "root: yes" if facts["root"] else "root: no: containers, mounts and cgroups need root",
        _cgroups(str(facts["cgroup_version"])),
    ]
    lines += platform_lines()
    lines += _vm_lines(facts, tools)
    for name in ("runc", "crun", "fio", "stress-ng", "sysbench", "iperf3", "busybox", "skopeo"):
        version = tools.get(name)
        lines.append(f"tool {name}: {version or 'missing'}")
    lines += tuning_lines(facts)
    return lines


def platform_lines() -> list[str]:
    """One line per registered platform: runs here, or the reason it does not."""
    lines = []
    for name, factory in PLATFORMS.items():
        platform = factory()
        try:
            ok, reason = platform.available()
            extra = ""
            if ok:
                described = platform.describe()
                runtime = described.get("runtime")
                if isinstance(runtime, dict) and runtime.get("version"):
                    extra = f" ({runtime['version']})"
                how = described.get("how")
                if isinstance(how, str) and "private mount namespace" in how:
                    extra += ", run in a private mount namespace without the cgroup2 mount"
            lines.append(f"platform {name}: yes{extra}" if ok else f"platform {name}: no: {reason}")
        except (IsobenchError, OSError) as exc:
            lines.append(f"platform {name}: no: the probe failed: {exc}")
        finally:
            with contextlib.suppress(IsobenchError, OSError):
                platform.teardown()
    return lines


def _cgroups(version: str) -> str:
    if version == "1 (hybrid)":
        return (
            "cgroups: v1 hybrid (a cgroup2 mount at /sys/fs/cgroup/unified): both drivers work; "
            "crun needs the private-namespace workaround"
        )
    if version == "none":
        return "cgroups: none mounted: no container platform and no limits can run"
    return f"cgroups: v{version}"


def _vm_lines(facts: dict[str, object], tools: dict[str, object]) -> list[str]:
    kvm = facts["kvm"]
    assert isinstance(kvm, dict)
    kvm_line = (
        _kvm_verdict(str(tools.get("qemu-system-x86_64") or "unknown"))
        if kvm["dev_kvm"]
        else "kvm: no usable /dev/kvm: VMs would run under TCG emulation, labelled accel=tcg"
    )
    libvirt = facts["libvirt_python"]
    virsh = tools.get("virsh")
    return [
        kvm_line,
        "libvirt: python module "
        + (f"{libvirt}" if libvirt else "missing (pip install libvirt-python; needs libvirt-dev)")
        + "; virsh "
        + (str(virsh) if virsh else "missing (Debian package libvirt-clients)"),
        f"qemu: {tools.get('qemu-system-x86_64') or 'missing (Debian package qemu-system-x86)'}",
    ]


def _kvm_verdict(qemu_version: str) -> str:
    """What the vm platform's KVM probe found on this boot with this QEMU (it caches its verdict)."""
    from harness.image.store import default_home
    from harness.vm.accel import CACHE_NAME, cache_key, cached_decision

    decision = cached_decision(default_home() / CACHE_NAME, cache_key(qemu_version))
    if decision is None:
        return (
            "kvm: /dev/kvm present (read-write); not probed yet on this boot: the first "
            "`isobench run --platform vm` boots a probe guest and records why it picks kvm or tcg"
        )
    if decision.accel == "kvm":
        return f"kvm: usable: {decision.reason}"
    return f"kvm: not used, VMs run under TCG (labelled accel=tcg): {decision.reason}"


def tuning_lines(facts: dict[str, object]) -> list[str]:
    """Governor, turbo, SMT, THP and swap, each with advice when it makes results noisy."""
    lines = []
    governor = str(facts["governor"])
    if governor == "performance":
        lines.append("governor: performance")
    elif governor.startswith("unknown"):
        lines.append(
            f"governor: {governor}: the frequency policy is not visible here (a VM?); "
            "check it on the hypervisor"
        )
    else:
        lines.append(
            f"governor: {governor}: results will be noisy; `cpupower frequency-set -g performance`"
        )
    turbo = str(facts["turbo"])
    if turbo == "on":
        lines.append(
            "turbo: on: clock speed depends on temperature and load; "
            "`echo 1 > /sys/devices/system/cpu/intel_pstate/no_turbo` "
            "(or 0 > /sys/devices/system/cpu/cpufreq/boost)"
        )
    else:
        lines.append(f"turbo: {turbo}")
    smt = str(facts["smt"])
    if smt == "on":
        lines.append(
            "smt: on: sibling threads share a core's units; for CPU benchmarks "
            "`echo off > /sys/devices/system/cpu/smt/control`"
        )
    else:
        lines.append(f"smt: {smt}")
    thp = str(facts["thp"])
    lines.append(
        f"thp: {thp}: memory benchmarks depend on it; it is recorded with every result"
        if thp == "always"
        else f"thp: {thp}"
    )
    swap = facts["swap_bytes"]
    if isinstance(swap, int) and swap > 0:
        lines.append(
            f"swap: {_gib(swap)}: under a memory limit alone a workload can swap instead of "
            "being OOM-killed; limit memory+swap too"
        )
    else:
        lines.append(f"swap: {'none' if swap == 0 else swap}")
    return lines


def _gib(value: object) -> str:
    return f"{value / GIB:.1f} GiB" if isinstance(value, int) else str(value or UNKNOWN)
