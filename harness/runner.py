"""`isobench run`: the image, the platforms this host can run, the benchmarks, the blocks, one results file.

The flow of DESIGN.md: probe the host (a platform that cannot run here is
skipped with its reason, recorded), build or reuse the image by digest,
prepare each platform once, run randomised complete blocks appending every
sample to the results file as it is taken, tear everything down.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import EnvironmentError_, IsobenchError
from harness.platforms.base import Platform, RunContext
from harness.platforms.vm import VmOptions

if TYPE_CHECKING:
    from harness.results import ResultFile
    from harness.workloads.base import Workload

# Blocks and cold starts per block, by profile. MEASUREMENT.md: full has >= 10 blocks.
# quick must fit about 10 minutes on a 2-core machine with four platforms (one
# catalog pass was about 40 s per platform here at the first sizes; quick sizes now aim at
# about 0.6 s a run): 3 blocks plus the warm-up, and
# 10 cold starts per block so that startup gets its 30 per platform.
PROFILE_BLOCKS = {"smoke": 2, "quick": 3, "full": 10}
PROFILE_STARTUP_LAUNCHES = {"smoke": 3, "quick": 10, "full": 10}
DEFAULT_IMAGE = "isobench/workload:latest"
WORKDIR_PREFIX = "isobench-run-"  # then <pid>-<run id>-<random>, in the temp dir
TOOL_PREFIX = "org.isobench.tool."


def run_suite(
    *,
    profile: str = "quick",
    platforms: Sequence[str] | None = None,
    benchmarks: Sequence[str] | None = None,
    blocks: int | None = None,
    seed: int | None = None,
    results_dir: Path = Path("results"),
    resume: Path | None = None,
    image_ref: str = DEFAULT_IMAGE,
    vm_options: VmOptions | None = None,
) -> Path:
    """Run the suite (or resume a killed run); returns the results file's path."""
    from harness.platforms import select
    from harness.results import ResultFile
    from harness.scheduler import STARTUP_NAMES, validate_request
    from harness.workloads import workloads as select_workloads

    previous = ResultFile.load(resume) if resume is not None else None
    if previous is not None:
        info = previous.info
        profile = str(info["profile"])
        blocks = previous.blocks if blocks is None else blocks
        seed = previous.seed if seed is None else seed
        image_ref = str(info["image"].get("digest", image_ref))
        platforms = list(info["platforms"]) or platforms
        chosen = [b for b in info["benchmarks"] if b not in STARTUP_NAMES]
        benchmarks = chosen or benchmarks
    blocks = PROFILE_BLOCKS[profile] if blocks is None else blocks
    seed = random.SystemRandom().randrange(1 << 31) if seed is None else seed
    startup = benchmarks is None or "startup" in benchmarks
    named = [b for b in benchmarks or () if b != "startup"]
    launches = PROFILE_STARTUP_LAUNCHES[profile] if startup else 0
    validate_request(blocks, startup_launches=launches)
    selected = select_workloads(named or None, profile) if (named or benchmarks is None) else []
    vm_options = replace(vm_options or VmOptions(), results_dir=results_dir)
    requested = select(list(platforms) if platforms else None, vm_options)

    digest, tools = _image(image_ref)
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
    # The pid in the name lets `isobench cleanup` tell a killed run's workdir from a live one.
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-{run_id}-"))
    ctx = RunContext(image_ref=image_ref, image_digest=digest, run_id=run_id, workdir=workdir)
    skipped: dict[str, str] = {}
    with _prepared(requested, ctx, skipped) as ready:
        if not ready:
            reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
            raise EnvironmentError_(
                f"no platform can run on this host ({reasons}); see `isobench doctor`"
            )
        results = previous or _new_results(
            results_dir, profile, seed, blocks, image_ref, digest, tools, skipped, run_id
        )
        _run(ready, selected, blocks, seed, results, launches)
    return results.path


def _new_results(
    results_dir: Path,
    profile: str,
    seed: int,
    blocks: int,
    image_ref: str,
    digest: str,
    tools: dict[str, str],
    skipped: dict[str, str],
    run_id: str,
) -> ResultFile:
    from harness.host import host_facts
    from harness.results import ResultFile, RunHeader, commit_info, machine_id, path_for

    commit = str(commit_info().get("id", "unknown"))[:12]
    path = path_for(results_dir, machine_id(), commit, profile, datetime.now(UTC))
    header = RunHeader(
        run_id=run_id,
        profile=profile,
        seed=seed,
        blocks=blocks,
        host=host_facts(),
        image_ref=image_ref,
        image_digest=digest,
        tools=tools,
        skipped=skipped,
    )
    return ResultFile.create(path, header)


def _run(
    platforms: list[Platform],
    workloads: list[Workload],
    blocks: int,
    seed: int,
    results: ResultFile,
    launches: int,
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.scheduler import run_blocks

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("isobench run", total=None)

        def progress(done: int, total: int, sample: object) -> None:
            label = f"{getattr(sample, 'benchmark', '')} on {getattr(sample, 'platform', '')}"
            bar.update(task, completed=done, total=total, description=label[:60])

        try:
            run_blocks(
                platforms,
                workloads,
                blocks=blocks,
                seed=seed,
                results=results,
                startup_launches=launches,
                progress=progress,
            )
        finally:
            # Descriptions grow during a run (the vm's cold-start breakdown, the
            # workloads it had to change): record them as they ended.
            for platform in platforms:
                with contextlib.suppress(IsobenchError, OSError):
                    results.declare_platform(platform.name, platform.describe())


@contextlib.contextmanager
def _prepared(
    requested: list[Platform], ctx: RunContext, skipped: dict[str, str]
) -> Iterator[list[Platform]]:
    """Each available platform prepared once; all torn down (and the run's workdir removed) at the end."""
    ready: list[Platform] = []
    try:
        for platform in requested:
            ok, reason = platform.available()
            if not ok:
                skipped[platform.name] = reason
                print(f"isobench: skipping {platform.name}: {reason}", file=sys.stderr)
                continue
            try:
                platform.prepare(ctx)
            except IsobenchError as exc:
                skipped[platform.name] = f"prepare failed: {exc}"
                print(f"isobench: skipping {platform.name}: prepare failed: {exc}", file=sys.stderr)
                platform.teardown()
                continue
            ready.append(platform)
        yield ready
    finally:
        for platform in reversed(ready):
            with contextlib.suppress(IsobenchError, OSError):
                platform.teardown()
        shutil.rmtree(ctx.workdir, ignore_errors=True)


def _image(ref: str) -> tuple[str, dict[str, str]]:
    """The image's digest and tool versions; the default image is built (or reused) first."""
    from harness.image.store import ImageStore

    store = ImageStore()
    if ref == DEFAULT_IMAGE:
        from harness.image.build import build_image

        digest = build_image(store, tag=ref).digest
    else:
        digest = store.resolve(ref)  # an unknown reference is a UserError naming it
    annotations = store.manifest(digest).annotations
    tools = {
        key[len(TOOL_PREFIX) : -len(".version")]: str(value)
        for key, value in annotations.items()
        if key.startswith(TOOL_PREFIX) and key.endswith(".version")
    }
    return digest, tools
