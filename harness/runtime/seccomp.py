"""linux.seccomp -> a libseccomp filter, through ctypes (as runc does through libseccomp-golang).

The filter is built in the container's init process just before it is loaded.
Call `load_library()` in the runtime BEFORE pivot_root: dlopen after pivot_root
would search the container's filesystem, not the host's. The handle is cached, so
the forked init inherits it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
from collections.abc import Sequence

from harness.errors import EnvironmentError_, OSFailure, UserError
from harness.runtime.spec import Seccomp, SeccompArg, SeccompRule

# Action values, from <seccomp.h>. ERRNO and TRACE carry a 16-bit data field.
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_ERRNO = 0x00050000
SCMP_ACT_TRACE = 0x7FF00000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_NOTIFY = 0x7FC00000

# Actions that take no data. SCMP_ACT_NOTIFY is left out on purpose: it needs a
# seccomp agent listening on linux.seccomp.listenerPath, which this runtime lacks;
# without one the notified syscalls would hang or fail with ENOSYS.
_PLAIN_ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": SCMP_ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": SCMP_ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": SCMP_ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": SCMP_ACT_TRAP,
    "SCMP_ACT_LOG": SCMP_ACT_LOG,
    "SCMP_ACT_ALLOW": SCMP_ACT_ALLOW,
}
# Actions whose 16-bit data is the spec's errnoRet (EPERM when not given, like runc).
_DATA_ACTIONS: dict[str, int] = {
    "SCMP_ACT_ERRNO": SCMP_ACT_ERRNO,
    "SCMP_ACT_TRACE": SCMP_ACT_TRACE,
}

# enum scmp_compare.
COMPARE_OPS: dict[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# enum scmp_filter_attr.
_SCMP_FLTATR_CTL_NNP = 3
_SCMP_FLTATR_API_SYSRAWRC = 9

_NR_SCMP_ERROR = -1


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _open_library() -> ctypes.CDLL:
    # The soname first: find_library runs `ldconfig -p` in a subprocess.
    try:
        return ctypes.CDLL("libseccomp.so.2")
    except OSError:
        path = ctypes.util.find_library("seccomp")
        if path is None:
            raise EnvironmentError_(
                "libseccomp not found: install the Debian package libseccomp2"
            ) from None
        return ctypes.CDLL(path)


@functools.cache
def load_library() -> ctypes.CDLL:
    """libseccomp, loaded once with its prototypes; call before pivot_root."""
    lib = _open_library()
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    return lib


def action_value(action: str, errno_ret: int | None) -> int:
    """The libseccomp action value for an OCI action name like "SCMP_ACT_ERRNO"."""
    if action in _PLAIN_ACTIONS:
        return _PLAIN_ACTIONS[action]
    if action in _DATA_ACTIONS:
        data = errno.EPERM if errno_ret is None else errno_ret
        return _DATA_ACTIONS[action] | (data & 0xFFFF)
    accepted = sorted([*_PLAIN_ACTIONS, *_DATA_ACTIONS])
    raise UserError(f"seccomp action {action!r} is not supported; accepted: {', '.join(accepted)}")


def arch_name(oci_arch: str) -> str:
    """libseccomp's name for an OCI architecture: "SCMP_ARCH_X86_64" -> "x86_64"."""
    return oci_arch.removeprefix("SCMP_ARCH_").lower()


def _condition(arg: SeccompArg) -> _ArgCmp:
    if arg.op not in COMPARE_OPS:
        raise UserError(
            f"seccomp comparison {arg.op!r} is not supported; accepted: {', '.join(COMPARE_OPS)}"
        )
    return _ArgCmp(arg.index, COMPARE_OPS[arg.op], arg.value, arg.value_two)


def _condition_groups(args: Sequence[SeccompArg]) -> list[list[_ArgCmp]]:
    """The argument conditions, grouped into one rule each.

    libseccomp refuses two comparisons of the same argument in one rule, so then,
    like runc, each comparison becomes a rule of its own (they OR instead of AND).
    """
    conditions = [_condition(arg) for arg in args]
    indexes = [arg.index for arg in args]
    if len(set(indexes)) < len(indexes):
        return [[cond] for cond in conditions]
    return [conditions]


class Filter:
    """A built, not yet loaded, libseccomp filter; `release()` frees it."""

    def __init__(
        self, lib: ctypes.CDLL, ctx: int, flags: tuple[str, ...], skipped: tuple[str, ...]
    ):
        self._lib = lib
        self._ctx: int | None = ctx
        # linux.seccomp.flags (SECCOMP_FILTER_FLAG_LOG ...) are recorded, not applied.
        self.flags = flags
        # Syscall names this libseccomp does not know; their rules were left out, like runc.
        self.skipped = skipped

    def load(self) -> None:
        """seccomp_load: install the filter on this thread (inherited across fork and exec)."""
        if self._ctx is None:
            raise OSFailure("seccomp_load", "released filter", errno.EINVAL)
        rc = int(self._lib.seccomp_load(self._ctx))
        if rc < 0:
            raise OSFailure("seccomp_load", "", -rc)

    def release(self) -> None:
        """seccomp_release; safe to call twice."""
        if self._ctx is not None:
            self._lib.seccomp_release(self._ctx)
            self._ctx = None


def _add_rule(
    lib: ctypes.CDLL, ctx: int, name: str, number: int, action: int, rule: SeccompRule
) -> None:
    for group in _condition_groups(rule.args):
        array = (_ArgCmp * len(group))(*group)
        rc = int(lib.seccomp_rule_add_array(ctx, action, number, len(group), array))
        if rc < 0:
            raise OSFailure("seccomp_rule_add", name, -rc)


def build_filter(seccomp: Seccomp) -> Filter:
    """Build the filter linux.seccomp describes (not loaded: call `load()`, then `release()`)."""
    lib = load_library()
    default = action_value(seccomp.default_action, seccomp.default_errno_ret)
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise OSFailure("seccomp_init", seccomp.default_action, errno.EINVAL)
    try:
        return _populate(lib, ctx, default, seccomp)
    except BaseException:
        lib.seccomp_release(ctx)
        raise


def _populate(lib: ctypes.CDLL, ctx: int, default: int, seccomp: Seccomp) -> Filter:
    # libseccomp sets no_new_privs on load by default; the spec's
    # process.noNewPrivileges decides that instead (runc: SetNoNewPrivsBit(false)).
    rc = int(lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_NNP, 0))
    if rc < 0:
        raise OSFailure("seccomp_attr_set", "CTL_NNP", -rc)
    # Report the kernel's errno from seccomp_load instead of ECANCELED; libseccomp
    # older than 2.5 lacks the attribute, and then ECANCELED will have to do.
    lib.seccomp_attr_set(ctx, _SCMP_FLTATR_API_SYSRAWRC, 1)

    for arch in seccomp.architectures:
        token = int(lib.seccomp_arch_resolve_name(arch_name(arch).encode()))
        if token == 0:
            # Unknown to this libseccomp: its syscalls then meet the bad-arch
            # action (kill), which is stricter than any rule could be.
            continue
        rc = int(lib.seccomp_arch_add(ctx, token))
        if rc < 0 and rc != -errno.EEXIST:  # EEXIST: the native arch is always there
            raise OSFailure("seccomp_arch_add", arch, -rc)

    skipped: list[str] = []
    for rule in seccomp.syscalls:
        action = action_value(rule.action, rule.errno_ret)
        if action == default:
            # libseccomp refuses such a rule with EACCES; it would change nothing.
            continue
        for name in rule.names:
            number = int(lib.seccomp_syscall_resolve_name(name.encode()))
            if number == _NR_SCMP_ERROR:
                skipped.append(name)
                continue
            _add_rule(lib, ctx, name, number, action, rule)
    return Filter(lib, ctx, seccomp.flags, tuple(skipped))
