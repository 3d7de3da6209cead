"""The enforcement tests' requests, parsed as the runtime parses a spec and written by the v2 driver into a fake tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.enforcement import requests as rq
from harness.enforcement.adapters import select_adapters
from harness.enforcement.run import exit_code
from harness.enforcement.suite import select_tests
from harness.errors import UserError
from harness.runtime.cgroups import v1, v2
from harness.runtime.spec_resources import parse_resources


def v2_write(tmp_path: Path, request: dict[str, object]) -> Path:
    """Parse request as linux.resources and let the v2 driver write it under tmp_path."""
    resources = parse_resources(request, "linux.resources")
    assert resources is not None
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cgroup.controllers").write_text("cpu cpuset memory pids io\n")
    manager = v2.Manager("/isobench-runtime/ctr", tmp_path)
    manager.create()
    manager.set(resources)
    return tmp_path / "isobench-runtime" / "ctr"


def read(path: Path) -> str:
    return path.read_text().strip()


def test_v2_files_for_quota_high_pids_io_and_memory(tmp_path: Path) -> None:
    d = v2_write(tmp_path / "a", rq.cpu_quota(1.5))
    assert read(d / "cpu.max") == "150000 100000"
    assert read(d / "cpu.weight") == "10000"  # the maximum weight: the quota is the only cap
    d = v2_write(tmp_path / "b", rq.memory_high())
    assert read(d / "memory.high") == str(32 << 20)
    d = v2_write(tmp_path / "c", rq.pids())
    assert read(d / "pids.max") == "32"
    d = v2_write(tmp_path / "d", rq.io_throttle("write", 7, 3))
    assert read(d / "io.max") == "7:3 wbps=10485760"
    d = v2_write(tmp_path / "e", rq.memory_limit())
    # OCI swap is memory+swap: equal to the limit means no swap at all on v2.
    assert (read(d / "memory.max"), read(d / "memory.swap.max")) == (str(64 << 20), "0")
    d = v2_write(tmp_path / "f", rq.cpu_shares(2048, "1"))
    assert read(d / "cpuset.cpus") == "1"
    assert int(read(d / "cpu.weight")) > 100  # twice the v1 default maps above the v2 default


def test_v1_files_for_the_io_throttle(tmp_path: Path) -> None:
    resources = parse_resources(rq.io_throttle("read", 7, 0), "linux.resources")
    assert resources is not None
    v1.BlkioGroup().set(str(tmp_path), resources)
    assert read(tmp_path / "blkio.throttle.read_bps_device") == "7:0 10485760"


def test_unknown_names_are_user_errors() -> None:
    with pytest.raises(UserError, match=r"accepted: memory\.hard_limit"):
        select_tests(["memory.nope"])
    with pytest.raises(UserError, match="accepted: container"):
        select_adapters(["vmware"])


def test_exit_code_is_one_only_when_an_applicable_test_failed() -> None:
    assert exit_code([{"verdict": "pass"}, {"verdict": "not applicable"}]) == 0
    assert exit_code([{"verdict": "pass"}, {"verdict": "fail"}]) == 1


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--bench", "enforce,cpu"], "--bench enforce is a run of its own"),
        (["--bench", "enforce", "--blocks", "3"], "--bench enforce is a run of its own"),
        (["--bench", "enforce", "--platform", "nope"], "unknown platform 'nope'"),
    ],
)
def test_enforce_cli_bad_input_is_one_line_exit_2(
    argv: list[str], problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.cli import main

    assert main(["run", *argv, "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1 and "accepted" in err
    assert not (tmp_path / "r").exists()  # nothing left behind


def test_a_platform_without_an_adapter_gets_not_applicable_records(tmp_path: Path) -> None:
    from harness.enforcement.env import PROFILE_DURATIONS, Env
    from harness.enforcement.run import _run_platform
    from harness.platforms.base import RunContext

    class Results:
        def __init__(self) -> None:
            self.records: list[dict[str, object]] = []

        def add_enforcement(self, record: dict[str, object]) -> None:
            self.records.append(record)

    results = Results()
    ctx = RunContext(image_ref="x", image_digest="", run_id="r", workdir=tmp_path)
    made = _run_platform(
        None,
        "vm",
        select_tests(["pids", "io"]),
        Env(PROFILE_DURATIONS["smoke"], None),
        ctx,
        results,
    )
    assert [(r.test, r.verdict) for r in made] == [
        ("pids", "not applicable"),
        ("io", "not applicable"),
    ]
    assert all("no enforcement adapter for vm" in r.reason for r in made)
    assert [r["test"] for r in results.records] == ["pids", "io"]
