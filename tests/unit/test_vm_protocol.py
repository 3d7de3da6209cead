"""The agent wire format (harness/vm/protocol.py): framing, field encoding, malformed input."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from harness.vm import protocol
from harness.vm.protocol import Decoder, Encoder, Kind, ProtocolError


def chunked(data: bytes, size: int) -> Callable[[int], bytes]:
    """A recv that hands out at most `size` bytes per call, then b"" at the end."""
    pos = 0

    def recv(n: int) -> bytes:
        nonlocal pos
        chunk = data[pos : pos + min(n, size)]
        pos += len(chunk)
        return chunk

    return recv


def test_fields_round_trip_in_order() -> None:
    payload = (
        Encoder(Kind.RESULT)
        .u32(0xFFFFFFFF)
        .u64(2**64 - 1)
        .bytes_(b"")
        .bytes_(b"\0\xff binary")
        .strv([b"a", b"", b"c=d"])
        .payload()
    )
    d = Decoder(payload)
    assert d.kind == Kind.RESULT
    assert (d.u32(), d.u64(), d.bytes_(), d.bytes_()) == (
        0xFFFFFFFF,
        2**64 - 1,
        b"",
        b"\0\xff binary",
    )
    assert d.strv() == [b"a", b"", b"c=d"]
    d.end()


@pytest.mark.parametrize("size", [1, 3, 7, 1 << 20])
def test_frames_survive_short_reads(size: int) -> None:
    payloads = [
        protocol.encode_fetch("/etc/passwd"),
        b"x" * 100_000,
        protocol.encode_simple(Kind.PING),
    ]
    recv = chunked(b"".join(protocol.frame(p) for p in payloads), size)
    assert [protocol.read_frame(recv) for _ in payloads] == payloads


def test_a_stream_ending_mid_frame_is_a_protocol_error() -> None:
    data = protocol.frame(b"0123456789")[:-3]
    with pytest.raises(ProtocolError, match="closed after 7 of 10 bytes"):
        protocol.read_frame(chunked(data, 4))


@pytest.mark.parametrize("length", [0, protocol.MAX_FRAME_BYTES + 1, 0xFFFFFFFF])
def test_a_bad_frame_length_is_refused_before_reading_on(length: int) -> None:
    with pytest.raises(ProtocolError, match=f"frame length {length}; accepted: 1.."):
        protocol.read_frame(chunked(struct.pack(">I", length) + b"rest", 100))


def test_frame_refuses_empty_and_oversized_payloads() -> None:
    with pytest.raises(ValueError):
        protocol.frame(b"")
    with pytest.raises(ValueError):
        protocol.frame(b"x" * (protocol.MAX_FRAME_BYTES + 1))


def test_truncated_fields_and_trailing_bytes_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="ends inside a field"):
        Decoder(b"\0\0")  # not even a kind
    d = Decoder(Encoder(Kind.DATA).u32(50).payload() + b"short")
    with pytest.raises(ProtocolError, match="ends inside a field"):
        d.bytes_()
    d = Decoder(Encoder(Kind.PONG).u64(1).payload() + b"!")
    d.u64()
    with pytest.raises(ProtocolError, match="1 bytes after its fields"):
        d.end()


def test_run_request_layout_is_what_the_agent_parses() -> None:
    d = Decoder(protocol.encode_run(["/bin/sh", "-c", "exit 7"], ["A=1"], "/tmp", 1500))
    assert d.kind == Kind.RUN
    assert d.strv() == [b"/bin/sh", b"-c", b"exit 7"]
    assert d.strv() == [b"A=1"]
    assert (d.bytes_(), d.u32()) == (b"/tmp", 1500)
    d.end()


def test_run_request_refuses_what_c_strings_cannot_carry() -> None:
    with pytest.raises(ValueError, match="non-empty argv"):
        protocol.encode_run([], [], "/", 1)
    with pytest.raises(ValueError, match="NUL"):
        protocol.encode_run(["a\0b"], [], "/", 1)


def test_ready_carries_boottime_and_checks_the_version() -> None:
    ready = Encoder(Kind.READY).u32(protocol.PROTOCOL_VERSION).u64(6_053_367_128).payload()
    assert protocol.decode_ready(ready) == 6_053_367_128
    future = Encoder(Kind.READY).u32(protocol.PROTOCOL_VERSION + 1).u64(1).payload()
    with pytest.raises(ProtocolError, match="speaks protocol 2"):
        protocol.decode_ready(future)
    with pytest.raises(ProtocolError, match="expected READY"):
        protocol.decode_ready(Encoder(Kind.PONG).u64(1).payload())


def test_replies_decode_to_the_expected_kind_or_the_error() -> None:
    err = protocol.decode_reply(
        Encoder(Kind.ERROR).u32(2).bytes_(b"FETCH /x: gone").payload(), Kind.DATA
    )
    assert err == protocol.ErrorReply(2, "FETCH /x: gone")
    with pytest.raises(ProtocolError, match="expected DATA"):
        protocol.decode_reply(Encoder(Kind.OK).payload(), Kind.DATA)
    result = (
        Encoder(Kind.RESULT).u32(1).u32(9).u64(5).u32(2).bytes_(b"out").bytes_(b"err").payload()
    )
    d = protocol.decode_reply(result, Kind.RESULT)
    assert isinstance(d, Decoder)
    assert protocol.decode_result(d) == protocol.RunReply(1, 9, 5, 2, b"out", b"err")
    bad_how = Encoder(Kind.RESULT).u32(7).u32(0).u64(0).u32(0).bytes_(b"").bytes_(b"").payload()
    d = protocol.decode_reply(bad_how, Kind.RESULT)
    assert isinstance(d, Decoder)
    with pytest.raises(ProtocolError, match="unknown how=7"):
        protocol.decode_result(d)
