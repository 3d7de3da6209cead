"""Overlay roots on the real kernel: merged views, the upper dir a container leaves, and that
upper turned into a layer which, stacked on the image, reproduces what the container saw.

Everything lives under tmp_path; every test ends with a check that no mount is
left below it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import statistics
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import OSFailure, UserError
from harness.image import overlay, snapshot
from harness.runtime.syscalls import MNT_DETACH, linux

pytestmark = pytest.mark.requires("root")

BENCH_CYCLES = 50
Tree = dict[str, tuple[str, int, str]]


def mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo", "rb") as f:
        points = overlay.mount_points(f.read())
    return sorted(p for p in points if p == str(root) or p.startswith(f"{root}/"))


@pytest.fixture(autouse=True)
def no_leftover_mounts(tmp_path: Path) -> Iterator[None]:
    """Fails the test if it leaves any mount below its tmp_path (after detaching them)."""
    yield
    left = mounts_under(tmp_path)
    for point in reversed(left):  # detach anyway, so later tests are not hit
        with contextlib.suppress(OSFailure):
            linux().umount2(point, MNT_DETACH)
    assert left == [], f"mounts left behind: {left}"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def tree(root: Path) -> Tree:
    """relative path -> (kind, permission bits, content or link target) for everything under root."""
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), "")
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(path))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_text())
    return out


def unpack_to_overlay_form(layer: Path, dest: Path) -> None:
    """The layer store's job in miniature: OCI whiteouts back to overlayfs whiteouts."""
    dest.mkdir()
    with tarfile.open(layer, "r:gz") as tar:
        for member in tar.getmembers():
            parent, _, name = member.name.rpartition("/")
            where = dest / parent
            if name == snapshot.OPAQUE_MARKER:
                os.setxattr(where, snapshot.OPAQUE_XATTR, b"y")
            elif name.startswith(snapshot.WHITEOUT_PREFIX):
                os.mknod(where / name.removeprefix(snapshot.WHITEOUT_PREFIX), stat.S_IFCHR, 0)
            else:
                tar.extract(member, dest, filter="fully_trusted")


@pytest.fixture
def image(tmp_path: Path) -> list[Path]:
    """bottom: a/file1 "one", a/file2, dir/x; top: a/file1 "two"."""
    bottom, top = tmp_path / "layers" / "bottom", tmp_path / "layers" / "top"
    write(bottom / "a" / "file1", "one")
    write(bottom / "a" / "file2", "2")
    write(bottom / "dir" / "x", "x")
    write(top / "a" / "file1", "two")
    return [bottom, top]


def run_container(image: list[Path], box: Path) -> tuple[overlay.Overlay, Tree]:
    """Mount a container root over the image, make its changes; returns it (unmounted) and its view."""
    ov = overlay.mount_overlay(image, box / "upper", box / "work", box / "rootfs")
    try:
        root = ov.target
        assert overlay.is_mounted(root)
        assert tree(root) == {
            "a": ("dir", 0o755, ""),
            "a/file1": ("file", 0o644, "two"),
            "a/file2": ("file", 0o644, "2"),
            "dir": ("dir", 0o755, ""),
            "dir/x": ("file", 0o644, "x"),
        }
        write(root / "a" / "new", "new")
        os.unlink(root / "a" / "file2")
        shutil.rmtree(root / "dir")
        os.mkdir(root / "dir")
        write(root / "dir" / "y", "y")
        seen = tree(root)
    finally:
        overlay.unmount(ov, remove=False)
    assert not overlay.is_mounted(ov.target)
    return ov, seen


def test_container_changes_become_a_layer_that_reproduces_its_view(
    tmp_path: Path, image: list[Path]
) -> None:
    ov, seen = run_container(image, tmp_path / "c1")
    assert set(seen) == {"a", "a/file1", "a/new", "dir", "dir/y"}
    assert seen["a/file1"][2] == "two"
    # The upper dir is in overlayfs form: a whiteout for file2, /dir opaque.
    assert snapshot.is_whiteout((ov.upper / "a" / "file2").lstat())
    assert snapshot.is_opaque(str(ov.upper / "dir"))
    assert snapshot.diff(ov.upper, image) == [
        ("C", "/a"),
        ("D", "/a/file2"),
        ("A", "/a/new"),
        ("C", "/dir"),
        ("A", "/dir/y"),
    ]

    layer = tmp_path / "layer.tar.gz"
    info = snapshot.upper_to_layer(ov.upper, layer)
    with tarfile.open(layer, "r:gz") as tar:
        names = tar.getnames()
    assert names == ["a", "a/.wh.file2", "a/new", "dir", "dir/.wh..wh..opq", "dir/y"]
    assert info.changes == 5

    unpack_to_overlay_form(layer, tmp_path / "layers" / "snap")
    view = tmp_path / "view"
    overlay.mount_readonly([*image, tmp_path / "layers" / "snap"], view)
    try:
        assert tree(view) == seen
        assert not (view / "a" / "file2").exists()
        assert sorted(os.listdir(view / "dir")) == ["y"]
    finally:
        overlay.unmount(view)
    # The base image itself is untouched: a container from it still sees file2 and dir/x.
    base = overlay.mount_overlay(
        image, tmp_path / "c2" / "u", tmp_path / "c2" / "w", tmp_path / "c2" / "r"
    )
    try:
        assert (base.target / "a" / "file2").read_text() == "2"
        assert (base.target / "dir" / "x").read_text() == "x"
    finally:
        overlay.unmount(base)
    assert not (tmp_path / "c2").exists() or list((tmp_path / "c2").iterdir()) == []


def test_commit_twice_gives_one_digest(tmp_path: Path, image: list[Path]) -> None:
    ov, _ = run_container(image, tmp_path / "c1")
    first = snapshot.upper_to_layer(ov.upper, tmp_path / "one.tar.gz")
    second = snapshot.upper_to_layer(ov.upper, tmp_path / "two.tar.gz")
    assert first == second
    assert (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()


def test_opaque_dir_in_a_lower_hides_the_layers_below(tmp_path: Path, image: list[Path]) -> None:
    top = image[1]
    (top / "dir").mkdir()
    os.setxattr(top / "dir", snapshot.OPAQUE_XATTR, b"y")
    assert not snapshot.exists_in_lowers("dir/x", image)
    upper = tmp_path / "upper"
    write(upper / "dir" / "x", "again")
    assert snapshot.diff(upper, image) == [("C", "/dir"), ("A", "/dir/x")]
    # ... as the kernel agrees:
    view = tmp_path / "view"
    overlay.mount_readonly(image, view)
    try:
        assert os.listdir(view / "dir") == []
    finally:
        overlay.unmount(view)


def test_readonly_views_refuse_writes(tmp_path: Path, image: list[Path]) -> None:
    for lowers, name in ((image[:1], "one"), (image, "two")):
        view = tmp_path / name
        overlay.mount_readonly(lowers, view)
        try:
            assert (view / "a" / "file1").read_text() == ("one" if name == "one" else "two")
            with pytest.raises(OSError) as err:
                (view / "new").write_text("no")
            assert err.value.errno == errno.EROFS
        finally:
            overlay.unmount(view)
        assert not view.exists()
    assert not (image[0] / "new").exists()


def test_paths_with_colon_and_comma_are_escaped(tmp_path: Path) -> None:
    lowers = [tmp_path / "sha256:aa,1", tmp_path / "sha256:bb,2"]
    write(lowers[0] / "f", "bottom")
    write(lowers[1] / "f", "top")
    ov = overlay.mount_overlay(
        lowers, tmp_path / "up:per", tmp_path / "wo,rk", tmp_path / "root fs"
    )
    try:
        assert (ov.target / "f").read_text() == "top"
        write(ov.target / "g", "g")
        assert (tmp_path / "up:per" / "g").read_text() == "g"
        assert overlay.is_mounted(ov.target)
    finally:
        overlay.unmount(ov)
    assert not ov.target.exists() and not ov.upper.exists() and not ov.work.exists()


def test_more_layers_than_one_page_of_options(tmp_path: Path) -> None:
    # ~50 layers x ~90 bytes of absolute path: over a page, under one when relative.
    store = tmp_path / "store" / ("s" * 20)
    layers = [store / f"sha256-{i:03d}-{'e' * 60}" for i in range(50)]
    for i, layer in enumerate(layers):
        write(layer / "who", str(i))
        write(layer / f"only-{i}", "")
    assert len(overlay.overlay_data([str(p) for p in layers], None, None)) > overlay.MOUNT_DATA_MAX
    cwd = os.getcwd()
    ov = overlay.mount_overlay(layers, tmp_path / "u", tmp_path / "w", tmp_path / "m")
    try:
        assert os.getcwd() == cwd
        assert (ov.target / "who").read_text() == "49"
        assert len(os.listdir(ov.target)) == 51
    finally:
        overlay.unmount(ov)


def test_unmount_while_busy_detaches(tmp_path: Path, image: list[Path]) -> None:
    ov = overlay.mount_overlay(image, tmp_path / "u", tmp_path / "w", tmp_path / "m")
    busy = os.open(ov.target / "a" / "file1", os.O_RDONLY)
    try:
        overlay.unmount(ov)
        assert not overlay.is_mounted(ov.target)
        assert not ov.target.exists() and not ov.upper.exists()
        assert os.read(busy, 3) == b"two"  # the detached mount lives on for its user
    finally:
        os.close(busy)
    overlay.unmount(ov)  # again: nothing to do


def test_unmount_failure_is_named(tmp_path: Path) -> None:
    write(tmp_path / "file", "")
    with pytest.raises(OSFailure, match=f"umount2 {tmp_path}/file/x: Not a directory"):
        overlay.unmount(tmp_path / "file" / "x")


def test_setup_teardown_benchmark(tmp_path: Path, image: list[Path]) -> None:
    """Prints the median of mount_overlay + unmount for one container (target: <= 5 ms)."""
    box = tmp_path / "bench"
    times_ms = []
    for _ in range(BENCH_CYCLES):
        start = time.perf_counter()
        ov = overlay.mount_overlay(image, box / "upper", box / "work", box / "rootfs")
        overlay.unmount(ov)
        times_ms.append((time.perf_counter() - start) * 1000)
    assert not box.exists() or list(box.iterdir()) == []
    print(
        f"\noverlay setup+teardown, 2 layers, {BENCH_CYCLES} cycles: "
        f"median {statistics.median(times_ms):.3f} ms, "
        f"min {min(times_ms):.3f} ms, max {max(times_ms):.3f} ms"
    )


def test_layer_keeps_file_xattrs_but_not_overlay_metadata(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    write(upper / "ping", "elf")
    cap = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep, binary
    os.setxattr(upper / "ping", "security.capability", cap)
    os.setxattr(upper / "ping", "user.note", b"kept")
    os.setxattr(upper / "ping", "trusted.overlay.origin", b"\0\xfb")
    snapshot.upper_to_layer(upper, tmp_path / "layer.tar.gz")
    with tarfile.open(tmp_path / "layer.tar.gz", "r:gz") as tar:
        headers = tar.getmember("ping").pax_headers
    xattrs = {k: v for k, v in headers.items() if k.startswith("SCHILY.xattr.")}
    assert xattrs == {
        "SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.user.note": "kept",
    }


def test_redirected_upper_entries_are_refused(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "moved").mkdir(parents=True)
    os.setxattr(upper / "moved", "trusted.overlay.redirect", b"/orig")
    with pytest.raises(
        UserError, match=r"trusted\.overlay\.redirect: its content lives in a lower"
    ):
        snapshot.upper_to_layer(upper, tmp_path / "layer.tar.gz")
    assert list(tmp_path.iterdir()) == [upper]
