"""The last hardening steps in the container's init process, just before exec.

`finalize_process` runs them in runc's order (finalizeNamespace and
standard_init_linux.go). prctl, capset and close_range go through the
`SyscallLayer`; the other process-wide calls (rlimits, ids, umask, seccomp) go
through `ProcessCalls`, so a unit test can pass one recorder for both and check
the order without root.

Import this module before pivot_root: `resource` and libseccomp are loaded from
the host's filesystem.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Iterable
from typing import Protocol

from harness.errors import OSFailure, UserError
from harness.runtime import seccomp as seccomp_filter
from harness.runtime.spec import (
    CAPABILITY_NAMES,
    DOCKER_DEFAULT_CAPS,
    RLIMIT_NAMES,
    Capabilities,
    Process,
    Rlimit,
    Seccomp,
    User,
)
from harness.runtime.syscalls import (
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_CLEAR_ALL,
    PR_CAP_AMBIENT_RAISE,
    PR_CAPBSET_DROP,
    PR_SET_KEEPCAPS,
    PR_SET_NO_NEW_PRIVS,
    SyscallLayer,
)

# The spec's rlimit values are uint64; everything from 2**63 up is "unlimited"
# (OCI writes RLIM_INFINITY as 2**64 - 1, which Python's setrlimit cannot take).
_RLIM_UNLIMITED_FROM = 1 << 63
_CLOSE_RANGE_MAX_FD = 0xFFFFFFFF  # ~0U: close_range's "to the end"
_CAP_LAST_CAP = "/proc/sys/kernel/cap_last_cap"


class ProcessCalls(Protocol):
    """Process-wide calls outside `SyscallLayer`; they raise OSError like the os module."""

    def setrlimit(self, which: int, soft: int, hard: int) -> None: ...
    def write_oom_score_adj(self, value: int) -> None: ...
    def setgroups(self, gids: list[int]) -> None: ...
    def setresgid(self, gid: int) -> None: ...
    def setresuid(self, uid: int) -> None: ...
    def umask(self, mask: int) -> None: ...
    def load_seccomp(self, profile: Seccomp) -> None: ...


class HostProcess:
    """The real `ProcessCalls`: this process, through os, resource and libseccomp."""

    def setrlimit(self, which: int, soft: int, hard: int) -> None:
        """setrlimit(2); CPython's ValueError (for EPERM, EINVAL) becomes OSError again."""
        try:
            resource.setrlimit(which, (_rlim(soft), _rlim(hard)))
        except ValueError as exc:
            err = errno.EPERM if "not allowed" in str(exc) else errno.EINVAL
            raise OSError(err, os.strerror(err)) from exc

    def write_oom_score_adj(self, value: int) -> None:
        """Write /proc/self/oom_score_adj."""
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))

    def setgroups(self, gids: list[int]) -> None:
        """setgroups(2)."""
        os.setgroups(gids)

    def setresgid(self, gid: int) -> None:
        """setresgid(2): real, effective and saved gid."""
        os.setresgid(gid, gid, gid)

    def setresuid(self, uid: int) -> None:
        """setresuid(2): real, effective and saved uid."""
        os.setresuid(uid, uid, uid)

    def umask(self, mask: int) -> None:
        """umask(2)."""
        os.umask(mask)

    def load_seccomp(self, profile: Seccomp) -> None:
        """Build the filter and load it on this process."""
        built = seccomp_filter.build_filter(profile)
        try:
            built.load()
        finally:
            built.release()


HOST = HostProcess()


def _rlim(value: int) -> int:
    return resource.RLIM_INFINITY if value >= _RLIM_UNLIMITED_FROM else value


def _cap_number(name: str) -> int:
    if name not in CAPABILITY_NAMES:
        raise UserError(f"unknown capability {name!r}; known: {', '.join(CAPABILITY_NAMES)}")
    return CAPABILITY_NAMES[name]


def cap_mask(names: Iterable[str]) -> int:
    """The bit mask of capability names like "CAP_KILL"."""
    mask = 0
    for name in names:
        mask |= 1 << _cap_number(name)
    return mask


def last_cap() -> int:
    """The highest capability number the running kernel knows."""
    try:
        with open(_CAP_LAST_CAP) as f:
            return int(f.read())
    except OSError:
        # No /proc in the new root: assume the kernel knows what we know.
        return max(CAPABILITY_NAMES.values())


def resolve_capabilities(caps: Capabilities | None) -> Capabilities:
    """The spec's capabilities, or Docker's default 14 when the spec gives none.

    MEASUREMENT.md: "the capability set of the spec (Docker's default 14 when
    unspecified)": bounding, effective and permitted get the default set;
    inheritable and ambient stay empty, as in Docker's generated specs.
    """
    if caps is not None:
        return caps
    return Capabilities(
        bounding=DOCKER_DEFAULT_CAPS,
        effective=DOCKER_DEFAULT_CAPS,
        permitted=DOCKER_DEFAULT_CAPS,
        inheritable=(),
        ambient=(),
    )


def apply_rlimits(rlimits: Iterable[Rlimit], host: ProcessCalls = HOST) -> None:
    """setrlimit for each process.rlimits entry."""
    for rlimit in rlimits:
        if rlimit.type not in RLIMIT_NAMES:
            raise UserError(f"unknown rlimit {rlimit.type!r}; known: {', '.join(RLIMIT_NAMES)}")
        try:
            host.setrlimit(RLIMIT_NAMES[rlimit.type], rlimit.soft, rlimit.hard)
        except OSError as exc:
            raise OSFailure("setrlimit", rlimit.type, exc.errno or errno.EINVAL) from exc


def set_oom_score_adj(value: int, host: ProcessCalls = HOST) -> None:
    """Write /proc/self/oom_score_adj (lowering it needs CAP_SYS_RESOURCE)."""
    try:
        host.write_oom_score_adj(value)
    except OSError as exc:
        raise OSFailure("write", "/proc/self/oom_score_adj", exc.errno or errno.EIO) from exc


def drop_bounding_set(caps: Capabilities | None, sys: SyscallLayer) -> None:
    """PR_CAPBSET_DROP every capability the bounding set leaves out (None: leave it)."""
    bounding = resolve_capabilities(caps).bounding
    if bounding is None:
        return
    keep = cap_mask(bounding)
    for cap in range(last_cap() + 1):
        if keep & (1 << cap):
            continue
        try:
            sys.prctl(PR_CAPBSET_DROP, cap)
        except OSFailure as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: a capability this kernel lacks
                raise


def _setgroups_denied() -> bool:
    # In a user namespace whose gid_map an unprivileged process wrote, setgroups
    # is disabled and would fail with EPERM.
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() == "deny"
    except OSError:
        return False


def set_user(user: User, sys: SyscallLayer, host: ProcessCalls = HOST) -> None:
    """Switch to the spec's uid, gid and groups, keeping the permitted capabilities."""
    # Without KEEPCAPS, leaving uid 0 empties the permitted set and capset could
    # not grant anything afterwards. The effective set is emptied either way;
    # apply_capabilities sets all of them explicitly next.
    sys.prctl(PR_SET_KEEPCAPS, 1)
    try:
        # Always call setgroups, also with no extra gids: the host's
        # supplementary groups must not leak into the container.
        if user.additional_gids or not _setgroups_denied():
            host.setgroups(list(user.additional_gids))
        # gid before uid: after the uid change we may no longer change gids.
        host.setresgid(user.gid)
        host.setresuid(user.uid)
    except OSError as exc:
        raise OSFailure("set user", f"{user.uid}:{user.gid}", exc.errno or errno.EPERM) from exc
    sys.prctl(PR_SET_KEEPCAPS, 0)
    if user.umask is not None:
        host.umask(user.umask)


def apply_capabilities(caps: Capabilities | None, sys: SyscallLayer) -> None:
    """capset the effective/permitted/inheritable sets as given, then set the ambient set."""
    caps = resolve_capabilities(caps)
    # Capabilities newer than the kernel are left out (runc does the same);
    # capset would refuse them with EPERM.
    known = (1 << (last_cap() + 1)) - 1
    sys.capset(
        cap_mask(caps.effective or ()) & known,
        cap_mask(caps.permitted or ()) & known,
        cap_mask(caps.inheritable or ()) & known,
    )
    # Ambient capabilities must also be permitted and inheritable, so they come
    # after capset; clear first so none inherited from the runtime survive.
    sys.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for name in caps.ambient or ():
        # The kernel refuses (EPERM) an ambient capability that is not also
        # inheritable. `runc spec` writes exactly that (ambient without
        # inheritable), and runc only warns, so the capability is skipped here too.
        try:
            sys.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, _cap_number(name))
        except OSFailure as exc:
            if exc.errno != errno.EPERM:
                raise


def set_no_new_privs(sys: SyscallLayer) -> None:
    """prctl(PR_SET_NO_NEW_PRIVS, 1): exec can no longer gain privileges (setuid, file caps)."""
    sys.prctl(PR_SET_NO_NEW_PRIVS, 1)


def close_fds_above(keep: Iterable[int], sys: SyscallLayer) -> None:
    """Close every file descriptor above 2 except those in `keep`."""
    # close_range over the gaps between the kept fds: a few syscalls, however
    # many fds are open, and no /proc needed.
    first = 3
    for fd in sorted({fd for fd in keep if fd >= 3}):
        if fd > first:
            sys.close_range(first, fd - 1)
        first = fd + 1
    sys.close_range(first, _CLOSE_RANGE_MAX_FD)


def finalize_process(
    process: Process,
    seccomp: Seccomp | None,
    sys: SyscallLayer,
    keep_fds: Iterable[int] = (),
    host: ProcessCalls = HOST,
) -> None:
    """Apply process-level hardening in runc's order; the caller execs right after."""
    # First, so that no host fd is open while the container's settings apply,
    # and none can leak through exec.
    close_fds_above(keep_fds, sys)
    # Lowering oom_score_adj and raising hard rlimits need CAP_SYS_RESOURCE:
    # both before any capability is dropped.
    if process.oom_score_adj is not None:
        set_oom_score_adj(process.oom_score_adj, host)
    apply_rlimits(process.rlimits, host)
    # The bounding set limits what exec can grant; dropping needs CAP_SETPCAP,
    # which capset may remove, so it goes before.
    drop_bounding_set(process.capabilities, sys)
    # Without no_new_privs, loading a filter needs CAP_SYS_ADMIN in the effective
    # set. Leaving uid 0 empties the effective set, so the filter has to go in
    # before set_user (runc loads it before finalizeNamespace for this reason).
    # The runtime's remaining setup calls then pass through the filter.
    if seccomp is not None and not process.no_new_privileges:
        host.load_seccomp(seccomp)
    set_user(process.user, sys, host)
    apply_capabilities(process.capabilities, sys)
    if process.no_new_privileges:
        set_no_new_privs(sys)
        # Last, so that the profile needs to allow only what the container's
        # process does, not the runtime's own setup syscalls.
        if seccomp is not None:
            host.load_seccomp(seccomp)
