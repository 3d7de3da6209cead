"""The in-house OCI runtime against the real kernel: isolation, limits, lifecycle, hygiene.

Each test launches real busybox containers (CLI where the output matters, since
that is what users run; the in-process API where the test needs the stopped
container's cgroup or the launching process's own resources). Every container
id comes from the `new_id` fixture, so teardown force-deletes it whatever the
test did, and the session ends with a check that nothing named
isobench-test-<session>-* is left in the cgroup tree or the state root.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.runtime.bundle import busybox_bundle
from harness.runtime.cgroups import new_manager
from harness.runtime.lifecycle import CGROUP_PARENT, Runtime
from harness.runtime.spec_load import load_bundle
from tests.integration.conftest import (
    Config,
    cgroup_dirs,
    edit_config,
    mountinfo_lines,
    runtime_cli,
)

pytestmark = pytest.mark.requires("root", "cgroups", "busybox")

MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
# CAP_AUDIT_WRITE (29), CAP_KILL (5), CAP_NET_BIND_SERVICE (10): `runc spec`'s set.
RUNC_SPEC_CAPS = f"{(1 << 29) | (1 << 5) | (1 << 10):016x}"
CAP_SYS_ADMIN = 21
# What `runc spec` (1.1) masks; only those present on the host can be checked.
RUNC_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)
USERNS_HOST_ID = 100000
USERNS_SIZE = 65536

Cli = Callable[..., subprocess.CompletedProcess[str]]
MakeBundle = Callable[..., Path]
NewId = Callable[[], str]


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """stdout of a run that must exit 0 (the failure message shows both streams)."""
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc.stdout


def status_fields(text: str) -> dict[str, str]:
    """Parse /proc/<pid>/status-style "Key: value" lines into a dict."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def out_mount(directory: Path) -> Callable[[Config], None]:
    """An edit adding a writable bind mount of `directory` at /out (the root stays read-only)."""

    def edit(config: Config) -> None:
        mounts = config["mounts"]
        assert isinstance(mounts, list)
        mounts.append(
            {
                "destination": "/out",
                "type": "bind",
                "source": str(directory),
                "options": ["rbind", "rw"],
            }
        )

    return edit


def linux(config: Config) -> dict[str, object]:
    """config["linux"], typed."""
    section = config["linux"]
    assert isinstance(section, dict)
    return section


def process(config: Config) -> dict[str, object]:
    """config["process"], typed."""
    section = config["process"]
    assert isinstance(section, dict)
    return section


def resources(config: Config) -> dict[str, object]:
    """config["linux"]["resources"], created if missing."""
    section = linux(config).setdefault("resources", {})
    assert isinstance(section, dict)
    return section


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll until predicate() is true or the timeout passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def reap_any() -> tuple[int, int] | None:
    """A child that had exited (now reaped), or None when there is none to reap."""
    try:
        pid, status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return None  # no children at all
    return (pid, status) if pid else None


def sha256(path: str) -> str:
    """Hex digest of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------ isolation


def test_pid_namespace_shows_only_the_containers_processes(
    cli: Cli, bundle: MakeBundle, new_id: NewId
) -> None:
    script = "echo '== ps'; ps -o pid,ppid,args; echo '== proc'; ls -d /proc/[0-9]*; echo '== end'"
    out = ok(cli("run", "-b", str(bundle(["sh", "-c", script])), new_id()))
    ps_part = out.split("== ps\n")[1].split("== proc\n")[0].splitlines()[1:]
    proc_part = out.split("== proc\n")[1].split("== end")[0].split()

    rows = {
        int(pid): (int(ppid), args) for pid, ppid, args in (line.split(None, 2) for line in ps_part)
    }
    proc_pids = {int(p.rsplit("/", 1)[1]) for p in proc_part}
    assert len(rows) <= 4, rows
    assert len(proc_pids) <= 4, proc_pids
    # PID 1 is the runtime's init; the user process (the shell) is its direct child.
    assert rows[1][0] == 0
    assert rows[1][1].strip() == "isobench-init"  # not the launching program's argv (host paths)
    shells = [pid for pid, (_, args) in rows.items() if args.startswith("sh -c")]
    assert shells and all(rows[pid][0] == 1 for pid in shells), rows
    # Nothing of the host: not this test process, by pid or by command line.
    own_cmdline = Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    assert own_cmdline not in out
    assert os.getpid() not in rows and os.getpid() not in proc_pids


def test_hostname_is_the_specs(cli: Cli, bundle: MakeBundle, new_id: NewId) -> None:
    name = f"ib-{new_id()[-8:]}"
    b = bundle(["sh", "-c", "hostname; cat /proc/sys/kernel/hostname"], hostname=name)
    assert ok(cli("run", "-b", str(b), new_id())).split() == [name, name]
    assert os.uname().nodename != name


def test_network_namespace_has_only_loopback(cli: Cli, bundle: MakeBundle, new_id: NewId) -> None:
    script = "ls /sys/class/net; echo '=='; tail -n +3 /proc/net/dev | cut -d: -f1"
    out = ok(cli("run", "-b", str(bundle(["sh", "-c", script])), new_id()))
    sysfs, procfs = out.split("==\n")
    assert sysfs.split() == ["lo"]
    assert procfs.split() == ["lo"]


def test_root_is_the_bundles_rootfs(cli: Cli, bundle: MakeBundle, new_id: NewId) -> None:
    b = bundle(
        ["sh", "-c", "cat /marker; ls /; test -e /work && echo host-visible || echo no-work"],
        own_rootfs=True,
    )
    token = new_id()
    (b / "rootfs" / "marker").write_text(token + "\n")
    lines = ok(cli("run", "-b", str(b), new_id())).split()
    assert lines[0] == token
    assert lines[-1] == "no-work"
    assert sorted(lines[1:-1]) == sorted(os.listdir(b / "rootfs"))
    assert Path("/work").exists()  # the probe means something only if the host has it


def test_masked_and_read_only_paths(cli: Cli, bundle: MakeBundle, new_id: NewId) -> None:
    on_host = [p for p in RUNC_MASKED_PATHS if os.path.lexists(p)]
    assert on_host, "no masked path exists on this host: nothing to check"
    # One "path|kind,major,minor|bytes readable|entries listed" line per masked path.
    probes = "".join(
        f'echo "{p}|$(stat -c %F,%t,%T {p} 2>/dev/null || echo absent)|'
        f'$(cat {p} 2>/dev/null | wc -c)|$(ls -A {p} 2>/dev/null | wc -l)"; '
        for p in RUNC_MASKED_PATHS
    )
    # Writes that must all fail with EROFS; each target exists inside.
    targets = ["/proc/sys/kernel/ns_last_pid"]
    targets += [p for p in ("/proc/sysrq-trigger",) if os.path.exists(p)]
    cgroup_file = "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    if os.path.exists(cgroup_file):
        targets.append(cgroup_file)
    writes = "".join(f"echo 1 > {t} && echo wrote {t}; " for t in targets)
    writes += "touch /sys/probe; mkdir /sys/fs/cgroup/probe; echo writes-done"
    proc = cli("run", "-b", str(bundle(["sh", "-c", probes + writes])), new_id())
    out = ok(proc)
    seen = {line.split("|")[0]: line.split("|")[1:] for line in out.splitlines() if "|" in line}
    for path in RUNC_MASKED_PATHS:
        kind, size, entries = seen[path]
        if path in on_host and not os.path.isdir(path):
            # A masked file is /dev/null: character device 1,3, reads as empty.
            assert kind == "character special file,1,3", (path, kind)
        elif path in on_host:
            assert kind.startswith("directory,"), (path, kind)
            assert entries.strip() == "0", f"{path}: {entries} entries visible"
        else:
            assert kind == "absent", (path, kind)
        assert size.strip() == "0", f"{path}: {size} bytes readable"
    assert "writes-done" in out
    assert "wrote" not in out
    refused = [
        line for line in proc.stderr.splitlines() if line.endswith(": Read-only file system")
    ]
    for target in [*targets, "/sys/probe", "/sys/fs/cgroup/probe"]:
        assert any(target in line for line in refused), (target, proc.stderr)


@pytest.mark.parametrize(
    ("extra_cap", "expected"),
    [
        (None, RUNC_SPEC_CAPS),
        ("CAP_SYS_ADMIN", f"{int(RUNC_SPEC_CAPS, 16) | (1 << CAP_SYS_ADMIN):016x}"),
    ],
    ids=["runc-spec-caps", "plus-sys-admin"],
)
def test_capabilities_are_the_specs(
    cli: Cli, bundle: MakeBundle, new_id: NewId, extra_cap: str | None, expected: str
) -> None:
    def edit(config: Config) -> None:
        caps = process(config)["capabilities"]
        assert isinstance(caps, dict)
        if extra_cap is not None:
            for kind in ("bounding", "effective", "permitted"):
                caps[kind].append(extra_cap)

    out = ok(cli("run", "-b", str(bundle(["cat", "/proc/self/status"], edit=edit)), new_id()))
    status = status_fields(out)
    assert status["CapEff"] == expected
    assert status["CapPrm"] == expected
    assert status["CapBnd"] == expected
    assert status["CapInh"] == "0" * 16
    assert status["CapAmb"] == "0" * 16
    assert status["NoNewPrivs"] == "1"


@pytest.mark.requires("seccomp")
@pytest.mark.parametrize("with_profile", [True, False], ids=["profile", "no-profile"])
def test_seccomp_profile(cli: Cli, bundle: MakeBundle, new_id: NewId, with_profile: bool) -> None:
    def edit(config: Config) -> None:
        # A writable tmpfs, so that a refused mkdir can only be the filter's doing.
        mounts = config["mounts"]
        assert isinstance(mounts, list)
        mounts.append(
            {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["rw"]}
        )
        if with_profile:
            linux(config)["seccomp"] = {
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
                ],
            }

    script = "grep '^Seccomp:' /proc/self/status; mkdir /scratch/d && echo made"
    proc = cli("run", "-b", str(bundle(["sh", "-c", script], edit=edit)), new_id())
    status = status_fields(proc.stdout)
    if with_profile:
        assert proc.returncode == 1, proc.stderr
        assert status["Seccomp"] == "2"
        assert "mkdir: can't create directory '/scratch/d': Operation not permitted" in proc.stderr
        assert "made" not in proc.stdout
    else:
        assert proc.returncode == 0, proc.stderr
        assert status["Seccomp"] == "0"
        assert "made" in proc.stdout


# ------------------------------------------------------------------- resources


def test_memory_limit_oom_kills_the_toucher(
    runtime: Runtime, bundle: MakeBundle, new_id: NewId
) -> None:
    limit = 64 * MIB
    # The shell itself holds 256 MiB of 'a's in a variable: anonymous memory it touches.
    script = 'x=$(head -c 268435456 /dev/zero | tr "\\0" a); echo survived ${#x}'

    def no_swap(config: Config) -> None:
        memory = resources(config)["memory"]
        assert isinstance(memory, dict)
        memory["swap"] = limit  # memory+swap == memory: nothing can escape to swap

    b = bundle(["sh", "-c", script], memory_limit=limit, edit=no_swap)
    container_id = new_id()
    record = runtime.create(str(b), container_id)
    runtime.start(container_id)
    code = runtime.wait(container_id)
    stats = new_manager(record.cgroups_path).stats()  # before delete, which removes the cgroup
    runtime.delete(container_id)
    assert code == 128 + signal.SIGKILL
    assert stats.memory_oom_kill is not None and stats.memory_oom_kill >= 1, stats
    assert stats.memory_peak_bytes is not None and stats.memory_peak_bytes <= limit + PAGE, stats
    assert stats.memory_limit_bytes == limit


def test_pids_limit_stops_a_fork_loop(
    cli: Cli, bundle: MakeBundle, new_id: NewId, state_root: str
) -> None:
    limit = 32
    script = "i=0; while [ $i -lt 64 ]; do sleep 2 & i=$((i+1)); done; echo forked-all"

    def edit(config: Config) -> None:
        resources(config)["pids"] = {"limit": limit}

    b = bundle(["sh", "-c", script], edit=edit)
    container_id = new_id()
    paths = new_manager(f"{CGROUP_PARENT}/{container_id}").paths()
    pids_dir = Path(paths.get("pids") or paths[""])
    # --keep leaves the stopped container (and its cgroup) for reading the counters.
    # (Pipes are fine for a foreground run: the container is gone when the CLI exits.)
    run = subprocess.Popen(
        [runtime_cli(), "--root", state_root, "run", "--keep", "-b", str(b), container_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    highest = 0
    try:
        while run.poll() is None:
            with contextlib.suppress(OSError, ValueError):  # between create and exit
                highest = max(highest, int((pids_dir / "pids.current").read_text()))
            time.sleep(0.005)
        out, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    pids_max = (pids_dir / "pids.max").read_text().strip()
    events = (pids_dir / "pids.events").read_text() if (pids_dir / "pids.events").exists() else ""
    peak_file = pids_dir / "pids.peak"
    peak = int(peak_file.read_text()) if peak_file.exists() else None
    ok(cli("delete", container_id))

    assert pids_max == str(limit)
    assert "can't fork" in err, err
    assert "forked-all" not in out
    assert run.returncode != 0
    # Sampled while it ran (a short-lived container may slip between samples), and
    # the kernel's own high-water mark where it keeps one (pids.peak).
    assert highest <= limit
    if peak is not None:
        assert 0 < peak <= limit, peak
    if events:
        assert int(events.split()[1]) > 0, events  # "max N": forks refused at the limit


def test_limits_land_in_the_cgroup_files(
    runtime: Runtime, bundle: MakeBundle, new_id: NewId
) -> None:
    def edit(config: Config) -> None:
        res = resources(config)
        res["cpu"] = {"quota": 50000, "period": 100000, "shares": 512, "cpus": "0", "mems": "0"}
        res["memory"] = {"limit": 64 * MIB}
        res["pids"] = {"limit": 32}

    container_id = new_id()
    record = runtime.create(str(bundle(["true"], edit=edit)), container_id)
    try:
        paths = new_manager(record.cgroups_path).paths()
        if "cpu" not in paths:
            pytest.fail(f"not a cgroup v1 host (paths {paths}): this test reads v1 files")

        def read(controller: str, name: str) -> str:
            return Path(paths[controller], name).read_text().strip()

        assert read("cpu", "cpu.cfs_quota_us") == "50000"
        assert read("cpu", "cpu.cfs_period_us") == "100000"
        assert read("cpu", "cpu.shares") == "512"
        assert read("cpuset", "cpuset.cpus") == "0"
        assert read("cpuset", "cpuset.mems") == "0"
        assert read("memory", "memory.limit_in_bytes") == str(64 * MIB)
        assert read("pids", "pids.max") == "32"
        for controller, directory in paths.items():
            procs = Path(directory, "cgroup.procs").read_text().split()
            assert str(record.pid) in procs, f"init {record.pid} not in {controller}: {procs}"
        assert runtime.state(container_id)["status"] == "created"
    finally:
        runtime.delete(container_id, force=True)
    assert cgroup_dirs(container_id) == []


# ------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize(("signame", "expected"), [("SIGTERM", 42), ("SIGKILL", 137)])
def test_kill_delivers_the_signal(
    runtime: Runtime, bundle: MakeBundle, new_id: NewId, tmp_path: Path, signame: str, expected: int
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    script = 'trap "exit 42" TERM; touch /out/ready; while true; do sleep 0.1; done'
    b = bundle(["sh", "-c", script], edit=out_mount(out))
    container_id = new_id()
    runtime.create(str(b), container_id)
    runtime.start(container_id)
    # The trap must be in place before the signal, or TERM would kill the shell (143).
    assert wait_for((out / "ready").exists), "container never got ready"
    assert runtime.state(container_id)["status"] == "running"
    runtime.kill(container_id, int(signal.Signals[signame]))
    assert runtime.wait(container_id) == expected
    assert runtime.state(container_id)["status"] == "stopped"
    runtime.delete(container_id)


def test_state_goes_created_running_stopped(cli: Cli, bundle: MakeBundle, new_id: NewId) -> None:
    b = bundle(["sleep", "30"])
    container_id = new_id()

    def state() -> dict[str, object]:
        doc: dict[str, object] = json.loads(ok(cli("state", container_id)))
        assert doc["ociVersion"] and doc["id"] == container_id and doc["bundle"] == str(b), doc
        return doc

    ok(cli("create", "-b", str(b), container_id))
    created = state()
    assert created["status"] == "created"
    assert isinstance(created["pid"], int) and Path(f"/proc/{created['pid']}").exists()

    ok(cli("start", container_id))
    time.sleep(0.3)  # `start` has returned: the container must still be running a moment later
    running = state()
    assert running["status"] == "running", running
    assert running["pid"] == created["pid"]

    ok(cli("kill", container_id, "KILL"))
    assert wait_for(lambda: state()["status"] == "stopped")
    assert "pid" not in state()

    ok(cli("delete", container_id))
    gone = cli("state", container_id)
    assert gone.returncode == 2 and len(gone.stderr.strip().splitlines()) == 1


def test_delete_leaves_nothing(
    cli: Cli, bundle: MakeBundle, new_id: NewId, state_root: str
) -> None:
    mounts_before = mountinfo_lines()
    b = bundle(["sleep", "30"])

    ran = new_id()
    assert cli("run", "-b", str(bundle(["true"])), ran).returncode == 0

    created = new_id()
    ok(cli("create", "-b", str(b), created))
    assert cgroup_dirs(created), "no cgroup while the container exists"
    assert (Path(state_root) / created).is_dir()
    # The container's mounts live in its own mount namespace, never in ours.
    assert mountinfo_lines() == mounts_before
    ok(cli("delete", "-f", created))

    for container_id in (ran, created):
        assert cgroup_dirs(container_id) == []
        assert not (Path(state_root) / container_id).exists()
    assert mountinfo_lines() == mounts_before


# Lines that legitimately differ between runc 1.1.5 and isobench-runtime:
#   "mount /sys/fs/cgroup tmpfs <options>": runc leaves the tmpfs that holds the
#   per-hierarchy cgroup mounts read-write (the hierarchies themselves are ro);
#   isobench-runtime remounts it read-only too, as MEASUREMENT.md's checklist asks
#   ("/sys and /sys/fs/cgroup read-only"). Compared separately below.
# Not printed at all: the process list (our PID 1 is an init by design) and
# /proc/1/cmdline. /dev/console is not an issue: terminal is false, so neither
# runtime creates it.
RUNC_DIFF_EXCLUDED_PREFIX = "mount /sys/fs/cgroup tmpfs "
VIEW_SCRIPT = r"""
echo "hostname=$(hostname)"
echo "ls-root=$(ls -a / | sort | tr '\n' ' ')"
echo "ls-dev=$(ls -a /dev | sort | tr '\n' ' ')"
stat -c 'dev %n %F %a %u:%g %t,%T' /dev/* /dev/pts/* | sort
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status
awk '{print "mount", $5, $(NF-2), $6}' /proc/self/mountinfo | sort
echo "net=$(ls /sys/class/net | tr '\n' ' ')"
echo "lo-flags=$(cat /sys/class/net/lo/flags)"
id
ulimit -a
(echo 1 > /proc/sys/kernel/ns_last_pid) 2>/dev/null && echo proc-sys=rw || echo proc-sys=ro
touch /sys/probe 2>/dev/null && echo sys=rw || echo sys=ro
touch /probe 2>/dev/null && echo root=rw || echo root=ro
echo "kcore-bytes=$(cat /proc/kcore 2>/dev/null | wc -c)"
echo "umask=$(umask) cwd=$(pwd)"
env | sort
cat /proc/self/cgroup
cat /proc/self/uid_map
echo "oom_score_adj=$(cat /proc/self/oom_score_adj)"
echo "fds=$(ls /proc/self/fd | tr '\n' ' ')"
"""


@pytest.mark.requires("runc")
def test_same_view_as_runc(cli: Cli, bundle: MakeBundle, new_id: NewId, tmp_path: Path) -> None:
    b = bundle(["sh", "-c", VIEW_SCRIPT], own_rootfs=True)
    runc_root = tmp_path / "runc-state"
    runc_id = new_id() + "-runc"
    try:
        theirs = subprocess.run(
            ["runc", "--root", str(runc_root), "run", "-b", str(b), runc_id],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
    finally:
        subprocess.run(
            ["runc", "--root", str(runc_root), "delete", "-f", runc_id],
            capture_output=True,
            check=False,
        )
    ours = cli("run", "-b", str(b), new_id())
    runc_lines, our_lines = ok(theirs).splitlines(), ok(ours).splitlines()

    runc_cg = [line for line in runc_lines if line.startswith(RUNC_DIFF_EXCLUDED_PREFIX)]
    our_cg = [line for line in our_lines if line.startswith(RUNC_DIFF_EXCLUDED_PREFIX)]
    assert len(runc_cg) == len(our_cg) == 1
    assert our_cg[0].split()[-1].startswith("ro,"), our_cg  # stricter than runc, on purpose

    def comparable(lines: list[str]) -> list[str]:
        return [line for line in lines if not line.startswith(RUNC_DIFF_EXCLUDED_PREFIX)]

    diff = list(
        difflib.unified_diff(
            comparable(runc_lines), comparable(our_lines), "runc", "isobench-runtime", lineterm=""
        )
    )
    assert not diff, "the container sees something else under isobench-runtime:\n" + "\n".join(diff)


# ------------------------------------------------------------------ bad input


def _bad_namespace(config: Config) -> None:
    namespaces = linux(config)["namespaces"]
    assert isinstance(namespaces, list)
    namespaces.append({"type": "bogus"})


def _negative_memory(config: Config) -> None:
    resources(config)["memory"] = {"limit": -5}


def _missing_root(config: Config) -> None:
    root = config["root"]
    assert isinstance(root, dict)
    root["path"] = "/nonexistent/isobench-rootfs"


def _relative_cwd(config: Config) -> None:
    process(config)["cwd"] = "tmp"


def _missing_bind_source(config: Config) -> None:
    mounts = config["mounts"]
    assert isinstance(mounts, list)
    mounts.append(
        {
            "destination": "/out",
            "type": "bind",
            "source": "/nonexistent/isobench-src",
            "options": ["rbind", "rw"],
        }
    )


BAD_CONFIGS: dict[str, Callable[[Config], None] | None] = {
    "unknown-namespace": _bad_namespace,
    "negative-memory": _negative_memory,
    "missing-root": _missing_root,
    "relative-cwd": _relative_cwd,
    "malformed-json": None,  # written as text below
    "missing-bind-source": _missing_bind_source,
}


def assert_one_line_error(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("isobench-runtime: ")


@pytest.mark.parametrize("verb", ["create", "run"])
@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_refused_cleanly(
    cli: Cli, bundle: MakeBundle, new_id: NewId, state_root: str, case: str, verb: str
) -> None:
    b = bundle(["true"])
    edit = BAD_CONFIGS[case]
    if edit is None:
        (b / "config.json").write_text('{"ociVersion": "1.0.2",')
    else:
        edit_config(b, edit)
    mounts_before = mountinfo_lines()
    container_id = new_id()
    assert_one_line_error(cli(verb, "-b", str(b), container_id))
    assert not (Path(state_root) / container_id).exists()
    assert cgroup_dirs(container_id) == []
    assert mountinfo_lines() == mounts_before


def test_unknown_signal_leaves_the_container(
    cli: Cli, bundle: MakeBundle, new_id: NewId, state_root: str
) -> None:
    container_id = new_id()
    ok(cli("create", "-b", str(bundle(["sleep", "30"])), container_id))
    pid = json.loads(ok(cli("state", container_id)))["pid"]
    assert_one_line_error(cli("kill", container_id, "FOO"))
    after = json.loads(ok(cli("state", container_id)))
    assert after["status"] == "created" and after["pid"] == pid
    ok(cli("delete", "-f", container_id))
    assert not (Path(state_root) / container_id).exists()
    assert cgroup_dirs(container_id) == []


def test_duplicate_id_is_refused_and_the_first_survives(
    cli: Cli, bundle: MakeBundle, new_id: NewId, state_root: str
) -> None:
    b = bundle(["sleep", "30"])
    container_id = new_id()
    ok(cli("create", "-b", str(b), container_id))
    first = json.loads(ok(cli("state", container_id)))
    dirs = cgroup_dirs(container_id)
    mounts_before = mountinfo_lines()

    assert_one_line_error(cli("create", "-b", str(b), container_id))

    again = json.loads(ok(cli("state", container_id)))
    assert again["status"] == "created" and again["pid"] == first["pid"]
    assert cgroup_dirs(container_id) == dirs
    procs = new_manager(f"{CGROUP_PARENT}/{container_id}").pids()
    assert first["pid"] in procs
    assert mountinfo_lines() == mounts_before
    ok(cli("delete", "-f", container_id))
    assert not (Path(state_root) / container_id).exists()
    assert cgroup_dirs(container_id) == []


# ------------------------------------------------------------ user namespace


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every uid can traverse: pytest's tmp_path (0700, root's) is not one, and
    the container's root (host uid 100000) must be able to reach its rootfs."""
    path = Path(tempfile.mkdtemp(prefix="isobench-test-userns-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid, follow_symlinks=False)
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)


@pytest.mark.parametrize(
    "mounts",
    ["runc-default", "without-sysfs"],
    # without-sysfs: the same spec minus /sys and /sys/fs/cgroup, so that the rest of the
    # user-namespace path (id maps, waiting, exit status) is checked on its own.
)
def test_user_namespace_maps_root(cli: Cli, new_id: NewId, public_dir: Path, mounts: str) -> None:
    script = "id -u; cat /proc/self/uid_map; cat /proc/self/gid_map; sleep 0.2; echo done; exit 3"
    b = busybox_bundle(public_dir / "bundle", ["sh", "-c", script])

    def edit(config: Config) -> None:
        section = linux(config)
        namespaces = section["namespaces"]
        assert isinstance(namespaces, list)
        namespaces.append({"type": "user"})
        mapping = [{"containerID": 0, "hostID": USERNS_HOST_ID, "size": USERNS_SIZE}]
        section["uidMappings"] = mapping
        section["gidMappings"] = mapping
        if mounts == "without-sysfs":
            all_mounts = config["mounts"]
            assert isinstance(all_mounts, list)
            config["mounts"] = [
                m for m in all_mounts if not str(m["destination"]).startswith("/sys")
            ]

    edit_config(b, edit)
    _chown_tree(b / "rootfs", USERNS_HOST_ID, USERNS_HOST_ID)
    proc = cli("run", "-b", str(b), new_id())
    assert proc.returncode == 3, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    lines = [line.split() for line in proc.stdout.splitlines()]
    assert lines == [
        ["0"],
        ["0", str(USERNS_HOST_ID), str(USERNS_SIZE)],
        ["0", str(USERNS_HOST_ID), str(USERNS_SIZE)],
        ["done"],
    ], proc.stdout


# ---------------------------------------------------------------- leak check

LAUNCHES = 500


def test_500_launches_leak_nothing(
    runtime: Runtime, bundle: MakeBundle, new_id: NewId, state_root: str
) -> None:
    spec = load_bundle(str(bundle(["/bin/true"], memory_limit=64 * MIB)))
    # One launch first: the runtime opens its own PID-namespace fd once per process
    # and keeps it (spawn._own_pid_ns_fd); that is a cache, not a per-launch leak.
    assert runtime.run(spec, new_id()) == 0
    fds_before = len(os.listdir("/proc/self/fd"))
    mounts_before = mountinfo_lines()
    ids = [new_id() for _ in range(LAUNCHES)]
    started = time.monotonic()
    codes = [runtime.run(spec, container_id) for container_id in ids]
    elapsed = time.monotonic() - started
    print(f"{LAUNCHES} launches in {elapsed:.2f} s ({elapsed / LAUNCHES * 1000:.1f} ms each)")

    assert codes == [0] * LAUNCHES
    assert [i for i in ids if (Path(state_root) / i).exists()] == []
    assert [d for i in ids for d in cgroup_dirs(i)] == []
    assert runtime.children == {}
    assert reap_any() is None, "a zombie child was left"
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert mountinfo_lines() == mounts_before


# -------------------------------------------------------------- process details


@pytest.mark.parametrize(
    ("script", "expected"),
    [("kill -9 $$", 137), ("kill -TERM $$", 143), ("exit 7", 7), ("true", 0)],
    ids=["sigkill", "sigterm", "exit-7", "exit-0"],
)
def test_exit_status(
    cli: Cli, bundle: MakeBundle, new_id: NewId, script: str, expected: int
) -> None:
    proc = cli("run", "-b", str(bundle(["sh", "-c", script])), new_id())
    assert proc.returncode == expected, proc.stderr


def test_pid1_reaps_orphans(cli: Cli, bundle: MakeBundle, new_id: NewId) -> None:
    # (cmd &) in a subshell orphans cmd at once: it is re-parented to PID 1.
    script = "(sleep 0.2 &); (sleep 5 &); sleep 0.6; ps -o stat,pid,ppid,args"
    out = ok(cli("run", "-b", str(bundle(["sh", "-c", script])), new_id()))
    rows = [line.split(None, 3) for line in out.splitlines()[1:]]
    assert not [r for r in rows if r[0].startswith("Z")], out
    orphans = [r for r in rows if r[3] == "sleep 5"]
    assert len(orphans) == 1 and orphans[0][2] == "1", out


def test_hooks_get_the_state(
    runtime: Runtime, bundle: MakeBundle, new_id: NewId, tmp_path: Path
) -> None:
    hook = tmp_path / "hook.sh"
    hook.write_text('#!/bin/sh\nexec /bin/cat > "$1"\n')
    hook.chmod(0o755)
    prestart, poststop = tmp_path / "prestart.json", tmp_path / "poststop.json"

    def edit(config: Config) -> None:
        config["hooks"] = {
            "prestart": [{"path": str(hook), "args": [str(hook), str(prestart)]}],
            "poststop": [{"path": str(hook), "args": [str(hook), str(poststop)]}],
        }

    container_id = new_id()
    record = runtime.create(str(bundle(["true"], edit=edit)), container_id)
    before = json.loads(prestart.read_text())
    assert before["id"] == container_id
    assert before["pid"] == record.pid
    assert before["status"] == "created"
    runtime.start(container_id)
    assert runtime.wait(container_id) == 0
    assert not poststop.exists()  # poststop belongs to delete
    runtime.delete(container_id)
    after = json.loads(poststop.read_text())
    assert after["id"] == container_id
    assert after["status"] == "stopped"


def test_runtime_executable_not_writable_from_inside(
    cli: Cli, bundle: MakeBundle, new_id: NewId
) -> None:
    interpreter = os.path.realpath(sys.executable)
    digest = sha256(interpreter)
    script = (
        "echo x > /proc/1/exe && echo wrote-exe || echo exe-denied; "
        "echo x >> /proc/1/exe && echo appended-exe || echo append-denied; "
        "cat /proc/1/exe > /dev/null 2>&1; echo read=$?"
    )
    out = ok(cli("run", "-b", str(bundle(["sh", "-c", script])), new_id()))
    assert "exe-denied" in out and "wrote-exe" not in out
    assert "append-denied" in out and "appended-exe" not in out
    assert sha256(interpreter) == digest


def test_cwd(cli: Cli, bundle: MakeBundle, new_id: NewId) -> None:
    def edit(config: Config) -> None:
        process(config)["cwd"] = "/tmp"

    assert ok(cli("run", "-b", str(bundle(["pwd"], edit=edit)), new_id())).strip() == "/tmp"


@pytest.mark.parametrize(("soft", "hard"), [(1024, 1024), (1000, 2000)])
def test_rlimit_nofile(cli: Cli, bundle: MakeBundle, new_id: NewId, soft: int, hard: int) -> None:
    def edit(config: Config) -> None:
        process(config)["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": soft, "hard": hard}]

    b = bundle(["sh", "-c", "ulimit -n; ulimit -Hn"], edit=edit)
    assert ok(cli("run", "-b", str(b), new_id())).split() == [str(soft), str(hard)]
