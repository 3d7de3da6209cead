"""stress-ng benchmarks: the CPU matrix method, the memory random list, the IPC mechanisms.

Every run is a fixed number of bogo operations (--X-ops), so the work is the
same on every platform and the rate is what differs. stress-ng logs to stderr;
--stdout moves its log and metrics table to stdout, which platforms parse, and
--log-brief drops the "stress-ng: info: [pid]" prefixes. (--yaml /dev/stdout
was the alternative: stress-ng opens it with truncation, which wipes the log
already written when stdout is a file, as it is under every platform.)
"""

from __future__ import annotations

from collections.abc import Callable

from harness.workloads.base import Metric, Workload
from harness.workloads.parsers import ParseError, parse_stress_ng, select
from harness.workloads.sizing import MIB, TIMEOUT_S, check_profile, memory_array_mib

STRESS_NG = "/usr/bin/stress-ng"
COMMON = ("--metrics-brief", "--stdout", "--log-brief", "--temp-path", "/tmp")

RATE = Metric("bogo_ops_per_s_real", "bogo-ops/s", higher_is_better=True)
RATE_METRICS = (
    RATE,
    Metric("real_time_s", "s", higher_is_better=False),
    Metric("usr_time_s", "s", higher_is_better=False),
    Metric("sys_time_s", "s", higher_is_better=False),
    Metric("bogo_ops", "bogo-ops", higher_is_better=True),
)

Derive = Callable[[dict[str, float]], dict[str, float]]


def stress_ng_argv(
    stressor: str, ops: int, extra: tuple[str, ...] = (), *, per_cpu: bool = False
) -> tuple[str, ...]:
    """One instance doing ops bogo-ops; per_cpu: one instance per usable CPU, ops each."""
    if not per_cpu:
        return (STRESS_NG, f"--{stressor}", "1", f"--{stressor}-ops", str(ops), *extra, *COMMON)
    # nproc counts the CPUs this process may run on (cpuset, VM vCPUs), known only inside.
    script = (
        f'n=$(nproc); exec {STRESS_NG} --{stressor} "$n" --{stressor}-ops "$(({ops} * n))" "$@"'
    )
    return ("/bin/sh", "-c", script, "sh", *extra, *COMMON)


def stress_ng_workload(
    benchmark: str,
    stressor: str,
    ops: int,
    profile: str,
    *,
    extra: tuple[str, ...] = (),
    per_cpu: bool = False,
    metrics: tuple[Metric, ...] = RATE_METRICS,
    primary: str = RATE.name,
    derive: Derive | None = None,
    sizes: dict[str, object] | None = None,
) -> Workload:
    """A Workload running one stressor; derive adds metrics computed from the parsed row."""
    names = [metric.name for metric in metrics]

    def parse(text: str) -> dict[str, float]:
        values = parse_stress_ng(text, stressor)
        # Fixed work: fewer bogo-ops than asked is a run that stopped short (per_cpu runs ask
        # ops of each instance, so at least ops in all).
        if values["bogo_ops"] < ops:
            raise ParseError(f"stress-ng {stressor} did {values['bogo_ops']:.0f} of {ops} bogo-ops")
        if derive is not None:
            values.update(derive(values))
        return select(values, names, "stress-ng")

    return Workload(
        benchmark=benchmark,
        category=benchmark.split(".", 1)[0],
        argv=stress_ng_argv(stressor, ops, extra, per_cpu=per_cpu),
        metrics=metrics,
        primary=primary,
        parse=parse,
        timeout_s=TIMEOUT_S[check_profile(profile)],
        sizes={
            "stressor": stressor,
            "bogo_ops": ops,  # per instance
            "instances": "nproc" if per_cpu else 1,
            **(sizes or {}),
        },
    )


# ---------------------------------------------------------------- CPU

# Bogo-ops per instance: one 128x128 matrix product each (about 1.7 ms here).
MATRIX_OPS = {"smoke": 60, "quick": 500, "full": 12000}
MATRIX = ("--matrix-method", "prod", "--matrix-size", "128")


def matrix(profile: str, *, all_cpus: bool) -> Workload:
    """stress-ng --matrix, method prod, 128x128 doubles: one instance or one per CPU."""
    name = "cpu.stress-ng.matrix." + ("allthreads" if all_cpus else "1thread")
    return stress_ng_workload(
        name,
        "matrix",
        MATRIX_OPS[check_profile(profile)],
        profile,
        extra=MATRIX,
        per_cpu=all_cpus,
        sizes={"method": "prod", "matrix_size": 128},
    )


# ---------------------------------------------------------------- memory

RANDLIST_OPS = {"smoke": 1, "quick": 1, "full": 20}
# One list item: stress-ng's 16-byte header (next pointer, value) plus 48 bytes of data,
# one 64-byte cache line; --randlist-compact puts them in one allocation.
RANDLIST_ITEM_BYTES = 64
RANDLIST_DATA_BYTES = 48
RANDLIST_PASSES_PER_OP = 2  # stress-randlist.c walks the list twice per bogo-op
RANDLIST_METRICS = (Metric("ns_per_access", "ns", higher_is_better=False), *RATE_METRICS)


def randlist(profile: str) -> Workload:
    """Random-access latency: stress-ng --randlist walks a linked list in random order.

    Each step depends on the previous load (pointer chasing), so the time per item
    visited is a memory latency plus a 48-byte memset. The list spans 4x the
    last-level cache; its set-up (allocation and shuffle, a few % at quick) is in
    stress-ng's real time.
    """
    items = memory_array_mib(profile=profile) * MIB // RANDLIST_ITEM_BYTES

    def latency(values: dict[str, float]) -> dict[str, float]:
        visits_per_s = values[RATE.name] * RANDLIST_PASSES_PER_OP * items
        return {"ns_per_access": 1e9 / visits_per_s}

    return stress_ng_workload(
        "memory.stress-ng.randlist",
        "randlist",
        RANDLIST_OPS[check_profile(profile)],
        profile,
        extra=(
            "--randlist-compact",
            "--randlist-items",
            str(items),
            "--randlist-size",
            str(RANDLIST_DATA_BYTES),
        ),
        metrics=RANDLIST_METRICS,
        primary="ns_per_access",
        derive=latency,
        sizes={"items": items, "item_bytes": RANDLIST_ITEM_BYTES},
    )


# ---------------------------------------------------------------- IPC

# Mechanism -> (stressor, its options, bogo-ops per profile). Each run is about 0.5 s at
# quick here (0.6x the first quick sizes, so that quick with the vm fits 10 minutes).
# Substitutions forced by stress-ng 0.15.06: --sock-domain unix fails with
# EPROTONOSUPPORT (it asks for IPPROTO_TCP), so unix sockets use --sockpair; POSIX --sem
# ignores --sem-ops and crawls at ~100 ops/s, so semaphores are System V; shared memory
# is System V too, which needs no /dev/shm mount in the platform.
IPC: dict[str, tuple[str, tuple[str, ...], dict[str, int]]] = {
    # a writer and a reader process; one bogo-op per pipe write
    "pipe": ("pipe", (), {"smoke": 300_000, "quick": 600_000, "full": 30_000_000}),
    # socketpair(AF_UNIX) between a client and a server process, randomly sized I/O
    "unix-socket": ("sockpair", (), {"smoke": 10_000, "quick": 24_000, "full": 1_000_000}),
    # client and server over lo: connect, sends and receives, disconnect
    "tcp-loopback": (
        "sock",
        ("--sock-domain", "ipv4", "--sock-if", "lo"),
        {"smoke": 100, "quick": 180, "full": 10_000},
    ),
    # one bogo-op creates and destroys 8 segments of 8 MiB
    "shm": ("shm-sysv", (), {"smoke": 100, "quick": 300, "full": 15_000}),
    # a sender and a receiver process; one bogo-op per message sent
    "mq": ("mq", (), {"smoke": 60_000, "quick": 150_000, "full": 6_000_000}),
    # wait and post by a parent and 4 children contending on one semaphore
    "sem": ("sem-sysv", (), {"smoke": 20_000, "quick": 24_000, "full": 1_000_000}),
    # sigqueue(SIGUSR1) to a child waiting in sigwaitinfo; one bogo-op per signal sent
    "signal": ("sigq", (), {"smoke": 60_000, "quick": 150_000, "full": 6_000_000}),
}


def ipc(mechanism: str, profile: str) -> Workload:
    """One IPC mechanism (a key of IPC) as a stress-ng stressor; throughput in bogo-ops/s."""
    stressor, options, ops = IPC[mechanism]
    return stress_ng_workload(
        f"ipc.stress-ng.{mechanism}",
        stressor,
        ops[check_profile(profile)],
        profile,
        extra=options,
    )
