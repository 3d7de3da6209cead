"""Container lifecycle: the state machine (created -> running -> stopped) and the state directory.

As in runc's state_linux.go, the status is derived from facts, not stored:
the init process alive (and the same process: its start time matches), the
exec FIFO still present (not started yet), the freezer. The state directory
holds `state.json` (written atomically) and `exec.fifo`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import StateError, UserError

OCI_VERSION = "1.2.0"
STATE_FILE = "state.json"
FIFO_NAME = "exec.fifo"
DEFAULT_ROOT_PRIVILEGED = "/run/isobench-runtime"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,1023}$")

CREATING, CREATED, RUNNING, PAUSED, STOPPED = "creating", "created", "running", "paused", "stopped"

# Which operations each status allows (runc: the methods of each containerState).
ALLOWED: dict[str, frozenset[str]] = {
    CREATING: frozenset(),
    CREATED: frozenset({"start", "kill", "delete", "pause"}),
    RUNNING: frozenset({"kill", "pause"}),
    PAUSED: frozenset({"kill", "resume"}),
    STOPPED: frozenset({"delete"}),
}


def default_root() -> str:
    """runc's convention: /run/<name> as root, $XDG_RUNTIME_DIR/<name> otherwise."""
    if os.geteuid() == 0:
        return DEFAULT_ROOT_PRIVILEGED
    xdg = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/isobench-runtime-{os.geteuid()}"
    return os.path.join(xdg, "isobench-runtime")


def check_id(container_id: str) -> None:
    """Container IDs become directory and cgroup names: letters, digits and _.+- only."""
    if not ID_RE.match(container_id):
        raise UserError(
            f"container id {container_id!r} is invalid; accepted: 1-1024 characters of "
            "letters, digits, '_', '.', '+', '-', starting with a letter or digit"
        )


def require(status: str, operation: str, container_id: str) -> None:
    """Raise StateError unless `operation` is legal in `status`."""
    if operation not in ALLOWED.get(status, frozenset()):
        raise StateError(f"container {container_id} is {status}: cannot {operation} it")


@dataclass
class ContainerState:
    """What state.json records about one container."""

    id: str
    pid: int
    pid_start_time: int
    bundle: str
    rootfs: str
    created: str
    cgroups_path: str
    cgroup_paths: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    poststart_hooks: list[dict[str, object]] = field(default_factory=list)
    poststop_hooks: list[dict[str, object]] = field(default_factory=list)
    owner: str = "root"

    def to_json(self) -> str:
        return json.dumps(vars(self), sort_keys=True)


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in ticks), or None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(b")") + 2 :].split()
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


class StateDir:
    """<root>/<id>: one container's state directory."""

    def __init__(self, root: str, container_id: str) -> None:
        check_id(container_id)
        self.root = root
        self.id = container_id
        self.path = Path(root) / container_id

    @property
    def fifo(self) -> Path:
        return self.path / FIFO_NAME

    def exists(self) -> bool:
        return (self.path / STATE_FILE).exists()

    def claim(self) -> None:
        """Create the directory; an existing one means a duplicate ID."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            raise UserError(
                f"container id {self.id!r} already exists in {self.root}; accepted: an id not in "
                "`isobench-runtime list` (delete the old one first)"
            ) from None

    def write(self, state: ContainerState) -> None:
        """Atomic replace, so a reader never sees half a file."""
        tmp = self.path / f".{STATE_FILE}.tmp"
        with open(tmp, "w") as f:
            f.write(state.to_json())
        os.replace(tmp, self.path / STATE_FILE)

    def load(self) -> ContainerState:
        try:
            raw = (self.path / STATE_FILE).read_text()
        except FileNotFoundError:
            raise UserError(
                f"container {self.id!r} does not exist in {self.root}; accepted: an id shown by "
                "`isobench-runtime list`"
            ) from None
        return ContainerState(**json.loads(raw))

    def remove(self) -> None:
        for name in (STATE_FILE, FIFO_NAME, f".{STATE_FILE}.tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / name)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(self.path)


def status_of(state: ContainerState, state_dir: StateDir, frozen: bool = False) -> str:
    """created / running / paused / stopped, from the facts."""
    if proc_start_time(state.pid) != state.pid_start_time:
        return STOPPED
    if frozen:
        return PAUSED
    if state_dir.fifo.exists():
        return CREATED
    return RUNNING


def oci_state(state: ContainerState, status: str) -> dict[str, object]:
    """The OCI runtime-spec state document (runtime.md#state)."""
    doc: dict[str, object] = {
        "ociVersion": OCI_VERSION,
        "id": state.id,
        "status": status,
        "bundle": state.bundle,
        "annotations": state.annotations,
    }
    if status != STOPPED:
        doc["pid"] = state.pid
    # runc adds these; tools that parse runc's state read them.
    doc["rootfs"] = state.rootfs
    doc["created"] = state.created
    doc["owner"] = state.owner
    return doc


def now_rfc3339() -> str:
    """UTC time with nanoseconds, as runc writes `created`."""
    ns = time.time_ns()
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
        + f".{ns % 1_000_000_000:09d}Z"
    )
