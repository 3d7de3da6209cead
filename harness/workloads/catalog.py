"""The benchmark catalog: every benchmark by name, in one literal dict.

A name reads category.tool.variant; its factory takes a profile (smoke, quick,
full) and returns the Workload at that profile's sizes. Nothing registers
itself: a benchmark exists when it is listed in BENCHMARKS. Startup is not
here: platforms time cold starts themselves (Platform.launch_latency).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from harness.errors import UserError
from harness.workloads.base import Metric, Workload
from harness.workloads.network import iperf3_host, iperf3_loopback, probe_tcp_rr
from harness.workloads.parsers import (
    ParseError,
    parse_sysbench_cpu,
    parse_sysbench_general,
    parse_sysbench_memory,
    select,
)
from harness.workloads.probe import probe_fields, rtt, stream
from harness.workloads.sizing import TIMEOUT_S, check_profile, memory_array_mib
from harness.workloads.storage import VOLUME_DIR, fio_workload
from harness.workloads.stressng import ipc, matrix, randlist

SYSBENCH = "/usr/bin/sysbench"

# ---------------------------------------------------------------- CPU: sysbench

# Events per thread: one event checks primes up to 10000 (about 0.23 ms here); quick is
# about 1.2 s a run, enough for a CI width under 2 % over 3 blocks.
CPU_PRIME = 10000
CPU_EVENTS = {"smoke": 800, "quick": 5000, "full": 100000}
CPU_METRICS = (
    Metric("events_per_s", "events/s", higher_is_better=True),
    Metric("total_time_s", "s", higher_is_better=False),
    Metric("events", "events", higher_is_better=True),
)


def sysbench_cpu(profile: str, *, all_cpus: bool) -> Workload:
    """sysbench cpu, a fixed number of events: one thread, or one per usable CPU."""
    events = CPU_EVENTS[check_profile(profile)]
    options = f"--cpu-max-prime={CPU_PRIME} --time=0"
    if all_cpus:
        # nproc counts the CPUs this process may run on (cpuset, VM vCPUs), known only inside.
        script = (
            f"n=$(nproc); exec {SYSBENCH} cpu run {options}"
            f' --events="$(({events} * n))" --threads="$n"'
        )
        argv: tuple[str, ...] = ("/bin/sh", "-c", script)
    else:
        argv = (SYSBENCH, "cpu", "run", *options.split(), f"--events={events}", "--threads=1")
    return Workload(
        benchmark="cpu.sysbench." + ("allthreads" if all_cpus else "1thread"),
        category="cpu",
        argv=argv,
        metrics=CPU_METRICS,
        primary="events_per_s",
        parse=parse_sysbench_cpu,
        timeout_s=TIMEOUT_S[profile],
        sizes={
            "cpu_max_prime": CPU_PRIME,
            "events_per_thread": events,
            "threads": "nproc" if all_cpus else 1,
        },
    )


# ---------------------------------------------------------------- memory: sysbench

# Blocks read per run; one block is 4x the last-level cache, so every pass misses it.
MEMORY_BLOCKS = {"smoke": 32, "quick": 96, "full": 2560}
MEMORY_METRICS = (
    Metric("mib_per_s", "MiB/s", higher_is_better=True),
    Metric("ops_per_s", "blocks/s", higher_is_better=True),
    Metric("total_time_s", "s", higher_is_better=False),
)


def sysbench_memory(profile: str) -> Workload:
    """sysbench memory: sequential reads of a buffer 4x the last-level cache, one thread."""
    blocks = MEMORY_BLOCKS[check_profile(profile)]
    block_mib = memory_array_mib(profile=profile)
    argv = (
        SYSBENCH,
        "memory",
        "run",
        f"--memory-block-size={block_mib}M",
        f"--memory-total-size={block_mib * blocks}M",
        "--memory-oper=read",
        "--memory-access-mode=seq",
        f"--events={blocks}",
        "--time=0",
        "--threads=1",
    )
    names = [metric.name for metric in MEMORY_METRICS]
    return Workload(
        benchmark="memory.sysbench.seq",
        category="memory",
        argv=argv,
        metrics=MEMORY_METRICS,
        primary="mib_per_s",
        parse=lambda text: select(parse_sysbench_memory(text), names, "sysbench memory"),
        timeout_s=TIMEOUT_S[profile],
        sizes={"block_mib": block_mib, "blocks": blocks, "oper": "read", "mode": "seq"},
    )


# ---------------------------------------------------------------- syscall: sysbench + LuaJIT

# No stress-ng 0.15 stressor costs one syscall per bogo-op (x86syscall, which would,
# skips itself on non-Intel CPUs). sysbench's LuaJIT calls libc's getppid() through
# the FFI in a compiled loop instead: one real syscall per call (glibc caches
# nothing for getppid), CALLS_PER_EVENT per sysbench event so the event loop's own
# cost is below 0.1 ns per call.
CALLS_PER_EVENT = 1000
GETPPID_LUA = f"""ffi.cdef[[int getppid(void);]]
function event()
  for i = 1, {CALLS_PER_EVENT} do ffi.C.getppid() end
end
"""
SYSCALL_SCRIPT = "/tmp/isobench-getppid.lua"
SYSCALL_EVENTS = {"smoke": 1000, "quick": 4000, "full": 100000}
SYSCALL_METRICS = (
    Metric("ns_per_call", "ns", higher_is_better=False),
    Metric("total_time_s", "s", higher_is_better=False),
    Metric("events", "events", higher_is_better=True),
)


def _ns_per_call(text: str) -> dict[str, float]:
    values = parse_sysbench_general(text)
    calls = values["events"] * CALLS_PER_EVENT
    if calls <= 0:
        raise ParseError("sysbench output counts no events")
    values["ns_per_call"] = values["latency_sum_ms"] * 1e6 / calls
    return select(values, [metric.name for metric in SYSCALL_METRICS], "sysbench")


def syscall_getppid(profile: str) -> Workload:
    """ns per getppid() call in a tight loop: sysbench's summed event latency / calls."""
    events = SYSCALL_EVENTS[check_profile(profile)]
    script = (
        f'printf "%s" "$1" > {SYSCALL_SCRIPT} || exit 1; '
        f"{SYSBENCH} {SYSCALL_SCRIPT} run --events={events} --time=0 --threads=1; "
        f"rc=$?; rm -f {SYSCALL_SCRIPT}; exit $rc"
    )
    return Workload(
        benchmark="syscall.sysbench.getppid",
        category="syscall",
        argv=("/bin/sh", "-c", script, "sh", GETPPID_LUA),
        metrics=SYSCALL_METRICS,
        primary="ns_per_call",
        parse=_ns_per_call,
        timeout_s=TIMEOUT_S[profile],
        sizes={"syscall": "getppid", "events": events, "calls_per_event": CALLS_PER_EVENT},
    )


# ---------------------------------------------------------------- the catalog

Factory = Callable[[str], Workload]
# /scratch as a whole path component, wherever it stands in an argument (--directory=/scratch).
_SCRATCH_PATH = re.compile(r"(?<![\w./-])" + re.escape(VOLUME_DIR) + r"(?![\w.-])")

# Order is the order of a listing and of a block before its shuffle.
BENCHMARKS: dict[str, Factory] = {
    "cpu.sysbench.1thread": lambda p: sysbench_cpu(p, all_cpus=False),
    "cpu.sysbench.allthreads": lambda p: sysbench_cpu(p, all_cpus=True),
    "cpu.stress-ng.matrix.1thread": lambda p: matrix(p, all_cpus=False),
    "cpu.stress-ng.matrix.allthreads": lambda p: matrix(p, all_cpus=True),
    "memory.probe.stream": stream,
    "memory.sysbench.seq": sysbench_memory,
    "memory.stress-ng.randlist": randlist,
    "io.fio.seqread.root": lambda p: fio_workload("seqread", "root", p),
    "io.fio.seqwrite.root": lambda p: fio_workload("seqwrite", "root", p),
    "io.fio.randread.root": lambda p: fio_workload("randread", "root", p),
    "io.fio.randwrite.root": lambda p: fio_workload("randwrite", "root", p),
    "io.fio.seqread.volume": lambda p: fio_workload("seqread", "volume", p),
    "io.fio.seqwrite.volume": lambda p: fio_workload("seqwrite", "volume", p),
    "io.fio.randread.volume": lambda p: fio_workload("randread", "volume", p),
    "io.fio.randwrite.volume": lambda p: fio_workload("randwrite", "volume", p),
    "ipc.stress-ng.pipe": lambda p: ipc("pipe", p),
    "ipc.stress-ng.unix-socket": lambda p: ipc("unix-socket", p),
    "ipc.stress-ng.tcp-loopback": lambda p: ipc("tcp-loopback", p),
    "ipc.stress-ng.shm": lambda p: ipc("shm", p),
    "ipc.stress-ng.mq": lambda p: ipc("mq", p),
    "ipc.stress-ng.sem": lambda p: ipc("sem", p),
    "ipc.stress-ng.signal": lambda p: ipc("signal", p),
    "ipc.probe.pipe.rtt": lambda p: rtt("pipe", p),
    "ipc.probe.unix.rtt": lambda p: rtt("unix", p),
    "ipc.probe.tcp.rtt": lambda p: rtt("tcp", p),
    "ipc.probe.shm.rtt": lambda p: rtt("shm", p),
    "ipc.probe.mq.rtt": lambda p: rtt("mq", p),
    "ipc.probe.sem.rtt": lambda p: rtt("sem", p),
    "ipc.probe.signal.rtt": lambda p: rtt("signal", p),
    "syscall.sysbench.getppid": syscall_getppid,
    "network.iperf3.loopback": iperf3_loopback,
    "network.iperf3.to-host": lambda p: iperf3_host(p, reverse=False),
    "network.iperf3.from-host": lambda p: iperf3_host(p, reverse=True),
    "network.probe.tcp-rr": lambda p: probe_tcp_rr(p, probe_fields),
}


def workloads(names: list[str] | None, profile: str) -> list[Workload]:
    """The named benchmarks (or whole categories: "cpu", "io") at profile's sizes; None: all."""
    check_profile(profile)
    chosen: list[str] = []
    for name in names if names is not None else list(BENCHMARKS):
        matches = [b for b in BENCHMARKS if b == name or b.startswith(name + ".")]
        if not matches:
            categories = sorted({b.split(".", 1)[0] for b in BENCHMARKS})
            raise UserError(
                f"unknown benchmark {name!r}; accepted: a category ({', '.join(categories)}),"
                f" a prefix of a name, or one of {', '.join(BENCHMARKS)}"
            )
        chosen.extend(m for m in matches if m not in chosen)
    return [BENCHMARKS[name](profile) for name in chosen]


def bind_scratch(workload: Workload, host_dir: str) -> Workload:
    """The workload with /scratch replaced by host_dir in its argv, for runs without a mount."""
    if workload.scratch != "volume":
        return workload
    argv = tuple(_SCRATCH_PATH.sub(lambda _: host_dir, arg) for arg in workload.argv)
    return dataclasses.replace(workload, argv=argv)
