"""Process hardening with a recording fake: order of the steps, masks, and what gets dropped."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from harness.errors import OSFailure, UserError
from harness.runtime import seccomp as sc
from harness.runtime import security
from harness.runtime.spec import (
    Capabilities,
    Process,
    Rlimit,
    Seccomp,
    SeccompArg,
    SeccompRule,
    User,
)
from harness.runtime.syscalls import (
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_CLEAR_ALL,
    PR_CAP_AMBIENT_RAISE,
    PR_CAPBSET_DROP,
    PR_SET_KEEPCAPS,
    PR_SET_NO_NEW_PRIVS,
)

ALL_OPEN = 0xFFFFFFFF
KILL = 1 << 5
NET_BIND = 1 << 10


class Recorder:
    """Both SyscallLayer and ProcessCalls, recording (method, args) in one list."""

    def __init__(self, fail_capbset_from: int | None = None) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail_capbset_from = fail_capbset_from

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    # SyscallLayer
    def unshare(self, flags: int) -> None:
        self._record("unshare", flags)

    def setns(self, fd: int, nstype: int) -> None:
        self._record("setns", fd, nstype)

    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None:
        self._record("mount", source, target, fstype, flags, data)

    def umount2(self, target: str, flags: int) -> None:
        self._record("umount2", target, flags)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        self._record("pivot_root", new_root, put_old)

    def sethostname(self, name: str) -> None:
        self._record("sethostname", name)

    def setdomainname(self, name: str) -> None:
        self._record("setdomainname", name)

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        if (
            option == PR_CAPBSET_DROP
            and self.fail_capbset_from is not None
            and arg2 >= self.fail_capbset_from
        ):
            raise OSFailure("prctl", str(option), errno.EINVAL)
        # Trailing zeros after arg2 are left out, so the assertions read like the calls.
        args: tuple[int, ...] = (option, arg2, arg3, arg4, arg5)
        while len(args) > 2 and args[-1] == 0:
            args = args[:-1]
        self._record("prctl", *args)
        return 0

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        self._record("capset", effective, permitted, inheritable)

    def close_range(self, first: int, last: int) -> None:
        self._record("close_range", first, last)

    # ProcessCalls
    def setrlimit(self, which: int, soft: int, hard: int) -> None:
        self._record("setrlimit", which, soft, hard)

    def write_oom_score_adj(self, value: int) -> None:
        self._record("write_oom_score_adj", value)

    def setgroups(self, gids: list[int]) -> None:
        self._record("setgroups", gids)

    def setresgid(self, gid: int) -> None:
        self._record("setresgid", gid)

    def setresuid(self, uid: int) -> None:
        self._record("setresuid", uid)

    def umask(self, mask: int) -> None:
        self._record("umask", mask)

    def load_seccomp(self, profile: Seccomp) -> None:
        self._record("load_seccomp", profile.default_action)

    def names(self) -> list[str]:
        """The step names, with consecutive repeats folded and prctl named by option."""
        prctl_names = {
            PR_CAPBSET_DROP: "capbset_drop",
            PR_SET_KEEPCAPS: "keepcaps",
            PR_CAP_AMBIENT: "ambient",
            PR_SET_NO_NEW_PRIVS: "no_new_privs",
        }
        out: list[str] = []
        for name, args in self.calls:
            if name == "prctl":
                name = prctl_names[args[0]]
            if not out or out[-1] != name:
                out.append(name)
        return out


CAPS = Capabilities(
    bounding=("CAP_KILL", "CAP_NET_BIND_SERVICE"),
    effective=("CAP_KILL", "CAP_NET_BIND_SERVICE"),
    permitted=("CAP_KILL", "CAP_NET_BIND_SERVICE"),
    inheritable=("CAP_KILL",),
    ambient=("CAP_KILL",),
)
PROFILE = Seccomp(default_action="SCMP_ACT_ALLOW")


def _process(no_new_privileges: bool) -> Process:
    return Process(
        args=("/bin/true",),
        user=User(uid=1000, gid=1000, additional_gids=(10,), umask=0o022),
        capabilities=CAPS,
        no_new_privileges=no_new_privileges,
        rlimits=(Rlimit("RLIMIT_NOFILE", 256, 512),),
        oom_score_adj=100,
    )


def test_cap_mask_known_bits() -> None:
    assert security.cap_mask(["CAP_CHOWN"]) == 1 << 0
    assert security.cap_mask(["CAP_KILL"]) == 1 << 5
    assert security.cap_mask(["CAP_SYS_ADMIN"]) == 1 << 21
    assert security.cap_mask(["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN"]) == 0x200021
    assert security.cap_mask(["CAP_CHECKPOINT_RESTORE"]) == 1 << 40
    assert security.cap_mask([]) == 0


def test_cap_mask_rejects_unknown_name() -> None:
    with pytest.raises(UserError, match="CAP_NOPE"):
        security.cap_mask(["CAP_NOPE"])


def test_finalize_order_with_no_new_privileges_loads_seccomp_last() -> None:
    rec = Recorder()
    security.finalize_process(_process(True), PROFILE, rec, keep_fds=(7,), host=rec)
    assert rec.names() == [
        "close_range",
        "write_oom_score_adj",
        "setrlimit",
        "capbset_drop",
        "keepcaps",
        "setgroups",
        "setresgid",
        "setresuid",
        "keepcaps",
        "umask",
        "capset",
        "ambient",
        "no_new_privs",
        "load_seccomp",
    ]


def test_finalize_order_without_no_new_privileges_loads_seccomp_while_root() -> None:
    rec = Recorder()
    security.finalize_process(_process(False), PROFILE, rec, host=rec)
    names = rec.names()
    # Before the uid change empties the effective set (CAP_SYS_ADMIN is needed).
    assert names.index("load_seccomp") < names.index("setresuid")
    assert names.index("load_seccomp") < names.index("capset")
    assert names.index("load_seccomp") > names.index("capbset_drop")
    assert "no_new_privs" not in names
    assert names.count("load_seccomp") == 1


def test_finalize_without_seccomp_loads_nothing() -> None:
    rec = Recorder()
    security.finalize_process(_process(True), None, rec, host=rec)
    assert "load_seccomp" not in rec.names()
    assert rec.names()[-1] == "no_new_privs"


def test_bounding_set_drops_exactly_the_complement() -> None:
    rec = Recorder()
    security.drop_bounding_set(CAPS, rec)
    dropped = {args[1] for name, args in rec.calls if args[0] == PR_CAPBSET_DROP}
    assert dropped == set(range(security.last_cap() + 1)) - {5, 10}


def test_bounding_set_ignores_einval_for_caps_the_kernel_lacks() -> None:
    rec = Recorder(fail_capbset_from=38)
    security.drop_bounding_set(CAPS, rec)
    dropped = {args[1] for name, args in rec.calls}
    assert dropped == set(range(min(38, security.last_cap() + 1))) - {5, 10}


def test_bounding_set_none_is_left_alone() -> None:
    rec = Recorder()
    security.drop_bounding_set(Capabilities(effective=("CAP_KILL",)), rec)
    assert rec.calls == []


def test_capabilities_exact_masks_and_ambient() -> None:
    rec = Recorder()
    security.apply_capabilities(CAPS, rec)
    assert rec.calls == [
        ("capset", (KILL | NET_BIND, KILL | NET_BIND, KILL)),
        ("prctl", (PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)),
        ("prctl", (PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, 5)),
    ]


def test_capabilities_missing_sets_are_empty() -> None:
    rec = Recorder()
    security.apply_capabilities(Capabilities(bounding=("CAP_KILL",)), rec)
    assert rec.calls == [
        ("capset", (0, 0, 0)),
        ("prctl", (PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)),
    ]


def test_no_capabilities_in_spec_means_docker_default_14() -> None:
    rec = Recorder()
    security.drop_bounding_set(None, rec)
    security.apply_capabilities(None, rec)
    docker = security.cap_mask(security.resolve_capabilities(None).bounding or ())
    assert bin(docker).count("1") == 14
    assert docker & (1 << 21) == 0  # no CAP_SYS_ADMIN
    dropped = {args[1] for name, args in rec.calls if args[0] == PR_CAPBSET_DROP}
    assert dropped == {c for c in range(security.last_cap() + 1) if not docker & (1 << c)}
    assert ("capset", (docker, docker, 0)) in rec.calls
    assert not any(args[:2] == (PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE) for _, args in rec.calls)


def test_set_user_keeps_caps_across_the_uid_change() -> None:
    rec = Recorder()
    security.set_user(User(uid=1000, gid=2000, additional_gids=(3, 4)), rec, rec)
    assert rec.calls == [
        ("prctl", (PR_SET_KEEPCAPS, 1)),
        ("setgroups", ([3, 4],)),
        ("setresgid", (2000,)),
        ("setresuid", (1000,)),
        ("prctl", (PR_SET_KEEPCAPS, 0)),
    ]


def test_set_user_failure_names_the_ids() -> None:
    class Refuses(Recorder):
        def setresuid(self, uid: int) -> None:
            raise PermissionError(errno.EPERM, "nope")

    rec = Refuses()
    with pytest.raises(OSFailure, match="1000:2000") as info:
        security.set_user(User(uid=1000, gid=2000), rec, rec)
    assert info.value.errno == errno.EPERM


def test_no_new_privs() -> None:
    rec = Recorder()
    security.set_no_new_privs(rec)
    assert rec.calls == [("prctl", (PR_SET_NO_NEW_PRIVS, 1))]


@pytest.mark.parametrize(
    ("keep", "ranges"),
    [
        ((), [(3, ALL_OPEN)]),
        ((3,), [(4, ALL_OPEN)]),
        ((5, 10), [(3, 4), (6, 9), (11, ALL_OPEN)]),
        ((6, 5, 0, 2), [(3, 4), (7, ALL_OPEN)]),
    ],
)
def test_close_fds_above_closes_the_gaps(
    keep: tuple[int, ...], ranges: list[tuple[int, int]]
) -> None:
    rec = Recorder()
    security.close_fds_above(keep, rec)
    assert rec.calls == [("close_range", r) for r in ranges]


def test_rlimits_map_names_and_unlimited() -> None:
    rec = Recorder()
    security.apply_rlimits(
        [Rlimit("RLIMIT_NOFILE", 256, 512), Rlimit("RLIMIT_LOCKS", 1, 2**64 - 1)], rec
    )
    assert rec.calls == [("setrlimit", (7, 256, 512)), ("setrlimit", (10, 1, 2**64 - 1))]


def test_rlimit_unknown_name_is_a_user_error() -> None:
    with pytest.raises(UserError, match="RLIMIT_BOGUS"):
        security.apply_rlimits([Rlimit("RLIMIT_BOGUS", 1, 1)], Recorder())


def test_rlimit_failure_names_the_limit() -> None:
    class Refuses(Recorder):
        def setrlimit(self, which: int, soft: int, hard: int) -> None:
            raise OSError(errno.EPERM, "nope")

    with pytest.raises(OSFailure, match="RLIMIT_NOFILE") as info:
        security.apply_rlimits([Rlimit("RLIMIT_NOFILE", 1, 1)], Refuses())
    assert (info.value.op, info.value.errno) == ("setrlimit", errno.EPERM)


# ---------------------------------------------------------------- seccomp, built not loaded


def test_action_values() -> None:
    assert sc.action_value("SCMP_ACT_KILL", None) == 0
    assert sc.action_value("SCMP_ACT_KILL_PROCESS", None) == 0x80000000
    assert sc.action_value("SCMP_ACT_ALLOW", None) == 0x7FFF0000
    assert sc.action_value("SCMP_ACT_ERRNO", None) == 0x00050000 | errno.EPERM
    assert sc.action_value("SCMP_ACT_ERRNO", errno.ENOSYS) == 0x00050000 | errno.ENOSYS
    assert sc.action_value("SCMP_ACT_TRACE", 7) == 0x7FF00007
    assert sc.arch_name("SCMP_ARCH_X86_64") == "x86_64"


def test_unsupported_actions_are_user_errors() -> None:
    with pytest.raises(UserError, match="SCMP_ACT_NOTIFY"):
        sc.action_value("SCMP_ACT_NOTIFY", None)
    with pytest.raises(UserError, match="SCMP_ACT_BOGUS"):
        sc.action_value("SCMP_ACT_BOGUS", None)


@pytest.mark.requires("seccomp")
def test_build_filter_skips_unknown_syscalls_and_default_action_rules() -> None:
    profile = Seccomp(
        default_action="SCMP_ACT_ERRNO",
        architectures=("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_NOPE"),
        flags=("SECCOMP_FILTER_FLAG_LOG",),
        syscalls=(
            SeccompRule(("read", "no_such_syscall"), "SCMP_ACT_ALLOW"),
            # Same as the default action: libseccomp would answer EACCES.
            SeccompRule(("write",), "SCMP_ACT_ERRNO"),
            # Two comparisons of argument 0: split into two rules, as runc does.
            SeccompRule(
                ("personality",),
                "SCMP_ACT_ALLOW",
                args=(SeccompArg(0, 0, "SCMP_CMP_EQ"), SeccompArg(0, 8, "SCMP_CMP_EQ")),
            ),
            SeccompRule(
                ("clone",),
                "SCMP_ACT_ALLOW",
                args=(SeccompArg(0, 0x7E020000, "SCMP_CMP_MASKED_EQ", 0),),
            ),
        ),
    )
    built = sc.build_filter(profile)
    try:
        assert built.skipped == ("no_such_syscall",)
        assert built.flags == ("SECCOMP_FILTER_FLAG_LOG",)
    finally:
        built.release()
        built.release()


@pytest.mark.requires("seccomp")
def test_build_filter_reports_libseccomp_errors() -> None:
    bad_arg = SeccompRule(("read",), "SCMP_ACT_ALLOW", args=(SeccompArg(9, 0, "SCMP_CMP_EQ"),))
    with pytest.raises(OSFailure, match="seccomp_rule_add read"):
        sc.build_filter(Seccomp(default_action="SCMP_ACT_ERRNO", syscalls=(bad_arg,)))
