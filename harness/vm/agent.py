"""The host end of the guest agent: a client over the UNIX socket QEMU (or libvirt) binds.

QEMU: `-chardev socket,id=agent0,path=SOCK,server=on,wait=off -device virtio-serial-pci
-device virtserialport,chardev=agent0,name=org.isobench.agent.0`; libvirt: a
`<channel type='unix'>` with `<source mode='bind' path='SOCK'/>` and the same
target name. The agent's first write blocks in the guest until a host end is
connected, so READY is never lost, whenever the client connects. One request at
a time; every wait is bounded and ends in EnvironmentError_ with one line.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import EnvironmentError_
from harness.vm import protocol
from harness.vm.protocol import Kind, RunReply

AGENT_CHANNEL = "org.isobench.agent.0"
RUN_SLACK_S = 30.0  # on top of a RUN's own timeout: output transfer, a slow TCG guest
REPLY_TIMEOUT_S = 30.0  # PING, FETCH, POWEROFF
HELLO_AFTER_S = 2.0  # no READY by then on a connection: ask for it
_SIGKILL = 9


@dataclass(frozen=True)
class Ready:
    """The agent said READY: the guest's CLOCK_BOOTTIME then, and the host's monotonic clock on receipt."""

    boot_s: float
    host_monotonic_s: float


@dataclass(frozen=True)
class AgentResult:
    """One command run in the guest; exit_code is 128+N for a death by signal N (as a shell reports it)."""

    exit_code: int
    stdout: str
    stderr: str
    guest_wall_s: float  # CLOCK_MONOTONIC in the guest around fork, exec and wait
    truncated: bool  # stdout or stderr passed protocol.MAX_OUTPUT_BYTES and was cut
    timed_out: bool = False  # killed (SIGKILL to its process group) at the timeout


class AgentError(EnvironmentError_):
    """The agent answered a request with ERROR (a missing file, a bad request)."""

    def __init__(self, message: str, err: int) -> None:
        super().__init__(message)
        self.errno = err


class _NoReply(EnvironmentError_):
    """No frame arrived in time (the channel itself is fine)."""


class AgentClient:
    """A connection to one guest's agent."""

    def __init__(self, sock: socket.socket, socket_path: Path) -> None:
        self._sock = sock
        self._path = socket_path
        self._deadline = 0.0

    @classmethod
    def connect(cls, socket_path: Path, timeout_s: float) -> AgentClient:
        """Connect to the host end of the channel, waiting up to timeout_s for it to appear."""
        deadline = time.monotonic() + timeout_s
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(str(socket_path))
                return cls(sock, socket_path)
            except OSError as e:
                sock.close()
                # The socket appears when QEMU has set up its chardevs; before that, retry.
                if e.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                    raise EnvironmentError_(f"connect to agent socket {socket_path}: {e}") from e
                if time.monotonic() >= deadline:
                    raise EnvironmentError_(
                        f"agent socket {socket_path} did not accept a connection within {timeout_s:g} s"
                    ) from e
                time.sleep(0.02)

    def wait_ready(self, timeout_s: float) -> Ready:
        """Wait for the agent's READY; EnvironmentError_ when it does not come within timeout_s."""
        deadline = time.monotonic() + timeout_s
        try:
            # A guest that saw this connection arrive greets it unasked; one that missed
            # a fast reconnect is asked with HELLO (a second READY later is skipped).
            payload = self._receive(min(timeout_s, HELLO_AFTER_S), "READY")
        except _NoReply:
            if timeout_s <= HELLO_AFTER_S:
                raise
            self._send(protocol.encode_simple(Kind.HELLO), "HELLO")
            payload = self._receive(max(0.0, deadline - time.monotonic()), "READY")
        host_s = time.monotonic()
        return Ready(boot_s=protocol.decode_ready(payload) / 1e9, host_monotonic_s=host_s)

    def ping(self) -> float:
        """The guest's CLOCK_BOOTTIME now, in seconds (a round trip through the agent)."""
        d = self._request(protocol.encode_simple(Kind.PING), Kind.PONG, REPLY_TIMEOUT_S, "PING")
        boot_ns = d.u64()
        d.end()
        return boot_ns / 1e9

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | Sequence[str] = (),
        cwd: str = "/",
        timeout_s: float = 600.0,
    ) -> AgentResult:
        """Run argv in the guest (env as a mapping or "NAME=value" strings) and collect its result."""
        pairs = [f"{k}={v}" for k, v in env.items()] if isinstance(env, Mapping) else list(env)
        bad = [item for item in pairs if "=" not in item]
        if bad:
            raise ValueError(f"env entries {bad} are not NAME=value")
        timeout_ms = max(1, round(timeout_s * 1000))
        request = protocol.encode_run(list(argv), pairs, cwd, timeout_ms)
        d = self._request(request, Kind.RESULT, timeout_s + RUN_SLACK_S, f"RUN {argv[0]}")
        reply = protocol.decode_result(d)
        if reply.how == RunReply.HOW_EXITED:
            code = reply.code
        else:
            code = 128 + (reply.code if reply.how == RunReply.HOW_SIGNALED else _SIGKILL)
        return AgentResult(
            exit_code=code,
            stdout=reply.stdout.decode("utf-8", "replace"),
            stderr=reply.stderr.decode("utf-8", "replace"),
            guest_wall_s=reply.wall_ns / 1e9,
            truncated=reply.flags != 0,
            timed_out=reply.how == RunReply.HOW_TIMED_OUT,
        )

    def fetch(self, path: str) -> bytes:
        """The contents of a guest file; AgentError when the guest cannot read it."""
        d = self._request(protocol.encode_fetch(path), Kind.DATA, REPLY_TIMEOUT_S, f"FETCH {path}")
        data = d.bytes_()
        d.end()
        return data

    def poweroff(self) -> None:
        """Ask the guest to sync and power off; returns once the agent has acknowledged."""
        d = self._request(
            protocol.encode_simple(Kind.POWEROFF), Kind.OK, REPLY_TIMEOUT_S, "POWEROFF"
        )
        d.end()

    def close(self) -> None:
        """Close the connection (the guest keeps running)."""
        self._sock.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------

    def _request(
        self, payload: bytes, expected: Kind, timeout_s: float, what: str
    ) -> protocol.Decoder:
        self._send(payload, what)
        deadline = time.monotonic() + timeout_s
        received = self._receive(timeout_s, what)
        while protocol.Decoder(received).kind == Kind.READY:  # a duplicate greeting
            received = self._receive(max(0.0, deadline - time.monotonic()), what)
        reply = protocol.decode_reply(received, expected)
        if isinstance(reply, protocol.ErrorReply):
            raise AgentError(f"guest agent refused {what}: {reply.message}", reply.errno)
        return reply

    def _send(self, payload: bytes, what: str) -> None:
        try:
            self._sock.sendall(protocol.frame(payload))
        except OSError as e:
            raise EnvironmentError_(f"agent {what}: send to {self._path}: {e}") from e

    def _receive(self, timeout_s: float, what: str) -> bytes:
        self._deadline = time.monotonic() + timeout_s
        try:
            return protocol.read_frame(self._recv)
        except TimeoutError:
            raise _NoReply(
                f"guest agent sent no {what} reply within {timeout_s:g} s ({self._path})"
            ) from None
        except protocol.ProtocolError as e:
            raise EnvironmentError_(f"guest agent, waiting for {what}: {e}") from None
        except OSError as e:
            raise EnvironmentError_(f"guest agent, waiting for {what}: {e}") from e

    def _recv(self, n: int) -> bytes:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self._sock.settimeout(remaining)
        return self._sock.recv(n)
