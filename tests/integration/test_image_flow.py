"""Issue 3 end to end, through `isobench image ...` as a user runs it (root, real overlayfs, real runc).

One image is built per module into a store under tmp (ISOBENCH_HOME), so the
user's store is never touched.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.image.initramfs import read_newc

pytestmark = pytest.mark.requires("root", "busybox")

ISOBENCH = str(Path(sys.executable).with_name("isobench"))
TAG = "isobench/workload:test"


class Cli:
    """`isobench` with ISOBENCH_HOME pointing at the test's store."""

    def __init__(self, home: Path, runtime_root: Path) -> None:
        self.home = home
        self.env = {**os.environ, "ISOBENCH_HOME": str(home)}
        self.runtime_root = runtime_root

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [ISOBENCH, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"isobench {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
            )
        return proc


def _store_listing(home: Path) -> list[str]:
    """Every path in the store except staging and containers, to prove a refusal changed nothing."""
    out = []
    for path in sorted(home.rglob("*")):
        rel = path.relative_to(home)
        if rel.parts[0] not in ("tmp", "containers", "build-cache"):
            out.append(f"{rel} {path.stat().st_size if path.is_file() else ''}")
    return out


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    home = tmp_path_factory.mktemp("isobench-home")
    tool = Cli(home, tmp_path_factory.mktemp("runtime"))
    tool("image", "build", "--tag", TAG)
    yield tool
    leftovers = [
        line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(home) in line
    ]
    assert not leftovers, f"mounts left under the store: {leftovers}"


def _id() -> str:
    return f"isobench-test-img-{uuid.uuid4().hex[:8]}"


def test_two_builds_give_one_digest(cli: Cli) -> None:
    first = cli("image", "build", "--tag", TAG).stdout.strip().splitlines()[-1]
    second = cli("image", "build", "--tag", TAG).stdout.strip().splitlines()[-1]
    assert first == second and first.startswith("sha256:")


def test_container_on_an_overlay_root_sees_the_image_and_leaves_nothing(cli: Cli) -> None:
    cid = _id()
    proc = cli(
        "image", "run", TAG, cid, "--", "sh", "-c", "fio --version && touch /written && ls /written"
    )
    assert "fio-" in proc.stdout and "/written" in proc.stdout
    assert not (cli.home / "containers" / cid).exists()
    # The write went to the container's upper dir, never into the shared layers.
    assert not any(p.name == "written" for p in (cli.home / "layers").rglob("written"))


def test_commit_and_a_container_from_the_snapshot(cli: Cli) -> None:
    cid = _id()
    script = (
        "echo snap > /etc/isobench-snapshot && rm /bin/vi && mkdir -p /data && echo d > /data/f"
    )
    cli("image", "run", "--keep", TAG, cid, "--", "sh", "-c", script)
    try:
        changes = cli("image", "diff", cid).stdout.splitlines()
        assert "A /etc/isobench-snapshot" in changes
        assert "D /bin/vi" in changes
        assert "A /data/f" in changes
        snap = cli("image", "commit", cid, "isobench/workload:snap").stdout.strip()
        assert snap.startswith("sha256:")
    finally:
        cli("image", "rm-container", cid)
    check = "cat /etc/isobench-snapshot; test -e /bin/vi && echo vi-present || echo vi-absent; cat /data/f"
    from_snap = cli("image", "run", "isobench/workload:snap", _id(), "--", "sh", "-c", check).stdout
    assert from_snap.split() == ["snap", "vi-absent", "d"]
    from_base = cli("image", "run", TAG, _id(), "--", "sh", "-c", check + " 2>&1; true").stdout
    assert "snap" not in from_base and "vi-present" in from_base


def test_commit_writes_oci_whiteouts(cli: Cli, tmp_path: Path) -> None:
    cid = _id()
    cli(
        "image",
        "run",
        "--keep",
        TAG,
        cid,
        "--",
        "sh",
        "-c",
        "rm /bin/vi; rm -rf /var/tmp; mkdir /var/tmp",
    )
    try:
        digest = cli("image", "commit", cid, "isobench/workload:wh").stdout.strip()
    finally:
        cli("image", "rm-container", cid)
    manifest = json.loads(cli("image", "inspect", digest).stdout)
    top = manifest["layers"][-1]["digest"]
    blob = cli.home / "oci" / "blobs" / "sha256" / top.split(":")[1]
    with tarfile.open(blob, "r:gz") as tar:
        names = tar.getnames()
    assert "bin/.wh.vi" in names
    assert "var/tmp/.wh..wh..opq" in names


def test_escaping_layer_is_refused_and_the_store_is_unchanged(cli: Cli, tmp_path: Path) -> None:
    layout = tmp_path / "evil"
    cli("image", "export", TAG, "--layout", str(layout))
    _replace_top_layer(layout, _tar_with_member("../../etc/evil", b"x"))
    before = _store_listing(cli.home)
    proc = cli("image", "import", "--layout", str(layout), "--tag", "evil:1", check=False)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "../../etc/evil" in proc.stderr
    assert _store_listing(cli.home) == before
    assert not Path("/etc/evil").exists()


def test_corrupt_blob_is_refused_and_the_store_is_unchanged(cli: Cli, tmp_path: Path) -> None:
    layout = tmp_path / "corrupt"
    cli("image", "export", TAG, "--layout", str(layout))
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest).read_text())
    layer = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer.write_bytes(bytes(data))
    before = _store_listing(cli.home)
    proc = cli("image", "import", "--layout", str(layout), "--tag", "corrupt:1", check=False)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "sha256:" in proc.stderr
    assert _store_listing(cli.home) == before


def test_unknown_reference_is_a_one_line_error(cli: Cli) -> None:
    proc = cli("image", "inspect", "no/such:image", check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "no/such:image" in proc.stderr


@pytest.mark.skipif(
    shutil.which("skopeo") is None, reason="skopeo not installed (make setup installs it)"
)
def test_skopeo_and_umoci_accept_the_exported_layout(cli: Cli, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    cli("image", "export", TAG, "--layout", str(layout))
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci:{layout}:{TAG}"], capture_output=True, text=True, check=True
    )
    doc = json.loads(inspected.stdout)
    assert len(doc["Layers"]) >= 2
    assert doc["Digest"] == json.loads(cli("image", "inspect", TAG).stdout)["digest"]
    unpacked = tmp_path / "umoci-bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{TAG}", str(unpacked)],
        capture_output=True,
        check=True,
    )
    assert (unpacked / "rootfs" / "usr" / "bin" / "fio").is_file()


@pytest.mark.requires("runc")
def test_runc_runs_the_exported_bundle(cli: Cli, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    cli("image", "bundle", TAG, str(bundle))
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = ["sh", "-c", "sysbench --version && stress-ng --version"]
    (bundle / "config.json").write_text(json.dumps(config))
    cid = _id()
    proc = subprocess.run(
        ["runc", "--root", str(tmp_path / "runc"), "run", "-b", str(bundle), cid],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "sysbench" in proc.stdout and "stress-ng" in proc.stdout


def test_initramfs_binaries_have_the_layers_hashes(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "initrd.gz"
    cli("image", "initramfs", TAG, str(out))
    archived = {e.name.lstrip("./"): e for e in read_newc(out)}
    assert "init" in archived
    inspected = json.loads(cli("image", "inspect", TAG).stdout)
    layer_files: dict[str, str] = {}
    for layer in inspected["layers"]:  # bottom to top; later layers win
        blob = cli.home / "oci" / "blobs" / "sha256" / layer["digest"].split(":")[1]
        with tarfile.open(blob, "r:gz") as tar:
            for member in tar:
                if member.isfile():
                    data = tar.extractfile(member)
                    assert data is not None
                    layer_files[member.name.lstrip("./")] = hashlib.sha256(data.read()).hexdigest()
    for binary in (
        "bin/busybox",
        "usr/bin/fio",
        "usr/bin/stress-ng",
        "usr/bin/sysbench",
        "usr/bin/iperf3",
    ):
        assert hashlib.sha256(archived[binary].data).hexdigest() == layer_files[binary], binary


# ------------------------------------------------------------------ helpers


def _tar_with_member(name: str, data: bytes) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _replace_top_layer(layout: Path, layer_tar: bytes) -> None:
    """Swap the top layer for layer_tar, fixing every digest so only the content is hostile."""
    blobs = layout / "blobs" / "sha256"

    def put(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())
    gz = gzip.compress(layer_tar, mtime=0)
    manifest["layers"][-1]["digest"], manifest["layers"][-1]["size"] = put(gz)
    config["rootfs"]["diff_ids"][-1] = f"sha256:{hashlib.sha256(layer_tar).hexdigest()}"
    manifest["config"]["digest"], manifest["config"]["size"] = put(json.dumps(config).encode())
    index["manifests"][0]["digest"], index["manifests"][0]["size"] = put(
        json.dumps(manifest).encode()
    )
    (layout / "index.json").write_text(json.dumps(index))
