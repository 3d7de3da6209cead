"""Process hardening for real: a forked child applies it and reports what the kernel says."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.runtime import security
from harness.runtime.spec import Capabilities, Process, Rlimit, Seccomp, SeccompRule, User
from harness.runtime.syscalls import linux

NOBODY = 65534
TWO_CAPS = ("CAP_KILL", "CAP_NET_BIND_SERVICE")
TWO_CAPS_HEX = f"{(1 << 5) | (1 << 10):016x}"
STATUS_FIELDS = frozenset(
    [
        "Uid",
        "Gid",
        "Groups",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
    ]
)
ARCHES = ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")


def _in_child(body: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    """Run body(write_fd) in a forked child and return the dict it reports."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(r)
            payload = json.dumps(body(w))
        except BaseException as exc:
            payload = json.dumps({"error": repr(exc)})
        try:
            os.write(w, payload.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    report: dict[str, Any] = json.loads(raw)
    assert "error" not in report, report["error"]
    return report


def _status() -> dict[str, str]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in STATUS_FIELDS:
            fields[key] = value.strip()
    return fields


def _try(call: Callable[[], object]) -> int:
    """0 when the call succeeds, else its errno."""
    try:
        call()
    except OSError as exc:
        return exc.errno or -1
    return 0


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp that nobody (uid 65534) may write to."""
    path = Path(tempfile.mkdtemp(prefix="isobench-security-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _process(no_new_privileges: bool) -> Process:
    return Process(
        args=("/bin/true",),
        user=User(uid=NOBODY, gid=NOBODY),
        capabilities=Capabilities(bounding=TWO_CAPS, effective=TWO_CAPS, permitted=TWO_CAPS),
        no_new_privileges=no_new_privileges,
        rlimits=(Rlimit("RLIMIT_NOFILE", 256, 512),),
    )


@pytest.mark.requires("root", "seccomp")
def test_finalize_with_no_new_privileges(shared_dir: Path) -> None:
    profile = Seccomp(
        default_action="SCMP_ACT_ALLOW",
        architectures=ARCHES,
        syscalls=(SeccompRule(("mkdir", "mkdirat"), "SCMP_ACT_ERRNO", errno_ret=errno.EPERM),),
    )

    def body(w: int) -> dict[str, Any]:
        security.finalize_process(_process(True), profile, linux(), keep_fds=(w,))
        return {
            "status": _status(),
            "mkdir": _try(lambda: os.mkdir(shared_dir / "denied")),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        }

    report = _in_child(body)
    status = report["status"]
    assert status["CapEff"] == TWO_CAPS_HEX
    assert status["CapPrm"] == TWO_CAPS_HEX
    assert status["CapBnd"] == TWO_CAPS_HEX
    assert status["CapInh"] == "0" * 16
    assert status["CapAmb"] == "0" * 16
    assert status["Uid"].split() == [str(NOBODY)] * 4
    assert status["Gid"].split() == [str(NOBODY)] * 4
    assert status["Groups"] == ""
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    assert report["mkdir"] == errno.EPERM
    assert not (shared_dir / "denied").exists()
    assert report["nofile"] == [256, 512]


@pytest.mark.requires("root", "seccomp")
def test_finalize_without_no_new_privileges_loads_seccomp_while_privileged(
    shared_dir: Path,
) -> None:
    # Loading after the uid change would fail: no CAP_SYS_ADMIN and no no_new_privs.
    profile = Seccomp(
        default_action="SCMP_ACT_ALLOW",
        architectures=ARCHES,
        syscalls=(SeccompRule(("rmdir",), "SCMP_ACT_ERRNO", errno_ret=errno.EPERM),),
    )

    def body(w: int) -> dict[str, Any]:
        security.finalize_process(_process(False), profile, linux(), keep_fds=(w,))
        target = shared_dir / "made"
        return {
            "status": _status(),
            "mkdir": _try(lambda: os.mkdir(target)),
            "rmdir": _try(lambda: os.rmdir(target)),
        }

    report = _in_child(body)
    status = report["status"]
    assert status["NoNewPrivs"] == "0"
    assert status["Seccomp"] == "2"
    assert status["CapEff"] == TWO_CAPS_HEX
    assert status["Uid"].split() == [str(NOBODY)] * 4
    assert report["mkdir"] == 0  # the directory is writable by nobody...
    assert report["rmdir"] == errno.EPERM  # ...so this EPERM is the filter's
    assert (shared_dir / "made").is_dir()


@pytest.mark.requires("root")
def test_default_capabilities_when_spec_gives_none() -> None:
    def body(w: int) -> dict[str, Any]:
        process = Process(args=("/bin/true",), user=User(uid=0, gid=0))
        security.finalize_process(process, None, linux(), keep_fds=(w,))
        return {"status": _status()}

    status = _in_child(body)["status"]
    docker = security.cap_mask(security.resolve_capabilities(None).bounding or ())
    assert int(status["CapEff"], 16) == docker
    assert int(status["CapBnd"], 16) == docker
    assert int(status["CapInh"], 16) == 0
    assert status["NoNewPrivs"] == "0"
    assert status["Seccomp"] == "0"


def test_close_fds_above_closes_inherited_fds(tmp_path: Path) -> None:
    inherited = os.open(tmp_path / "inherited", os.O_CREAT | os.O_WRONLY)
    high = os.dup2(inherited, 200)
    try:

        def body(w: int) -> dict[str, Any]:
            security.close_fds_above((w,), linux())
            return {
                "inherited": _try(lambda: os.fstat(inherited)),
                "high": _try(lambda: os.fstat(high)),
                "kept": _try(lambda: os.fstat(w)),
                "open": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
            }

        report = _in_child(body)
    finally:
        os.close(inherited)
        os.close(high)
    assert report["inherited"] == errno.EBADF
    assert report["high"] == errno.EBADF
    assert report["kept"] == 0
    # 0-2, the pipe, and the fd listdir itself had open while listing.
    assert len([fd for fd in report["open"] if fd > 2]) == 2
