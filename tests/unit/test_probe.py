"""isobench-probe's result line and its workloads, on captured real output (tests/data/probe-*)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.workloads import BENCHMARKS, ParseError
from harness.workloads.probe import (
    RTT,
    RTT_KEYS,
    STREAM_KEYS,
    parse_probe_line,
    probe_fields,
    rtt,
    stream,
)
from harness.workloads.sizing import memory_array_mib

DATA = Path(__file__).resolve().parent.parent / "data"
MECHANISMS = ["pipe", "unix", "tcp", "shm", "mq", "sem", "signal"]


def captured(name: str) -> str:
    return (DATA / name).read_text()


def test_rtt_line_gives_every_number() -> None:
    values = parse_probe_line(captured("probe-rtt-pipe.txt"))
    assert values == {
        "iters": 2000.0,
        "bytes": 1.0,
        "mean_ns": 12698.9,
        "p50_ns": 6200.0,
        "p90_ns": 6980.0,
        "p99_ns": 8343.0,
        "min_ns": 5428.0,
        "max_ns": 4289361.0,
        "roundtrips_per_s": 78747.1,
    }


@pytest.mark.parametrize("mech", MECHANISMS)
def test_every_captured_mechanism_is_plausible(mech: str) -> None:
    values = parse_probe_line(captured(f"probe-rtt-{mech}.txt"), probe="rtt", mech=mech)
    assert set(values) == set(RTT_KEYS)
    assert 0 < values["min_ns"] <= values["p50_ns"] <= values["p90_ns"] <= values["p99_ns"]
    assert values["p99_ns"] <= values["max_ns"]
    # Samples add up to the timed loop: the rate is the inverse of the mean.
    assert values["roundtrips_per_s"] == pytest.approx(1e9 / values["mean_ns"], rel=1e-3)
    assert values["bytes"] == RTT[mech][0]


def test_tcp_rr_line_has_the_rtt_keys() -> None:
    values = parse_probe_line(captured("probe-tcp-rr.txt"), probe="tcp-rr", mech="tcp")
    assert set(values) == set(RTT_KEYS)
    assert (values["iters"], values["bytes"], values["p50_ns"]) == (2000.0, 64.0, 16505.0)


def test_fields_keep_probe_and_mech_as_text() -> None:
    fields = probe_fields(captured("probe-tcp-rr.txt"), probe="tcp-rr")
    assert (fields["probe"], fields["mech"], fields["p50_ns"]) == ("tcp-rr", "tcp", "16505")
    with pytest.raises(ParseError, match="no min_ns, max_ns, roundtrips_per_s"):
        probe_fields(captured("probe-rtt-truncated.txt"))


def test_stream_line() -> None:
    values = parse_probe_line(captured("probe-stream.txt"), probe="stream")
    assert set(values) == set(STREAM_KEYS)
    assert values["triad_mb_s"] == 11268.8
    assert values["array_mib"] == 128.0


@pytest.mark.parametrize(
    "case", ["probe-usage-bad-mech.txt", "probe-mq-msgsize.txt", "probe-tcp-rr-refused.txt"]
)
def test_failed_runs_have_no_result_line(case: str) -> None:
    assert captured(case) == ""  # the reason went to stderr
    with pytest.raises(ParseError, match="no 'probe=' result line"):
        parse_probe_line(captured(case))


def test_failures_say_what_failed_on_one_line() -> None:
    for case, said in [
        ("probe-usage-bad-mech.stderr", "accepted: pipe, unix, tcp, shm, mq, sem, signal"),
        ("probe-mq-msgsize.stderr", "mq_open: Invalid argument"),
        ("probe-tcp-rr-refused.stderr", "connect: Connection refused"),
        ("probe-rtt-peer-killed.stderr", "peer process: killed by signal 9"),
    ]:
        text = captured(case)
        assert text.count("\n") == 1 and said in text, case
    assert captured("probe-rtt-peer-killed.txt") == ""


def test_a_truncated_line_is_incomplete() -> None:
    with pytest.raises(ParseError, match="rtt result line has no min_ns, max_ns, roundtrips_per_s"):
        parse_probe_line(captured("probe-rtt-truncated.txt"))


def test_malformed_lines_are_refused() -> None:
    line = captured("probe-rtt-pipe.txt")
    with pytest.raises(ParseError, match="malformed field 'p50_ns'"):
        parse_probe_line(line.replace("p50_ns=6200", "p50_ns"))
    with pytest.raises(ParseError, match="p50_ns=fast is not a number"):
        parse_probe_line(line.replace("p50_ns=6200", "p50_ns=fast"))
    with pytest.raises(ParseError, match="probe=ping; known: rtt, tcp-rr, stream"):
        parse_probe_line(line.replace("probe=rtt", "probe=ping"))
    with pytest.raises(ParseError, match="2 result lines"):
        parse_probe_line(line + line)


def test_another_run_s_line_is_refused() -> None:
    with pytest.raises(ParseError, match="mech=pipe, expected mq"):
        parse_probe_line(captured("probe-rtt-pipe.txt"), mech="mq")
    with pytest.raises(ParseError, match="probe=rtt, expected stream"):
        parse_probe_line(captured("probe-rtt-pipe.txt"), probe="stream")


# ---------------------------------------------------------------- workloads


@pytest.mark.parametrize("mech", MECHANISMS)
def test_rtt_workload_reports_microseconds(mech: str) -> None:
    workload = BENCHMARKS[f"ipc.probe.{mech}.rtt"]("smoke")
    assert workload.argv == ("/usr/bin/isobench-probe", "rtt", mech, "2000", str(RTT[mech][0]))
    assert workload.primary == "p50_us"
    assert workload.metric("p50_us").higher_is_better is False
    assert workload.metric("roundtrips_per_s").higher_is_better is True
    raw = parse_probe_line(captured(f"probe-rtt-{mech}.txt"))
    values = workload.parse(captured(f"probe-rtt-{mech}.txt"))
    assert values["p50_us"] == pytest.approx(raw["p50_ns"] / 1000)
    assert values["mean_us"] == pytest.approx(raw["mean_ns"] / 1000)
    assert values["p99_us"] == pytest.approx(raw["p99_ns"] / 1000)


def test_rtt_workload_refuses_other_work() -> None:
    with pytest.raises(ParseError, match="iters=2000, asked for 60000"):
        rtt("pipe", "quick").parse(captured("probe-rtt-pipe.txt"))
    with pytest.raises(ParseError, match="mech=pipe, expected unix"):
        rtt("unix", "smoke").parse(captured("probe-rtt-pipe.txt"))


def test_stream_workload(monkeypatch: pytest.MonkeyPatch) -> None:
    workload = stream("smoke")
    assert workload.benchmark == "memory.probe.stream"
    smoke_mib = memory_array_mib(profile="smoke")
    assert workload.argv == ("/usr/bin/isobench-probe", "stream", str(smoke_mib), "2")
    assert workload.primary == "triad_mb_s"
    assert workload.sizes["array_mib"] == smoke_mib
    # The capture's arrays were 128 MiB (4x this host's 32 MiB L3); pretend the same here.
    monkeypatch.setattr("harness.workloads.probe.memory_array_mib", lambda **_: 128)
    assert stream("smoke").parse(captured("probe-stream.txt")) == {
        "copy_mb_s": 11056.1,
        "scale_mb_s": 4905.2,
        "add_mb_s": 6452.6,
        "triad_mb_s": 11268.8,
    }
    with pytest.raises(ParseError, match="ntimes=2, asked for 6"):
        stream("quick").parse(captured("probe-stream.txt"))
    monkeypatch.setattr("harness.workloads.probe.memory_array_mib", lambda **_: 64)
    with pytest.raises(ParseError, match="array_mib=128, asked for 64"):
        stream("smoke").parse(captured("probe-stream.txt"))


def test_stream_replaces_stress_ng_stream_and_ipc_throughput_stays() -> None:
    assert "memory.stress-ng.stream" not in BENCHMARKS
    assert "memory.probe.stream" in BENCHMARKS
    assert {f"ipc.stress-ng.{m}" for m in ["pipe", "mq", "sem", "signal"]} <= set(BENCHMARKS)
    assert "syscall.sysbench.getppid" in BENCHMARKS
