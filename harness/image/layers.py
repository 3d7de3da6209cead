"""Unpack one layer blob safely into a directory that overlayfs can stack as a lowerdir.

The blob is decompressed and untarred in one streaming pass that also hashes
the compressed bytes (blob digest) and the tar (diff_id). Members that would
escape the layer (absolute paths, "..", links pointing out, writes through a
symlink), device nodes without root and unknown member types are refused
before anything is written for them. OCI whiteouts become overlayfs ones:
`.wh.NAME` a character device 0:0 named NAME, `.wh..wh..opq` the xattr
trusted.overlay.opaque=y on its directory. Everything happens in a temporary
directory that is renamed to `dest` only after the whole stream matched its
digests, so a half-unpacked layer is never visible.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO

from harness.errors import EnvironmentError_, UserError
from harness.image.digest import CHUNK, HashingReader, parse_digest, sha256_file
from harness.image.tarball import OPAQUE_WHITEOUT, WHITEOUT_PREFIX

OPAQUE_XATTR = "trusted.overlay.opaque"
GZIP_MAGIC = b"\x1f\x8b"
WHITEOUT_META = WHITEOUT_PREFIX + WHITEOUT_PREFIX
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class _Refused(Exception):
    """A member that must not be unpacked; turned into a UserError naming the layer."""


def unpack(
    blob_path: Path,
    expected_diff_id: str,
    dest: Path,
    tmp_root: Path,
    *,
    expected_digest: str | None = None,
) -> None:
    """Unpack a .tar.gz (or plain .tar) layer into dest, verifying its diff_id (and blob digest if given)."""
    expected_diff_id = parse_digest(expected_diff_id, "diff_id")
    name = expected_digest or expected_diff_id
    tmp_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"isobench-{os.getpid()}-unpack-", dir=tmp_root))
    try:
        try:
            with open(blob_path, "rb") as raw:
                compressed, plain = _streams(raw)
                _extract(plain, work)
                plain.drain()  # the tar's zero padding after the end marker is part of the diff_id
                compressed.drain()
        except FileNotFoundError as exc:
            if exc.filename == str(blob_path):
                raise UserError(
                    f"layer blob {name} is missing from the store ({blob_path})"
                ) from None
            raise
        except _Refused as exc:
            raise UserError(f"layer {name}: refusing tar member {exc}") from None
        except (EOFError, zlib.error, gzip.BadGzipFile, tarfile.TarError) as exc:
            raise _corrupt_or_invalid(blob_path, name, expected_digest, exc) from None
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise UserError(
                    f"no space left on the device of {tmp_root} while unpacking layer {name}; "
                    f"accepted: free space there (the layer needs about {_mib(blob_path)} compressed) and retry"
                ) from None
            if exc.errno == errno.EPERM and not _is_root():
                raise EnvironmentError_(f"unpacking layer {name} needs root: {exc}") from None
            raise
        if expected_digest is not None and compressed.digest != expected_digest:
            raise UserError(
                f"blob {expected_digest} is corrupt (its content hashes to {compressed.digest})"
            )
        if plain.digest != expected_diff_id:
            raise UserError(
                f"layer {name} does not match its diff_id: the config says {expected_diff_id}, "
                f"the uncompressed tar hashes to {plain.digest}"
            )
        _commit(work, dest)
    except BaseException:
        remove_tree(work)
        raise


def check_layer(blob_path: Path, what: str) -> str:
    """Read a layer without writing anything: refuse what unpack would refuse; returns its diff_id.

    Lets an import reject an escaping layer before any of it enters the store.
    """
    kinds: dict[str, str] = {}  # archive path -> "dir" | "symlink" | "other", as the tar builds it
    as_root = _is_root()
    try:
        with open(blob_path, "rb") as raw:
            _, plain = _streams(raw)
            with tarfile.open(fileobj=plain, mode="r|", errorlevel=2) as tar:  # type: ignore[call-overload]
                for member in tar:
                    _check_member(member, kinds, as_root)
            plain.drain()
    except _Refused as exc:
        raise UserError(f"{what}: refusing tar member {exc}") from None
    except (EOFError, zlib.error, gzip.BadGzipFile, tarfile.TarError) as exc:
        raise UserError(f"{what} is not a valid tar or tar+gzip layer ({exc})") from None
    return plain.digest


def _check_member(member: tarfile.TarInfo, kinds: dict[str, str], as_root: bool) -> None:
    rel = _member_path(member)
    if rel == "":
        return
    parent = ""
    for part in rel.split("/")[:-1]:
        parent = f"{parent}/{part}".lstrip("/")
        kind = kinds.setdefault(parent, "dir")
        if kind == "symlink":
            raise _Refused(
                f"{member.name!r}: its parent {parent} is a symlink (writing through it)"
            )
        if kind != "dir":
            raise _Refused(f"{member.name!r}: its parent {parent} is not a directory")
    base = rel.rpartition("/")[2]
    if base.startswith(WHITEOUT_PREFIX):
        if base != OPAQUE_WHITEOUT and base[len(WHITEOUT_PREFIX) :] in ("", ".", ".."):
            raise _Refused(f"{member.name!r}: a whiteout names no file")
        return
    if member.issym():
        _check_symlink(rel, member)
    elif member.islnk():
        target = member.linkname
        if target.startswith("/") or ".." in target.split("/"):
            raise _Refused(f"{member.name!r}: hard link to {target!r} points outside the layer")
        if kinds.get("/".join(p for p in target.split("/") if p not in ("", "."))) not in (
            "other",
            "symlink",
        ):
            raise _Refused(
                f"{member.name!r}: hard link to {target!r}, which is not earlier in the layer"
            )
    elif member.ischr() or member.isblk():
        _require_root(as_root, member.name, "device node", refuse=True)
    elif not (member.isreg() or member.isdir() or member.isfifo()):
        raise _Refused(
            f"{member.name!r}: type {member.type!r} is not a file, directory, link, fifo or device"
        )
    kinds[rel] = "dir" if member.isdir() else "symlink" if member.issym() else "other"


def remove_tree(path: Path) -> None:
    """Remove a directory tree even where unpacked modes (0555 dirs) would stop a non-root user."""

    def make_writable(_func: object, failed: str, _exc: object) -> None:
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
                shutil.rmtree(failed, ignore_errors=True)
            else:
                os.unlink(failed)
        except OSError:
            pass  # best effort: what is left is a tmp/ entry that `isobench cleanup` removes

    if not os.path.lexists(path):
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)
    else:
        shutil.rmtree(path, onerror=make_writable)


def _streams(raw: BinaryIO) -> tuple[HashingReader, HashingReader]:
    """(hash of the file, hash of the tar stream); gzip is recognised by its magic bytes."""
    compressed = HashingReader(raw)
    magic = raw.read(2)
    raw.seek(0)
    if magic == GZIP_MAGIC:
        # A forward-only stream: gzip wants seek() in its type, but reading never calls it.
        gz = gzip.GzipFile(fileobj=compressed, mode="rb")  # type: ignore[call-overload]
        return compressed, HashingReader(gz)
    return compressed, compressed


def _extract(stream: HashingReader, root: Path) -> None:
    """Create every member under root; directory modes and mtimes are set last (children change them)."""
    dirs: list[tuple[Path, tarfile.TarInfo]] = []
    as_root = _is_root()
    with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as tar:  # type: ignore[call-overload]
        for member in tar:
            rel = _member_path(member)
            if rel == "":
                continue  # "./": the layer root, made by us
            parent_rel, _, base = rel.rpartition("/")
            parent = _parent_dir(root, parent_rel, member.name)
            if base == OPAQUE_WHITEOUT:
                _require_root(as_root, member.name, "opaque whiteout (an xattr in trusted.*)")
                os.setxattr(parent, OPAQUE_XATTR, b"y", follow_symlinks=False)
                continue
            if base.startswith(WHITEOUT_META):
                continue  # AUFS bookkeeping (.wh..wh.plnk ...): no meaning in OCI, never unpacked
            if base.startswith(WHITEOUT_PREFIX):
                hidden = base[len(WHITEOUT_PREFIX) :]
                if not hidden or hidden in (".", ".."):
                    raise _Refused(f"{member.name!r}: a whiteout names no file")
                _require_root(as_root, member.name, "whiteout (a character device 0:0)")
                if not os.path.lexists(
                    parent / hidden
                ):  # same-layer files win over its whiteouts (OCI)
                    os.mknod(parent / hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0))
                continue
            path = parent / base
            if member.isdir():
                if not (path.is_dir() and not path.is_symlink()):
                    _clear(path)
                    path.mkdir(mode=0o700)
                dirs.append((path, member))
                continue
            _clear(path)
            if member.isreg():
                _write_file(tar, member, path)
            elif member.issym():
                _check_symlink(rel, member)
                os.symlink(member.linkname, path)
            elif member.islnk():
                os.link(_hardlink_source(root, member), path, follow_symlinks=False)
            elif member.isfifo():
                os.mkfifo(path, 0o600)
            elif member.ischr() or member.isblk():
                _require_root(as_root, member.name, "device node", refuse=True)
                kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
                os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
            else:
                raise _Refused(
                    f"{member.name!r}: type {member.type!r} is not a file, directory, link, fifo or device"
                )
            if not member.islnk():  # a hard link shares its target's inode: metadata came with it
                _set_metadata(path, member, as_root)
    for path, member in sorted(dirs, key=lambda d: len(d[0].parts), reverse=True):
        if path.is_dir() and not path.is_symlink():  # a later member may have replaced it
            _set_metadata(path, member, as_root)


def _member_path(member: tarfile.TarInfo) -> str:
    if member.name.startswith("/"):
        raise _Refused(
            f"{member.name!r}: absolute path; accepted: paths relative to the layer root"
        )
    parts = [p for p in member.name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Refused(f"{member.name!r}: a '..' component would leave the layer")
    if "\x00" in member.name:
        raise _Refused(f"{member.name!r}: NUL in the name")
    return "/".join(parts)


def _parent_dir(root: Path, parent_rel: str, name: str) -> Path:
    """The member's parent directory, made if missing; refused if any component is not a real directory."""
    current = root
    for part in parent_rel.split("/") if parent_rel else []:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            current.mkdir(mode=0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise _Refused(
                f"{name!r}: its parent {current.relative_to(root)} is a symlink (writing through it)"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise _Refused(f"{name!r}: its parent {current.relative_to(root)} is not a directory")
    return current


def _check_symlink(rel: str, member: tarfile.TarInfo) -> None:
    # An absolute target resolves inside the container root at run time; a
    # relative one is resolved from the link's directory and must stay inside.
    target = member.linkname
    if not target or "\x00" in target:
        raise _Refused(f"{member.name!r}: empty symlink target")
    if target.startswith("/"):
        return
    depth = len(rel.split("/")) - 1
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise _Refused(f"{member.name!r}: symlink to {target!r} points outside the layer")
        elif part not in ("", "."):
            depth += 1


def _hardlink_source(root: Path, member: tarfile.TarInfo) -> Path:
    target = member.linkname
    if target.startswith("/") or ".." in target.split("/"):
        raise _Refused(f"{member.name!r}: hard link to {target!r} points outside the layer")
    rel = "/".join(p for p in target.split("/") if p not in ("", "."))
    parent_rel, _, base = rel.rpartition("/")
    source = _existing_parent(root, parent_rel, member) / base if base else root
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        raise _Refused(
            f"{member.name!r}: hard link to {target!r}, which is not earlier in the layer"
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise _Refused(f"{member.name!r}: hard link to the directory {target!r}")
    return source


def _existing_parent(root: Path, parent_rel: str, member: tarfile.TarInfo) -> Path:
    current = root
    for part in parent_rel.split("/") if parent_rel else []:
        current = current / part
        if not os.path.lexists(current):
            raise _Refused(
                f"{member.name!r}: hard link to {member.linkname!r}, which is not earlier in the layer"
            )
        if os.path.islink(current) or not current.is_dir():
            raise _Refused(
                f"{member.name!r}: hard link to {member.linkname!r} goes through "
                f"{current.relative_to(root)}, not a directory"
            )
    return current


def _clear(path: Path) -> None:
    """A later member with the same name replaces the earlier one (tar semantics)."""
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    else:
        path.unlink()


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
    source = tar.extractfile(member)
    assert source is not None  # a regular member always has a reader
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(CHUNK):
            out.write(chunk)


def _set_metadata(path: Path, member: tarfile.TarInfo, as_root: bool) -> None:
    if as_root:
        os.chown(path, member.uid, member.gid, follow_symlinks=False)
    if not member.issym():  # chmod after chown: chown clears setuid bits
        os.chmod(path, member.mode & 0o7777)
    os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def _require_root(as_root: bool, name: str, what: str, refuse: bool = False) -> None:
    if as_root:
        return
    if refuse:
        raise _Refused(f"{name!r}: {what}; accepted: device nodes only when running as root")
    raise EnvironmentError_(f"tar member {name!r} is an OCI {what}; unpacking it needs root")


def _commit(work: Path, dest: Path) -> None:
    os.chmod(work, 0o755)
    try:
        os.rename(work, dest)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and dest.is_dir():
            remove_tree(
                work
            )  # another process unpacked the same layer first: same digest, same files
            return
        raise


def _corrupt_or_invalid(
    blob: Path, name: str, expected_digest: str | None, exc: BaseException
) -> UserError:
    actual = sha256_file(blob)
    if expected_digest is not None and actual != expected_digest:
        return UserError(f"blob {expected_digest} is corrupt (its content hashes to {actual})")
    return UserError(
        f"layer {name} is not a valid gzip-compressed tar: {exc}; accepted: an OCI tar or tar+gzip layer"
    )


def _is_root() -> bool:
    return os.geteuid() == 0


def _mib(path: Path) -> str:
    try:
        return f"{path.stat().st_size / (1 << 20):.1f} MiB"
    except OSError:
        return "unknown size"
