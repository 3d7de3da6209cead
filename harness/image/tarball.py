"""Reproducible layer tarballs: sorted entries, fixed owners and mtimes, gzip without a name or time.

Two builds from the same files give the same bytes, so the same diff_id and
blob digest: PAX tar, entries sorted by path, uid/gid 0 with empty user and
group names, one mtime for every entry (SOURCE_DATE_EPOCH or 0), gzip with
mtime 0 and no file name. The uncompressed stream (diff_id) and the compressed
stream (blob digest) are hashed in the same pass that writes the file.

Deletions are OCI whiteouts: `Entry.whiteout("a/b")` writes `a/.wh.b`,
`Entry.opaque("a")` writes `a/.wh..wh..opq`. Walking a directory (an overlay
upper dir) turns overlayfs whiteouts (character device 0:0) and opaque
directories (xattr trusted.overlay.opaque=y) into those entries.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from harness.image.digest import HashingWriter

MEDIA_TYPE_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
# Level 6 (zlib's default) is within a few per cent of 9 on these binaries at half the time.
GZIP_LEVEL = 6

Kind = Literal["file", "dir", "symlink", "hardlink", "fifo", "char", "block"]
_TAR_TYPES: dict[str, bytes] = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
}


def clean_path(path: str) -> str:
    """An archive path in canonical form: relative, no "." or empty components; ".." is refused."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"archive path {path!r} has a '..' component")
    return "/".join(parts)


def default_mtime() -> int:
    """The fixed mtime of every entry: $SOURCE_DATE_EPOCH (reproducible-builds.org) or 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    return int(value) if value.isdigit() else 0


@dataclass(frozen=True)
class Entry:
    """One member of a layer: its archive path, kind, mode and where its content comes from.

    A "file" has its bytes in `source` (a host file) or `data`; "symlink" and
    "hardlink" use `target` (for a hardlink: the archive path of an earlier entry).
    `uid`, `gid` and `mtime` are used only by write_layer(preserve=True).
    """

    path: str
    kind: Kind
    mode: int = 0o644
    source: Path | None = None
    data: bytes = b""
    target: str = ""
    major: int = 0
    minor: int = 0
    uid: int = 0
    gid: int = 0
    mtime: int = 0

    @classmethod
    def from_host(cls, path: str, host: Path, st: os.stat_result | None = None) -> Entry:
        """The entry for a host file, directory, symlink, fifo or device, as lstat sees it."""
        st = st if st is not None else os.lstat(host)
        entry = cls(
            clean_path(path),
            "file",
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            mtime=int(st.st_mtime),
        )
        if stat.S_ISREG(st.st_mode):
            return replace(entry, source=host)
        if stat.S_ISDIR(st.st_mode):
            return replace(entry, kind="dir")
        if stat.S_ISLNK(st.st_mode):
            return replace(entry, kind="symlink", target=os.readlink(host))
        if stat.S_ISFIFO(st.st_mode):
            return replace(entry, kind="fifo")
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            kind: Kind = "char" if stat.S_ISCHR(st.st_mode) else "block"
            return replace(entry, kind=kind, major=os.major(st.st_rdev), minor=os.minor(st.st_rdev))
        raise ValueError(f"{host}: a socket or unknown file type cannot go into a layer")

    @classmethod
    def whiteout(cls, path: str) -> Entry:
        """`path` is deleted in this layer: an empty `.wh.NAME` file beside it."""
        parent, _, name = clean_path(path).rpartition("/")
        return cls(f"{parent}/{WHITEOUT_PREFIX}{name}".lstrip("/"), "file", mode=0o600)

    @classmethod
    def opaque(cls, directory: str) -> Entry:
        """`directory` hides everything lower layers have in it: `DIR/.wh..wh..opq`."""
        return cls(f"{clean_path(directory)}/{OPAQUE_WHITEOUT}".lstrip("/"), "file", mode=0o600)


@dataclass(frozen=True)
class LayerBlob:
    """A gzip layer file and what the store needs to know about it.

    `path` is the .tar.gz file, `diff_id` the sha256 of the uncompressed tar,
    `size` the compressed size. `digest` (sha256 of the file) may be None when
    unknown; the store computes it while copying the blob in.
    """

    path: Path
    diff_id: str
    size: int
    digest: str | None = None
    uncompressed_size: int | None = None
    entries: int | None = None


def write_layer(
    entries: Sequence[Entry | tuple[str, Path]],
    out_path: Path,
    *,
    mtime: int | None = None,
    preserve: bool = False,
) -> LayerBlob:
    """Write a reproducible .tar.gz layer; returns its diff_id, blob digest and sizes.

    `entries` are Entry and (archive path, host path) pairs. By default every
    entry gets uid and gid 0 and the mtime `mtime` (default: default_mtime());
    preserve=True keeps each entry's own uid, gid and mtime. A container's upper
    dir becomes a layer through snapshot.upper_to_layer, not here.
    """
    members = [e if isinstance(e, Entry) else Entry.from_host(e[0], e[1]) for e in entries]
    members = _sorted_unique(members)
    fixed_mtime = default_mtime() if mtime is None else mtime
    with open(out_path, "wb") as out:
        compressed = HashingWriter(out)
        gz = gzip.GzipFile(
            filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=compressed, mtime=0
        )
        with gz:
            plain = HashingWriter(gz)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for entry in members:
                    _add(tar, entry, entry.mtime if preserve else fixed_mtime, preserve)
    return LayerBlob(
        path=out_path,
        diff_id=plain.digest,
        size=compressed.size,
        digest=compressed.digest,
        uncompressed_size=plain.size,
        entries=len(members),
    )


def _add(tar: tarfile.TarFile, entry: Entry, mtime: int, preserve: bool) -> None:
    info = tarfile.TarInfo(entry.path)
    info.type = _TAR_TYPES[entry.kind]
    info.mode = entry.mode & 0o7777
    info.mtime = mtime
    info.uid, info.gid = (entry.uid, entry.gid) if preserve else (0, 0)
    info.uname = info.gname = ""
    info.linkname = entry.target
    info.devmajor, info.devminor = entry.major, entry.minor
    if entry.kind != "file":
        tar.addfile(info)
    elif entry.source is None:
        info.size = len(entry.data)
        tar.addfile(info, _BytesReader(entry.data))
    else:
        with open(entry.source, "rb") as f:
            info.size = os.fstat(f.fileno()).st_size
            tar.addfile(info, f)


class _BytesReader:
    """The read() tarfile.addfile needs, over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        chunk = bytes(self._data[self._pos : end])
        self._pos += len(chunk)
        return chunk


def _sort_key(path: str) -> bytes:
    # Sorting bytes, not str, makes the order independent of locale and of how
    # undecodable names were escaped.
    return path.encode("utf-8", "surrogateescape")


def _sorted_unique(members: list[Entry]) -> list[Entry]:
    by_path: dict[str, Entry] = {}
    for entry in members:
        if entry.path == "":
            continue  # the layer root itself: unpackers make it
        previous = by_path.get(entry.path)
        if previous is not None and previous != entry:
            raise ValueError(f"two different entries for {entry.path!r} in one layer")
        by_path[entry.path] = entry
    return [by_path[p] for p in sorted(by_path, key=_sort_key)]
