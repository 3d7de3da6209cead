"""Fixtures for driving the real runtime: unique ids, a state root, bundles, guaranteed teardown.

Every container id is isobench-test-<session tag>-<random>, so the session-end
check finds exactly what this session made and nothing another engineer's run
made at the same time. Teardown force-deletes every id a test asked for and
removes its cgroup directories, whatever the test did.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.errors import IsobenchError
from harness.runtime.bundle import busybox_bundle, busybox_rootfs
from harness.runtime.cgroups import new_manager
from harness.runtime.lifecycle import CGROUP_PARENT, Runtime

SESSION_TAG = uuid.uuid4().hex[:6]
ID_PREFIX = f"isobench-test-{SESSION_TAG}-"
CLI_TIMEOUT_S = 60.0

Config = dict[str, object]


def runtime_cli() -> str:
    """The installed `isobench-runtime` console script next to this interpreter."""
    candidate = Path(sys.executable).parent / "isobench-runtime"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("isobench-runtime")
    if found is None:
        raise RuntimeError("isobench-runtime console script not found; run `make setup`")
    return found


def cgroup_dirs(container_id: str) -> list[str]:
    """The container's cgroup directories that exist now, in any hierarchy (v1 or v2)."""
    parent = CGROUP_PARENT.strip("/")
    return sorted(
        glob.glob(f"/sys/fs/cgroup/*/{parent}/{container_id}")
        + glob.glob(f"/sys/fs/cgroup/{parent}/{container_id}")
    )


def mountinfo_lines() -> int:
    """How many mounts the host's (this process's) mount namespace has."""
    with open("/proc/self/mountinfo") as f:
        return len(f.readlines())


def edit_config(bundle: Path, edit: Callable[[Config], object]) -> Path:
    """Load config.json, let `edit` change the dict in place, write it back."""
    path = bundle / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config, indent=2))
    return bundle


def force_remove(root: str, container_id: str) -> None:
    """Delete a container and its cgroup whatever state it is in (test teardown)."""
    with contextlib.suppress(IsobenchError, OSError):
        Runtime(root=root).delete(container_id, force=True)
    manager = new_manager(f"{CGROUP_PARENT}/{container_id}")
    with contextlib.suppress(IsobenchError, OSError):
        manager.kill_all(signal.SIGKILL)
    with contextlib.suppress(IsobenchError, OSError):
        manager.destroy()
    shutil.rmtree(Path(root) / container_id, ignore_errors=True)


@pytest.fixture(scope="session")
def state_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One state directory for the session; checked for leftovers at the end."""
    root = tmp_path_factory.mktemp("runtime-state") / "state"
    yield str(root)
    # Session-end sweep: whatever a test left behind is a leak of the runtime
    # (each test's own teardown has already force-deleted its ids).
    left_state = sorted(p.name for p in root.glob(f"{ID_PREFIX}*")) if root.exists() else []
    left_cgroups = sorted(glob.glob(f"/sys/fs/cgroup/*/{CGROUP_PARENT.strip('/')}/{ID_PREFIX}*"))
    for path in left_cgroups:
        force_remove(str(root), os.path.basename(path))
    assert not left_state, f"state dirs left in {root}: {left_state}"
    assert not left_cgroups, f"cgroup dirs left behind: {left_cgroups}"


@pytest.fixture
def new_id(state_root: str) -> Iterator[Callable[[], str]]:
    """A factory of unique container ids; every id it gave is force-removed at teardown."""
    made: list[str] = []

    def make() -> str:
        container_id = ID_PREFIX + uuid.uuid4().hex[:8]
        made.append(container_id)
        return container_id

    yield make
    for container_id in made:
        force_remove(state_root, container_id)


@pytest.fixture
def runtime(state_root: str, new_id: Callable[[], str]) -> Iterator[Runtime]:
    """An in-process Runtime; at teardown it deletes (and so reaps) every init it still holds."""
    rt = Runtime(root=state_root)
    yield rt
    for container_id in list(rt.children):
        with contextlib.suppress(IsobenchError, OSError):
            rt.delete(container_id, force=True)


@pytest.fixture
def cli(state_root: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `isobench-runtime --root <state_root> ARGS...`, capturing stdout and stderr.

    Output goes through files, not pipes: a created container's init inherits the
    CLI's stdio and keeps it open, so a pipe would not see EOF when `create` returns.
    """
    exe = runtime_cli()

    def run(*args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return run_captured([exe, "--root", state_root, *args], timeout)

    return run


def run_captured(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run argv with stdout/stderr through files (a created init keeps inherited pipes open)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run(
            argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, timeout=timeout, check=False
        )
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            argv,
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


@pytest.fixture(scope="session")
def shared_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One busybox rootfs that read-only bundles share (root.readonly is true by default)."""
    return busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture
def bundle(tmp_path: Path, shared_rootfs: Path) -> Callable[..., Path]:
    """bundle(args, edit=None, own_rootfs=False, **busybox_bundle kwargs) -> bundle dir.

    own_rootfs=True copies a fresh rootfs into the bundle (for tests that change it).
    """
    count = [0]

    def make(
        args: list[str],
        edit: Callable[[Config], object] | None = None,
        own_rootfs: bool = False,
        **kwargs: object,
    ) -> Path:
        count[0] += 1
        path = tmp_path / f"bundle{count[0]}"
        made = busybox_bundle(path, args, rootfs=None if own_rootfs else shared_rootfs, **kwargs)  # type: ignore[arg-type]
        if edit is not None:
            edit_config(made, edit)
        return made

    return make
