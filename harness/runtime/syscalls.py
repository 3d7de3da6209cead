"""A thin ctypes layer over the Linux system calls the runtime needs.

Python 3.11 has no os.unshare / os.setns, and no mount(2) or pivot_root(2) at all.
Everything goes through one `Syscalls` object so that tests can substitute a
recording fake (youki's TestHelperSyscall) and check the order of the spawn steps.
Every failure raises OSFailure naming the operation and the path.
"""

from __future__ import annotations

import ctypes
import os
from typing import Protocol

from harness.errors import OSFailure

# clone(2) / unshare(2) flags, from <linux/sched.h>.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

# OCI namespace type -> clone flag. Order matters where namespaces are joined or
# created one by one: user first (it grants the capabilities the others need),
# mount last among those that change what paths mean.
NAMESPACE_FLAGS: dict[str, int] = {
    "user": CLONE_NEWUSER,
    "pid": CLONE_NEWPID,
    "network": CLONE_NEWNET,
    "ipc": CLONE_NEWIPC,
    "uts": CLONE_NEWUTS,
    "cgroup": CLONE_NEWCGROUP,
    "time": CLONE_NEWTIME,
    "mount": CLONE_NEWNS,
}
# /proc/<pid>/ns/<file> for each OCI namespace type.
NAMESPACE_PROC_FILES: dict[str, str] = {
    "user": "user",
    "pid": "pid",
    "network": "net",
    "ipc": "ipc",
    "uts": "uts",
    "cgroup": "cgroup",
    "time": "time",
    "mount": "mnt",
}

# mount(2) flags, from <linux/mount.h>.
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

MNT_DETACH = 2

# prctl(2) options, from <linux/prctl.h>.
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

SYS_PIVOT_ROOT = 155  # x86_64
SYS_CLOSE_RANGE = 436


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class SyscallLayer(Protocol):
    """What the runtime calls; the real one is `Syscalls`, tests pass a recorder."""

    def unshare(self, flags: int) -> None: ...
    def setns(self, fd: int, nstype: int) -> None: ...
    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None: ...
    def umount2(self, target: str, flags: int) -> None: ...
    def pivot_root(self, new_root: str, put_old: str) -> None: ...
    def sethostname(self, name: str) -> None: ...
    def setdomainname(self, name: str) -> None: ...
    def prctl(
        self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0
    ) -> int: ...
    def capset(self, effective: int, permitted: int, inheritable: int) -> None: ...
    def close_range(self, first: int, last: int) -> None: ...


class Syscalls:
    """The real system calls, through libc."""

    def __init__(self) -> None:
        # By soname: ctypes.util.find_library would cost the CLI ~6 ms of imports.
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self._libc.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_void_p,
        ]
        self._libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        self._libc.unshare.argtypes = [ctypes.c_int]
        self._libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        self._libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        self._libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        self._libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        self._libc.syscall.restype = ctypes.c_long

    def _check(self, rc: int, op: str, path: str = "") -> int:
        if rc < 0:
            raise OSFailure(op, path, ctypes.get_errno())
        return rc

    def unshare(self, flags: int) -> None:
        """unshare(2): move this process into new namespaces."""
        self._check(self._libc.unshare(flags), "unshare", hex(flags))

    def setns(self, fd: int, nstype: int) -> None:
        """setns(2): join the namespace open at fd."""
        self._check(self._libc.setns(fd, nstype), "setns", f"fd {fd}")

    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None:
        """mount(2)."""
        rc = self._libc.mount(
            source.encode() if source is not None else None,
            target.encode(),
            fstype.encode() if fstype is not None else None,
            flags,
            data.encode() if data else None,
        )
        self._check(rc, "mount", f"{source or 'none'} on {target}")

    def umount2(self, target: str, flags: int) -> None:
        """umount2(2)."""
        self._check(self._libc.umount2(target.encode(), flags), "umount2", target)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        """pivot_root(2); glibc has no wrapper, so through syscall(2)."""
        rc = self._libc.syscall(
            ctypes.c_long(SYS_PIVOT_ROOT),
            ctypes.c_char_p(new_root.encode()),
            ctypes.c_char_p(put_old.encode()),
        )
        self._check(rc, "pivot_root", new_root)

    def sethostname(self, name: str) -> None:
        """sethostname(2) in the current UTS namespace."""
        raw = name.encode()
        self._check(self._libc.sethostname(raw, len(raw)), "sethostname", name)

    def setdomainname(self, name: str) -> None:
        """setdomainname(2) in the current UTS namespace."""
        raw = name.encode()
        self._check(self._libc.setdomainname(raw, len(raw)), "setdomainname", name)

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        """prctl(2); returns its (non-negative) result."""
        return self._check(self._libc.prctl(option, arg2, arg3, arg4, arg5), "prctl", str(option))

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        """capset(2) for this thread, 64-bit masks (version 3 header)."""
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        for i in range(2):
            shift = 32 * i
            data[i].effective = (effective >> shift) & 0xFFFFFFFF
            data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
            data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
        self._check(self._libc.capset(ctypes.byref(header), data), "capset")

    def close_range(self, first: int, last: int) -> None:
        """close_range(2), falling back to os.closerange on kernels without it."""
        rc = self._libc.syscall(
            ctypes.c_long(SYS_CLOSE_RANGE),
            ctypes.c_uint(first),
            ctypes.c_uint(last),
            ctypes.c_uint(0),
        )
        if rc < 0:
            os.closerange(first, min(last, 1 << 20))


_LINUX: Syscalls | None = None


def linux() -> Syscalls:
    """The process-wide real syscall layer (loaded once; ctypes setup is not free)."""
    global _LINUX
    if _LINUX is None:
        _LINUX = Syscalls()
    return _LINUX
