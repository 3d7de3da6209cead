"""cgroupfs file helpers and mountinfo parsing, shared by the v1 and v2 drivers."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import signal
import time
from dataclasses import dataclass

from harness.errors import OSFailure

RMDIR_RETRIES = 5  # runc RemovePath: the kernel says EBUSY for a moment after the last task exits
RMDIR_DELAY_S = 0.01
ADD_PID_RETRIES = 5  # runc WriteCgroupProc: EINVAL while the task is still being forked
ADD_PID_DELAY_S = 0.03
FREEZE_TIMEOUT_S = 2.0
KILL_TIMEOUT_S = 5.0
POLL_S = 0.001


# ---------------------------------------------------------------- file helpers


def write_file(directory: str, name: str, value: str) -> None:
    """Write value to directory/name in one write(); any failure raises OSFailure."""
    _write(os.path.join(directory, name), [value.encode()])


def write_lines(directory: str, name: str, lines: list[str]) -> None:
    """Write each line with its own write(): the kernel parses one rule per write."""
    _write(os.path.join(directory, name), [(line + "\n").encode() for line in lines])


def _write(path: str, chunks: list[bytes]) -> None:
    try:
        # O_CREAT lets the unit tests write into plain directories (runc's WriteFile does the same).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            for chunk in chunks:
                os.write(fd, chunk)
        finally:
            os.close(fd)
    except OSError as e:
        err = e.errno or errno.EIO
        # With O_CREAT, cgroupfs answers EACCES (not ENOENT) for a file the kernel does not have.
        if err == errno.EACCES and not os.path.exists(path):
            err = errno.ENOENT
        raise OSFailure("write", path, err) from e


def read_optional(directory: str, name: str) -> str | None:
    """The file's text, or None when it does not exist (controller or kernel feature absent).

    ENODEV is the same thing: kernfs answers it for a file of a cgroup that was
    removed between our open and our read (a killed container's, deleted by its
    runtime while `kill --all` was still reading its cgroup.procs).
    """
    path = os.path.join(directory, name)
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ENODEV:
            return None
        raise OSFailure("read", path, e.errno or errno.EIO) from e


def read_file(directory: str, name: str) -> str:
    """The file's text; a missing file raises OSFailure(ENOENT)."""
    text = read_optional(directory, name)
    if text is None:
        raise OSFailure("read", os.path.join(directory, name), errno.ENOENT)
    return text


def read_int(directory: str, name: str) -> int | None:
    """A single-number file; "max" -> -1; None when the file does not exist."""
    text = read_optional(directory, name)
    if text is None:
        return None
    text = text.strip()
    return -1 if text == "max" else int(text)


def parse_keyed(text: str | None) -> dict[str, int]:
    """ "key value" lines (cpu.stat, memory.events, memory.oom_control) -> dict."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("-").isdigit():
            out[fields[0]] = int(fields[1])
    return out


def read_pids(directory: str) -> list[int]:
    """The pids in directory/cgroup.procs; [] when the cgroup is gone."""
    text = read_optional(directory, "cgroup.procs")
    return [int(pid) for pid in text.split()] if text else []


def add_pid(directory: str, pid: int) -> None:
    """Move pid (0 = the writer) into the cgroup at directory."""
    for attempt in range(ADD_PID_RETRIES):
        try:
            write_file(directory, "cgroup.procs", str(pid))
            return
        except OSFailure as e:
            if e.errno != errno.EINVAL or attempt == ADD_PID_RETRIES - 1:
                raise
            time.sleep(ADD_PID_DELAY_S)


def signal_pids(directory: str, signum: int) -> int:
    """Send signum to every pid in the cgroup; returns how many were listed."""
    pids = read_pids(directory)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # exited since cgroup.procs was read
            os.kill(pid, signum)
    return len(pids)


def kill_until_empty(directory: str) -> None:
    """SIGKILL the cgroup's processes until none is left (forks racing the kill are caught too)."""
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while signal_pids(directory, signal.SIGKILL):
        if time.monotonic() > deadline:
            raise OSFailure("kill", os.path.join(directory, "cgroup.procs"), errno.EBUSY)
        time.sleep(POLL_S)


def rmdir(directory: str) -> None:
    """Remove one cgroup directory, retrying EBUSY like runc; already gone is fine."""
    for attempt in range(RMDIR_RETRIES):
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or attempt == RMDIR_RETRIES - 1:
                raise OSFailure("rmdir", directory, e.errno or errno.EIO) from e
            time.sleep(RMDIR_DELAY_S)


def remove_empty_parents(path: str, stop_at: str) -> None:
    """rmdir path's parents, deepest first, up to (not including) stop_at; stop at one in use.

    stop_at is the hierarchy's mountpoint (paths()[c] minus the cgroupsPath) or a parent to keep.
    """
    stop = os.path.normpath(stop_at)
    parent = os.path.dirname(os.path.normpath(path))
    while parent.startswith(stop + os.sep):
        try:
            os.rmdir(parent)
        except FileNotFoundError:
            pass
        except OSError as e:
            # cgroupfs says EBUSY for a cgroup with children or tasks; a plain directory ENOTEMPTY.
            if e.errno in (errno.EBUSY, errno.ENOTEMPTY, errno.EEXIST):
                return
            raise OSFailure("rmdir", parent, e.errno or errno.EIO) from e
        parent = os.path.dirname(parent)


# ---------------------------------------------------------------- mountinfo


@dataclass(frozen=True)
class MountEntry:
    """One /proc/self/mountinfo line, the fields we use."""

    mountpoint: str
    fstype: str
    super_options: tuple[str, ...]


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \040 \011 \012 \134.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


# Bounded: the text changes whenever the process mounts something, and a sweep runs long.
@functools.lru_cache(maxsize=8)
def parse_mountinfo(text: str) -> tuple[MountEntry, ...]:
    """Parse mountinfo text (cached: every container launch asks for the same text)."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)  # optional fields (shared:N ...) end at a lone "-"
        options = tuple(fields[sep + 3].split(",")) if len(fields) > sep + 3 else ()
        entries.append(MountEntry(_unescape(fields[4]), fields[sep + 1], options))
    return tuple(entries)
