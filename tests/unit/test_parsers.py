"""The tool output parsers on captured real output (tests/data), successes and failures alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.errors import IsobenchError
from harness.workloads.parsers import (
    ParseError,
    parse_fio_json,
    parse_iperf3_json,
    parse_stress_ng,
    parse_sysbench_cpu,
    parse_sysbench_general,
    parse_sysbench_memory,
    select,
)

DATA = Path(__file__).resolve().parent.parent / "data"


def captured(name: str) -> str:
    return (DATA / name).read_text()


def test_parse_error_means_could_not_measure() -> None:
    assert issubclass(ParseError, IsobenchError)
    assert ParseError.exit_code == 3


# ---------------------------------------------------------------- sysbench


def test_sysbench_cpu_one_thread() -> None:
    assert parse_sysbench_cpu(captured("sysbench/cpu-1thread.txt")) == {
        "events_per_s": 4423.61,
        "total_time_s": 0.4515,
        "events": 2000.0,
    }


def test_sysbench_cpu_all_threads_counts_every_thread_s_events() -> None:
    values = parse_sysbench_cpu(captured("sysbench/cpu-allthreads.txt"))
    assert values == {"events_per_s": 8730.24, "total_time_s": 0.4576, "events": 4000.0}


def test_sysbench_memory() -> None:
    assert parse_sysbench_memory(captured("sysbench/memory-seq-read.txt")) == {
        "mib_per_s": 24892.99,
        "transferred_mib": 4096.0,
        "operations": 32.0,
        "ops_per_s": 194.48,
        "total_time_s": 0.1636,
    }


def test_sysbench_general_statistics_of_a_lua_script() -> None:
    assert parse_sysbench_general(captured("sysbench/lua-getppid.txt")) == {
        "total_time_s": 0.1694,
        "events": 1000.0,
        "latency_sum_ms": 168.38,
    }


def test_sysbench_cpu_parser_refuses_another_test_s_output() -> None:
    with pytest.raises(ParseError, match="events per second"):
        parse_sysbench_cpu(captured("sysbench/memory-seq-read.txt"))


def test_sysbench_memory_parser_refuses_cpu_output() -> None:
    with pytest.raises(ParseError, match="Total operations"):
        parse_sysbench_memory(captured("sysbench/cpu-1thread.txt"))


def test_sysbench_failure_quotes_the_fatal_line() -> None:
    with pytest.raises(ParseError) as caught:
        parse_sysbench_cpu(captured("sysbench/unknown-test.txt"))
    message = str(caught.value)
    assert "General statistics" in message
    assert "Cannot find benchmark 'nosuchtest'" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("case", "parser"),
    [
        ("sysbench/cpu-bad-option.txt", parse_sysbench_cpu),
        ("sysbench/cpu-killed.txt", parse_sysbench_cpu),
        ("sysbench/memory-truncated.txt", parse_sysbench_memory),
        ("stress-ng/pipe.txt", parse_sysbench_general),
    ],
)
def test_sysbench_output_without_its_statistics_is_refused(case: str, parser: Any) -> None:
    with pytest.raises(ParseError, match=r"^sysbench output has no 'General statistics:'"):
        parser(captured(case))


def test_sysbench_statistics_missing_a_value_are_refused() -> None:
    text = captured("sysbench/cpu-1thread.txt").replace("total number of events", "events")
    with pytest.raises(ParseError, match="total number of events"):
        parse_sysbench_cpu(text)


def test_empty_output_is_refused_by_every_parser() -> None:
    for parser in (parse_sysbench_cpu, parse_sysbench_memory, parse_fio_json, parse_iperf3_json):
        with pytest.raises(ParseError):
            parser("")
    with pytest.raises(ParseError):
        parse_stress_ng("", "pipe")


# ---------------------------------------------------------------- stress-ng

ROWS = [
    # file, stressor, bogo ops, real s, usr s, sys s, ops/s real, ops/s usr+sys
    ("matrix-1thread.txt", "matrix", 200, 0.27, 0.27, 0.00, 731.40, 731.19),
    ("matrix-allthreads.txt", "matrix", 400, 0.29, 0.58, 0.00, 1362.05, 683.89),
    ("stream-short.txt", "stream", 3, 0.50, 0.35, 0.15, 6.01, 6.02),
    ("stream-rate.txt", "stream", 70, 6.22, 6.03, 0.19, 11.26, 11.26),
    ("randlist.txt", "randlist", 1, 0.99, 0.91, 0.08, 1.01, 1.01),
    ("pipe.txt", "pipe", 300000, 0.33, 0.08, 0.45, 902813.07, 572217.69),
    ("sockpair.txt", "sockpair", 10000, 0.16, 0.01, 0.20, 62933.50, 48083.63),
    ("sock-ipv4.txt", "sock", 100, 0.16, 0.00, 0.22, 633.98, 448.89),
    ("shm-sysv.txt", "shm-sysv", 100, 0.18, 0.02, 0.17, 541.52, 531.31),
    ("mq.txt", "mq", 60000, 0.12, 0.03, 0.17, 480897.98, 296583.36),
    ("sem-sysv.txt", "sem-sysv", 100000, 2.07, 0.06, 1.46, 48388.69, 65779.43),
    ("sigq.txt", "sigq", 60000, 0.13, 0.02, 0.18, 460731.95, 298604.03),
]


@pytest.mark.parametrize(("case", "stressor", *"abcdef"), ROWS)
def test_stress_ng_metrics_row(
    case: str, stressor: str, a: float, b: float, c: float, d: float, e: float, f: float
) -> None:
    values = parse_stress_ng(captured(f"stress-ng/{case}"), stressor)
    assert {key: values[key] for key in ROW_KEYS} == dict(
        zip(ROW_KEYS, (a, b, c, d, e, f), strict=True)
    )


ROW_KEYS = (
    "bogo_ops",
    "real_time_s",
    "usr_time_s",
    "sys_time_s",
    "bogo_ops_per_s_real",
    "bogo_ops_per_s_usr_sys",
)


def test_stress_ng_miscellaneous_metrics_become_keys() -> None:
    values = parse_stress_ng(captured("stress-ng/stream-rate.txt"), "stream")
    assert values["memory_read_rate_mb_per_sec"] == 9107.95
    assert values["memory_write_rate_mb_per_sec"] == 6071.97
    assert values["memory_rate_mflop_per_sec"] == 795.87
    pipe = parse_stress_ng(captured("stress-ng/pipe.txt"), "pipe")
    assert pipe["mb_per_sec_pipe_write_rate"] == 441.99


def test_stress_ng_short_stream_has_no_rate_lines() -> None:
    values = parse_stress_ng(captured("stress-ng/stream-short.txt"), "stream")
    assert set(values) == set(ROW_KEYS)


def test_stress_ng_prefixed_log_parses_like_the_brief_one() -> None:
    values = parse_stress_ng(captured("stress-ng/pipe-prefixed.txt"), "pipe")
    assert values["bogo_ops"] == 300000
    assert values["bogo_ops_per_s_real"] == 615636.99
    assert values["mb_per_sec_pipe_write_rate"] == 301.21


@pytest.mark.parametrize(
    ("case", "stressor", "said"),
    [
        ("unknown-stressor.txt", "nosuchstressor", None),
        ("sock-unix-unsupported.txt", "sock", "sock: socket failed, errno=93"),
        ("x86syscall-skipped.txt", "x86syscall", "x86syscall stressor will be skipped"),
        ("matrix-killed.txt", "matrix", None),
    ],
)
def test_stress_ng_without_success_line_is_refused(
    case: str, stressor: str, said: str | None
) -> None:
    with pytest.raises(ParseError, match="no 'successful run completed' line") as caught:
        parse_stress_ng(captured(f"stress-ng/{case}"), stressor)
    if said is not None:
        assert said in str(caught.value)
    assert "\n" not in str(caught.value)


def test_stress_ng_premature_finish_is_refused_despite_success() -> None:
    """lo down in a fresh network namespace: connect() fails, one bogo-op, "successful"."""
    text = captured("stress-ng/sock-ipv4-lo-down.txt")
    assert "successful run completed" in text
    with pytest.raises(ParseError) as caught:
        parse_stress_ng(text, "sock")
    assert str(caught.value) == (
        "stress-ng sock warning: finished prematurely (stress-ng said:"
        " 'sock: connect failed, errno=101 (Network is unreachable)')"
    )


def test_stress_ng_unsuccessful_is_not_successful() -> None:
    """ "unsuccessful run completed" contains the success marker as a substring."""
    text = captured("stress-ng/sock-unix-unsupported.txt")
    assert "successful run completed" in text
    with pytest.raises(ParseError, match="no 'successful run completed' line"):
        parse_stress_ng(text, "sock")


def test_stress_ng_needs_the_named_stressor_s_row() -> None:
    with pytest.raises(ParseError, match="no metrics row for stressor 'mq'"):
        parse_stress_ng(captured("stress-ng/pipe.txt"), "mq")


def test_stress_ng_success_without_a_row_is_refused() -> None:
    """--metrics-brief drops rows with zero bogo-ops: success alone is not a measurement."""
    text = "\n".join(
        line for line in captured("stress-ng/mq.txt").splitlines() if not line.startswith("mq ")
    )
    with pytest.raises(ParseError, match="no metrics row"):
        parse_stress_ng(text, "mq")


# ---------------------------------------------------------------- fio


def fio_side(case: str, direction: str, job: int = 0) -> dict[str, Any]:
    side: dict[str, Any] = json.loads(captured(case))["jobs"][job][direction]
    return side


@pytest.mark.parametrize(
    ("case", "direction"),
    [
        ("fio/seqread-1m.json", "read"),
        ("fio/seqwrite-1m.json", "write"),
        ("fio/randread-4k.json", "read"),
        ("fio/randwrite-4k.json", "write"),
    ],
)
def test_fio_one_direction(case: str, direction: str) -> None:
    side = fio_side(case, direction)
    percentile = side["clat_ns"]["percentile"]
    assert parse_fio_json(captured(case)) == {
        f"{direction}_bw_mib_s": side["bw"] / 1024,
        f"{direction}_iops": side["iops"],
        f"{direction}_runtime_s": side["runtime"] / 1000,
        f"{direction}_clat_p50_us": percentile["50.000000"] / 1000,
        f"{direction}_clat_p99_us": percentile["99.000000"] / 1000,
    }


def test_fio_random_read_figures_are_plausible() -> None:
    values = parse_fio_json(captured("fio/randread-4k.json"))
    # 8 MiB in 4 KiB blocks read once: bandwidth x runtime is the file, IOPS x 4 KiB the bandwidth.
    assert values["read_bw_mib_s"] * values["read_runtime_s"] == pytest.approx(8, rel=0.02)
    assert values["read_iops"] * 4 / 1024 == pytest.approx(values["read_bw_mib_s"], rel=0.01)
    assert 0 < values["read_clat_p50_us"] <= values["read_clat_p99_us"]


def test_fio_both_directions_of_a_mixed_job() -> None:
    values = parse_fio_json(captured("fio/randrw-4k.json"))
    assert values["read_iops"] > 0
    assert values["write_iops"] > 0
    assert len(values) == 10


def test_fio_jobs_add_up() -> None:
    case = "fio/randread-4k-2jobs.json"
    sides = [fio_side(case, "read", job) for job in (0, 1)]
    values = parse_fio_json(captured(case))
    assert values["read_iops"] == pytest.approx(sum(side["iops"] for side in sides))
    assert values["read_bw_mib_s"] == sum(side["bw"] for side in sides) / 1024
    assert values["read_runtime_s"] == max(side["runtime"] for side in sides) / 1000
    worst = max(side["clat_ns"]["percentile"]["99.000000"] for side in sides)
    assert values["read_clat_p99_us"] == worst / 1000


def test_fio_job_error_is_refused_despite_the_line_before_the_json() -> None:
    text = captured("fio/enospc.json")
    assert text.startswith("fio: pid=")
    with pytest.raises(ParseError, match="fio job 'isobench-full' ended with error 28"):
        parse_fio_json(text)


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("fio/bad-rw.txt", "no JSON document"),
        ("fio/no-directory.txt", "no JSON document"),
        ("fio/randread-4k-truncated.json", "not complete JSON"),
        ("iperf3/loopback.json", "no 'jobs' list"),
    ],
)
def test_fio_failures(case: str, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        parse_fio_json(captured(case))


def edited_fio(edit: Any) -> str:
    document = json.loads(captured("fio/randread-4k.json"))
    edit(document["jobs"][0])
    return json.dumps(document)


def test_fio_job_that_moved_nothing_is_refused() -> None:
    def no_bytes(job: dict[str, Any]) -> None:
        job["read"]["io_bytes"] = 0

    with pytest.raises(ParseError, match="no job that read or wrote"):
        parse_fio_json(edited_fio(no_bytes))


def test_fio_without_percentiles_is_refused() -> None:
    def no_percentiles(job: dict[str, Any]) -> None:
        del job["read"]["clat_ns"]["percentile"]

    with pytest.raises(ParseError, match=r"'50\.000000' in read clat percentiles"):
        parse_fio_json(edited_fio(no_percentiles))


def test_fio_job_without_error_field_is_refused() -> None:
    def no_error(job: dict[str, Any]) -> None:
        del job["error"]

    with pytest.raises(ParseError, match="ended with error None"):
        parse_fio_json(edited_fio(no_error))


# ---------------------------------------------------------------- iperf3


def test_iperf3_loopback() -> None:
    end = json.loads(captured("iperf3/loopback.json"))["end"]
    received = end["sum_received"]
    assert parse_iperf3_json(captured("iperf3/loopback.json")) == {
        "received_gbit_s": received["bits_per_second"] / 1e9,
        "received_mib_s": received["bits_per_second"] / 8 / 2**20,
        "received_bytes": received["bytes"],
        "seconds": received["seconds"],
        "retransmits": end["sum_sent"]["retransmits"],
    }
    assert received["bytes"] == 512 * 2**20


def test_iperf3_error_is_quoted() -> None:
    with pytest.raises(ParseError, match="unable to connect to server: Connection refused"):
        parse_iperf3_json(captured("iperf3/no-server.json"))


def test_iperf3_without_loopback_network() -> None:
    with pytest.raises(ParseError, match="unable to connect to server: Network is unreachable"):
        parse_iperf3_json(captured("iperf3/lo-down.json"))


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("iperf3/loopback-truncated.json", "not complete JSON"),
        ("fio/randread-4k.json", "no end.sum_received"),
        ("stress-ng/pipe.txt", "no JSON document"),
    ],
)
def test_iperf3_failures(case: str, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        parse_iperf3_json(captured(case))


# ---------------------------------------------------------------- select


def test_select_keeps_exactly_the_named_values() -> None:
    assert select({"a": 1.0, "b": 2.0, "c": 3.0}, ["c", "a"], "tool") == {"c": 3.0, "a": 1.0}


def test_select_names_what_is_missing() -> None:
    with pytest.raises(ParseError, match=r"^fio output gave no read_iops, read_bw$"):
        select({"a": 1.0}, ["read_iops", "a", "read_bw"], "fio")
