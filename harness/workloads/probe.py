"""isobench-probe benchmarks: IPC round-trip latency per mechanism, and STREAM's four kernels.

isobench-probe is isobench's own static C program (harness/image/csrc/isobench-probe.c,
in the image at /usr/bin). It exists because stress-ng's IPC stressors report
bogo-ops per second, a throughput whose unit differs per stressor, never the time
of one request and its reply; and stress-ng's stream stressor gives one bandwidth,
not STREAM's copy, scale, add and triad. The probe prints one result line of
key=value pairs (`probe=rtt mech=pipe iters=... p50_ns=...`), parsed here.

Round trips: a parent and a forked child ping-pong on the mechanism, both on one
CPU (the first the platform allows), after a warm-up of min(1000, iters/10).
"""

from __future__ import annotations

from harness.workloads.base import Metric, Workload
from harness.workloads.parsers import ParseError
from harness.workloads.sizing import TIMEOUT_S, check_profile, memory_array_mib

PROBE = "/usr/bin/isobench-probe"

RTT_KEYS = (
    "iters",
    "bytes",
    "mean_ns",
    "p50_ns",
    "p90_ns",
    "p99_ns",
    "min_ns",
    "max_ns",
    "roundtrips_per_s",
)
KERNELS = ("copy", "scale", "add", "triad")
STREAM_KEYS = (
    "array_mib",
    "ntimes",
    *(f"{kernel}_mb_s" for kernel in KERNELS),
    *(f"{kernel}_avg_mb_s" for kernel in KERNELS),
)
# probe kind -> the numeric keys its line must carry
REQUIRED = {"rtt": RTT_KEYS, "tcp-rr": RTT_KEYS, "stream": STREAM_KEYS}
TEXT_KEYS = ("probe", "mech")


def probe_fields(text: str, *, probe: str | None = None, mech: str | None = None) -> dict[str, str]:
    """Every key=value of isobench-probe's result line, probe and mech included, as text.

    ParseError when the line is missing, malformed or lacks a key its probe kind
    prints; probe and mech, when given, must match the line's own (a check that
    the output is the run that was asked for).
    """
    lines = [line for line in text.splitlines() if line.startswith("probe=")]
    if not lines:
        raise ParseError("isobench-probe output has no 'probe=' result line")
    if len(lines) > 1:
        raise ParseError(f"isobench-probe output has {len(lines)} result lines, expected one")
    fields: dict[str, str] = {}
    for token in lines[0].split():
        key, sep, value = token.partition("=")
        if not sep or not key or not value:
            raise ParseError(f"isobench-probe result line has a malformed field {token!r}")
        fields[key] = value
    kind = fields["probe"]
    if kind not in REQUIRED:
        raise ParseError(
            f"isobench-probe result line has probe={kind}; known: {', '.join(REQUIRED)}"
        )
    for key, expected in (("probe", probe), ("mech", mech)):
        if expected is not None and fields.get(key) != expected:
            raise ParseError(
                f"isobench-probe result line has {key}={fields.get(key)}, expected {expected}"
            )
    missing = [key for key in REQUIRED[kind] if key not in fields]
    if missing:
        raise ParseError(f"isobench-probe {kind} result line has no {', '.join(missing)}")
    return fields


def parse_probe_line(
    text: str, *, probe: str | None = None, mech: str | None = None
) -> dict[str, float]:
    """The numbers of isobench-probe's result line (probe_fields without probe and mech)."""
    values: dict[str, float] = {}
    for key, value in probe_fields(text, probe=probe, mech=mech).items():
        if key in TEXT_KEYS:
            continue
        try:
            values[key] = float(value)
        except ValueError:
            raise ParseError(f"isobench-probe result line: {key}={value} is not a number") from None
    return values


def _fixed_work(values: dict[str, float], key: str, asked: int) -> None:
    """A line for other work than asked (another run's output) could not be this run's."""
    if values[key] != asked:
        raise ParseError(f"isobench-probe did {key}={values[key]:.0f}, asked for {asked}")


# ---------------------------------------------------------------- IPC round trips

# Mechanism -> (message bytes, round trips per profile). quick is about 0.35 s here (one
# round trip 5 us for a pipe to 14 us for TCP, both ends on one CPU), cut from 0.6 s so
# that quick with the vm fits 10 minutes on a host with steal; full is 10x more. sem and
# signal carry no payload: a semaphore post and a signal are the message.
RTT: dict[str, tuple[int, dict[str, int]]] = {
    "pipe": (1, {"smoke": 2_000, "quick": 60_000, "full": 1_000_000}),
    "unix": (1, {"smoke": 2_000, "quick": 36_000, "full": 600_000}),  # socketpair
    "tcp": (1, {"smoke": 2_000, "quick": 24_000, "full": 400_000}),  # 127.0.0.1, TCP_NODELAY
    "shm": (1, {"smoke": 2_000, "quick": 60_000, "full": 1_000_000}),  # futex word
    "mq": (1, {"smoke": 2_000, "quick": 48_000, "full": 800_000}),  # POSIX queues
    "sem": (0, {"smoke": 2_000, "quick": 60_000, "full": 1_000_000}),  # System V
    "signal": (0, {"smoke": 2_000, "quick": 48_000, "full": 800_000}),  # SIGUSR1
}
RTT_METRICS = (
    Metric("p50_us", "us", higher_is_better=False),
    Metric("p90_us", "us", higher_is_better=False),
    Metric("p99_us", "us", higher_is_better=False),
    Metric("mean_us", "us", higher_is_better=False),
    Metric("roundtrips_per_s", "round trips/s", higher_is_better=True),
)


def rtt_metrics(values: dict[str, float]) -> dict[str, float]:
    """A round-trip line's numbers as the declared metrics (ns -> us)."""
    return {
        "p50_us": values["p50_ns"] / 1e3,
        "p90_us": values["p90_ns"] / 1e3,
        "p99_us": values["p99_ns"] / 1e3,
        "mean_us": values["mean_ns"] / 1e3,
        "roundtrips_per_s": values["roundtrips_per_s"],
    }


def rtt(mechanism: str, profile: str) -> Workload:
    """Round-trip latency of one IPC mechanism (a key of RTT); p50 in microseconds is primary."""
    msg_bytes, iters_by_profile = RTT[mechanism]
    iters = iters_by_profile[check_profile(profile)]

    def parse(text: str) -> dict[str, float]:
        values = parse_probe_line(text, probe="rtt", mech=mechanism)
        _fixed_work(values, "iters", iters)
        return rtt_metrics(values)

    return Workload(
        benchmark=f"ipc.probe.{mechanism}.rtt",
        category="ipc",
        argv=(PROBE, "rtt", mechanism, str(iters), str(msg_bytes)),
        metrics=RTT_METRICS,
        primary="p50_us",
        parse=parse,
        timeout_s=TIMEOUT_S[profile],
        sizes={
            "iters": iters,
            "msg_bytes": msg_bytes,
            "warmup_iters": min(1000, iters // 10),
            "placement": "both ends on the first allowed CPU",
        },
    )


# ---------------------------------------------------------------- memory: STREAM

# Repetitions of the four kernels, the first discarded (STREAM's NTIMES). Three
# arrays of memory_array_mib() each (128 MiB here): one repetition moves 10 arrays,
# about 60 ms at 25 GB/s, after the first touch of 384 MiB (about 0.25 s): quick is
# about 0.6 s here.
STREAM_NTIMES = {"smoke": 2, "quick": 6, "full": 100}
STREAM_METRICS = tuple(
    Metric(f"{kernel}_mb_s", "MB/s", higher_is_better=True) for kernel in KERNELS
)


def stream(profile: str) -> Workload:
    """McCalpin STREAM, one thread: best-rate MB/s (10^6) of copy, scale, add, triad; triad primary."""
    ntimes = STREAM_NTIMES[check_profile(profile)]
    array_mib = memory_array_mib(profile=profile)
    names = [metric.name for metric in STREAM_METRICS]

    def parse(text: str) -> dict[str, float]:
        values = parse_probe_line(text, probe="stream")
        _fixed_work(values, "array_mib", array_mib)
        _fixed_work(values, "ntimes", ntimes)
        return {name: values[name] for name in names}

    return Workload(
        benchmark="memory.probe.stream",
        category="memory",
        argv=(PROBE, "stream", str(array_mib), str(ntimes)),
        metrics=STREAM_METRICS,
        primary="triad_mb_s",
        parse=parse,
        timeout_s=TIMEOUT_S[profile],
        sizes={"array_mib": array_mib, "arrays": 3, "ntimes": ntimes, "threads": 1},
    )
