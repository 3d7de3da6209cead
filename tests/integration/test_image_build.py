"""The workload image for real: reproducible builds, its tools running in a chroot, whiteouts in overlayfs.

Root is needed for overlay mounts, chroot, device-node whiteouts and trusted.* xattrs.
Every store lives in tmp_path; every mount is taken down in a finally.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.image.build import DEFAULT_TAG, DEFAULT_TOOLS, BuildResult, build_image
from harness.image.layers import unpack
from harness.image.snapshot import upper_to_layer
from harness.image.store import ImageStore
from harness.image.tarball import Entry, write_layer

pytestmark = pytest.mark.requires("root")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def overlay(
    lowers_bottom_first: list[Path], target: Path, upper: Path | None = None
) -> Iterator[Path]:
    """A read-only (or, with upper, writable) overlay mount of these layers, unmounted afterwards."""
    target.mkdir(parents=True, exist_ok=True)
    options = "lowerdir=" + ":".join(str(p) for p in reversed(lowers_bottom_first))
    if upper is not None:
        (upper / "upper").mkdir(parents=True)
        (upper / "work").mkdir()
        options += f",upperdir={upper / 'upper'},workdir={upper / 'work'}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageStore, BuildResult]:
    store = ImageStore(home=tmp_path_factory.mktemp("image-home"))
    start = time.monotonic()
    result = build_image(store)
    print(f"\nfirst build: {time.monotonic() - start:.2f} s")
    print("\n".join(result.summary()))
    return store, result


def test_two_builds_give_one_digest_and_the_second_reuses_it(
    built: tuple[ImageStore, BuildResult],
) -> None:
    store, first = built
    assert not first.reused and len(first.layers) == 2
    start = time.monotonic()
    second = build_image(store)
    elapsed_s = time.monotonic() - start
    print(f"\nrebuild with nothing changed: {elapsed_s * 1000:.0f} ms (target <= 1000 ms)")
    assert second.reused and second.digest == first.digest
    assert store.resolve(DEFAULT_TAG) == first.digest
    annotations = store.manifest(first.digest).annotations
    assert annotations["org.opencontainers.image.created"] == "1970-01-01T00:00:00Z"
    for tool in DEFAULT_TOOLS:
        assert annotations[f"org.isobench.tool.{tool}.path"] == shutil.which(tool)
        assert annotations[f"org.isobench.tool.{tool}.version"][0].isdigit()


def test_a_fresh_store_builds_the_same_bytes(
    built: tuple[ImageStore, BuildResult], tmp_path: Path
) -> None:
    _, first = built
    again = build_image(ImageStore(home=tmp_path / "other"))
    assert not again.reused
    assert again.digest == first.digest
    assert [layer.digest for layer in again.layers] == [layer.digest for layer in first.layers]


def test_the_tools_run_in_a_chroot_of_the_image(
    built: tuple[ImageStore, BuildResult], tmp_path: Path
) -> None:
    store, result = built
    with overlay(store.layer_dirs(result.digest), tmp_path / "root") as root:
        for tool in DEFAULT_TOOLS:  # the very files of the host, not copies of other versions
            host = Path(shutil.which(tool) or tool)
            assert sha256(root / host.relative_to("/")) == sha256(host.resolve())
        for argv in (
            ["/usr/bin/fio", "--version"],
            ["/usr/bin/stress-ng", "--version"],
            ["/usr/bin/sysbench", "--version"],
            ["/usr/bin/iperf3", "--version"],
            ["/bin/busybox", "true"],
            ["/bin/sh", "-c", "cat /etc/passwd | grep -q ^root: && ls /tmp"],
        ):
            proc = subprocess.run(
                ["chroot", str(root), *argv], capture_output=True, text=True, timeout=60
            )
            assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
        proc = subprocess.run(
            ["chroot", str(root), "/usr/bin/sysbench", "cpu", "--time=1", "run"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0 and "events per second" in proc.stdout, proc.stderr
        assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777


def test_whiteouts_become_overlayfs_whiteouts_and_hide_lower_files(tmp_path: Path) -> None:
    store = ImageStore(home=tmp_path / "home")
    base = write_layer(
        [
            Entry("keep", "file", data=b"k"),
            Entry("gone", "file", data=b"g"),
            Entry("dir/old1", "file", data=b"1"),
            Entry("dir/old2", "file", data=b"2"),
        ],
        tmp_path / "base.tar.gz",
    )
    top = write_layer(
        [Entry.whiteout("gone"), Entry.opaque("dir"), Entry("dir/new", "file", data=b"n")],
        tmp_path / "top.tar.gz",
    )
    digest = store.add_image([base, top], {}, {}, "t/whiteouts:1").digest
    bottom_dir, top_dir = store.layer_dirs(digest)
    st = os.lstat(top_dir / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(top_dir / "dir", "trusted.overlay.opaque") == b"y"
    assert not (top_dir / ".wh.gone").exists() and not (top_dir / "dir" / ".wh..wh..opq").exists()
    with overlay([bottom_dir, top_dir], tmp_path / "merged") as merged:
        assert sorted(os.listdir(merged)) == ["dir", "keep"]
        assert os.listdir(merged / "dir") == ["new"]


def test_an_overlay_upper_dir_becomes_an_oci_layer_and_back(tmp_path: Path) -> None:
    store = ImageStore(home=tmp_path / "home")
    base = write_layer(
        [
            Entry("a", "file", data=b"a"),
            Entry("d/x", "file", data=b"x"),
            Entry("e/y", "file", data=b"y"),
        ],
        tmp_path / "base.tar.gz",
    )
    digest = store.add_image([base], {}, {}, "t/base:1").digest
    [lower] = store.layer_dirs(digest)
    with overlay([lower], tmp_path / "merged", upper=tmp_path / "rw") as merged:
        (merged / "a").unlink()  # -> whiteout
        shutil.rmtree(merged / "d")
        (merged / "d").mkdir()  # recreated: overlayfs marks it opaque
        (merged / "d" / "z").write_bytes(b"z")
    layer = upper_to_layer(tmp_path / "rw" / "upper", tmp_path / "snap.tar.gz")
    with tarfile.open(tmp_path / "snap.tar.gz") as tar:
        names = tar.getnames()
    assert ".wh.a" in names and "d/.wh..wh..opq" in names and "d/z" in names
    snap = store.commit_layer(digest, tmp_path / "snap.tar.gz", layer.diff_id, "t/snap:1")
    with overlay(store.layer_dirs(snap.digest), tmp_path / "view") as view:
        assert sorted(os.listdir(view)) == ["d", "e"] and os.listdir(view / "d") == ["z"]
    # The base does not see the change (one layer: overlayfs needs two lowers for a read-only mount).
    assert store.layer_dirs("t/base:1") == [lower] and sorted(os.listdir(lower)) == ["a", "d", "e"]
    assert os.listdir(lower / "d") == ["x"]


def test_full_disk_during_unpack_leaves_nothing(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        blob = write_layer(
            [Entry("big", "file", data=os.urandom(4 << 20))], tmp_path / "big.tar.gz"
        )
        with pytest.raises(UserError, match="no space left") as exc:
            unpack(
                blob.path, blob.diff_id, small / "dest", small / "tmp", expected_digest=blob.digest
            )
        assert "\n" not in str(exc.value)
        assert not (small / "dest").exists() and list((small / "tmp").iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_exported_layout_is_read_by_skopeo_and_umoci(
    built: tuple[ImageStore, BuildResult], tmp_path: Path
) -> None:
    store, result = built
    for tool in ("skopeo", "umoci"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; `make setup` installs it")
    layout = tmp_path / "layout"
    store.export(result.digest, layout)
    inspect = subprocess.run(
        ["skopeo", "inspect", f"oci:{layout}:{DEFAULT_TAG}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["Digest"] == result.digest
    unpacked = tmp_path / "bundle"
    proc = subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{DEFAULT_TAG}", str(unpacked)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert sha256(unpacked / "rootfs" / "usr" / "bin" / "fio") == sha256(Path("/usr/bin/fio"))
    assert ImageStore(home=tmp_path / "imported").import_layout(layout) == result.digest
