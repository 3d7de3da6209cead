"""Container root filesystems: overlayfs over an image's layer dirs, and read-only merged views.

Layer dirs are given bottom-to-top, as the image lists them; overlayfs wants
`lowerdir=` top first, so the order is reversed here and nowhere else.

Paths may contain ':' and ',' (layer dirs named `sha256:...`): they are escaped
with '\\' as overlayfs' option parser expects. mount(2) copies at most one page
of option data; when the absolute paths would not fit (some 30+ layers under a
long store path), the layer dirs are given relative to their common parent (upper
and work too, when that is shorter) and the mount is made from there after a
chdir, as containerd and Docker do. The chdir is process-wide, so concurrent
threads must not depend on the cwd during a mount; what still does not fit is
refused with a UserError.

Every mount passes `redirect_dir=off,metacopy=off`: with either on, an upper dir
can hold entries whose data live in a lower, and `snapshot.upper_to_layer` could
not turn it into a self-contained layer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import OSFailure, UserError
from harness.runtime.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_RDONLY,
    MS_REMOUNT,
    SyscallLayer,
    linux,
)

# mount(2) copies at most a page of data, and it must end in a NUL.
MOUNT_DATA_MAX = os.sysconf("SC_PAGE_SIZE") - 1
# Options that keep every upper entry self-contained (see the module docstring).
SAFE_OPTIONS = "redirect_dir=off,metacopy=off"


@dataclass
class Overlay:
    """One mounted overlay: its layer dirs (bottom-to-top), upper, work and mount point."""

    lowers: list[Path]
    upper: Path
    work: Path
    target: Path


def escape(path: str) -> str:
    """A path as overlayfs' option parser reads it: '\\', ':' and ',' escaped with '\\'."""
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def overlay_data(lowers: Sequence[str], upper: str | None, work: str | None) -> str:
    """The mount data string for layer dirs given bottom-to-top (lowerdir is written top first)."""
    data = "lowerdir=" + ":".join(escape(p) for p in reversed(lowers))
    if upper is not None and work is not None:
        data += f",upperdir={escape(upper)},workdir={escape(work)}"
    return f"{data},{SAFE_OPTIONS}"


def mount_overlay(
    lowers: Sequence[Path],
    upper: Path,
    work: Path,
    target: Path,
    *,
    syscalls: SyscallLayer | None = None,
) -> Overlay:
    """Mount a writable overlay of `lowers` (bottom-to-top) on target; creates upper, work, target."""
    if not lowers:
        raise UserError(f"no layer dirs for the overlay on {target}; accepted: one or more dirs")
    for path in (upper, work, target):
        os.makedirs(path, exist_ok=True)
    _mount(syscalls or linux(), [str(p) for p in lowers], str(upper), str(work), str(target))
    return Overlay(list(lowers), upper, work, target)


def mount_readonly(
    lowers: Sequence[Path], target: Path, *, syscalls: SyscallLayer | None = None
) -> None:
    """Mount a read-only merged view of `lowers` (bottom-to-top) on target, creating target."""
    if not lowers:
        raise UserError(f"no layer dirs for the view on {target}; accepted: one or more dirs")
    os.makedirs(target, exist_ok=True)
    layer = syscalls or linux()
    if len(lowers) == 1:
        # overlayfs wants two lowers when there is no upper; a single layer is
        # already its own merged view, so bind it and make the bind read-only
        # (MS_RDONLY is ignored on the first MS_BIND call, hence the remount).
        layer.mount(str(lowers[0]), str(target), None, MS_BIND, None)
        try:
            layer.mount(None, str(target), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
        except BaseException:
            layer.umount2(str(target), MNT_DETACH)
            raise
        return
    _mount(layer, [str(p) for p in lowers], None, None, str(target))


def _mount(
    layer: SyscallLayer, lowers: list[str], upper: str | None, work: str | None, target: str
) -> None:
    data = overlay_data(lowers, upper, work)
    if len(data.encode()) <= MOUNT_DATA_MAX:
        layer.mount("overlay", target, "overlay", 0, data)
        return
    # Too long for one page: the lowers relative to their common parent, mounted
    # from there; upper and work whichever way is shorter.
    parent = os.path.commonpath([os.path.abspath(p) for p in lowers])
    rel_lowers = [os.path.relpath(p, parent) for p in lowers]
    if upper is not None and work is not None:
        upper, work = (
            min(os.path.abspath(p), os.path.relpath(p, parent), key=len) for p in (upper, work)
        )
    data = overlay_data(rel_lowers, upper, work)
    if len(data.encode()) > MOUNT_DATA_MAX:
        raise UserError(
            f"{len(lowers)} layer dirs make {len(data.encode())} bytes of overlay options even "
            f"relative to {parent}; accepted: at most {MOUNT_DATA_MAX} bytes (fewer layers or "
            "shorter paths)"
        )
    target = os.path.abspath(target)
    cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            os.chdir(parent)
        except OSError as e:
            raise OSFailure("chdir", parent, e.errno or 0) from e
        layer.mount("overlay", target, "overlay", 0, data)
    finally:
        os.fchdir(cwd)
        os.close(cwd)


def unmount(
    overlay_or_target: Overlay | Path,
    remove: bool = True,
    *,
    syscalls: SyscallLayer | None = None,
) -> None:
    """Unmount (detaching if busy); with remove, delete the mount point and an Overlay's upper and work.

    Already unmounted is fine. Given only a target path, remove deletes just the
    (then empty) mount point: upper and work are not known.
    """
    if isinstance(overlay_or_target, Overlay):
        target = overlay_or_target.target
        owned: list[Path] = [overlay_or_target.upper, overlay_or_target.work]
    else:
        target, owned = overlay_or_target, []
    layer = syscalls or linux()
    try:
        layer.umount2(str(target), 0)
    except OSFailure as e:
        if e.errno == errno.EBUSY:
            # Something still has a cwd or an open file in it: detach now, the
            # kernel frees the mount when the last user goes.
            layer.umount2(str(target), MNT_DETACH)
        elif e.errno not in (errno.EINVAL, errno.ENOENT):  # not a mount point / gone
            raise
    if not remove:
        return
    # rmdir, never rmtree, for the target: should it still be a mount, a
    # recursive delete would reach into the layers.
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(target)
    for path in owned:
        shutil.rmtree(path, ignore_errors=True)


def is_mounted(target: Path) -> bool:
    """Whether target is a mount point in this process's mount namespace (/proc/self/mountinfo)."""
    wanted = os.path.realpath(target)
    with open("/proc/self/mountinfo", "rb") as f:
        return wanted in mount_points(f.read())


def mount_points(mountinfo: bytes) -> set[str]:
    """The mount points listed in mountinfo text, with the kernel's octal escapes decoded."""
    points: set[str] = set()
    for line in mountinfo.splitlines():
        fields = line.split(b" ", 5)
        if len(fields) > 4:
            points.add(os.fsdecode(_unoctal(fields[4])))
    return points


def _unoctal(field: bytes) -> bytes:
    # The kernel writes ' ', '\t', '\n' and '\\' in paths as \040, \011, \012, \134.
    if b"\\" not in field:
        return field
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)
