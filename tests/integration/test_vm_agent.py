"""The real guest agent (the static C binary) served over a socketpair on the host, no VM.

`isobench-agent --fd N` runs the same request loop as in a guest, so RUN's
timeouts, process-group kills, output bounds and the malformed-frame replies are
checked here in well under a second; test_vm_qemu.py does the virtio-serial side.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.image.csrc import compile_programs
from harness.vm import protocol
from harness.vm.agent import AgentClient, AgentError
from harness.vm.protocol import Encoder, Kind

pytestmark = pytest.mark.requires("gcc")
Served = tuple[AgentClient, socket.socket, "subprocess.Popen[bytes]"]


@pytest.fixture(scope="module")
def agent_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    programs = compile_programs(tmp_path_factory.mktemp("csrc"))
    return next(p.binary for p in programs if p.name == "isobench-agent")


@pytest.fixture
def served(
    agent_binary: Path,
) -> Iterator[Served]:
    host, guest = socket.socketpair()
    proc = subprocess.Popen(
        [agent_binary, "--fd", str(guest.fileno())],
        pass_fds=[guest.fileno()],
        stderr=subprocess.PIPE,
    )
    guest.close()
    client = AgentClient(host, Path("socketpair"))
    try:
        yield client, host, proc
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def raw_reply(sock: socket.socket) -> protocol.Decoder | protocol.ErrorReply:
    sock.settimeout(10)
    return protocol.decode_reply(protocol.read_frame(sock.recv), Kind.PONG)


def test_ready_then_commands_with_exit_codes_output_and_guest_timing(served: Served) -> None:
    client, _, _ = served
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    ready = client.wait_ready(10)
    assert 0 < ready.boot_s <= before + 1
    result = client.run(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert 0 < result.guest_wall_s < 5 and not result.truncated and not result.timed_out
    slept = client.run(["sleep", "0.3"])
    assert slept.exit_code == 0 and 0.3 <= slept.guest_wall_s < 3
    env = client.run(["sh", "-c", 'echo "$A $PWD"'], env={"A": "b c"}, cwd="/tmp")
    assert env.stdout == "b c /tmp\n"
    killed = client.run(["sh", "-c", "kill -TERM $$"])
    assert killed.exit_code == 128 + 15


def test_exec_and_chdir_failures_are_126_and_127_with_the_reason(served: Served) -> None:
    client, _, _ = served
    client.wait_ready(10)
    missing = client.run(["/no/such/program"])
    assert missing.exit_code == 127 and "exec /no/such/program: No such file" in missing.stderr
    bad_cwd = client.run(["true"], cwd="/no/such/dir")
    assert bad_cwd.exit_code == 126 and "chdir /no/such/dir" in bad_cwd.stderr


def test_timeout_kills_the_whole_process_group(served: Served, tmp_path: Path) -> None:
    client, _, _ = served
    client.wait_ready(10)
    pidfile = tmp_path / "bg.pid"
    result = client.run(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; sleep 60"], timeout_s=0.5)
    assert result.timed_out and result.exit_code == 128 + 9
    assert 0.5 <= result.guest_wall_s < 5
    background = int(pidfile.read_text())
    time.sleep(0.1)
    assert (
        not Path(f"/proc/{background}").exists()
        or "Z" in Path(f"/proc/{background}/stat").read_text().rsplit(")", 1)[1].split()[:1]
    )


def test_output_is_bounded_and_marked_truncated(served: Served) -> None:
    client, _, _ = served
    client.wait_ready(10)
    big = client.run(["head", "-c", str(protocol.MAX_OUTPUT_BYTES + 12345), "/dev/zero"])
    assert big.exit_code == 0 and big.truncated
    assert len(big.stdout) == protocol.MAX_OUTPUT_BYTES


def test_fetch_returns_bytes_or_the_guest_errno(served: Served, tmp_path: Path) -> None:
    client, _, _ = served
    client.wait_ready(10)
    blob = bytes(range(256)) * 1000
    (tmp_path / "blob").write_bytes(blob)
    assert client.fetch(str(tmp_path / "blob")) == blob
    assert b"Pid:" in client.fetch("/proc/self/status")  # size 0 in stat, read to the end
    with pytest.raises(AgentError, match="No such file") as caught:
        client.fetch(str(tmp_path / "missing"))
    assert caught.value.errno == 2


def test_malformed_frames_get_error_replies_and_the_agent_carries_on(served: Served) -> None:
    client, host, proc = served
    client.wait_ready(10)
    cases = [
        (b"\xff\xff\xff\xff garbage after a bad length", "frame length 4294967295"),
        (b"\0\0\0\0", "frame length 0"),
        (protocol.frame(b"\0\0\0\x04\0\0"), "RUN: malformed request"),
        (protocol.frame(Encoder(Kind.RUN).strv([]).strv([]).bytes_(b"/").u32(0).payload()), "RUN: malformed"),
        (protocol.frame(Encoder(Kind.RUN).strv([b"a\0b"]).strv([]).bytes_(b"/").u32(0).payload()), "RUN: malformed"),
        (protocol.frame(Encoder(Kind.FETCH).u32(1000).payload()), "FETCH: malformed"),
        (protocol.frame(Encoder(Kind.PING).u32(1).payload()), "PING: unexpected fields"),
        (protocol.frame(Encoder(Kind.READY).payload()), "unknown request kind 1"),
        (protocol.frame(b"\0\0\0\x63"), "unknown request kind 99"),
    ]  # fmt: skip
    for data, message in cases:
        host.sendall(data)
        reply = raw_reply(host)
        assert isinstance(reply, protocol.ErrorReply) and message in reply.message, message
    assert client.ping() > 0  # still serving, nothing was left half-read
    assert proc.poll() is None


def test_poweroff_outside_a_guest_only_ends_the_agent(served: Served) -> None:
    client, _, proc = served
    client.wait_ready(10)
    client.poweroff()
    assert proc.wait(timeout=10) == 0
