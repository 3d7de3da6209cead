"""Host <-> platform networking for real: veth pairs into the platforms' namespaces, the host-side
server in the run's peer namespace, iperf3 to-host on bare/container/runc, nothing left after
teardown or after a SIGKILL followed by `isobench cleanup`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest

from harness.image.store import ImageStore
from harness.platforms.base import Limits, RunContext
from harness.platforms.network import NETNS_DIR, STATE_DIR, run_token
from harness.platforms.peer import PeerError
from harness.runner import WORKDIR_PREFIX
from harness.workloads import BENCHMARKS
from harness.workloads.base import Workload
from tests.integration import test_platforms as platform_tests

# The platform tests' private image store and directory (one image build per module).
TAG = platform_tests.TAG
base = platform_tests.base
store = platform_tests.store
_make = platform_tests._make

pytestmark = pytest.mark.requires("root", "cgroups", "busybox", "iproute2")

BIN = Path(sys.executable).parent

# Inside the platform: its IPv4 addresses and routes, and whether the host's own address is reachable.
VIEW = Workload(
    benchmark="network.test.view",
    category="network",
    argv=(
        "/bin/sh",
        "-c",
        'ip -4 -o addr show | awk \'{print "addr", $2, $4}\'; ip -4 route show | sed "s/^/route /"; '
        'ip route get "$HOST_ADDR" >/dev/null 2>&1 && echo host-reachable || echo host-unreachable',
    ),
    metrics=(),
    primary="",
    parse=lambda out: {},
)


def _context(store: ImageStore, base: Path) -> RunContext:
    run_id = f"n{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(dir=base))
    return RunContext(TAG, store.resolve(TAG), run_id, workdir, Limits())


def _host_address() -> str:
    """An IPv4 address of the host's own namespace (not loopback): what a platform must not reach."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in out.stdout.splitlines():
        return line.split()[3].split("/")[0]
    return "192.0.2.1"  # TEST-NET-1: no global address here; unreachable either way


def leftovers(run_id: str) -> list[str]:
    """Namespaces, veths (in the host's namespace) and records that carry the run id or its token."""
    token = run_token(run_id)
    found = [str(p) for p in NETNS_DIR.glob(f"*{run_id}*")] if NETNS_DIR.is_dir() else []
    found += [dev for dev in os.listdir("/sys/class/net") if token in dev]
    found += [str(p) for p in STATE_DIR.glob(f"{run_id}*")] if STATE_DIR.is_dir() else []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    found += [line for line in listed.stdout.splitlines() if run_id in line]
    return found


@pytest.mark.parametrize("name", ["container", "oci:runc"])
def test_the_platform_reaches_the_peer_over_its_veth_and_nothing_else(
    name: str, store: ImageStore, base: Path
) -> None:
    platform = _make(name, store)
    assert platform.available() == (True, "")
    ctx = _context(store, base)
    host_addr = _host_address()
    platform.prepare(ctx)
    try:
        described = platform.describe()["network"]
        assert isinstance(described, dict)
        peer, mine = str(described["peer_address"]), str(described["platform_address"])
        assert peer.startswith("10.213.") and mine.startswith("10.213.")
        assert ctx.run_id in str(described["netns"]) and described["mtu"] == 1500

        view = platform.run(
            Workload(**{**VIEW.__dict__, "env": (("HOST_ADDR", host_addr),)})  # type: ignore[arg-type]
        )
        assert view.exit_code == 0, view.stderr
        lines = view.stdout.splitlines()
        addrs = {tuple(line.split()[1:]) for line in lines if line.startswith("addr ")}
        veth = run_token(ctx.run_id)
        assert {a[1] for a in addrs} == {"127.0.0.1/8", mine}
        assert any(a[0].startswith(f"ib{veth}") and a[1] == mine for a in addrs)
        routes = [line for line in lines if line.startswith("route ")]
        assert len(routes) == 1 and routes[0].split()[1] == peer.rsplit(".", 1)[0] + ".0/30"
        assert "default" not in view.stdout
        assert lines[-1] == "host-unreachable"

        # The host's own namespace holds no address isobench made.
        host = subprocess.run(
            ["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True
        )
        assert "10.213." not in host.stdout

        # iperf3 from inside to the server on the host side: its report names both ends.
        workload = BENCHMARKS["network.iperf3.to-host"]("smoke")
        outcome = platform.run(workload)
        assert outcome.exit_code == 0, outcome.stderr
        connected = json.loads(outcome.stdout)["start"]["connected"][0]
        assert connected["local_host"] == mine.split("/")[0]
        assert connected["remote_host"] == peer.split("/")[0]
        assert workload.parse(outcome.stdout)["received_gbit_s"] > 0
    finally:
        platform.teardown()
    platform.teardown()  # twice is fine
    assert leftovers(ctx.run_id) == []


@pytest.mark.parametrize("name", ["bare", "container", "oci:runc"])
@pytest.mark.parametrize("bench", ["network.iperf3.to-host", "network.iperf3.from-host"])
def test_iperf3_with_the_host_runs_and_parses(
    name: str, bench: str, store: ImageStore, base: Path
) -> None:
    platform = _make(name, store)
    ctx = _context(store, base)
    platform.prepare(ctx)
    try:
        workload = BENCHMARKS[bench]("smoke")
        outcome = platform.run(workload)
        assert outcome.exit_code == 0, outcome.stderr
        values = workload.parse(outcome.stdout)
        assert values["received_gbit_s"] > 0
        # The profile's fixed amount was sent (iperf3 rounds up to whole blocks) and arrived
        # (the receiver's count stops at the end message, a few blocks short at most).
        document = json.loads(outcome.stdout)
        sent = int(str(workload.sizes["send_mib"])) * 1024 * 1024
        assert sent <= document["end"]["sum_sent"]["bytes"] < sent * 1.01
        assert document["end"]["sum_received"]["bytes"] > sent * 0.95
        remote = document["start"]["connected"][0]["remote_host"]
        assert remote == ("127.0.0.1" if name == "bare" else "10.213.0.1")
        print(f"{name} {bench}: {values['received_gbit_s']:.2f} Gbit/s")
        # The server was killed by pid: nothing listens on its port any more.
        assert not _listening_anywhere(workload.peer_port)
    finally:
        platform.teardown()
    assert leftovers(ctx.run_id) == []


def _listening_anywhere(port: int | None) -> bool:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return any(f"-p {port}" in line and "iperf3 -s" in line for line in out.splitlines())


def test_a_server_that_never_listens_fails_the_sample_with_its_stderr(
    store: ImageStore, base: Path
) -> None:
    platform = _make("container", store)
    ctx = _context(store, base)
    platform.prepare(ctx)
    try:
        broken = Workload(
            **{
                **BENCHMARKS["network.iperf3.to-host"]("smoke").__dict__,
                "peer_argv": ("/bin/sh", "-c", "echo no-server-here >&2; exit 3"),
            }
        )
        with pytest.raises(PeerError, match=r"exited with status 3.*no-server-here"):
            platform.run(broken)
    finally:
        platform.teardown()
    assert leftovers(ctx.run_id) == []


CHILD = textwrap.dedent(
    """
    import os, sys, tempfile, time
    from pathlib import Path
    from harness.image.store import ImageStore
    from harness.platforms.base import RunContext
    from harness.platforms.container import ContainerPlatform
    from harness.platforms.oci import OciPlatform

    home, tag, run_id, prefix = sys.argv[1:5]
    store = ImageStore(home=Path(home))
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-{run_id}-"))
    ctx = RunContext(tag, store.resolve(tag), run_id, workdir)
    for platform in (ContainerPlatform(store=store), OciPlatform("runc", store=store)):
        platform.available()
        platform.prepare(ctx)
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_a_killed_run_s_network_is_swept_by_isobench_cleanup(store: ImageStore) -> None:
    run_id = f"n{uuid.uuid4().hex[:8]}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store.home), TAG, run_id, WORKDIR_PREFIX],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        made = leftovers(run_id)
        # peer + container + oci-runc namespaces (files and `ip netns` lines) and the record
        assert len([p for p in made if p.startswith(str(NETNS_DIR))]) == 3, made
        assert any(p.startswith(str(STATE_DIR)) for p in made), made
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    cleanup = subprocess.run(
        [str(BIN / "isobench"), "cleanup"], capture_output=True, text=True, check=False
    )
    assert cleanup.returncode == 0, cleanup.stderr
    assert f"peer netns isobench-{run_id}-peer of a killed run" in cleanup.stdout
    assert leftovers(run_id) == []
    workdirs = list(Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}{child.pid}-{run_id}-*"))
    assert workdirs == [], "the killed run's workdir (with the servers' chroot mounts)"
