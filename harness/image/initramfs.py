"""The workload image as a VM initramfs: a reproducible gzip-compressed newc cpio, plus a reader.

Entries are the files under a root directory (the image's merged layers), sorted,
with mtime 0, uid/gid 0 and inode numbers assigned in order, so the same files
always give the same bytes. Hardlinks are stored the way newc means them to be:
every member of a group shares one inode number and the data travels once, with
the last member in archive order (GNU cpio does the same; the kernel's unpacker
links the earlier names and then writes the data). On top of the root go the
kernel modules (/lib/modules/isobench/, with a load-order file), a /dev/console
node (the kernel opens it for init's stdio before anything is mounted) and /init.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.errors import OSFailure, UserError
from harness.image.kmod import collect_modules

MODULE_DIR = "lib/modules/isobench"
AGENT_PATH = "/usr/bin/isobench-agent"  # harness/image/csrc/isobench-agent.c
SCRATCH_SERIAL = "isobench-scratch"  # the virtio-blk serial of the host's scratch disk
SCRATCH_MOUNT = "/scratch"
NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_LEN = 110
MAX_FILE_SIZE = 0xFFFFFFFF  # newc stores sizes in 8 hex digits
GZIP_LEVEL = 6  # gzip's own default: level 9 costs several times the time for about 1 % less size
CHUNK = 1 << 20

# The default /init, a busybox sh script. The kernel gives PID 1 no PATH and only
# a /dev/console opened from the archive, so the script mounts what every tool
# expects, loads the modules in dependency order (an insmod failure is reported
# but not fatal, so a missing optional driver still leaves a debuggable guest),
# mounts the host's scratch disk (a virtio-blk disk whose serial is SCRATCH_SERIAL;
# sysfs shows it, no udev needed) at /scratch, says it is ready, then becomes the
# guest agent. Without an agent it powers off,
# so a boot-only probe guest ends by itself; `isobench.shell` on the kernel
# command line gives a shell on the console instead.
DEFAULT_INIT = f"""#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmp /tmp
if [ -f /{MODULE_DIR}/load-order ]; then
    while read -r m; do
        insmod "/{MODULE_DIR}/$m" || echo "isobench-init: insmod $m failed"
    done < /{MODULE_DIR}/load-order
fi
for serial in /sys/block/vd*/serial; do
    [ -f "$serial" ] && [ "$(cat "$serial")" = {SCRATCH_SERIAL} ] || continue
    dev=${{serial%/serial}}
    mkdir -p {SCRATCH_MOUNT}
    mount -t ext4 "/dev/${{dev##*/}}" {SCRATCH_MOUNT} || echo "isobench-init: mount scratch failed"
done
echo "isobench-init: ready"
if [ -x {AGENT_PATH} ]; then
    exec {AGENT_PATH}
fi
case " $(cat /proc/cmdline) " in
    *" isobench.shell "*) exec sh ;;
esac
poweroff -f
"""


@dataclass(frozen=True)
class InitramfsInfo:
    """What write_initramfs wrote."""

    path: Path
    size_bytes: int
    entries: int  # archive members, the trailer not counted
    sha256: str  # of the gzip file, hex
    modules: list[str]  # file names under /lib/modules/isobench/, in load order


@dataclass(frozen=True)
class NewcEntry:
    """One archive member as read back; `data` is the symlink target for symlinks."""

    name: str
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    data: bytes
    rdev_major: int
    rdev_minor: int


@dataclass(frozen=True)
class _Member:
    """One entry to write: from a file under root (`source`) or made up here (`data`)."""

    mode: int
    source: Path | None = None
    data: bytes = b""
    size: int = 0
    rdev: int = 0
    link_key: tuple[int, int] | None = None  # (st_dev, st_ino) of a file with st_nlink > 1


def write_initramfs(
    root: Path, out: Path, modules: list[Path] | None = None, init_script: str | None = None
) -> InitramfsInfo:
    """Pack `root` plus kernel modules and an /init into a gzip newc cpio at `out`."""
    if not root.is_dir():
        raise UserError(
            f"initramfs root {root}: not a directory; accepted: a directory holding the image's root filesystem"
        )
    if not out.parent.is_dir():
        raise UserError(
            f"initramfs output {out}: {out.parent} is not a directory; accepted: a path in an existing directory"
        )
    script = DEFAULT_INIT if init_script is None else init_script
    if not script.startswith("#!"):
        raise UserError(
            "init script: does not start with #!; accepted: a script with an interpreter line such as #!/bin/sh"
        )
    members = _scan(root)
    loaded = collect_modules(modules or [])
    if loaded:
        for directory in ("lib", "lib/modules", MODULE_DIR):
            members.setdefault(directory, _Member(mode=stat.S_IFDIR | 0o755))
        for mod in loaded:
            members[f"{MODULE_DIR}/{mod.file_name}"] = _made(mod.data, 0o644)
        order = "".join(f"{mod.file_name}\n" for mod in loaded).encode()
        members[f"{MODULE_DIR}/load-order"] = _made(order, 0o644)
    members.setdefault("dev", _Member(mode=stat.S_IFDIR | 0o755))
    members.setdefault("dev/console", _Member(mode=stat.S_IFCHR | 0o600, rdev=os.makedev(5, 1)))
    # Ours replaces any /init the image has: the kernel runs /init and nothing else from an initramfs.
    members["init"] = _made(script.encode(), 0o755)
    interpreter = script[2:].split(maxsplit=1)[0] if script[2:].strip() else ""
    if _resolve(members, interpreter) is None:
        raise UserError(
            f"init interpreter {interpreter or '(none)'} is not in the image under {root}; "
            "accepted: an image with /bin/sh (busybox) or an init script whose #! names a file in the image"
        )
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0
            ) as gz,
        ):
            count = _write_members(gz, members)
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSFailure("write initramfs", str(out), e.errno or 0) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    digest = hashlib.sha256()
    with open(out, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return InitramfsInfo(
        out, out.stat().st_size, count, digest.hexdigest(), [m.file_name for m in loaded]
    )


def _made(data: bytes, perms: int) -> _Member:
    return _Member(mode=stat.S_IFREG | perms, data=data, size=len(data))


def _scan(root: Path) -> dict[str, _Member]:
    """Every entry under root by archive name (relative, no leading slash), symlinks not followed."""
    members: dict[str, _Member] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(root / rel if rel else root) as it:
                children = list(it)
        except OSError as e:
            raise OSFailure("scan initramfs root", str(root / rel), e.errno or 0) from e
        for child in children:
            name = f"{rel}/{child.name}" if rel else child.name
            st = child.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISCHR(mode) and st.st_rdev == 0:
                continue  # an overlayfs whiteout: a deletion marker, not a file
            if stat.S_ISDIR(mode):
                members[name] = _Member(mode=mode)
                stack.append(name)
            elif stat.S_ISLNK(mode):
                target = os.fsencode(os.readlink(child.path))
                members[name] = _Member(mode=mode, data=target, size=len(target))
            elif stat.S_ISREG(mode):
                if st.st_size > MAX_FILE_SIZE:
                    raise UserError(
                        f"{child.path}: {st.st_size} bytes; accepted: files under 4 GiB (newc's limit)"
                    )
                key = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
                members[name] = _Member(
                    mode=mode, source=Path(child.path), size=st.st_size, link_key=key
                )
            else:  # device nodes, fifos, sockets: metadata only
                members[name] = _Member(mode=mode, rdev=st.st_rdev)
    return members


def _resolve(members: dict[str, _Member], path: str, hops: int = 0) -> str | None:
    """The archive name `path` leads to, following symlinks inside the archive; None when missing."""
    if not path.startswith("/") or hops > 40:
        return None
    current = ""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for i, part in enumerate(parts):
        if part == "..":
            current = current.rpartition("/")[0]
            continue
        current = f"{current}/{part}" if current else part
        member = members.get(current)
        if member is None:
            return None
        if stat.S_ISLNK(member.mode):
            target = os.fsdecode(member.data)
            base = "/" if target.startswith("/") else "/" + current.rpartition("/")[0]
            rest = "/".join([target, *parts[i + 1 :]])
            return _resolve(members, os.path.join(base, rest), hops + 1)
    return current or None


def _write_members(out: gzip.GzipFile, members: dict[str, _Member]) -> int:
    names = sorted(members, key=lambda n: n.split("/"))  # parents before children
    subdirs: dict[str, int] = {}
    groups: dict[tuple[int, int], list[str]] = {}
    for name in names:
        member = members[name]
        if stat.S_ISDIR(member.mode):
            parent = name.rpartition("/")[0]
            subdirs[parent] = subdirs.get(parent, 0) + 1
        if member.link_key is not None:
            groups.setdefault(member.link_key, []).append(name)
    inos: dict[tuple[int, int], int] = {}
    next_ino = 1
    for name in names:
        member = members[name]
        group = groups[member.link_key] if member.link_key is not None else None
        if group is not None and member.link_key is not None:
            # One inode number for the whole group, the data with its last member.
            ino = inos.setdefault(member.link_key, next_ino)
            nlink, size = len(group), member.size if name == group[-1] else 0
        else:
            ino = next_ino
            nlink = 2 + subdirs.get(name, 0) if stat.S_ISDIR(member.mode) else 1
            size = member.size
        if ino == next_ino:
            next_ino += 1
        _write_header(out, name, ino, member.mode, nlink, size, member.rdev)
        if member.source is None:
            out.write(member.data)
        elif size:
            _copy_file(out, member.source, size)
        out.write(_pad(size))
    _write_header(out, TRAILER, 0, 0, 1, 0, 0)
    return len(names)


def _write_header(
    out: gzip.GzipFile, name: str, ino: int, mode: int, nlink: int, size: int, rdev: int
) -> None:
    encoded = os.fsencode(name) + b"\0"
    # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    rdev_major, rdev_minor = os.major(rdev), os.minor(rdev)
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev_major, rdev_minor, len(encoded), 0)
    out.write(
        NEWC_MAGIC
        + b"".join(b"%08X" % f for f in fields)
        + encoded
        + _pad(HEADER_LEN + len(encoded))
    )


def _copy_file(out: gzip.GzipFile, source: Path, size: int) -> None:
    try:
        with open(source, "rb") as f:
            remaining = size
            while remaining:
                chunk = f.read(min(CHUNK, remaining))
                if not chunk:
                    raise UserError(
                        f"{source}: shrank while being archived; accepted: a root that does not change during the build"
                    )
                out.write(chunk)
                remaining -= len(chunk)
    except OSError as e:
        raise OSFailure("read", str(source), e.errno or 0) from e


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def read_newc(path: Path) -> Iterator[NewcEntry]:
    """The members of a gzip-compressed (or plain) newc archive, up to its trailer, in archive order.

    Every member of a hardlink group is given the group's data, wherever in the group it was stored.
    """
    try:
        blob = path.read_bytes()
        if blob[:2] == b"\x1f\x8b":
            blob = gzip.decompress(blob)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(
            f"{path}: cannot read as gzip ({e}); accepted: a gzip-compressed or plain newc cpio archive"
        ) from e
    entries = _parse(io.BytesIO(blob), path)
    shared: dict[int, bytes] = {}
    for entry in entries:
        if stat.S_ISREG(entry.mode) and entry.nlink > 1 and entry.data:
            shared[entry.ino] = entry.data
    for entry in entries:
        linked = (
            stat.S_ISREG(entry.mode) and entry.nlink > 1 and not entry.data and entry.ino in shared
        )
        yield dataclasses.replace(entry, data=shared[entry.ino]) if linked else entry


def _parse(f: io.BytesIO, path: Path) -> list[NewcEntry]:
    entries: list[NewcEntry] = []
    while True:
        offset = f.tell()
        header = f.read(HEADER_LEN)
        if len(header) < HEADER_LEN:
            raise UserError(
                f"{path}: archive ends at byte {offset} without a {TRAILER} entry; accepted: a complete newc archive"
            )
        if header[:6] != NEWC_MAGIC:
            raise UserError(
                f"{path}: bad magic {header[:6]!r} at byte {offset}; accepted: newc cpio (070701)"
            )
        try:
            fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError as e:
            raise UserError(
                f"{path}: bad header at byte {offset}; accepted: newc hex fields"
            ) from e
        ino, mode, uid, gid, nlink, mtime, size, _, _, rmaj, rmin, namesize, _ = fields
        name = os.fsdecode(f.read(namesize).rstrip(b"\0"))
        f.read(len(_pad(HEADER_LEN + namesize)))
        if name == TRAILER:
            return entries
        data = f.read(size)
        if len(data) < size:
            raise UserError(
                f"{path}: member {name} is truncated; accepted: a complete newc archive"
            )
        f.read(len(_pad(size)))
        entries.append(NewcEntry(name, ino, mode, uid, gid, nlink, mtime, data, rmaj, rmin))
