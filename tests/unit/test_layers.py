"""Unpacking layers: escapes refused by name, digests verified, nothing half-made left behind."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.errors import EnvironmentError_, UserError
from harness.image import layers
from harness.image.layers import check_layer, unpack

Member = tuple[tarfile.TarInfo, bytes]


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: object) -> Member:
    """A tar member: name, type, content and any TarInfo attribute (linkname, mode, mtime ...)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 1_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def make_blob(path: Path, members: list[Member], compress: bool = True) -> tuple[str, str]:
    """Write a layer blob; returns (diff_id, blob digest)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    plain = raw.getvalue()
    blob = gzip.compress(plain, mtime=0) if compress else plain
    path.write_bytes(blob)
    return "sha256:" + hashlib.sha256(plain).hexdigest(), "sha256:" + hashlib.sha256(
        blob
    ).hexdigest()


@pytest.fixture
def unpack_members(tmp_path: Path) -> Callable[..., Path]:
    """unpack_members(members) -> the unpacked dir (tmp_path/dest), or the error unpack raised."""

    def run(members: list[Member], compress: bool = True) -> Path:
        blob = tmp_path / "layer.tar.gz"
        diff_id, digest = make_blob(blob, members, compress)
        unpack(blob, diff_id, tmp_path / "dest", tmp_path / "tmp", expected_digest=digest)
        return tmp_path / "dest"

    return run


def assert_nothing_left(tmp_path: Path) -> None:
    assert not (tmp_path / "dest").exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_unpacks_files_dirs_links_modes_and_mtimes(unpack_members: Callable[..., Path]) -> None:
    dest = unpack_members(
        [
            member("bin", tarfile.DIRTYPE, mode=0o555),
            member("bin/tool", data=b"#!/bin/sh\n", mode=0o4755),
            member("bin/alias", tarfile.SYMTYPE, linkname="tool"),
            member("bin/abs", tarfile.SYMTYPE, linkname="/etc/passwd"),
            member("bin/hard", tarfile.LNKTYPE, linkname="bin/tool"),
            member("./etc/conf", data=b"x=1\n", mtime=42),
            member("run/fifo", tarfile.FIFOTYPE),
        ]
    )
    assert (dest / "bin" / "tool").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE((dest / "bin" / "tool").stat().st_mode) == 0o4755
    assert stat.S_IMODE((dest / "bin").stat().st_mode) == 0o555
    assert os.readlink(dest / "bin" / "alias") == "tool"
    assert (
        os.readlink(dest / "bin" / "abs") == "/etc/passwd"
    )  # absolute: resolved inside the container
    assert (dest / "bin" / "hard").stat().st_ino == (dest / "bin" / "tool").stat().st_ino
    assert (dest / "etc" / "conf").stat().st_mtime == 42
    assert (dest / "bin").stat().st_mtime == 1_000_000  # set after its children were made
    assert stat.S_ISFIFO((dest / "run" / "fifo").lstat().st_mode)
    os.chmod(dest / "bin", 0o755)  # let tmp_path cleanup in as a non-root user


def test_plain_uncompressed_tar_is_accepted(unpack_members: Callable[..., Path]) -> None:
    dest = unpack_members([member("a", data=b"plain")], compress=False)
    assert (dest / "a").read_bytes() == b"plain"


def test_a_later_member_replaces_an_earlier_one(unpack_members: Callable[..., Path]) -> None:
    dest = unpack_members([member("x", data=b"old"), member("x", data=b"new")])
    assert (dest / "x").read_bytes() == b"new"


# (members, the member the error must name, a word of the reason)
ESCAPES: list[tuple[list[Member], str, str]] = [
    ([member("../evil", data=b"x")], "../evil", "'..'"),
    ([member("a/../../evil", data=b"x")], "a/../../evil", "'..'"),
    ([member("/abs", data=b"x")], "/abs", "absolute"),
    (
        [
            member("link", tarfile.SYMTYPE, linkname="/etc"),
            member("link/passwd", data=b"root::0:0"),
        ],
        "link/passwd",
        "symlink",
    ),
    (
        [member("a/x", data=b"1"), member("a/h", tarfile.LNKTYPE, linkname="../../x")],
        "a/h",
        "outside",
    ),
    ([member("h", tarfile.LNKTYPE, linkname="/etc/shadow")], "h", "outside"),
    ([member("h", tarfile.LNKTYPE, linkname="not/there")], "h", "not earlier"),
    ([member("a/l", tarfile.SYMTYPE, linkname="../../x")], "a/l", "outside"),
    ([member("v", b"V")], "v", "type"),
]


@pytest.mark.parametrize(("members", "named", "reason"), ESCAPES)
def test_escaping_members_are_refused_by_name(
    tmp_path: Path,
    unpack_members: Callable[..., Path],
    members: list[Member],
    named: str,
    reason: str,
) -> None:
    with pytest.raises(UserError) as exc:
        unpack_members(members)
    message = str(exc.value)
    assert repr(named) in message and reason in message and "\n" not in message
    assert_nothing_left(tmp_path)
    assert not (tmp_path / "evil").exists()


def test_device_nodes_are_refused_when_not_root(
    tmp_path: Path, unpack_members: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layers, "_is_root", lambda: False)
    with pytest.raises(UserError, match=r"'dev/sda'.*device nodes only when running as root"):
        unpack_members([member("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)])
    assert_nothing_left(tmp_path)


def test_whiteouts_need_root(
    tmp_path: Path, unpack_members: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layers, "_is_root", lambda: False)
    with pytest.raises(EnvironmentError_, match="needs root"):
        unpack_members([member("etc/.wh.passwd")])
    assert_nothing_left(tmp_path)


def test_wrong_diff_id_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    blob = tmp_path / "layer.tar.gz"
    make_blob(blob, [member("a", data=b"a")])
    wrong = "sha256:" + "0" * 64
    with pytest.raises(UserError, match=r"does not match its diff_id.*" + wrong):
        unpack(blob, wrong, tmp_path / "dest", tmp_path / "tmp")
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_blob_is_refused_and_nothing_is_left(tmp_path: Path, damage: str) -> None:
    blob = tmp_path / "layer.tar.gz"
    diff_id, digest = make_blob(blob, [member("big", data=os.urandom(200_000))])
    data = bytearray(blob.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2 :]
    blob.write_bytes(bytes(data))
    with pytest.raises(
        UserError, match=f"blob {digest} is corrupt \\(its content hashes to sha256:"
    ):
        unpack(blob, diff_id, tmp_path / "dest", tmp_path / "tmp", expected_digest=digest)
    assert_nothing_left(tmp_path)


def test_full_disk_is_one_line_and_nothing_is_left(
    tmp_path: Path, unpack_members: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(*_args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(layers, "_write_file", no_space)
    with pytest.raises(UserError, match="no space left") as exc:
        unpack_members([member("a", data=b"a")])
    assert "\n" not in str(exc.value)
    assert_nothing_left(tmp_path)


def test_check_layer_gives_the_diff_id_of_gzip_and_plain(tmp_path: Path) -> None:
    gz_id, _ = make_blob(
        tmp_path / "a.tar.gz", [member("a", data=b"a"), member("h", tarfile.LNKTYPE, linkname="a")]
    )
    plain_id, _ = make_blob(
        tmp_path / "a.tar",
        [member("a", data=b"a"), member("h", tarfile.LNKTYPE, linkname="a")],
        compress=False,
    )
    assert (
        gz_id
        == plain_id
        == check_layer(tmp_path / "a.tar.gz", "a")
        == check_layer(tmp_path / "a.tar", "a")
    )


@pytest.mark.parametrize(("members", "named", "reason"), ESCAPES)
def test_check_layer_refuses_what_unpack_refuses(
    tmp_path: Path, members: list[Member], named: str, reason: str
) -> None:
    make_blob(tmp_path / "l.tar.gz", members)
    with pytest.raises(UserError) as exc:
        check_layer(tmp_path / "l.tar.gz", "layer x")
    assert repr(named) in str(exc.value) and reason in str(exc.value)
