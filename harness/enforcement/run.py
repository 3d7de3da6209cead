"""`isobench run --bench enforce`: every enforcement test on every requested platform, one results file.

Enforcement is its own run (not mixed into benchmark blocks): its loads are
meant to hit limits, which would disturb overhead samples taken beside them,
and its result is a verdict, not a ratio. The results file is the usual one
(header, host facts, image digest) with the records in isobench.enforcement,
each appended atomically as soon as its test ends.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.enforcement.adapters import ADAPTERS, Adapter, select_adapters
from harness.enforcement.env import PROFILE_DURATIONS, Durations, Env
from harness.enforcement.iodev import loop_device
from harness.enforcement.model import FAIL, PASS, Record, not_applicable
from harness.enforcement.suite import select_tests
from harness.errors import IsobenchError, UserError
from harness.platforms.base import RunContext

DEFAULT_PLATFORMS = ("container", "oci:runc", "oci:crun", "bare")


def run_enforcement(
    *,
    profile: str = "quick",
    platforms: Sequence[str] | None = None,
    tests: Sequence[str] | None = None,
    results_dir: Path = Path("results"),
    image_ref: str | None = None,
) -> tuple[Path, list[Record]]:
    """Run the tests on the platforms; returns the results file and every record."""
    from harness import runner

    durations = PROFILE_DURATIONS[profile]
    chosen = select_tests(list(tests) if tests else None)
    names = list(platforms) if platforms else list(DEFAULT_PLATFORMS)
    _check_platforms(names)
    adapters = select_adapters([n for n in names if n in ADAPTERS])
    image_ref = image_ref or runner.DEFAULT_IMAGE
    digest, tools = runner._image(image_ref)
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
    workdir = Path(tempfile.mkdtemp(prefix=f"{runner.WORKDIR_PREFIX}{os.getpid()}-{run_id}-"))
    print(f"isobench: enforce, profile {profile}: {describe_durations(durations)}", file=sys.stderr)
    records: list[Record] = []
    results = None
    try:
        ctx = RunContext(image_ref=image_ref, image_digest=digest, run_id=run_id, workdir=workdir)
        results = runner._new_results(
            results_dir, profile, 0, 0, image_ref, digest, tools, {}, run_id
        )
        with loop_device(workdir, run_id) as (device, why):
            env = Env(durations, device, why)
            for name in names:
                adapter = next((a for a in adapters if a.name == name), None)
                made = _run_platform(adapter, name, chosen, env, ctx, results)
                records.extend(made)
        results.finish("complete")
    except BaseException:
        if results is not None:
            results.finish("interrupted")
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results.path, records


def _check_platforms(names: list[str]) -> None:
    from harness.platforms import PLATFORMS

    unknown = [n for n in names if n not in PLATFORMS and n not in ADAPTERS]
    if unknown:
        raise UserError(
            f"unknown platform {', '.join(map(repr, unknown))}; accepted: {', '.join(PLATFORMS)}"
        )


def _run_platform(
    adapter: Adapter | None,
    name: str,
    tests: dict[str, Any],
    env: Env,
    ctx: RunContext,
    results: Any,
) -> list[Record]:
    """Every test on one platform; a platform that cannot run gives "not applicable" records."""
    reason = "" if adapter is not None else f"no enforcement adapter for {name} yet"
    if adapter is not None:
        ok, why = adapter.available()
        reason = "" if ok else f"{name} cannot run here: {why}"
    made: list[Record] = []
    if not reason and adapter is not None:
        try:
            adapter.prepare(ctx)
        except IsobenchError as exc:
            reason = f"{name}: prepare failed: {exc}"
    try:
        for test_name, test in tests.items():
            if reason or adapter is None:
                got = [not_applicable(test_name, name, reason)]
            else:
                try:
                    got = test(adapter, env)
                except (IsobenchError, OSError) as exc:
                    got = [
                        Record(test=test_name, platform=name, verdict=FAIL, reason=f"error: {exc}")
                    ]
                except Exception as exc:  # a bug must not lose the other tests' records
                    why = f"internal error (a bug in isobench): {type(exc).__name__}: {exc}"
                    got = [Record(test=test_name, platform=name, verdict=FAIL, reason=why)]
            for record in got:
                results.add_enforcement(record.to_json())
                print(
                    f"isobench: {name} {record.test}: {record.verdict}: {record.reason}",
                    file=sys.stderr,
                )
            made.extend(got)
        if adapter is not None:
            results.declare_platform(name, adapter.describe())
    finally:
        if adapter is not None:
            with contextlib.suppress(IsobenchError, OSError):
                adapter.teardown()
    return made


def describe_durations(durations: Durations) -> str:
    """The durations in force, for the output and the records."""
    return ", ".join(
        f"{k.removesuffix('_s').replace('_', ' ')} {val:g} s"
        for k, val in asdict(durations).items()
    )


def exit_code(records: Sequence[Record | dict[str, Any]]) -> int:
    """0 when every applicable test passed, 1 when one failed."""
    verdicts = [r.verdict if isinstance(r, Record) else r["verdict"] for r in records]
    return 1 if FAIL in verdicts else 0


def table(records: Sequence[dict[str, Any]]) -> Any:
    """A rich Table: one row per test, one column per platform, each cell the verdict and measured value."""
    from rich.table import Table

    platforms = list(dict.fromkeys(r["platform"] for r in records))
    tests = list(dict.fromkeys(r["test"] for r in records))
    cells = {(r["test"], r["platform"]): r for r in records}
    out = Table(title="isobench enforcement")
    out.add_column("test")
    for name in platforms:
        out.add_column(name)
    for test in tests:
        row = [test]
        for name in platforms:
            r = cells.get((test, name))
            row.append(cell(r) if r else "")
        out.add_row(*row)
    return out


def cell(record: dict[str, Any]) -> str:
    """One table cell: verdict, then measured / requested with the unit."""
    colour = {PASS: "green", FAIL: "red"}.get(record["verdict"], "yellow")
    text = f"[{colour}]{record['verdict']}[/{colour}]"
    if record.get("measured") is not None:
        req = record.get("requested")
        text += (
            f" {record['measured']:.3g}"
            + (f"/{req:.3g}" if req is not None else "")
            + f" {record['unit']}"
        )
    return text
