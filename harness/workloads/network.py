"""Network benchmarks: iperf3 throughput (loopback, host <-> platform) and TCP request/response latency.

Host <-> platform benchmarks have a host-side server (`Workload.peer_argv`):
the platform starts it on the host, in the run's peer network namespace at the
far end of the platform's veth (bare: the host's own, over loopback), waits for
its LISTEN socket, runs the client inside the platform with PEER replaced by
the server's address, and kills the server. Ports are not iperf3's default
5201: the bare platform shares the host's ports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from harness.workloads.base import PEER, Metric, Workload
from harness.workloads.parsers import ParseError, parse_iperf3_json, select
from harness.workloads.sizing import TIMEOUT_S, check_profile

IPERF3 = "/usr/bin/iperf3"
IPERF3_PORT = 15201  # loopback inside the platform
TO_HOST_PORT = 15202  # the host-side iperf3 server of to-host and from-host
# MiB the client sends (fixed work, like every other benchmark here); ~2 GB/s here.
IPERF3_MIB = {"smoke": 512, "quick": 1536, "full": 40960}
# Over a veth 1.4 to 2 GB/s here (11 to 17 Gbit/s): quick is about 0.6 s a run, like the rest.
HOST_MIB = {"smoke": 256, "quick": 1024, "full": 40960}
NETWORK_METRICS = (
    Metric("received_gbit_s", "Gbit/s", higher_is_better=True),
    Metric("received_mib_s", "MiB/s", higher_is_better=True),
    Metric("retransmits", "segments", higher_is_better=False),
    Metric("seconds", "s", higher_is_better=False),
)


def _parse_iperf3(text: str) -> dict[str, float]:
    return select(parse_iperf3_json(text), [m.name for m in NETWORK_METRICS], "iperf3")


def iperf3_loopback(profile: str) -> Workload:
    """iperf3 server and client inside the same platform over 127.0.0.1, one TCP stream."""
    mib = IPERF3_MIB[check_profile(profile)]
    # Wait until the server listens (its socket in /proc/net/tcp, state 0A) rather than
    # sleeping a guessed time; the server exits after one test (-1), or is killed.
    listening = f":{IPERF3_PORT:04X} 00000000:0000 0A"
    script = (
        f"{IPERF3} -s -1 -B 127.0.0.1 -p {IPERF3_PORT} >/dev/null 2>&1 & srv=$!; i=0; "
        f"until grep -q '{listening}' /proc/net/tcp; do "
        f'i=$((i + 1)); [ "$i" -gt 500 ] && break; sleep 0.01; done; '
        f"{IPERF3} -c 127.0.0.1 -p {IPERF3_PORT} -n {mib}M -J; rc=$?; "
        f'kill "$srv" 2>/dev/null; wait "$srv"; exit $rc'
    )
    return Workload(
        benchmark="network.iperf3.loopback",
        category="network",
        argv=("/bin/sh", "-c", script),
        metrics=NETWORK_METRICS,
        primary="received_gbit_s",
        parse=_parse_iperf3,
        timeout_s=TIMEOUT_S[profile],
        sizes={"send_mib": mib, "streams": 1, "port": IPERF3_PORT},
    )


def iperf3_host(profile: str, *, reverse: bool) -> Workload:
    """iperf3 between the host-side peer and the platform, one TCP stream of fixed bytes.

    to-host: the platform's client sends to the server on the host; from-host
    (-R): the host's server sends and the platform receives. Either way the
    metric is what the receiving side counted (iperf3's end.sum_received).
    """
    mib = HOST_MIB[check_profile(profile)]
    direction = "from-host" if reverse else "to-host"
    argv = (IPERF3, "-c", PEER, "-p", str(TO_HOST_PORT), "-n", f"{mib}M", "-J")
    return Workload(
        benchmark=f"network.iperf3.{direction}",
        category="network",
        argv=(*argv, "-R") if reverse else argv,
        metrics=NETWORK_METRICS,
        primary="received_gbit_s",
        parse=_parse_iperf3,
        timeout_s=TIMEOUT_S[profile],
        sizes={"send_mib": mib, "streams": 1, "port": TO_HOST_PORT, "direction": direction},
        # -1: one test, then it exits (the platform kills it anyway).
        peer_argv=(IPERF3, "-s", "-1", "-B", PEER, "-p", str(TO_HOST_PORT)),
        peer_port=TO_HOST_PORT,
    )


# ---------------------------------------------------------------- TCP request/response: isobench-probe

PROBE = "/usr/bin/isobench-probe"  # isobench's own static C program in the image
RR_PORT = 15204
RR_MSG_BYTES = 1  # netperf TCP_RR's default request and response size
# Round trips per run: about 30 us each over a veth here, so quick is about 0.6 s.
RR_ITERS = {"smoke": 2000, "quick": 8000, "full": 200000}
RR_METRICS = (
    Metric("p50_us", "us", higher_is_better=False),
    Metric("p90_us", "us", higher_is_better=False),
    Metric("p99_us", "us", higher_is_better=False),
    Metric("mean_us", "us", higher_is_better=False),
    Metric("transactions_per_s", "transactions/s", higher_is_better=True),
)
ProbeLineParser = Callable[[str], Mapping[str, object]]


def rr_metrics(values: Mapping[str, object]) -> dict[str, float]:
    """The tcp-rr line's key=values (ns, round trips/s) as the benchmark's metrics (us, transactions/s)."""
    if values.get("probe") != "tcp-rr":
        raise ParseError(
            f"isobench-probe output is not a tcp-rr line: probe={values.get('probe')!r}"
        )
    try:
        metrics = {
            f"{q}_us": float(str(values[f"{q}_ns"])) / 1000 for q in ("p50", "p90", "p99", "mean")
        }
        metrics["transactions_per_s"] = float(str(values["roundtrips_per_s"]))
    except (KeyError, ValueError) as exc:
        raise ParseError(f"isobench-probe tcp-rr output lacks a number: {exc}") from None
    return metrics


def probe_tcp_rr(profile: str, parse_line: ProbeLineParser) -> Workload:
    """TCP request/response latency between the platform and the host-side peer (isobench-probe).

    parse_line is harness.workloads.probe.parse_probe_line (the probe's own module).
    """
    iters = RR_ITERS[check_profile(profile)]
    port = str(RR_PORT)
    return Workload(
        benchmark="network.probe.tcp-rr",
        category="network",
        argv=(PROBE, "tcp-rr", PEER, port, str(iters), str(RR_MSG_BYTES)),
        metrics=RR_METRICS,
        primary="p50_us",
        parse=lambda text: rr_metrics(parse_line(text)),
        timeout_s=TIMEOUT_S[profile],
        sizes={"iterations": iters, "message_bytes": RR_MSG_BYTES, "port": RR_PORT},
        peer_argv=(PROBE, "tcp-server", PEER, port),
        peer_port=RR_PORT,
    )
