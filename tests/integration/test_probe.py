"""isobench-probe for real: on the host, on bare and in the in-house container, from one image.

The host tests run the compiled binary itself (what leaves objects behind, what a
killed peer does, tcp-server and tcp-rr); the platform tests run the catalog's own
probe workloads from the image, as `isobench run` does.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.image.build import build_image
from harness.image.csrc import compile_programs
from harness.image.store import ImageStore
from harness.platforms.bare import BarePlatform
from harness.platforms.base import Platform, RunContext
from harness.platforms.common import mounts_under
from harness.platforms.container import ContainerPlatform
from harness.workloads.base import Workload
from harness.workloads.probe import PROBE, RTT, parse_probe_line, rtt, stream

pytestmark = pytest.mark.requires("root", "cgroups", "busybox")

TAG = "isobench/workload:test-probe"
UNSHARE_IPC = ("unshare", "--ipc", "--mount", "--propagation", "private")


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """Outside pytest's basetemp: a concurrent session may sweep it while mounts are live."""
    path = Path(tempfile.mkdtemp(prefix="isobench-test-probe-"))
    try:
        yield path
        assert mounts_under(path) == [], "mounts left behind"
    finally:
        if not mounts_under(path):
            shutil.rmtree(path)


@pytest.fixture(scope="module")
def probe(base: Path) -> str:
    """The probe compiled as the image build compiles it."""
    [program] = [p for p in compile_programs(base / "csrc") if p.name == "isobench-probe"]
    return str(program.binary)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- the binary on the host


def test_sem_and_mq_leave_nothing_even_when_stopped(probe: str, base: Path) -> None:
    """In an IPC namespace of its own (so other users' objects do not count): no semaphore set
    after a run, after SIGTERM or after the child's SIGKILL; no queue name ever visible."""
    mnt = Path(tempfile.mkdtemp(dir=base))
    script = """
        count() { tail -n +2 /proc/sysvipc/sem | wc -l; }
        mount -t mqueue none "$2" || exit 9
        "$1" rtt mq 100000000 >/dev/null 2>&1 & p=$!; sleep 0.3
        echo "mq-names-during=$(ls "$2" | wc -l)"; kill -TERM $p; wait $p; echo "mq-rc=$?"
        "$1" rtt sem 2000 0 >/dev/null; echo "sem-ok-rc=$? left=$(count)"
        "$1" rtt sem 100000000 0 >/dev/null 2>&1 & p=$!; sleep 0.3
        echo "sem-during=$(count)"; kill -TERM $p; wait $p; echo "sem-term-rc=$? left=$(count)"
        "$1" rtt sem 100000000 0 >/dev/null 2>"$2.err" & p=$!; sleep 0.3
        kill -KILL $(cat /proc/$p/task/$p/children); wait $p; echo "sem-kill-rc=$? left=$(count)"
        umount "$2"
    """
    proc = subprocess.run(
        [*UNSHARE_IPC, "sh", "-c", script, "sh", probe, str(mnt)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "mq-names-during=0",  # unlinked at once, while the run goes on
        "mq-rc=143",
        "sem-ok-rc=0",
        "left=0",
        "sem-during=1",  # the set exists while it runs (the count sees this namespace)
        "sem-term-rc=143",
        "left=0",
        "sem-kill-rc=1",
        "left=0",
    ], proc.stdout
    said = Path(f"{mnt}.err").read_text()
    assert said == "isobench-probe: peer process: killed by signal 9 before the last round trip\n"


def test_tcp_rr_retries_until_the_server_listens_then_the_server_stops_on_sigterm(
    probe: str,
) -> None:
    port = free_port()
    client = subprocess.Popen(
        [probe, "tcp-rr", "127.0.0.1", str(port), "2000", "64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # the client is refused meanwhile, and keeps trying
    server = subprocess.Popen(
        [probe, "tcp-server", "127.0.0.1", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == f"listening 127.0.0.1 {port}\n"
        out, err = client.communicate(timeout=30)
        assert client.returncode == 0, err
        values = parse_probe_line(out, probe="tcp-rr", mech="tcp")
        assert (values["iters"], values["bytes"]) == (2000, 64)
        assert 0 < values["p50_ns"] <= values["p99_ns"] <= values["max_ns"]
        # A second client on the same server: connections are served one after another.
        again = subprocess.run(
            [probe, "tcp-rr", "127.0.0.1", str(port), "100", "100000"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert again.returncode == 0, again.stderr
        assert parse_probe_line(again.stdout)["bytes"] == 100000
    finally:
        server.terminate()
        assert server.wait(timeout=10) == 0  # SIGTERM is the normal way to stop it
        assert server.stdout is not None
        server.stdout.close()


def test_tcp_rr_gives_up_after_five_seconds_of_refusals(probe: str) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [probe, "tcp-rr", "127.0.0.1", str(free_port()), "10", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == "isobench-probe: connect: Connection refused\n"
    assert 5 <= elapsed < 10


# ---------------------------------------------------------------- in the platforms


@pytest.fixture(scope="module")
def store(base: Path) -> ImageStore:
    image_store = ImageStore(home=base / "home")
    build_image(image_store, tag=TAG)
    return image_store


@pytest.fixture(params=["bare", "container"])
def platform(request: pytest.FixtureRequest, store: ImageStore, base: Path) -> Iterator[Platform]:
    made: Platform = (
        BarePlatform(store=store) if request.param == "bare" else ContainerPlatform(store=store)
    )
    ok, reason = made.available()
    assert ok, reason  # both run on this host; a skip here would hide a failure
    workdir = Path(tempfile.mkdtemp(dir=base))
    made.prepare(RunContext(TAG, store.resolve(TAG), f"t{uuid.uuid4().hex[:8]}", workdir))
    try:
        yield made
    finally:
        made.teardown()
    assert mounts_under(workdir) == []


def test_every_mechanism_and_stream_measure_inside(platform: Platform) -> None:
    for mechanism in RTT:
        workload = rtt(mechanism, "smoke")
        outcome = platform.run(workload)
        assert outcome.exit_code == 0, (mechanism, outcome.stderr)
        raw = parse_probe_line(outcome.stdout, probe="rtt", mech=mechanism)
        assert 0 < raw["min_ns"] <= raw["p50_ns"] <= raw["p99_ns"] <= raw["max_ns"], raw
        values = workload.parse(outcome.stdout)
        assert 0 < values["p50_us"] <= values["p99_us"]
        assert values["roundtrips_per_s"] > 0
        print(f"{platform.name:9} {mechanism:6} p50 {values['p50_us']:.2f} us")

    workload = stream("smoke")
    outcome = platform.run(workload)
    # Exit 0 means STREAM's own check of the final array values passed (else exit 1).
    assert (outcome.exit_code, outcome.stderr) == (0, "")
    values = workload.parse(outcome.stdout)
    assert all(value > 0 for value in values.values()), values
    print(f"{platform.name:9} stream triad {values['triad_mb_s']:.0f} MB/s")


def test_bad_usage_exits_2_with_one_line_inside(platform: Platform) -> None:
    for argv, said in [
        ((PROBE, "rtt", "futex", "10"), "accepted: pipe, unix, tcp, shm, mq, sem, signal"),
        ((PROBE, "rtt", "pipe", "0"), "ITERS must be an integer from 1 to"),
        ((PROBE, "stream", "64"), "stream takes ARRAY_MIB NTIMES"),
        ((PROBE, "ping"), "accepted: rtt, stream, tcp-server, tcp-rr"),
    ]:
        outcome = platform.run(Workload("test.usage", "ipc", argv, (), "", lambda out: {}))
        assert outcome.exit_code == 2, (argv, outcome.stderr)
        assert outcome.stdout == ""
        assert outcome.stderr.count("\n") == 1 and said in outcome.stderr, outcome.stderr


def test_tcp_request_response_inside(platform: Platform) -> None:
    """Server and client in the same platform over its loopback (the container's own)."""
    port = free_port()
    script = (
        f"{PROBE} tcp-server 127.0.0.1 {port} >/dev/null & s=$!; "
        f"{PROBE} tcp-rr 127.0.0.1 {port} 2000 64; rc=$?; "
        'kill -TERM "$s"; wait "$s"; echo "server=$?"; exit $rc'
    )
    outcome = platform.run(
        Workload("test.rr", "network", ("/bin/sh", "-c", script), (), "", lambda out: {})
    )
    assert outcome.exit_code == 0, outcome.stderr
    values = parse_probe_line(outcome.stdout, probe="tcp-rr")
    assert 0 < values["p50_ns"] <= values["p99_ns"]
    assert "server=0" in outcome.stdout
