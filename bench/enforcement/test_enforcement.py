"""The enforcement table (MEASUREMENT.md) as a pytest suite: every test group on every platform.

The definitions live in harness.enforcement.suite (the CLI needs them: `isobench
run --bench enforce` is the main way to run them, with a results file and a
report); this suite runs the same functions with the table's durations, one
pytest case per (platform, test), and prints the platform x test table at the
end. A case fails when one of its records says "fail". Run as root:

    .venv/bin/pytest bench/enforcement -p no:cacheprovider
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.conftest import SUMMARY
from harness.enforcement.adapters import ADAPTERS, Adapter
from harness.enforcement.env import PROFILE_DURATIONS, Env
from harness.enforcement.iodev import loop_device
from harness.enforcement.model import FAIL, Record
from harness.enforcement.suite import TESTS
from harness.image.build import build_image
from harness.image.store import ImageStore
from harness.platforms.base import RunContext

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and containers need root")

PLATFORMS = ("container", "oci:runc", "bare")
TAG = "isobench/workload:bench-enforcement"
RECORDS: list[Record] = []


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="isobench-bench-enforcement-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
    if RECORDS:
        from rich.console import Console

        from harness.enforcement.run import table

        with open(os.devnull, "w") as null:  # recorded, not printed: pytest prints SUMMARY
            console = Console(record=True, width=160, file=null)
            console.print(table([r.to_json() for r in RECORDS]))
        SUMMARY.extend(console.export_text().splitlines())


@pytest.fixture(scope="module")
def io_env(workdir: Path) -> Iterator[Env]:
    with loop_device(workdir, "bench") as (device, why):
        yield Env(PROFILE_DURATIONS["quick"], device, why)


@pytest.fixture(scope="module", params=PLATFORMS)
def adapter(request: pytest.FixtureRequest, workdir: Path) -> Iterator[Adapter]:
    store = ImageStore()
    build_image(store, tag=TAG)
    made = ADAPTERS[request.param]()
    ok, reason = made.available()
    if not ok:
        pytest.fail(f"{request.param} cannot run here: {reason}")
    run_id = "b" + secrets.token_hex(4)
    made.prepare(RunContext(image_ref=TAG, image_digest="", run_id=run_id, workdir=workdir))
    yield made
    made.teardown()


@pytest.mark.parametrize("test", list(TESTS))
def test_limit_is_enforced(adapter: Adapter, test: str, io_env: Env) -> None:
    records = TESTS[test](adapter, io_env)
    RECORDS.extend(records)
    failed = [f"{r.test}: {r.reason}" for r in records if r.verdict == FAIL]
    assert not failed, "; ".join(failed)
