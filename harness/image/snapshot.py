"""A container's changes: `diff` against its layers, and `upper_to_layer` for `image commit`.

The upper dir is in overlayfs form (a deleted file is a character device 0:0,
a directory whose lower contents are hidden has trusted.overlay.opaque=y); a
layer tarball is in OCI form (`.wh.NAME` and `.wh..wh..opq` empty files). This
module converts the first into the second; harness/image/layers.py converts back
when it unpacks.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import OSFailure, UserError
from harness.image.digest import HashingWriter

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
# Overlay's own bookkeeping (and the host's SELinux labels) are not content.
SKIPPED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "security.selinux")
# With these, an upper entry's data or children live in a lower: not a self-contained layer.
UNSUPPORTED_XATTRS = ("trusted.overlay.redirect", "trusted.overlay.metacopy")
GZIP_LEVEL = 6  # what Docker and containerd use: level 9 costs much more time for ~1 % size


@dataclass(frozen=True)
class LayerInfo:
    """A written layer: sha256 of the tar (diff_id), of the gzip blob (digest), blob bytes, entries."""

    diff_id: str
    digest: str
    size: int
    changes: int


def is_whiteout(st: os.stat_result) -> bool:
    """Whether an lstat result is an overlayfs whiteout (a character device 0:0)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    """Whether a directory carries overlayfs' opaque mark (its lower contents are hidden)."""
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
            return False
        raise


def diff(upper: Path, lowers: Sequence[Path]) -> list[tuple[str, str]]:
    """("A"|"C"|"D", "/path") for each entry of the upper dir, sorted by path.

    "D": a whiteout. "C": the path exists in the image's merged lowers (given
    bottom-to-top). "A": it does not. An opaque dir is reported once, by whether it
    existed; the lower entries it hides are not listed one by one.
    """
    _check_upper(upper)
    changes: list[tuple[str, str]] = []
    try:
        for rel, _path, st in _walk(str(upper)):
            kind = "D" if is_whiteout(st) else "C" if exists_in_lowers(rel, lowers) else "A"
            changes.append((kind, "/" + rel))
    except OSError as e:
        raise OSFailure("diff", e.filename or str(upper), e.errno or 0) from e
    changes.sort(key=lambda change: change[1])
    return changes


def exists_in_lowers(rel: str, lowers: Sequence[Path]) -> bool:
    """Whether a relative path is visible in the overlay of `lowers` (bottom-to-top)."""
    parts = rel.split("/")
    last = len(parts) - 1
    for lower in reversed(lowers):
        path = str(lower)
        hides_below = False
        for depth, name in enumerate(parts):
            path = os.path.join(path, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                break  # not in this layer
            if is_whiteout(st):
                return False  # deleted here, the path itself or a parent
            if depth == last:
                return True
            if not stat.S_ISDIR(st.st_mode):
                return False  # a non-directory hides whatever lower layers had below it
            hides_below = hides_below or is_opaque(path)
        if hides_below:
            return False
    return False


def upper_to_layer(upper: Path, out_path: Path) -> LayerInfo:
    """Write the upper dir as a reproducible gzip tar layer at out_path (atomically); returns its digests.

    Entries sorted by name, owners and mtimes (whole seconds) as on disk, no user
    or group names, gzip header without name or time: the same upper gives the
    same digest. Whiteouts become `.wh.NAME`, opaque dirs get `.wh..wh..opq` as
    their first entry; hardlinks within the upper become tar hardlinks; sockets are
    skipped (a tar cannot hold them).
    """
    _check_upper(upper)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    except OSError as e:
        raise OSFailure("create", str(out_path), e.errno or 0) from e
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as raw:
            blob = HashingWriter(raw)
            with gzip.GzipFile(
                filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=blob, mtime=0
            ) as gz:
                tar_stream = HashingWriter(gz)
                # Stream mode ("w|") only writes; the stubs ask for a full file object.
                with tarfile.open(fileobj=tar_stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                    changes = _write_entries(tar, str(upper))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out_path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OSFailure("write layer from", e.filename or str(upper), e.errno or 0) from e
        raise
    return LayerInfo(diff_id=tar_stream.digest, digest=blob.digest, size=blob.size, changes=changes)


def _write_entries(tar: tarfile.TarFile, root: str) -> int:
    first_link: dict[tuple[int, int], str] = {}
    count = 0
    for rel, path, st in _walk(root):
        parent, _, name = rel.rpartition("/")
        prefix = parent + "/" if parent else ""
        if is_whiteout(st):
            tar.addfile(_whiteout(prefix + WHITEOUT_PREFIX + name, st))
            count += 1
            continue
        if name.startswith(WHITEOUT_PREFIX):
            raise UserError(
                f"{path}: names starting with {WHITEOUT_PREFIX!r} mean deletions in a layer; "
                "accepted: an upper dir without such names (rename the file in the container)"
            )
        if stat.S_ISSOCK(st.st_mode):
            continue
        xattrs = _xattrs(path)
        info = tarfile.TarInfo(rel)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = int(st.st_mtime)
        info.pax_headers = {
            f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")
            for key, value in sorted(xattrs.items())
        }
        count += 1
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            if is_opaque(path):
                # First in the dir, so an unpacker that empties the dir on seeing it
                # cannot drop siblings from this same layer.
                tar.addfile(_whiteout(f"{rel}/{OPAQUE_MARKER}", st))
        elif stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in first_link:
                    info.type, info.linkname = tarfile.LNKTYPE, first_link[key]
                    tar.addfile(info)
                    continue
                first_link[key] = rel
            info.size = st.st_size
            with open(path, "rb") as f:
                tar.addfile(info, f)
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
            tar.addfile(info)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
            tar.addfile(info)
        else:  # a block or (non-whiteout) character device
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            tar.addfile(info)
    return count


def _whiteout(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0
    info.mtime = int(st.st_mtime)
    info.uname = info.gname = ""
    return info


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno == errno.ENOTSUP:
            return {}
        raise
    for name in names:
        if name in UNSUPPORTED_XATTRS:
            raise UserError(
                f"{path} has {name}: its content lives in a lower layer (overlay mounted with "
                "redirect_dir or metacopy on); accepted: an upper dir made by overlay.mount_overlay"
            )
    return {
        name: os.getxattr(path, name, follow_symlinks=False)
        for name in names
        if not name.startswith(SKIPPED_XATTR_PREFIXES)
    }


def _walk(root: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative path, path, lstat) of everything under root, depth-first, in tar-name order."""
    pending = [_children(root, "")]
    while pending:
        if not pending[-1]:
            pending.pop()
            continue
        rel, path, st = pending[-1].pop()
        yield rel, path, st
        if stat.S_ISDIR(st.st_mode):
            pending.append(_children(path, rel + "/"))


def _children(path: str, prefix: str) -> list[tuple[str, str, os.stat_result]]:
    """A dir's entries, last first (popped from the end), ordered by the name they get in the tar."""
    found = []
    with os.scandir(path) as it:
        for entry in it:
            st = entry.stat(follow_symlinks=False)
            key = os.fsencode(WHITEOUT_PREFIX + entry.name if is_whiteout(st) else entry.name)
            found.append((key, prefix + entry.name, entry.path, st))
    found.sort(key=lambda item: item[0], reverse=True)
    return [(rel, full, st) for _key, rel, full, st in found]


def _check_upper(upper: Path) -> None:
    if not upper.is_dir():
        raise UserError(
            f"upper dir {upper} does not exist; accepted: a container's upper directory"
        )
