"""More of isobench-runtime against the real kernel: runc's own bundles, consoles, cleanup, logs.

Same rules as test_runtime.py: every container id comes from `new_id` (teardown
force-deletes it whatever the test did); containers kept in a private state
root, or with an id outside the isobench- prefix, are also removed by the test
itself in a finally block.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.runtime.bundle import busybox_rootfs
from harness.runtime.lifecycle import CGROUP_PARENT
from harness.runtime.state import proc_start_time
from tests.integration import conftest
from tests.integration.conftest import Config, cgroup_dirs, edit_config, runtime_cli
from tests.integration.test_runtime import (
    linux,
    ok,
    out_mount,
    process,
    status_fields,
    wait_for,
)

pytestmark = pytest.mark.requires("root", "cgroups", "busybox")

Cli = Callable[..., subprocess.CompletedProcess[str]]
MakeBundle = Callable[..., Path]
NewId = Callable[[], str]

RUN_TIMEOUT_S = 60.0


def run_captured(
    argv: list[str], timeout: float = RUN_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """conftest's helper with this file's default timeout."""
    return conftest.run_captured(argv, timeout)


def isobench_cli() -> str:
    """The installed `isobench` console script next to this interpreter."""
    candidate = Path(sys.executable).parent / "isobench"
    found = str(candidate) if candidate.exists() else shutil.which("isobench")
    if found is None:
        raise RuntimeError("isobench console script not found; run `make setup`")
    return found


def is_alive(pid: int) -> bool:
    """Whether pid is a live process (a zombie nobody reaped yet counts as gone)."""
    return proc_start_time(pid) is not None


def remove_container(root: str, container_id: str) -> None:
    """Teardown for ids the `new_id` fixture does not cover (other root, other prefix)."""
    conftest.force_remove(root, container_id)


def live_cgroups_except(container_ids: list[str]) -> list[str]:
    """Container cgroup dirs (any hierarchy) with processes in them, other than these ids'."""
    parent = CGROUP_PARENT.strip("/")
    found = glob.glob(f"/sys/fs/cgroup/*/{parent}/*/cgroup.procs")
    found += glob.glob(f"/sys/fs/cgroup/{parent}/*/cgroup.procs")
    live = []
    for procs in found:
        directory = os.path.dirname(procs)
        if os.path.basename(directory) in container_ids:
            continue
        with contextlib.suppress(FileNotFoundError):  # removed since the glob
            if Path(procs).read_text().strip():
                live.append(directory)
    return sorted(live)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a unix socket path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="isobench-test-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def terminal_on(config: Config) -> None:
    """An edit giving the container a pty (process.terminal)."""
    process(config)["terminal"] = True


# ------------------------------------------------------------- runc's bundles

# Printed by the same bundle under runc and under isobench-runtime; ends with
# `exit 5`, which both must pass on as their own exit status. runc spec makes no
# cgroup namespace, so "cgroup-pids" shows whether the container sees only its own
# cgroup (runc bind-mounts it) or the host's whole hierarchy.
RUNC_VIEW_SCRIPT = r"""
echo "hostname=$(hostname)"
echo "ls-root=$(ls -a / | sort | tr '\n' ' ')"
echo "ls-dev=$(ls -a /dev | sort | tr '\n' ' ')"
echo "ls-pts=$(ls /dev/pts | tr '\n' ' ')"
grep -E '^(CapEff|CapBnd|CapPrm|NoNewPrivs):' /proc/self/status
echo "tty=$(tty)"
id
echo "nofile=$(ulimit -n)"
awk '{print "mount", $5, $(NF-2)}' /proc/self/mountinfo | sort
echo "net=$(ls /sys/class/net | tr '\n' ' ')"
echo "cgroup-pids=$(ls /sys/fs/cgroup/pids | tr '\n' ' ')"
touch /proc/sys/x 2>/dev/null && echo proc-sys-touch=ok || echo proc-sys-touch=refused
exit 5
"""
RUNC_VIEW_EXIT = 5


def runc_spec_bundle(path: Path, args: list[str]) -> Path:
    """A bundle whose config.json is what the real `runc spec` wrote, with only process.args changed."""
    path.mkdir(parents=True)
    subprocess.run(["runc", "spec"], cwd=path, check=True, capture_output=True, timeout=30)
    busybox_rootfs(path / "rootfs")

    def set_args(config: Config) -> None:
        process(config)["args"] = args

    return edit_config(path, set_args)


@pytest.mark.requires("runc")
def test_runc_spec_bundle_same_view_as_runc(cli: Cli, new_id: NewId, tmp_path: Path) -> None:
    b = runc_spec_bundle(tmp_path / "bundle", ["sh", "-c", RUNC_VIEW_SCRIPT])
    assert json.loads((b / "config.json").read_text())["process"]["terminal"] is True
    runc_root = tmp_path / "runc-state"
    runc_id = new_id() + "-runc"
    # A foreground `runc run` with a terminal insists on a host console to put in raw
    # mode: it tries stderr, stdout, stdin, then /dev/tty, and fails without one. So
    # its stderr is a pty slave (its own messages are read back from the master).
    master, slave = pty.openpty()
    try:
        theirs = subprocess.run(
            ["runc", "--root", str(runc_root), "run", "-b", str(b), runc_id],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        os.close(slave)
        slave = -1
        runc_err = b""
        while select.select([master], [], [], 0)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            runc_err += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
        subprocess.run(
            ["runc", "--root", str(runc_root), "delete", "-f", runc_id],
            capture_output=True,
            check=False,
        )
    ours = cli("run", "-b", str(b), new_id())

    assert theirs.returncode == RUNC_VIEW_EXIT, runc_err.decode(errors="replace")
    assert ours.returncode == RUNC_VIEW_EXIT, ours.stderr
    runc_lines = theirs.stdout.decode(errors="replace").replace("\r\n", "\n").splitlines()
    our_lines = ours.stdout.replace("\r\n", "\n").splitlines()
    assert "tty=/dev/pts/0" in runc_lines, runc_lines  # the probe went through a pty
    # Nothing excluded: with runc spec's own mounts the /sys/fs/cgroup tmpfs line
    # carries no options here (only mount point and fstype are printed).
    diff = list(
        difflib.unified_diff(runc_lines, our_lines, "runc", "isobench-runtime", lineterm="")
    )
    message = "a runc spec bundle looks different under isobench-runtime:\n" + "\n".join(diff)
    assert not diff, message


# --------------------------------------------------------------- console socket


def test_console_socket_receives_the_pty_master(
    cli: Cli, bundle: MakeBundle, new_id: NewId, short_dir: Path
) -> None:
    b = bundle(["sh", "-c", "tty; echo hi"], edit=terminal_on)
    sock_path = str(short_dir / "console.sock")
    received: list[int] = []
    names: list[bytes] = []

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)
    listener.settimeout(RUN_TIMEOUT_S)

    def accept() -> None:
        conn, _ = listener.accept()
        with conn:
            msg, fds, _, _ = socket.recv_fds(conn, 1024, 1)
            names.append(msg)
            received.extend(fds)

    receiver = threading.Thread(target=accept, daemon=True)
    receiver.start()
    container_id = new_id()
    try:
        ok(cli("create", "--console-socket", sock_path, "-b", str(b), container_id))
        receiver.join(timeout=10)
        assert len(received) == 1, f"no pty master arrived on {sock_path}"
        master = received[0]
        ok(cli("start", container_id))
        output = b""
        deadline = time.monotonic() + 10
        while b"hi" not in output and time.monotonic() < deadline:
            if not select.select([master], [], [], 0.1)[0]:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every slave fd is closed
                break
            if not chunk:
                break
            output += chunk
        assert wait_for(lambda: json.loads(ok(cli("state", container_id)))["status"] == "stopped")
        ok(cli("delete", container_id))
    finally:
        listener.close()
        for fd in received:
            os.close(fd)
    assert names == [b"/dev/ptmx"]  # runc's name for the passed fd
    assert output.decode().replace("\r\n", "\n").splitlines() == ["/dev/pts/0", "hi"]
    assert cgroup_dirs(container_id) == []


# ---------------------------------------------------------------------- cleanup


def test_isobench_cleanup_removes_what_a_crashed_run_left(
    bundle: MakeBundle, new_id: NewId, tmp_path: Path
) -> None:
    root = str(tmp_path / "crashed-root")
    rt_cli = [runtime_cli(), "--root", root]
    waiting, stopped, half, stray = new_id(), new_id(), new_id(), new_id()
    # Not made by the harness (no isobench- prefix): kept while it runs, unless --all.
    foreign = "other-" + new_id().rsplit("-", 1)[1]
    pid_file = tmp_path / "waiting.pid"
    stray_dirs = [
        f"/sys/fs/cgroup/{controller}{CGROUP_PARENT}/{stray}" for controller in ("memory", "pids")
    ]
    try:
        # (a) created, never started: its init waits on the exec FIFO.
        sleeper = str(bundle(["sleep", "100"]))
        ok(run_captured([*rt_cli, "create", "--pid-file", str(pid_file), "-b", sleeper, waiting]))
        waiting_pid = int(pid_file.read_text())
        assert is_alive(waiting_pid)
        # (b) ran to completion, never deleted.
        ok(run_captured([*rt_cli, "create", "-b", str(bundle(["true"])), stopped]))
        ok(run_captured([*rt_cli, "start", stopped]))

        def status(container_id: str) -> str:
            return str(json.loads(ok(run_captured([*rt_cli, "state", container_id])))["status"])

        assert wait_for(lambda: status(stopped) == "stopped")
        # (c) a create that died before writing state.json.
        (Path(root) / half).mkdir()
        # (d) a cgroup whose container is gone.
        for directory in stray_dirs:
            os.makedirs(directory)
        # A running container the harness did not make.
        ok(run_captured([*rt_cli, "create", "-b", sleeper, foreign]))
        ok(run_captured([*rt_cli, "start", foreign]))
        foreign_pid = int(json.loads(ok(run_captured([*rt_cli, "state", foreign])))["pid"])
        ours = [waiting, stopped, half]

        dry = ok(run_captured([isobench_cli(), "cleanup", "--root", root, "--dry-run"]))
        for name in [*ours, stray]:
            assert name in dry, f"dry run does not list {name}:\n{dry}"
        assert sorted(os.listdir(root)) == sorted([*ours, foreign])
        assert is_alive(waiting_pid)
        assert cgroup_dirs(waiting) and cgroup_dirs(stopped)
        assert all(os.path.isdir(d) for d in stray_dirs)

        # Cleanup kills every process in a cgroup under CGROUP_PARENT that this root does
        # not reference, whoever made it: refuse to run it over a concurrent session's
        # live containers (leftovers without processes are fair game).
        others = live_cgroups_except([waiting, stopped, stray, foreign])
        assert not others, f"live containers of another run; cleanup would kill them: {others}"
        ok(run_captured([isobench_cli(), "cleanup", "--root", root]))
        assert sorted(os.listdir(root)) == [foreign]
        assert wait_for(lambda: not is_alive(waiting_pid), 5.0), f"init {waiting_pid} survived"
        for container_id in (waiting, stopped, stray):
            assert cgroup_dirs(container_id) == [], container_id
        # The foreign container still runs, in its cgroup.
        assert status(foreign) == "running"
        assert is_alive(foreign_pid)
        assert cgroup_dirs(foreign)

        ok(run_captured([isobench_cli(), "cleanup", "--root", root, "--all"]))
        assert not os.path.exists(root) or os.listdir(root) == []
        assert wait_for(lambda: not is_alive(foreign_pid), 5.0)
        assert cgroup_dirs(foreign) == []
    finally:
        for container_id in (waiting, stopped, foreign):
            remove_container(root, container_id)
        for directory in stray_dirs:
            with contextlib.suppress(OSError):
                os.rmdir(directory)


# ------------------------------------------------------------------------- logs


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_log_file_records_the_error(
    state_root: str, new_id: NewId, tmp_path: Path, log_format: str
) -> None:
    log = tmp_path / "runtime.log"
    log.write_text("earlier line\n")  # --log appends
    missing = new_id()
    argv = [runtime_cli(), "--root", state_root, "--log", str(log), "--log-format", log_format]
    proc = run_captured([*argv, "state", missing])
    assert proc.returncode == 2, proc.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == "earlier line" and len(lines) == 2, lines
    if log_format == "json":
        entry = json.loads(lines[1])
        assert entry["level"] == "error"
        assert missing in entry["msg"]
    else:
        assert "level=error msg=" in lines[1]
        assert missing in lines[1]


# ------------------------------------------------------------------ namespaces


def test_join_namespaces_by_path(cli: Cli, bundle: MakeBundle, new_id: NewId) -> None:
    hostname_a = f"ib-{new_id()[-8:]}"
    a = new_id()
    ok(cli("create", "-b", str(bundle(["sleep", "30"], hostname=hostname_a)), a))
    pid_a = int(json.loads(ok(cli("state", a)))["pid"])

    def join(config: Config) -> None:
        namespaces = linux(config)["namespaces"]
        assert isinstance(namespaces, list)
        joined = {
            "network": f"/proc/{pid_a}/ns/net",
            "uts": f"/proc/{pid_a}/ns/uts",
        }
        linux(config)["namespaces"] = [
            {"type": ns["type"], "path": joined[ns["type"]]} if ns["type"] in joined else ns
            for ns in namespaces
        ]
        # The spec's hostname would be written into A's UTS namespace: leave it out.
        config.pop("hostname", None)

    b = bundle(["sh", "-c", "readlink /proc/self/ns/net; hostname"], edit=join)
    try:
        out = ok(cli("run", "-b", str(b), new_id())).split()
        assert out == [os.readlink(f"/proc/{pid_a}/ns/net"), hostname_a]
        assert out[0] != os.readlink("/proc/self/ns/net")
    finally:
        ok(cli("delete", "-f", a))


def test_sysctl_in_the_containers_network_namespace(
    cli: Cli, bundle: MakeBundle, new_id: NewId
) -> None:
    key = Path("/proc/sys/net/ipv4/ip_forward")
    host_before = key.read_text()

    def forward(config: Config) -> None:
        linux(config)["sysctl"] = {"net.ipv4.ip_forward": "1"}

    probe = ["cat", str(key)]
    plain = ok(cli("run", "-b", str(bundle(probe)), new_id())).strip()
    set_ = ok(cli("run", "-b", str(bundle(probe, edit=forward)), new_id())).strip()
    assert plain == "0"  # a fresh network namespace: the 1 below is the spec's doing
    assert set_ == "1"
    assert key.read_text() == host_before


# --------------------------------------------------------------------- process


def test_oom_score_adj_and_user(cli: Cli, bundle: MakeBundle, new_id: NewId) -> None:
    def edit(config: Config) -> None:
        process(config)["oomScoreAdj"] = 500
        process(config)["user"] = {"uid": 65534, "gid": 65534, "additionalGids": [10, 20]}

    script = "cat /proc/self/oom_score_adj; id -u; id -g; grep '^Groups:' /proc/self/status"
    out = ok(cli("run", "-b", str(bundle(["sh", "-c", script], edit=edit)), new_id()))
    lines = out.splitlines()
    assert lines[:3] == ["500", "65534", "65534"], out
    assert status_fields(lines[3])["Groups"] == "10 20", out


# --------------------------------------------------------------- pause/resume


def test_pause_freezes_and_resume_thaws(
    cli: Cli, bundle: MakeBundle, new_id: NewId, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    ticks = out / "ticks"
    script = "while true; do echo x >> /out/ticks; sleep 0.05; done"
    container_id = new_id()

    def size() -> int:
        return ticks.stat().st_size if ticks.exists() else 0

    def status() -> str:
        return str(json.loads(ok(cli("state", container_id)))["status"])

    ok(cli("create", "-b", str(bundle(["sh", "-c", script], edit=out_mount(out))), container_id))
    try:
        ok(cli("start", container_id))
        assert wait_for(lambda: size() > 0), "the container never wrote"
        ok(cli("pause", container_id))
        assert status() == "paused"
        frozen_at = size()
        time.sleep(0.5)
        assert size() == frozen_at, "the file grew while the container was paused"
        ok(cli("resume", container_id))
        assert status() == "running"
        assert wait_for(lambda: size() > frozen_at, 5.0), "the file did not grow after resume"
    finally:
        ok(cli("delete", "-f", container_id))
    assert cgroup_dirs(container_id) == []


# -------------------------------------------------------------------------- spec


@pytest.mark.requires("runc")
def test_spec_writes_what_runc_spec_writes(tmp_path: Path) -> None:
    ours_dir, runc_dir = tmp_path / "ours", tmp_path / "runc"
    ours_dir.mkdir()
    runc_dir.mkdir()
    ok(run_captured([runtime_cli(), "spec", "-b", str(ours_dir)]))
    subprocess.run(["runc", "spec"], cwd=runc_dir, check=True, capture_output=True, timeout=30)
    ours = json.loads((ours_dir / "config.json").read_text())
    runc = json.loads((runc_dir / "config.json").read_text())

    # The one intended difference: the hostname names the runtime.
    assert (runc["hostname"], ours["hostname"]) == ("runc", "isobench")

    def mounts(config: Config) -> list[tuple[object, ...]]:
        entries = config["mounts"]
        assert isinstance(entries, list)
        return [(m["destination"], m.get("type"), m.get("options")) for m in entries]

    fields: dict[str, Callable[[Config], object]] = {
        "ociVersion": lambda c: c["ociVersion"],
        "process": lambda c: {
            k: process(c).get(k)
            for k in (
                "args",
                "env",
                "cwd",
                "capabilities",
                "rlimits",
                "noNewPrivileges",
                "terminal",
            )
        },
        "root": lambda c: c["root"],
        "mounts": mounts,
        "linux.namespaces": lambda c: linux(c)["namespaces"],
        "linux.maskedPaths": lambda c: linux(c)["maskedPaths"],
        "linux.readonlyPaths": lambda c: linux(c)["readonlyPaths"],
    }
    differences = [
        f"{name}: runc {get(runc)!r} != ours {get(ours)!r}"
        for name, get in fields.items()
        if get(runc) != get(ours)
    ]
    # And nothing else differs either: the whole documents but the hostname, as a diff
    # (it repeats the differences above and shows any in fields not named there).
    rest_runc = {k: v for k, v in runc.items() if k != "hostname"}
    rest_ours = {k: v for k, v in ours.items() if k != "hostname"}
    if rest_runc != rest_ours:
        differences.append(
            "\n".join(
                difflib.unified_diff(
                    json.dumps(rest_runc, indent=1, sort_keys=True).splitlines(),
                    json.dumps(rest_ours, indent=1, sort_keys=True).splitlines(),
                    "runc spec",
                    "isobench-runtime spec",
                    lineterm="",
                )
            )
        )
    assert not differences, "\n".join(differences)


# ------------------------------------------------------------------------ signals


def test_foreground_run_forwards_signals(
    state_root: str, bundle: MakeBundle, new_id: NewId, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    script = 'trap "exit 9" USR1; touch /out/ready; while true; do sleep 0.05; done'
    b = bundle(["sh", "-c", script], edit=out_mount(out))
    container_id = new_id()
    exe = [runtime_cli(), "--root", state_root]
    with tempfile.TemporaryFile() as err:
        run = subprocess.Popen(
            [*exe, "run", "-b", str(b), container_id],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:

            def running() -> bool:
                proc = run_captured([*exe, "state", container_id])
                return proc.returncode == 0 and json.loads(proc.stdout)["status"] == "running"

            assert wait_for(running), "the container never ran"
            # The trap must be set before the signal, or USR1 would kill the shell (138).
            assert wait_for((out / "ready").exists), "the shell never set its trap"
            run.send_signal(signal.SIGUSR1)
            code = run.wait(timeout=10)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        err.seek(0)
        assert code == 9, err.read().decode(errors="replace")
    assert cgroup_dirs(container_id) == []
