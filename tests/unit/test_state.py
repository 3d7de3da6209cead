"""The lifecycle state machine and the state directory (no root needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.errors import StateError, UserError
from harness.runtime import state as st


def _record(pid: int, start: int) -> st.ContainerState:
    return st.ContainerState(
        id="c1",
        pid=pid,
        pid_start_time=start,
        bundle="/b",
        rootfs="/b/rootfs",
        created=st.now_rfc3339(),
        cgroups_path="/isobench-runtime/c1",
    )


@pytest.mark.parametrize(
    ("status", "operation"),
    [
        ("created", "resume"),
        ("running", "start"),
        ("running", "delete"),
        ("stopped", "start"),
        ("stopped", "kill"),
        ("paused", "start"),
        ("creating", "delete"),
    ],
)
def test_illegal_transitions_raise_state_error(status: str, operation: str) -> None:
    with pytest.raises(StateError, match=f"is {status}: cannot {operation}"):
        st.require(status, operation, "c1")


@pytest.mark.parametrize(
    ("status", "operation"),
    [
        ("created", "start"),
        ("created", "kill"),
        ("running", "kill"),
        ("stopped", "delete"),
        ("paused", "resume"),
    ],
)
def test_legal_transitions_pass(status: str, operation: str) -> None:
    st.require(status, operation, "c1")


def test_status_follows_the_facts(tmp_path: Path) -> None:
    state_dir = st.StateDir(str(tmp_path), "c1")
    state_dir.claim()
    me = os.getpid()
    start = st.proc_start_time(me)
    assert start is not None
    os.mkfifo(state_dir.fifo)
    assert st.status_of(_record(me, start), state_dir) == st.CREATED
    os.unlink(state_dir.fifo)
    assert st.status_of(_record(me, start), state_dir) == st.RUNNING
    assert st.status_of(_record(me, start), state_dir, frozen=True) == st.PAUSED
    # Same pid, other start time: the pid was reused, the container is gone.
    assert st.status_of(_record(me, start + 1), state_dir) == st.STOPPED


def test_duplicate_id_is_refused_and_the_first_survives(tmp_path: Path) -> None:
    first = st.StateDir(str(tmp_path), "dup")
    first.claim()
    first.write(_record(1, 1))
    with pytest.raises(UserError, match="already exists"):
        st.StateDir(str(tmp_path), "dup").claim()
    assert first.load().pid == 1


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-lead", "sp ace", "x" * 1025])
def test_bad_ids_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UserError, match="container id"):
        st.StateDir(str(tmp_path), bad)


def test_state_document_follows_the_oci_spec(tmp_path: Path) -> None:
    doc = st.oci_state(_record(42, 1), st.RUNNING)
    assert {k: doc[k] for k in ("ociVersion", "id", "status", "pid", "bundle")} == {
        "ociVersion": st.OCI_VERSION,
        "id": "c1",
        "status": "running",
        "pid": 42,
        "bundle": "/b",
    }
    assert "pid" not in st.oci_state(_record(42, 1), st.STOPPED)


def test_state_file_is_replaced_atomically_and_reads_back(tmp_path: Path) -> None:
    state_dir = st.StateDir(str(tmp_path), "c1")
    state_dir.claim()
    state_dir.write(_record(7, 9))
    assert sorted(os.listdir(state_dir.path)) == ["state.json"]
    assert json.loads((state_dir.path / "state.json").read_text())["pid"] == 7
    state_dir.remove()
    assert not state_dir.path.exists()


def test_unknown_container_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        st.StateDir(str(tmp_path), "nope").load()
