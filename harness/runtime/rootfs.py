"""The container's root filesystem: propagation, the spec's mounts, /dev, pivot_root, masks.

Every function here runs in the container's init process, inside its new mount
namespace and before pivot_root (except the post-pivot ones, named as such).
Mount targets are resolved inside the rootfs without following symlinks out of
it (`secure_join`), so a hostile image cannot make the runtime mount over a host
path.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from harness.errors import OSFailure, UserError
from harness.runtime import syscalls as sc
from harness.runtime.cgroups.fs import parse_mountinfo
from harness.runtime.spec import Device, DeviceRule, Mount, Spec
from harness.runtime.syscalls import SyscallLayer

# mount(8) option -> (clear the flag?, flag). Anything not here is passed as data.
MOUNT_FLAGS: dict[str, tuple[bool, int]] = {
    "ro": (False, sc.MS_RDONLY),
    "rw": (True, sc.MS_RDONLY),
    "nosuid": (False, sc.MS_NOSUID),
    "suid": (True, sc.MS_NOSUID),
    "nodev": (False, sc.MS_NODEV),
    "dev": (True, sc.MS_NODEV),
    "noexec": (False, sc.MS_NOEXEC),
    "exec": (True, sc.MS_NOEXEC),
    "sync": (False, sc.MS_SYNCHRONOUS),
    "async": (True, sc.MS_SYNCHRONOUS),
    "dirsync": (False, sc.MS_DIRSYNC),
    "remount": (False, sc.MS_REMOUNT),
    "mand": (False, sc.MS_MANDLOCK),
    "nomand": (True, sc.MS_MANDLOCK),
    "atime": (True, sc.MS_NOATIME),
    "noatime": (False, sc.MS_NOATIME),
    "diratime": (True, sc.MS_NODIRATIME),
    "nodiratime": (False, sc.MS_NODIRATIME),
    "bind": (False, sc.MS_BIND),
    "rbind": (False, sc.MS_BIND | sc.MS_REC),
    "relatime": (False, sc.MS_RELATIME),
    "norelatime": (True, sc.MS_RELATIME),
    "strictatime": (False, sc.MS_STRICTATIME),
    "nostrictatime": (True, sc.MS_STRICTATIME),
    "lazytime": (False, sc.MS_LAZYTIME),
    "nolazytime": (True, sc.MS_LAZYTIME),
    "nosymfollow": (False, sc.MS_NOSYMFOLLOW),
    "symfollow": (True, sc.MS_NOSYMFOLLOW),
}
PROPAGATION_FLAGS: dict[str, int] = {
    "private": sc.MS_PRIVATE,
    "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED,
    "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE,
    "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE,
    "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}
# Options that only mean something to other runtimes; accepted and ignored.
IGNORED_OPTIONS = frozenset({"tmpcopyup", "idmap", "ridmap"})

# The standard devices every container gets (runc's AllowedDevices minus the
# ptmx/pts pair, which come from the devpts mount).
STANDARD_DEVICES: tuple[tuple[str, int, int], ...] = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
# Device-cgroup rules appended after the spec's own (runc's AllowedDevices):
# mknod of anything, then use of the standard devices and of the pty pair.
STANDARD_DEVICE_RULES: tuple[DeviceRule, ...] = (
    DeviceRule(allow=True, type="c", access="m"),
    DeviceRule(allow=True, type="b", access="m"),
    *(
        DeviceRule(allow=True, type="c", major=major, minor=minor)
        for _, major, minor in STANDARD_DEVICES
    ),
    DeviceRule(allow=True, type="c", major=5, minor=2),  # /dev/ptmx
    DeviceRule(allow=True, type="c", major=136),  # /dev/pts/*
)
DEV_SYMLINKS: tuple[tuple[str, str], ...] = (
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
)
MAX_SYMLINKS = 255


@dataclass(frozen=True)
class ParsedOptions:
    """A mount's options split into flags, propagation flags and the data string."""

    flags: int
    clear: int
    propagation: tuple[int, ...]
    data: str


def parse_mount_options(options: tuple[str, ...]) -> ParsedOptions:
    """Split mount(8)-style options the way runc's parseMountOptions does."""
    flags = 0
    clear = 0
    propagation: list[int] = []
    data: list[str] = []
    for option in options:
        if option in MOUNT_FLAGS:
            is_clear, flag = MOUNT_FLAGS[option]
            if is_clear:
                flags &= ~flag
                clear |= flag
            else:
                flags |= flag
                clear &= ~flag
        elif option in PROPAGATION_FLAGS:
            propagation.append(PROPAGATION_FLAGS[option])
        elif option not in IGNORED_OPTIONS:
            data.append(option)
    return ParsedOptions(flags, clear, tuple(propagation), ",".join(data))


def secure_join(root: str, unsafe: str) -> str:
    """root + unsafe, with every symlink resolved as if root were "/" (never escapes root).

    A missing component ends the walk: the rest is appended lexically and will be
    created as plain directories by the caller, so it cannot be a symlink.
    """
    root = os.path.abspath(root)
    pending = [p for p in unsafe.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            resolved.extend(p for p in pending if p not in (".", ""))
            # Lexical ".." in the unresolved tail must not climb out either.
            return os.path.join(root, *_clamp(resolved))
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise OSFailure("secure_join", candidate, errno.ELOOP)
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p] + pending
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _clamp(parts: list[str]) -> list[str]:
    out: list[str] = []
    for part in parts:
        if part == "..":
            if out:
                out.pop()
        elif part != ".":
            out.append(part)
    return out


def _mkdir_all(path: str) -> None:
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise OSFailure("mkdir", path, exc.errno or 0) from None


def _ensure_target(target: str, source_is_dir: bool) -> None:
    """Create a mount point: a directory, or an empty file for a file bind mount."""
    if os.path.lexists(target):
        return
    if source_is_dir:
        _mkdir_all(target)
        return
    _mkdir_all(os.path.dirname(target))
    try:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    except OSError as exc:
        raise OSFailure("create mount point", target, exc.errno or 0) from None


def set_root_propagation(spec: Spec, sys: SyscallLayer) -> None:
    """Make / private (or the spec's rootfsPropagation) so nothing leaks back to the host."""
    prop = spec.linux.rootfs_propagation or "rprivate"
    sys.mount(None, "/", None, PROPAGATION_FLAGS[prop] | sc.MS_REC, None)


def bind_rootfs(rootfs: str, sys: SyscallLayer) -> None:
    """pivot_root needs the new root to be a mount point: bind it onto itself."""
    sys.mount(rootfs, rootfs, None, sc.MS_BIND | sc.MS_REC, None)


@dataclass(frozen=True)
class CgroupView:
    """What the container's /sys/fs/cgroup mount shows: its own cgroup, never the host's tree."""

    version: int
    paths: dict[str, str]  # controller (or "name=X", or "" on v2) -> the container's cgroup dir
    namespaced: bool  # in a cgroup namespace: fresh cgroupfs mounts are rooted at its cgroup


def mount_one(rootfs: str, mount: Mount, cgroup: CgroupView, sys: SyscallLayer) -> None:
    """Mount one entry of the spec's `mounts`, target resolved inside the rootfs."""
    opts = parse_mount_options(mount.options)
    target = secure_join(rootfs, mount.destination)
    is_bind = bool(opts.flags & sc.MS_BIND) or mount.type == "bind"
    if is_bind:
        source = mount.source or ""
        if not os.path.exists(source):
            raise UserError(
                f"config.json: mounts: bind source {source!r} for {mount.destination} does not "
                "exist; accepted: an existing host path"
            )
        _ensure_target(target, os.path.isdir(source))
        flags = sc.MS_BIND | (opts.flags & sc.MS_REC)
        sys.mount(source, target, None, flags, None)
        # A bind mount ignores every other flag until it is remounted.
        extra = opts.flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT)
        if extra:
            sys.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | extra, None)
    elif mount.type == "cgroup":
        _mount_cgroup(target, opts, cgroup, sys)
    else:
        _ensure_target(target, True)
        # With the flags at mount time, never a later superblock remount: inside a
        # user namespace the kernel refuses to remount sysfs read-only (EPERM).
        sys.mount(mount.source or mount.type, target, mount.type, opts.flags, opts.data)
    for flag in opts.propagation:
        sys.mount(None, target, None, flag, None)


def _mount_cgroup(target: str, opts: ParsedOptions, cgroup: CgroupView, sys: SyscallLayer) -> None:
    """The container's own cgroup at /sys/fs/cgroup, like runc's mountCgroupV1/V2.

    In a cgroup namespace a fresh cgroupfs mount is rooted at the container's
    cgroup. Without one it would show the host's whole tree (every other
    container included), so the container's own directories are bind-mounted.
    """
    _ensure_target(target, True)
    if cgroup.version == 2:
        _mount_hierarchy(
            target, "cgroup2", "cgroup2", None, cgroup.paths.get(""), opts.flags, cgroup, sys
        )
        return
    sys.mount("tmpfs", target, "tmpfs", opts.flags & ~sc.MS_RDONLY, "mode=755")
    for name, options in v1_hierarchies():
        own = next((cgroup.paths[o] for o in options.split(",") if o in cgroup.paths), None)
        if own is None and not cgroup.namespaced:
            continue  # a hierarchy we did not join: showing it would show the host's
        sub = os.path.join(target, name)
        _mkdir_all(sub)
        _mount_hierarchy(sub, "cgroup", "cgroup", options, own, opts.flags, cgroup, sys)
    if opts.flags & sc.MS_RDONLY:
        sys.mount(None, target, None, sc.MS_REMOUNT | sc.MS_BIND | opts.flags, None)


def _mount_hierarchy(
    target: str,
    source: str,
    fstype: str,
    options: str | None,
    own: str | None,
    flags: int,
    cgroup: CgroupView,
    sys: SyscallLayer,
) -> None:
    if cgroup.namespaced or own is None:
        sys.mount(source, target, fstype, flags, options)
        return
    sys.mount(own, target, None, sc.MS_BIND, None)
    sys.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | flags, None)


def v1_hierarchies() -> list[tuple[str, str]]:
    """(directory name, mount options) of each v1 hierarchy on the host, from mountinfo."""
    with open("/proc/self/mountinfo") as f:
        entries = parse_mountinfo(f.read())
    return [
        (
            os.path.basename(entry.mountpoint),
            ",".join(o for o in entry.super_options if o not in ("rw", "ro", "relatime")),
        )
        for entry in entries
        if entry.fstype == "cgroup"
    ]


def create_devices(rootfs: str, extra: tuple[Device, ...], sys: SyscallLayer, bind: bool) -> None:
    """The standard device nodes and the spec's linux.devices, plus /dev's symlinks.

    mknod needs CAP_MKNOD in the initial user namespace; inside a user namespace
    the host's nodes are bind-mounted instead (runc does the same).
    """
    dev = os.path.join(rootfs, "dev")
    # mknod applies the umask; the nodes must be exactly 0666 (runc sets umask 0 here too).
    old_umask = os.umask(0)
    try:
        for name, major, minor in STANDARD_DEVICES:
            _make_device(os.path.join(dev, name), "c", major, minor, 0o666, bind, sys)
        for device in extra:
            mode = device.file_mode if device.file_mode is not None else 0o666
            node = secure_join(rootfs, device.path)
            _make_device(node, device.type, device.major, device.minor, mode, bind, sys)
            if device.uid is not None or device.gid is not None:
                os.chown(
                    node,
                    device.uid if device.uid is not None else -1,
                    device.gid if device.gid is not None else -1,
                )
    finally:
        os.umask(old_umask)
    for src, name in DEV_SYMLINKS:
        link = os.path.join(dev, name)
        if not os.path.lexists(link):
            os.symlink(src, link)
    if os.path.exists("/proc/kcore") and not os.path.lexists(os.path.join(dev, "core")):
        os.symlink("/proc/kcore", os.path.join(dev, "core"))


def _make_device(
    path: str, kind: str, major: int, minor: int, mode: int, bind: bool, sys: SyscallLayer
) -> None:
    if os.path.lexists(path):
        os.unlink(path)
    _mkdir_all(os.path.dirname(path))
    if bind:
        host = f"/dev/{os.path.basename(path)}"
        _ensure_target(path, False)
        sys.mount(host, path, None, sc.MS_BIND, None)
        return
    file_type = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[kind]
    try:
        os.mknod(path, file_type | mode, os.makedev(major, minor))
    except OSError as exc:
        raise OSFailure("mknod", path, exc.errno or 0) from None


def pivot_root(rootfs: str, sys: SyscallLayer) -> None:
    """Make rootfs the new / and detach the old root.

    pivot_root(".", ".") stacks the old root on top of the new one at the same
    place (runc's pivotRoot explains it), so no put_old directory is needed. The
    old root is made rslave first so that detaching it does not propagate an
    unmount back to the host's mounts.
    """
    os.chdir(rootfs)
    sys.pivot_root(".", ".")
    sys.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC, None)
    sys.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def mask_paths(paths: tuple[str, ...], sys: SyscallLayer) -> None:
    """After pivot_root: hide each path (directories under a read-only tmpfs, files under /dev/null)."""
    for path in paths:
        try:
            is_dir = os.path.isdir(path) and not os.path.islink(path)
            if is_dir:
                sys.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY, None)
            elif os.path.lexists(path):
                sys.mount("/dev/null", path, None, sc.MS_BIND, None)
        except OSFailure as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise


def readonly_paths(paths: tuple[str, ...], sys: SyscallLayer) -> None:
    """After pivot_root: bind each path onto itself and remount it read-only.

    The remount keeps the flags the kernel has locked on the source mount
    (nosuid, nodev, noexec), or it would fail with EPERM inside a user namespace.
    """
    for path in paths:
        if not os.path.lexists(path):
            continue
        sys.mount(path, path, None, sc.MS_BIND | sc.MS_REC, None)
        sys.mount(
            None, path, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | _locked_flags(path), None
        )


def remount_root_readonly(sys: SyscallLayer) -> None:
    """After pivot_root: root.readonly."""
    sys.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | _locked_flags("/"), None)


def _locked_flags(path: str) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    flags = 0
    for vfs_flag, ms_flag in (
        (os.ST_NOSUID, sc.MS_NOSUID),
        (os.ST_NODEV, sc.MS_NODEV),
        (os.ST_NOEXEC, sc.MS_NOEXEC),
    ):
        if st.f_flag & vfs_flag:
            flags |= ms_flag
    return flags


def write_sysctls(sysctls: tuple[tuple[str, str], ...]) -> None:
    """After /proc is mounted in the container's namespaces: linux.sysctl."""
    for key, value in sysctls:
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            raise OSFailure("write sysctl", key, exc.errno or 0) from None


def enter_cwd(cwd: str) -> None:
    """After pivot_root: chdir to process.cwd and prove it is inside the new root.

    runc CVE-2024-21626: a cwd reached through a leaked host fd (/proc/self/fd/N)
    lies outside the container's root; getcwd() then reports "(unreachable)".
    """
    _mkdir_all(cwd)
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise OSFailure("chdir", cwd, exc.errno or 0) from None
    here = os.getcwd()
    if not here.startswith("/") or os.path.realpath(here) != here:
        raise OSFailure("cwd outside the container root", cwd, errno.EPERM)
