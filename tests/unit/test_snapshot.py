"""Container diffs and upper-dir-to-layer conversion on hand-made dirs, and overlay mount options
against a recording fake of the syscall layer (no root needed).

Whiteouts (character devices 0:0) can be made without privileges since Linux 5.8;
where mknod still refuses them, those tests skip with the reason. Opaque dirs need
a trusted.* xattr (CAP_SYS_ADMIN): they are covered in tests/integration/test_overlay.py.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from harness.errors import OSFailure, UserError
from harness.image import overlay, snapshot
from harness.runtime import syscalls as sc


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    except PermissionError:
        pytest.skip("mknod of a whiteout (char 0:0) refused here (needs Linux >= 5.8 or root)")


@pytest.fixture
def lowers(tmp_path: Path) -> list[Path]:
    """bottom: a/file1 "one", a/file2, dir/x; top: a/file1 "two"."""
    bottom, top = tmp_path / "bottom", tmp_path / "top"
    write(bottom / "a" / "file1", "one")
    write(bottom / "a" / "file2", "2")
    write(bottom / "dir" / "x", "x")
    write(top / "a" / "file1", "two")
    return [bottom, top]


def members(layer: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(layer, "r:gz") as tar:
        return tar.getmembers()


# --- diff -------------------------------------------------------------------------------


def test_diff_added_and_changed_by_existence_in_lowers(tmp_path: Path, lowers: list[Path]) -> None:
    upper = tmp_path / "upper"
    write(upper / "a" / "file1", "three")
    write(upper / "a" / "new", "n")
    write(upper / "etc" / "conf", "c")
    assert snapshot.diff(upper, lowers) == [
        ("C", "/a"),
        ("C", "/a/file1"),
        ("A", "/a/new"),
        ("A", "/etc"),
        ("A", "/etc/conf"),
    ]


def test_diff_whiteouts_are_deletions_and_hide_lower_paths(
    tmp_path: Path, lowers: list[Path]
) -> None:
    upper = tmp_path / "upper"
    whiteout(upper / "a" / "file2")
    # A whiteout in the top lower means the path no longer exists in the image.
    whiteout(lowers[1] / "dir")
    write(upper / "dir" / "x", "back")
    assert snapshot.diff(upper, lowers) == [
        ("C", "/a"),
        ("D", "/a/file2"),
        ("A", "/dir"),
        ("A", "/dir/x"),
    ]


def test_diff_non_directory_in_a_lower_hides_what_was_below(
    tmp_path: Path, lowers: list[Path]
) -> None:
    write(lowers[1] / "dir", "now a file")
    assert not snapshot.exists_in_lowers("dir/x", lowers)
    assert snapshot.exists_in_lowers("dir", lowers)
    assert snapshot.exists_in_lowers("a/file2", lowers)


def test_diff_of_a_missing_upper_names_it(tmp_path: Path, lowers: list[Path]) -> None:
    with pytest.raises(UserError, match=r"upper dir .*nope does not exist"):
        snapshot.diff(tmp_path / "nope", lowers)


# --- upper_to_layer ----------------------------------------------------------------------


@pytest.fixture
def upper(tmp_path: Path) -> Path:
    """An upper dir with one of each entry type a container can leave."""
    up = tmp_path / "upper"
    write(up / "b" / "data", "hello")
    os.link(up / "b" / "data", up / "b" / "hard")
    os.symlink("../b/data", up / "link")
    os.mkfifo(up / "fifo")
    write(up / "-dash", "sorts before dot")
    os.chmod(up / "b" / "data", 0o640)
    return up


def test_layer_entries_types_and_order(tmp_path: Path, upper: Path) -> None:
    whiteout(upper / "b" / "gone")
    info = snapshot.upper_to_layer(upper, tmp_path / "layer.tar.gz")
    got = {m.name: m for m in members(tmp_path / "layer.tar.gz")}
    assert list(got) == ["-dash", "b", "b/.wh.gone", "b/data", "b/hard", "fifo", "link"]
    assert got["b"].isdir()
    assert got["b/data"].isreg() and got["b/data"].size == 5 and got["b/data"].mode == 0o640
    assert got["b/hard"].islnk() and got["b/hard"].linkname == "b/data"
    assert got["link"].issym() and got["link"].linkname == "../b/data"
    assert got["fifo"].isfifo()
    wh = got["b/.wh.gone"]
    assert wh.isreg() and wh.size == 0 and wh.mode == 0
    assert all(m.uname == "" and m.gname == "" for m in got.values())
    assert got["b/data"].uid == os.getuid() and got["b/data"].mtime == int(
        os.lstat(upper / "b" / "data").st_mtime
    )
    assert info.changes == 7


def test_layer_digests_sizes_and_gzip_header(tmp_path: Path, upper: Path) -> None:
    out = tmp_path / "layer.tar.gz"
    info = snapshot.upper_to_layer(upper, out)
    blob = out.read_bytes()
    assert info.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert info.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()
    assert info.size == len(blob) == out.stat().st_size
    # gzip header: magic, deflate, no FNAME flag, mtime 0.
    assert blob[:3] == b"\x1f\x8b\x08" and blob[3] & 0x08 == 0 and blob[4:8] == b"\0\0\0\0"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_same_content_gives_the_same_digest(tmp_path: Path, upper: Path) -> None:
    # copytree keeps neither hardlinks nor fifos; it does keep modes and mtimes.
    os.unlink(upper / "b" / "hard")
    os.unlink(upper / "fifo")
    first = snapshot.upper_to_layer(upper, tmp_path / "one.tar.gz")
    again = snapshot.upper_to_layer(upper, tmp_path / "two.tar.gz")
    copy = shutil.copytree(upper, tmp_path / "copy", symlinks=True)
    elsewhere = snapshot.upper_to_layer(copy, tmp_path / "three.tar.gz")
    assert first.digest == again.digest == elsewhere.digest
    os.utime(upper / "b" / "data", (0, 12345))
    assert snapshot.upper_to_layer(upper, tmp_path / "four.tar.gz").digest != first.digest


def test_failure_midway_leaves_nothing(
    tmp_path: Path, upper: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real_addfile = tarfile.TarFile.addfile
    calls = [0]

    def failing_addfile(self: tarfile.TarFile, *args: object, **kwargs: object) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.EIO, "injected", "/upper/b/data")
        real_addfile(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tarfile.TarFile, "addfile", failing_addfile)
    with pytest.raises(OSFailure, match="write layer from /upper/b/data"):
        snapshot.upper_to_layer(upper, out_dir / "layer.tar.gz")
    assert list(out_dir.iterdir()) == []


def test_reserved_whiteout_name_is_refused_and_leaves_nothing(tmp_path: Path, upper: Path) -> None:
    write(upper / "b" / ".wh.sneaky", "")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(UserError, match=r"\.wh\.sneaky: names starting with '\.wh\.'"):
        snapshot.upper_to_layer(upper, out_dir / "layer.tar.gz")
    assert list(out_dir.iterdir()) == []


def test_existing_layer_file_is_replaced_whole(tmp_path: Path, upper: Path) -> None:
    out = write(tmp_path / "layer.tar.gz", "old")
    info = snapshot.upper_to_layer(upper, out)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == info.digest.removeprefix("sha256:")


# --- overlay mount options (recording fake) ---------------------------------------------


class FakeMounts:
    """Records mount(2)/umount2(2) calls and the cwd at each; umount2 fails with scripted errnos."""

    def __init__(self, umount_errnos: list[int] | None = None) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.umount_errnos = list(umount_errnos or [])

    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None:
        self.calls.append(("mount", source, target, fstype, flags, data, os.getcwd()))

    def umount2(self, target: str, flags: int) -> None:
        self.calls.append(("umount2", target, flags))
        if self.umount_errnos:
            raise OSFailure("umount2", target, self.umount_errnos.pop(0))


def test_lowerdir_is_top_first_and_escaped() -> None:
    data = overlay.overlay_data(["/l/bottom", "/l/sha256:ab,c", "/l/top\\x"], "/u", "/w")
    assert data == (
        "lowerdir=/l/top\\\\x:/l/sha256\\:ab\\,c:/l/bottom,upperdir=/u,workdir=/w,"
        "redirect_dir=off,metacopy=off"
    )


def test_mount_overlay_creates_dirs_and_mounts_once(tmp_path: Path) -> None:
    fake = FakeMounts()
    ov = overlay.mount_overlay(
        [tmp_path / "l1", tmp_path / "l2"],
        tmp_path / "c" / "upper",
        tmp_path / "c" / "work",
        tmp_path / "c" / "rootfs",
        syscalls=fake,  # type: ignore[arg-type]
    )
    assert all(p.is_dir() for p in (ov.upper, ov.work, ov.target))
    assert fake.calls == [
        (
            "mount",
            "overlay",
            str(ov.target),
            "overlay",
            0,
            f"lowerdir={tmp_path}/l2:{tmp_path}/l1,upperdir={ov.upper},workdir={ov.work},"
            "redirect_dir=off,metacopy=off",
            os.getcwd(),
        )
    ]


def test_long_options_are_made_relative_from_the_common_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layers = [tmp_path / "layers" / f"{i:02d}-{'x' * 40}" for i in range(12)]
    for layer in layers:
        layer.mkdir(parents=True)
    monkeypatch.setattr(overlay, "MOUNT_DATA_MAX", 700)
    fake = FakeMounts()
    cwd = os.getcwd()
    ov = overlay.mount_overlay(
        layers, tmp_path / "u", tmp_path / "w", tmp_path / "m", syscalls=fake
    )  # type: ignore[arg-type]
    ((_, _, target, _, _, data, mount_cwd),) = fake.calls
    assert mount_cwd == str(tmp_path / "layers") and os.getcwd() == cwd
    assert target == str(ov.target)
    assert isinstance(data, str) and len(data) <= 700
    assert data.startswith(f"lowerdir=11-{'x' * 40}:10-")
    assert ",upperdir=../u,workdir=../w," in data


def test_options_too_long_even_relative_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(overlay, "MOUNT_DATA_MAX", 100)
    fake = FakeMounts()
    layers = [tmp_path / f"layer-{i}-{'y' * 30}" for i in range(5)]
    with pytest.raises(UserError, match=r"5 layer dirs make \d+ bytes of overlay options"):
        overlay.mount_overlay(layers, tmp_path / "u", tmp_path / "w", tmp_path / "m", syscalls=fake)  # type: ignore[arg-type]
    assert fake.calls == []


def test_no_layers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no layer dirs"):
        overlay.mount_overlay([], tmp_path / "u", tmp_path / "w", tmp_path / "m")


def test_readonly_single_layer_is_a_read_only_bind(tmp_path: Path) -> None:
    fake = FakeMounts()
    overlay.mount_readonly([tmp_path / "only"], tmp_path / "view", syscalls=fake)  # type: ignore[arg-type]
    view = str(tmp_path / "view")
    assert [c[:5] for c in fake.calls] == [
        ("mount", str(tmp_path / "only"), view, None, sc.MS_BIND),
        ("mount", None, view, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY),
    ]


def test_readonly_layers_have_no_upper(tmp_path: Path) -> None:
    fake = FakeMounts()
    overlay.mount_readonly([tmp_path / "a", tmp_path / "b"], tmp_path / "view", syscalls=fake)  # type: ignore[arg-type]
    assert fake.calls[0][5] == f"lowerdir={tmp_path}/b:{tmp_path}/a,redirect_dir=off,metacopy=off"


def test_unmount_busy_falls_back_to_detach_and_removes_dirs(tmp_path: Path) -> None:
    ov = overlay.Overlay([tmp_path / "l"], tmp_path / "u", tmp_path / "w", tmp_path / "m")
    for path in (ov.upper, ov.work, ov.target):
        path.mkdir()
    write(ov.upper / "f", "changed")
    fake = FakeMounts([errno.EBUSY])
    overlay.unmount(ov, syscalls=fake)  # type: ignore[arg-type]
    assert fake.calls == [
        ("umount2", str(ov.target), 0),
        ("umount2", str(ov.target), sc.MNT_DETACH),
    ]
    assert not ov.upper.exists() and not ov.work.exists() and not ov.target.exists()


def test_unmount_of_something_not_mounted_is_fine(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    overlay.unmount(tmp_path / "m", syscalls=FakeMounts([errno.EINVAL]))  # type: ignore[arg-type]
    overlay.unmount(tmp_path / "m", syscalls=FakeMounts([errno.ENOENT]))  # type: ignore[arg-type]
    assert not (tmp_path / "m").exists()


def test_unmount_other_failures_raise_and_keep_dirs(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(OSFailure, match="umount2"):
        overlay.unmount(tmp_path / "m", syscalls=FakeMounts([errno.EPERM]))  # type: ignore[arg-type]
    assert (tmp_path / "m").is_dir()


def test_mount_points_decode_the_kernels_escapes() -> None:
    # Captured from /proc/self/mountinfo for a target named "mer ged" with a ':' and ',' in lowers.
    line = (
        rb"45 27 0:39 / /tmp/ovltry/mer\040ged rw,relatime - overlay overlay rw,"
        rb"lowerdir=/tmp/ovltry/lo\134\134w2:/tmp/ovltry/lo\134:w\134\0541,uuid=on"
    )
    root = b"22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw"
    assert overlay.mount_points(root + b"\n" + line + b"\n") == {"/", "/tmp/ovltry/mer ged"}
