"""The workload image's costs: overlay root set-up, rebuild when nothing changed, launch from an image.

Targets of issue 3, printed in the summary (figures, not pass/fail on speed):
- overlay root set-up plus teardown for one container: median at most 5 ms;
- `isobench image build` when nothing changed: at most 1 s;
- launch from an image reference adds at most 10 % to launch from a plain bundle
  (both in randomised blocks, ratio of medians with a 95 % paired bootstrap interval).
"""

from __future__ import annotations

import itertools
import os
import random
import statistics
import time
from pathlib import Path

import pytest

from bench.conftest import SUMMARY
from harness.image import overlay
from harness.image.build import build_image
from harness.image.commands import write_bundle
from harness.image.containers import ImageContainers
from harness.image.store import ImageStore
from harness.runtime.lifecycle import Runtime
from harness.runtime.spec_load import load_bundle
from harness.stats import paired_median_ratio, percentile

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts and containers need root")

BLOCKS = int(os.environ.get("ISOBENCH_IMAGE_BLOCKS", "30"))
SEED = int(os.environ.get("ISOBENCH_SEED", str(time.time_ns() % 1_000_000)))
TAG = "isobench/workload:bench"
_ids = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ImageStore:
    """A store of the run's own, so the benchmark never touches the user's images."""
    return ImageStore(tmp_path_factory.mktemp("image-home"))


@pytest.fixture(scope="module")
def image(store: ImageStore) -> str:
    return build_image(store, tag=TAG).digest


def test_rebuild_when_nothing_changed(
    benchmark: pytest.FixtureRequest, store: ImageStore, image: str
) -> None:
    """A second build finds its inputs unchanged and reuses the image by digest."""
    benchmark.group = "image"
    result = benchmark.pedantic(lambda: build_image(store, tag=TAG), rounds=5, iterations=1)
    assert result.reused and result.digest == image
    median_s = benchmark.stats.stats.median
    SUMMARY.append(
        f"image: rebuild with nothing changed: median {median_s * 1000:.0f} ms (target <= 1000 ms)"
    )


def test_overlay_setup_and_teardown(
    benchmark: pytest.FixtureRequest, store: ImageStore, image: str, tmp_path: Path
) -> None:
    """Mount an overlay root over the image's layers and take it down again."""
    lowers = store.layer_dirs(image)
    counter = itertools.count()

    def cycle() -> None:
        base = tmp_path / f"c{next(counter)}"
        overlay.mount_overlay(lowers, base / "upper", base / "work", base / "rootfs")
        overlay.unmount(base / "rootfs")

    benchmark.group = "image"
    benchmark.pedantic(cycle, rounds=50, iterations=1, warmup_rounds=3)
    median_ms = benchmark.stats.stats.median * 1000
    SUMMARY.append(
        f"image: overlay root set-up + teardown: median {median_ms:.2f} ms (target <= 5 ms)"
    )


def test_launch_from_image_against_plain_bundle(
    store: ImageStore, image: str, tmp_path: Path
) -> None:
    """Randomised blocks: `/bin/true` from the image reference and from a bundle of the same files."""
    runtime = Runtime(root=str(tmp_path / "state"))
    containers = ImageContainers(store, runtime)
    bundle_spec = load_bundle(str(write_bundle(store, image, tmp_path / "bundle", ["/bin/true"])))

    def from_bundle() -> float:
        start = time.perf_counter()
        assert runtime.run(bundle_spec, f"isobench-bench-img-b{next(_ids)}") == 0
        return time.perf_counter() - start

    def from_image() -> float:
        start = time.perf_counter()
        assert containers.run(image, f"isobench-bench-img-i{next(_ids)}", ["/bin/true"]) == 0
        return time.perf_counter() - start

    launchers = {"plain bundle": from_bundle, "image reference": from_image}
    rng = random.Random(SEED)
    for launch in launchers.values():
        launch()
    samples: dict[str, list[float]] = {name: [] for name in launchers}
    for _ in range(BLOCKS):
        order = list(launchers)
        rng.shuffle(order)
        for name in order:
            samples[name].append(launchers[name]() * 1000)
    ratio = paired_median_ratio(samples["image reference"], samples["plain bundle"], seed=SEED)
    SUMMARY.append(f"image: launch of /bin/true, {BLOCKS} randomised blocks, seed {SEED}")
    for name, values in samples.items():
        SUMMARY.append(
            f"  {name:16s} p50 {percentile(values, 50):6.2f} ms  p90 {percentile(values, 90):6.2f} ms"
            f"  mean {statistics.fmean(values):6.2f} ms"
        )
    verdict = "met" if ratio.high <= 1.10 else "NOT met"
    SUMMARY.append(f"  image / bundle: {ratio}; target <= 1.10x: {verdict}")
    assert containers.list() == []  # every image container was removed after its run
