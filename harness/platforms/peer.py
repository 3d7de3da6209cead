"""The host side of a network benchmark: a server started before the workload, killed after.

A workload with `peer_argv` (iperf3 -s, isobench-probe tcp-server) has its
server run as a host process with the image's binaries (chrooted like bare),
in the run's peer network namespace (bare: the host's). The client starts only
once the server's socket is in LISTEN state, seen in /proc/<pid>/net/tcp of
the server's own namespace (no guessed sleep), and the server is killed by its
pid afterwards. A server that exits or never listens fails the sample with
its stderr, never silently.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from harness.errors import IsobenchError
from harness.platforms.base import Outcome
from harness.platforms.common import read_text
from harness.workloads.base import Workload

LISTEN_TIMEOUT_S = 10.0
POLL_S = 0.005
TCP_LISTEN = "0A"
STDERR_TAIL_CHARS = 2000

# (argv, netns path or None for the host's, stdout file, stderr file) -> the started server
Launcher = Callable[[list[str], str | None, Path, Path], "subprocess.Popen[bytes]"]


class PeerError(IsobenchError):
    """The host-side server of a network benchmark did not come up (exit 3: nothing measured)."""

    exit_code = 3


def tcp_local_key(address: str, port: int) -> str:
    """How /proc/net/tcp spells a local IPv4 address and port ("0100007F:3B71" for 127.0.0.1:15217)."""
    packed = socket.inet_aton(address)
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def listening(tcp_table: str, address: str, port: int) -> bool:
    """Whether a /proc/net/tcp table holds a LISTEN socket on address:port (or 0.0.0.0:port)."""
    wanted = {tcp_local_key(address, port), tcp_local_key("0.0.0.0", port)}
    for line in tcp_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[1] in wanted and fields[3] == TCP_LISTEN:
            return True
    return False


def _netns_inode(netns_path: str | None) -> int:
    return os.stat(netns_path or "/proc/self/ns/net").st_ino


def wait_listening(
    proc: subprocess.Popen[bytes],
    netns_path: str | None,
    address: str,
    port: int,
    timeout_s: float = LISTEN_TIMEOUT_S,
) -> None:
    """Return once proc listens on address:port inside netns_path; PeerError if it exits or times out."""
    want_ns = _netns_inode(netns_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PeerError(f"the host-side server exited with status {proc.returncode}")
        try:
            # nsenter joins the namespace before it execs: until then the pid is in the host's.
            in_ns = os.stat(f"/proc/{proc.pid}/ns/net").st_ino == want_ns
            table = Path(f"/proc/{proc.pid}/net/tcp").read_text() if in_ns else ""
        except OSError:
            table = ""
        if table and listening(table, address, port):
            return
        time.sleep(POLL_S)
    raise PeerError(f"the host-side server did not listen on {address}:{port} in {timeout_s:g} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the server by its pid (Popen knows whether it was reaped) and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def run_with_peer(
    workload: Workload,
    address: str,
    netns_path: str | None,
    launch: Launcher,
    log_dir: Path,
    run_client: Callable[[Workload], Outcome],
) -> Outcome:
    """run_client(workload) with its host-side server running at address (none: as is)."""
    if workload.peer_argv is None:
        return run_client(workload)
    if workload.peer_port is None:
        raise PeerError(f"{workload.benchmark}: peer_argv without peer_port (nothing to wait for)")
    bound = workload.with_peer(address)
    assert bound.peer_argv is not None
    out_path, err_path = log_dir / "peer.stdout", log_dir / "peer.stderr"
    proc = launch(list(bound.peer_argv), netns_path, out_path, err_path)
    try:
        try:
            wait_listening(proc, netns_path, address, workload.peer_port)
        except PeerError as exc:
            stop(proc)
            raise PeerError(
                f"{exc}; its stderr: {read_text(err_path)[-STDERR_TAIL_CHARS:]}"
            ) from None
        outcome = run_client(bound)
    finally:
        stop(proc)
    if outcome.exit_code != 0:
        outcome.stderr += (
            f"\nisobench: host-side server stderr:\n{read_text(err_path)[-STDERR_TAIL_CHARS:]}"
        )
    return outcome
