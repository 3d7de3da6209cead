"""Every platform end to end on this host: one image, a CPU, a volume and a root workload, no leftovers.

One image is built per module into a store under tmp, so the user's store is
never touched. Each platform is prepared, runs the workloads, times a cold
start and is torn down; then nothing it made may remain: no mount under the
workdir, no cgroup and no state directory carrying the run id.
"""

from __future__ import annotations

import glob
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.image.build import build_image
from harness.image.store import ImageStore
from harness.platforms import PLATFORMS, select
from harness.platforms.bare import BarePlatform
from harness.platforms.base import Limits, Platform, RunContext
from harness.platforms.common import mounts_under
from harness.platforms.container import ContainerPlatform
from harness.platforms.oci import OciPlatform
from harness.runtime.state import default_root
from harness.workloads.base import Metric, Workload

pytestmark = pytest.mark.requires("root", "cgroups", "busybox")

TAG = "isobench/workload:test-platforms"
PLATFORM_NAMES = ["bare", "container", "oci:runc", "oci:crun"]
# vm has its own module (test_vm.py): a guest boot per test would be minutes under TCG,
# and libvirt's embedded driver allows one embed root per process.
REGISTERED = [*PLATFORM_NAMES, "vm"]


def _events_per_second(stdout: str) -> dict[str, float]:
    match = re.search(r"events per second:\s*([0-9.]+)", stdout)
    if match is None:
        raise ValueError(f"no 'events per second' in {stdout!r}")
    return {"events_per_s": float(match.group(1))}


CPU = Workload(
    benchmark="cpu.sysbench.test",
    category="cpu",
    argv=(
        "sh",
        "-c",
        "sysbench cpu run --cpu-max-prime=2000 --events=200 --time=0 | grep 'events per second'",
    ),
    metrics=(Metric("events_per_s", "events/s", True),),
    primary="events_per_s",
    parse=_events_per_second,
    timeout_s=60,
)
VOLUME = Workload(
    benchmark="io.test.volume",
    category="io",
    argv=("sh", "-c", "echo $MARK > /scratch/x && cat /scratch/x"),
    metrics=(),
    primary="",
    parse=lambda out: {},
    scratch="volume",
    env=(("MARK", "written-through-the-volume"),),
)
ROOT = Workload(
    benchmark="io.test.root",
    category="io",
    argv=("sh", "-c", "echo y > /var/tmp/y && cat /var/tmp/y && df -T /var/tmp | tail -1"),
    metrics=(),
    primary="",
    parse=lambda out: {},
    scratch="root",
)
SLOW = Workload(
    benchmark="test.timeout",
    category="cpu",
    argv=("sleep", "30"),
    metrics=(),
    primary="",
    parse=lambda out: {},
    timeout_s=1.0,
)


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A directory of this module's own, not under pytest's basetemp: a concurrent pytest
    session may sweep /tmp/pytest-of-<user> while this one still has mounts there."""
    path = Path(tempfile.mkdtemp(prefix="isobench-test-platforms-"))
    try:
        yield path
        assert mounts_under(path) == [], "mounts left behind"
    finally:
        if not mounts_under(path):
            shutil.rmtree(path)


@pytest.fixture(scope="module")
def store(base: Path) -> ImageStore:
    image_store = ImageStore(home=base / "home")
    build_image(image_store, tag=TAG)
    return image_store


@pytest.fixture
def tmp_path(base: Path) -> Path:
    """Each test's own directory under the module's base (see `base`)."""
    return Path(tempfile.mkdtemp(dir=base))


def _make(name: str, store: ImageStore) -> Platform:
    if name == "bare":
        return BarePlatform(store=store)
    if name == "container":
        return ContainerPlatform(store=store)
    return OciPlatform(name.split(":", 1)[1], store=store)


def _leftovers(run_id: str, workdir: Path) -> list[str]:
    """Mounts under the workdir, cgroups and state dirs whose names carry the run id."""
    found = mounts_under(workdir)
    found += glob.glob(f"/sys/fs/cgroup/*/*{run_id}*") + glob.glob(f"/sys/fs/cgroup/*/*/*{run_id}*")
    found += glob.glob(f"{default_root()}/*{run_id}*")
    found += [str(p) for p in workdir.glob("*") if run_id in p.name]
    return found


@pytest.mark.parametrize("name", PLATFORM_NAMES)
def test_platform_runs_the_image_and_leaves_nothing(
    name: str, store: ImageStore, tmp_path: Path
) -> None:
    platform = _make(name, store)
    ok, reason = platform.available()
    if not ok:
        # Only a platform that truly cannot run here may be skipped, and never without a reason.
        assert isinstance(reason, str) and reason
        platform.teardown()
        pytest.skip(f"{name}: {reason}")
    run_id = f"t{uuid.uuid4().hex[:8]}"
    ctx = RunContext(TAG, store.resolve(TAG), run_id, tmp_path / "work", Limits())
    platform.prepare(ctx)
    try:
        cpu = platform.run(CPU)
        assert cpu.exit_code == 0, cpu.stderr
        assert CPU.parse(cpu.stdout)["events_per_s"] > 0
        assert cpu.wall_s > 0

        volume = platform.run(VOLUME)
        assert volume.exit_code == 0, volume.stderr
        host_dir = platform.scratch  # type: ignore[attr-defined]
        assert (host_dir / "x").read_text().strip() == "written-through-the-volume"

        root = platform.run(ROOT)
        assert root.exit_code == 0, root.stderr
        assert root.stdout.splitlines()[0] == "y"

        assert 0 < platform.launch_latency() < 10

        burst = platform.launch_burst(4)
        assert len(burst.per_launch_s) == 4 and all(t > 0 for t in burst.per_launch_s)
        # The burst spans every launch: its total is at least the longest one.
        assert max(burst.per_launch_s) <= burst.total_s < 60

        described = platform.describe()
        assert described["name"] == name and described["image_digest"] == ctx.image_digest
    finally:
        platform.teardown()
    platform.teardown()  # twice is fine
    assert _leftovers(run_id, tmp_path / "work") == []


@pytest.mark.parametrize("name", PLATFORM_NAMES)
def test_a_run_past_its_timeout_is_stopped_and_cleaned_up(
    name: str, store: ImageStore, tmp_path: Path
) -> None:
    platform = _make(name, store)
    if not platform.available()[0]:
        platform.teardown()
        pytest.skip(f"{name}: {platform.available()[1]}")
    run_id = f"t{uuid.uuid4().hex[:8]}"
    platform.prepare(RunContext(TAG, store.resolve(TAG), run_id, tmp_path / "w", Limits()))
    try:
        outcome = platform.run(SLOW)
        assert outcome.exit_code == 124
        assert outcome.wall_s < 15
        assert "timeout" in outcome.stderr
    finally:
        platform.teardown()
    assert _leftovers(run_id, tmp_path / "w") == []


@pytest.mark.parametrize("name", PLATFORM_NAMES)
def test_limits_are_in_force_inside(name: str, store: ImageStore, tmp_path: Path) -> None:
    platform = _make(name, store)
    if not platform.available()[0]:
        platform.teardown()
        pytest.skip(f"{name}: {platform.available()[1]}")
    run_id = f"t{uuid.uuid4().hex[:8]}"
    limits = Limits(cpus=1, memory_bytes=64 << 20)
    platform.prepare(RunContext(TAG, store.resolve(TAG), run_id, tmp_path / "w", limits))
    # bare sees the host's cgroup tree (no cgroup namespace): its own cgroup's name is
    # the evidence; containers see their cgroup as the root, with the limit in it.
    memory = (
        "grep -c isobench-bare-$RUN /proc/self/cgroup"
        if name == "bare"
        else "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"
    )
    probe = Workload(
        benchmark="test.limits",
        category="cpu",
        argv=("sh", "-c", f"grep Cpus_allowed_list /proc/self/status; nproc; {memory}"),
        metrics=(),
        primary="",
        parse=lambda out: {},
        env=(("RUN", run_id),),
    )
    try:
        outcome = platform.run(probe)
        assert outcome.exit_code == 0, outcome.stderr
        words = outcome.stdout.split()
        assert words[1:3] == ["0", "1"], outcome.stdout  # cpuset "0", one CPU
        assert int(words[3]) >= 1 if name == "bare" else int(words[3]) == 64 << 20
        described = platform.describe()["limits"]
        assert isinstance(described, dict)
        assert (described["cpus"], described["cpuset"], described["memory_bytes"]) == (
            1,
            "0",
            64 << 20,
        )
    finally:
        platform.teardown()
    assert _leftovers(run_id, tmp_path / "w") == []


def test_a_mismatched_digest_is_refused(store: ImageStore, tmp_path: Path) -> None:
    from harness.errors import UserError

    platform = BarePlatform(store=store)
    ctx = RunContext(TAG, "sha256:" + "0" * 64, "tmismatch", tmp_path / "w", Limits())
    with pytest.raises(UserError, match="the same image everywhere"):
        platform.prepare(ctx)
    assert mounts_under(tmp_path) == []


def test_bare_kills_what_the_workload_left_in_the_background(
    store: ImageStore, tmp_path: Path
) -> None:
    platform = BarePlatform(store=store)
    platform.prepare(RunContext(TAG, store.resolve(TAG), f"t{uuid.uuid4().hex[:8]}", tmp_path))
    try:
        # Host pid namespace: the pid printed is the host's.
        outcome = platform.run(
            Workload("test.bg", "cpu", ("sh", "-c", "sleep 60 & echo $!"), (), "", lambda o: {})
        )
        assert outcome.exit_code == 0
        proc = Path(f"/proc/{int(outcome.stdout)}/stat")
        deadline = time.monotonic() + 5
        while proc.exists() and proc.read_text().split()[2] != "Z":
            assert time.monotonic() < deadline, "the background sleep is still running"
            time.sleep(0.01)
    finally:
        platform.teardown()


def test_registry_names_every_platform() -> None:
    from harness.errors import UserError

    assert list(PLATFORMS) == REGISTERED
    assert [p.name for p in select(None)] == REGISTERED
    assert [p.name for p in select(["oci:runc", "bare", "bare"])] == ["oci:runc", "bare"]
    with pytest.raises(UserError, match="'kvm'; accepted: bare, container, oci:runc, oci:crun, vm"):
        select(["bare", "kvm"])
