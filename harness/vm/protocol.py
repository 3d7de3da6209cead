"""The agent channel's wire format: length-prefixed frames of simply typed fields.

The guest end is harness/image/csrc/isobench-agent.c; both sides document the same:

    frame   = u32 length (big-endian, 1..MAX_FRAME_BYTES) + payload
    payload = u32 kind + the kind's fields in order, nothing after them
    fields  : u32 / u64 big-endian; bytes = u32 length + data; strv = u32 count + count * bytes

    guest -> host                                   host -> guest
    READY  1  u32 version, u64 boottime_ns          PING     2  -            -> PONG
    PONG   3  u64 boottime_ns                       RUN      4  strv argv, strv env ("K=V"),
    RESULT 5  u32 how (0 exited, 1 signal,                      bytes cwd, u32 timeout_ms -> RESULT
              2 timed out), u32 code, u64 wall_ns,  FETCH    6  bytes path   -> DATA
              u32 flags (1 stdout, 2 stderr         POWEROFF 8  -            -> OK, then off
              truncated), bytes stdout, stderr
    DATA   7  bytes content
    OK     9  -
    ERROR 10  u32 errno (0: protocol error), bytes message     HELLO   11  -            -> READY

The agent says READY unasked on every new connection it notices; HELLO asks for it
when the host reconnected too fast for the guest to see the gap. A READY that
arrives while another reply is awaited is a duplicate and is skipped.

Any request may get ERROR instead. No JSON: the C side parses a handful of
integers and byte strings, with bounds checks and nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from harness.errors import EnvironmentError_

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 64 << 20  # the agent's MAX_FRAME: a FETCH reply is at most this big
MAX_OUTPUT_BYTES = 8 << 20  # per stream, the agent's MAX_OUTPUT
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Kind(IntEnum):
    """The first u32 of every payload."""

    READY = 1
    PING = 2
    PONG = 3
    RUN = 4
    RESULT = 5
    FETCH = 6
    DATA = 7
    POWEROFF = 8
    OK = 9
    ERROR = 10
    HELLO = 11


class ProtocolError(EnvironmentError_):
    """The other end sent something that is not a frame of this protocol."""


class Encoder:
    """Builds one payload field by field."""

    def __init__(self, kind: Kind) -> None:
        self._parts = [_U32.pack(kind)]

    def u32(self, value: int) -> Encoder:
        """Append an unsigned 32-bit integer."""
        self._parts.append(_U32.pack(value))
        return self

    def u64(self, value: int) -> Encoder:
        """Append an unsigned 64-bit integer."""
        self._parts.append(_U64.pack(value))
        return self

    def bytes_(self, value: bytes) -> Encoder:
        """Append a length-prefixed byte string."""
        self._parts += [_U32.pack(len(value)), value]
        return self

    def strv(self, values: Sequence[bytes]) -> Encoder:
        """Append a counted list of byte strings."""
        self.u32(len(values))
        for value in values:
            self.bytes_(value)
        return self

    def payload(self) -> bytes:
        """The payload built so far."""
        return b"".join(self._parts)


class Decoder:
    """Reads one payload field by field; every short or trailing byte is a ProtocolError."""

    def __init__(self, payload: bytes) -> None:
        self._data = memoryview(payload)
        self._off = 0
        self.kind = self.u32()

    def _take(self, n: int) -> bytes:
        if len(self._data) - self._off < n:
            raise ProtocolError(
                f"agent frame of {len(self._data)} bytes ends inside a field at byte {self._off}"
            )
        chunk = bytes(self._data[self._off : self._off + n])
        self._off += n
        return chunk

    def u32(self) -> int:
        """The next unsigned 32-bit integer."""
        value: int = _U32.unpack(self._take(4))[0]
        return value

    def u64(self) -> int:
        """The next unsigned 64-bit integer."""
        value: int = _U64.unpack(self._take(8))[0]
        return value

    def bytes_(self) -> bytes:
        """The next length-prefixed byte string."""
        return self._take(self.u32())

    def strv(self) -> list[bytes]:
        """The next counted list of byte strings."""
        return [self.bytes_() for _ in range(self.u32())]

    def end(self) -> None:
        """Check that nothing follows the fields read."""
        if self._off != len(self._data):
            raise ProtocolError(
                f"agent frame kind {self.kind}: {len(self._data) - self._off} bytes after its fields"
            )


def frame(payload: bytes) -> bytes:
    """The payload with its length prefix."""
    if not 0 < len(payload) <= MAX_FRAME_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes; accepted: 1..{MAX_FRAME_BYTES}")
    return _U32.pack(len(payload)) + payload


def read_exact(recv: Callable[[int], bytes], n: int) -> bytes:
    """Exactly n bytes from recv, however few each call returns; ProtocolError at end of stream."""
    parts: list[bytes] = []
    remaining = n
    while remaining:
        chunk = recv(min(remaining, 1 << 20))
        if not chunk:
            raise ProtocolError(
                f"agent channel closed after {n - remaining} of {n} bytes (guest or QEMU gone?)"
            )
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def read_frame(recv: Callable[[int], bytes]) -> bytes:
    """One frame's payload from a byte stream."""
    (length,) = _U32.unpack(read_exact(recv, 4))
    if not 0 < length <= MAX_FRAME_BYTES:
        raise ProtocolError(f"agent frame length {length}; accepted: 1..{MAX_FRAME_BYTES}")
    return read_exact(recv, length)


# -- messages -------------------------------------------------------------------


@dataclass(frozen=True)
class RunReply:
    """A RESULT as sent: how the command ended, its code, guest wall time and output."""

    how: int  # 0 exited, 1 killed by signal `code`, 2 timed out (killed with SIGKILL)
    code: int
    wall_ns: int
    flags: int
    stdout: bytes
    stderr: bytes

    HOW_EXITED = 0
    HOW_SIGNALED = 1
    HOW_TIMED_OUT = 2


@dataclass(frozen=True)
class ErrorReply:
    """An ERROR: the guest's errno (0 for a protocol error) and its message."""

    errno: int
    message: str


def encode_run(argv: Sequence[str], env: Sequence[str], cwd: str, timeout_ms: int) -> bytes:
    """A RUN request; env entries are "NAME=value"."""
    if not argv:
        raise ValueError("RUN needs a non-empty argv")
    for item in [*argv, *env, cwd]:
        if "\0" in item:
            raise ValueError(f"RUN field {item!r} holds a NUL byte")
    return (
        Encoder(Kind.RUN)
        .strv([a.encode() for a in argv])
        .strv([e.encode() for e in env])
        .bytes_(cwd.encode())
        .u32(timeout_ms)
        .payload()
    )


def encode_fetch(path: str) -> bytes:
    """A FETCH request."""
    return Encoder(Kind.FETCH).bytes_(path.encode()).payload()


def encode_simple(kind: Kind) -> bytes:
    """A request without fields (PING, POWEROFF)."""
    return Encoder(kind).payload()


def decode_ready(payload: bytes) -> int:
    """The guest boottime in ns from a READY; ProtocolError on another kind or version."""
    d = _expect(payload, Kind.READY)
    version, boot_ns = d.u32(), d.u64()
    d.end()
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"guest agent speaks protocol {version}; this isobench speaks {PROTOCOL_VERSION} (rebuild the image)"
        )
    return boot_ns


def decode_reply(payload: bytes, expected: Kind) -> Decoder | ErrorReply:
    """A decoder positioned after the kind when it is the expected one, or the ERROR it was."""
    d = Decoder(payload)
    if d.kind == Kind.ERROR:
        err, message = d.u32(), d.bytes_()
        d.end()
        return ErrorReply(err, message.decode("utf-8", "replace"))
    if d.kind != expected:
        raise ProtocolError(f"agent replied kind {d.kind}; expected {expected.name} ({expected})")
    return d


def decode_result(d: Decoder) -> RunReply:
    """The fields of a RESULT after its kind."""
    reply = RunReply(d.u32(), d.u32(), d.u64(), d.u32(), d.bytes_(), d.bytes_())
    d.end()
    if reply.how not in (RunReply.HOW_EXITED, RunReply.HOW_SIGNALED, RunReply.HOW_TIMED_OUT):
        raise ProtocolError(f"agent RESULT with unknown how={reply.how}")
    return reply


def _expect(payload: bytes, kind: Kind) -> Decoder:
    d = Decoder(payload)
    if d.kind != kind:
        raise ProtocolError(f"agent sent kind {d.kind}; expected {kind.name} ({kind})")
    return d
