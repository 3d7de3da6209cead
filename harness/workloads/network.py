"""Network benchmarks: iperf3 bulk throughput (loopback inside the platform, and host <-> platform).

Host <-> platform benchmarks have a host-side server (`Workload.peer_argv`):
the platform starts it on the host, in the run's peer network namespace at the
far end of the platform's veth (bare: the host's own, over loopback), waits for
its LISTEN socket, runs the client inside the platform with PEER replaced by
the server's address, and kills the server. Ports are not iperf3's default
5201: the bare platform shares the host's ports.
"""

from __future__ import annotations

from harness.workloads.base import PEER, Metric, Workload
from harness.workloads.parsers import parse_iperf3_json, select
from harness.workloads.sizing import TIMEOUT_S, check_profile

IPERF3 = "/usr/bin/iperf3"
IPERF3_PORT = 15201  # loopback inside the platform
TO_HOST_PORT = 15202  # the host-side iperf3 server of to-host and from-host
# MiB the client sends (fixed work, like every other benchmark here); ~2 GB/s here.
IPERF3_MIB = {"smoke": 512, "quick": 1536, "full": 40960}
# Over a veth 1.4 to 2 GB/s here (11 to 17 Gbit/s): quick is about 1 to 1.5 s per direction.
HOST_MIB = {"smoke": 256, "quick": 2048, "full": 40960}
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
