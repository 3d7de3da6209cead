"""Host <-> platform networking logic: names, addresses, LISTEN detection, the peer placeholder."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from harness.errors import EnvironmentError_, NotApplicable
from harness.platforms.base import Outcome
from harness.platforms.network import (
    IFNAMSIZ,
    MAX_SLOTS,
    VETH,
    PlatformNetwork,
    free_slot,
    netns_name,
    run_token,
    slot_addresses,
    veth_names,
)
from harness.platforms.peer import PeerError, listening, run_with_peer, tcp_local_key
from harness.workloads import BENCHMARKS
from harness.workloads.base import PEER, Workload
from harness.workloads.network import probe_tcp_rr
from harness.workloads.parsers import ParseError

RUN_ID = "20261128T031500Z-a1b2c3"

# A real /proc/net/tcp: iperf3 listening on 10.213.0.1:15202, a connection, a listener elsewhere.
TCP_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100D50A:3B62 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7301 1 0 100 0 0 10 0
   1: 0200D50A:8E3A 0100D50A:3B62 01 00000000:00000000 00:00000000 00000000     0        0 7302 1 0 20 4 30 10 -1
   2: 00000000:3B63 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7303 1 0 100 0 0 10 0
"""


def test_the_run_token_is_short_stable_and_hex() -> None:
    token = run_token(RUN_ID)
    assert token == run_token(RUN_ID)
    assert len(token) == 6 and int(token, 16) >= 0
    assert token != run_token(RUN_ID + "x")


def test_namespace_names_carry_the_run_id_and_no_colon() -> None:
    assert netns_name(RUN_ID, "peer") == f"isobench-{RUN_ID}-peer"
    assert netns_name(RUN_ID, "oci:runc") == f"isobench-{RUN_ID}-oci-runc"


@pytest.mark.parametrize("slot", [0, 1, 15, 16, MAX_SLOTS - 1])
def test_veth_names_fit_the_kernel_limit_and_are_recognised_by_the_sweep(slot: int) -> None:
    token = run_token(RUN_ID)
    peer, platform = veth_names(token, slot)
    assert peer != platform
    for name in (peer, platform):
        assert len(name) <= IFNAMSIZ
        match = VETH.match(name)
        assert match is not None and match[1] == token


def test_veth_names_differ_per_slot() -> None:
    token = run_token(RUN_ID)
    names = {name for slot in range(MAX_SLOTS) for name in veth_names(token, slot)}
    assert len(names) == 2 * MAX_SLOTS


@pytest.mark.parametrize("slot", [0, 7, MAX_SLOTS - 1])
def test_each_slot_is_a_private_slash_30_with_two_usable_ends(slot: int) -> None:
    peer, platform = slot_addresses(slot)
    network = ipaddress.ip_network(f"{peer}/30", strict=False)
    assert network.is_private
    assert ipaddress.ip_address(platform) in network
    assert {ipaddress.ip_address(peer), ipaddress.ip_address(platform)} == set(network.hosts())


def test_slots_do_not_overlap() -> None:
    networks = [
        ipaddress.ip_network(f"{slot_addresses(s)[0]}/30", strict=False) for s in range(MAX_SLOTS)
    ]
    assert not any(a.overlaps(b) for i, a in enumerate(networks) for b in networks[i + 1 :])


@pytest.mark.parametrize("bad", [-1, MAX_SLOTS])
def test_slots_out_of_range_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="slot"):
        slot_addresses(bad)
    with pytest.raises(ValueError, match="slot"):
        veth_names("abcdef", bad)


def test_free_slot_is_the_lowest_unused() -> None:
    assert free_slot(set()) == 0
    assert free_slot({0, 1, 3}) == 2
    with pytest.raises(EnvironmentError_, match="slots"):
        free_slot(set(range(MAX_SLOTS)))


def test_tcp_local_key_is_how_proc_net_tcp_writes_it() -> None:
    assert tcp_local_key("127.0.0.1", 15201) == "0100007F:3B61"
    assert tcp_local_key("10.213.0.1", 15202) == "0100D50A:3B62"


def test_listening_needs_the_address_port_and_listen_state() -> None:
    assert listening(TCP_TABLE, "10.213.0.1", 15202)
    assert not listening(TCP_TABLE, "10.213.0.2", 15202)  # only a connection from there
    assert not listening(TCP_TABLE, "10.213.0.1", 15204)
    assert listening(TCP_TABLE, "10.213.0.1", 15203)  # bound to 0.0.0.0
    assert not listening(TCP_TABLE.splitlines()[0], "10.213.0.1", 15202)


def test_with_peer_replaces_the_placeholder_in_both_command_lines() -> None:
    workload = BENCHMARKS["network.iperf3.to-host"]("smoke")
    assert PEER in workload.argv and workload.peer_argv and PEER in workload.peer_argv
    bound = workload.with_peer("10.213.0.1")
    assert PEER not in " ".join(bound.argv) and "10.213.0.1" in bound.argv
    assert bound.peer_argv is not None and "10.213.0.1" in bound.peer_argv
    assert "-R" in BENCHMARKS["network.iperf3.from-host"]("smoke").argv
    assert "-R" not in workload.argv


def _plain(peer_argv: tuple[str, ...] | None, peer_port: int | None) -> Workload:
    return Workload(
        benchmark="network.test",
        category="network",
        argv=("client", PEER),
        metrics=(),
        primary="",
        parse=lambda out: {},
        peer_argv=peer_argv,
        peer_port=peer_port,
    )


def _client(seen: list[Workload]) -> object:
    def run(workload: Workload) -> Outcome:
        seen.append(workload)
        return Outcome(exit_code=0, stdout="", stderr="", wall_s=0.0)

    return run


def test_a_workload_without_a_peer_runs_as_is_even_without_a_link(tmp_path: Path) -> None:
    seen: list[Workload] = []
    workload = _plain(None, None)
    PlatformNetwork("container").run(workload, tmp_path, _client(seen))  # type: ignore[arg-type]
    assert seen == [workload]


def test_a_platform_without_a_link_says_the_benchmark_is_not_applicable(tmp_path: Path) -> None:
    seen: list[Workload] = []
    network = PlatformNetwork("container")
    with pytest.raises(NotApplicable, match=r"container: network\.test needs a host-side peer"):
        network.run(_plain(("server",), 1), tmp_path, _client(seen))  # type: ignore[arg-type]
    assert seen == []
    assert "loopback only" in str(network.describe()["path"])


def test_a_peer_without_a_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    def launch(*args: object) -> object:
        raise AssertionError("started")

    with pytest.raises(PeerError, match="peer_port"):
        run_with_peer(_plain(("server",), None), "127.0.0.1", None, launch, tmp_path, _client([]))  # type: ignore[arg-type]


# The probe's documented output line (its own parser lands in harness.workloads.probe).
RR_LINE = (
    "probe=tcp-rr iters=2000 bytes=1 mean_ns=31250 p50_ns=29000 p90_ns=35500 p99_ns=61000 "
    "min_ns=21000 max_ns=410000 roundtrips_per_s=32000.5\n"
)


def _key_values(text: str) -> dict[str, object]:
    return dict(item.split("=", 1) for item in text.split())


def test_tcp_rr_reports_microseconds_and_transactions_per_second() -> None:
    workload = probe_tcp_rr("smoke", _key_values)
    values = workload.parse(RR_LINE)
    assert values == {
        "p50_us": 29.0,
        "p90_us": 35.5,
        "p99_us": 61.0,
        "mean_us": 31.25,
        "transactions_per_s": 32000.5,
    }
    assert list(values) == [metric.name for metric in workload.metrics]
    assert workload.argv[1:3] == ("tcp-rr", PEER) and workload.peer_argv is not None
    assert workload.peer_argv[1:] == ("tcp-server", PEER, str(workload.peer_port))
    assert probe_tcp_rr("quick", _key_values).sizes["iterations"] > workload.sizes["iterations"]  # type: ignore[operator]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (RR_LINE.replace("probe=tcp-rr", "probe=pipe-rr"), "not a tcp-rr line"),
        (RR_LINE.replace("p99_ns=61000 ", ""), "lacks a number"),
        (RR_LINE.replace("p50_ns=29000", "p50_ns=fast"), "lacks a number"),
        ("", "not a tcp-rr line"),
    ],
)
def test_tcp_rr_refuses_other_or_incomplete_lines(line: str, problem: str) -> None:
    with pytest.raises(ParseError, match=problem):
        probe_tcp_rr("smoke", _key_values).parse(line)
