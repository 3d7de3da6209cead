"""The spawn path's steps, run against a recording fake of the syscall layer (no root needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.errors import OSFailure
from harness.runtime import pid1, rootfs, spawn
from harness.runtime import syscalls as sc
from harness.runtime.bundle import add_cgroup_namespace
from harness.runtime.spec_default import default_spec
from harness.runtime.spec_load import parse_spec


class Recorder:
    """Records every call; performs none."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def unshare(self, flags: int) -> None:
        self.calls.append(("unshare", flags))

    def setns(self, fd: int, nstype: int) -> None:
        self.calls.append(("setns", nstype))

    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None:
        self.calls.append(("mount", source, target, fstype, flags, data))

    def umount2(self, target: str, flags: int) -> None:
        self.calls.append(("umount2", target, flags))

    def pivot_root(self, new_root: str, put_old: str) -> None:
        self.calls.append(("pivot_root", new_root, put_old))

    def sethostname(self, name: str) -> None:
        self.calls.append(("sethostname", name))

    def setdomainname(self, name: str) -> None:
        self.calls.append(("setdomainname", name))

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        self.calls.append(("prctl", option, arg2))
        return 0

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        self.calls.append(("capset", effective, permitted, inheritable))

    def close_range(self, first: int, last: int) -> None:
        self.calls.append(("close_range", first, last))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "rootfs" / "dev").mkdir(parents=True)
    return tmp_path


def _spec(bundle: Path, **changes: object) -> object:
    data = default_spec(
        args=["/bin/true"], rootless=True
    )  # user namespace: devices are bind-mounted
    data.update(changes)
    return parse_spec(json.loads(json.dumps(data)), str(bundle))


def test_filesystem_steps_run_in_the_documented_order(bundle: Path) -> None:
    spec = _spec(bundle)
    req = spawn.SpawnRequest(spec, "c1", None, None, lambda pid, status: {})  # type: ignore[arg-type]
    rec = Recorder()
    cwd = os.getcwd()
    try:
        spawn._prepare_rootfs(req, rec)
        rootfs.pivot_root(spec.root.path, rec)  # type: ignore[attr-defined]
        spawn._finish_filesystem(spec, rec)  # type: ignore[arg-type]
    finally:
        os.chdir(cwd)
    root = str(bundle / "rootfs")
    mounts = [c for c in rec.calls if c[0] == "mount"]
    # 1. / private, so nothing propagates back to the host; 2. the rootfs bound onto itself.
    assert mounts[0] == ("mount", None, "/", None, sc.MS_PRIVATE | sc.MS_REC, None)
    assert mounts[1] == ("mount", root, root, None, sc.MS_BIND | sc.MS_REC, None)
    # 3. the spec's mounts in their order, each target inside the rootfs.
    spec_targets = [m.destination for m in spec.mounts]  # type: ignore[attr-defined]
    seen = [c[2] for c in mounts if isinstance(c[2], str) and c[2].startswith(root)]
    first_positions = [seen.index(root + t) for t in spec_targets]
    assert first_positions == sorted(first_positions)
    # 4. pivot_root(".", "."), the old root made rslave, then detached.
    names = [c[0] for c in rec.calls]
    pivot = names.index("pivot_root")
    assert rec.calls[pivot] == ("pivot_root", ".", ".")
    assert rec.calls[pivot + 1] == ("mount", None, ".", None, sc.MS_SLAVE | sc.MS_REC, None)
    assert rec.calls[pivot + 2] == ("umount2", ".", sc.MNT_DETACH)
    # 5. after pivot_root: masks and read-only paths use container paths, then / read-only.
    after = rec.calls[pivot + 3 :]
    assert all(not str(c[2]).startswith(root) for c in after if c[0] == "mount")
    assert after[-1][0] == "mount" and after[-1][2] == "/" and after[-1][4] & sc.MS_RDONLY


def test_masked_paths_hide_files_under_dev_null_and_directories_under_tmpfs(tmp_path: Path) -> None:
    (tmp_path / "secret-dir").mkdir()
    (tmp_path / "secret-file").write_text("x")
    rec = Recorder()
    rootfs.mask_paths(
        (str(tmp_path / "secret-dir"), str(tmp_path / "secret-file"), "/does/not/exist"), rec
    )
    assert rec.calls == [
        ("mount", "tmpfs", str(tmp_path / "secret-dir"), "tmpfs", sc.MS_RDONLY, None),
        ("mount", "/dev/null", str(tmp_path / "secret-file"), None, sc.MS_BIND, None),
    ]


def test_namespaces_are_created_in_one_unshare_without_pid(bundle: Path) -> None:
    config = default_spec(args=["/bin/true"])
    add_cgroup_namespace(config)
    spec = parse_spec(json.loads(json.dumps(config)), str(bundle))
    rec = Recorder()
    spawn._enter_namespaces(spec, rec, -1, None)  # type: ignore[arg-type]
    expected = (
        sc.CLONE_NEWNET | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS | sc.CLONE_NEWNS | sc.CLONE_NEWCGROUP
    )
    assert rec.calls == [("unshare", expected)]  # pid: made by the parent before the fork


def test_a_namespace_with_a_path_is_joined_not_created(bundle: Path) -> None:
    data = default_spec(args=["/bin/true"])
    linux = data["linux"]
    assert isinstance(linux, dict)
    linux["namespaces"] = [{"type": "network", "path": "/proc/self/ns/net"}, {"type": "uts"}]
    spec = parse_spec(json.loads(json.dumps(data)), str(bundle))
    rec = Recorder()
    spawn._enter_namespaces(spec, rec, -1, None)  # type: ignore[arg-type]
    assert rec.calls == [("setns", sc.CLONE_NEWNET), ("unshare", sc.CLONE_NEWUTS)]


def test_secure_join_keeps_symlinks_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "escape").symlink_to("/etc")  # absolute: must resolve inside root
    (root / "up").symlink_to("../../../../")  # relative climbing out: clamped at root
    assert rootfs.secure_join(str(root), "/escape/passwd") == str(root / "etc" / "passwd")
    assert rootfs.secure_join(str(root), "/up/etc") == str(root / "etc")
    assert rootfs.secure_join(str(root), "/../../x/../y") == str(root / "y")
    assert rootfs.secure_join(str(root), "/missing/../../z") == str(root / "z")


def test_secure_join_refuses_symlink_loops(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSFailure):
        rootfs.secure_join(str(tmp_path), "/a")


def test_mount_options_split_into_flags_propagation_and_data() -> None:
    parsed = rootfs.parse_mount_options(
        ("nosuid", "rbind", "ro", "rslave", "mode=755", "size=64k", "rw")
    )
    assert parsed.flags == sc.MS_NOSUID | sc.MS_BIND | sc.MS_REC
    assert parsed.clear == sc.MS_RDONLY
    assert parsed.propagation == (sc.MS_SLAVE | sc.MS_REC,)
    assert parsed.data == "mode=755,size=64k"


def test_exit_status_reports_signal_deaths_as_128_plus_n() -> None:
    assert pid1.exit_code(9) == 128 + 9  # wait status of death by SIGKILL
    assert pid1.exit_code(7 << 8) == 7


def test_executable_is_looked_up_in_the_container_path(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert pid1.resolve_executable("tool", (f"PATH=/nonexistent:{tmp_path}",)) == str(tool)
    assert pid1.resolve_executable("/abs/path", ()) == "/abs/path"
    with pytest.raises(Exception, match="not found in"):
        pid1.resolve_executable("no-such-tool", (f"PATH={tmp_path}",))
