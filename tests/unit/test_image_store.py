"""The image store with tiny handmade layers: digests, tags, gc, corruption, export and import."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.image.digest import Digest, parse_digest, sha256_bytes
from harness.image.store import ImageStore, default_home
from harness.image.tarball import Entry, LayerBlob, write_layer

HEX = "0123456789abcdef" * 4


def layer(tmp_path: Path, name: str, files: dict[str, bytes]) -> LayerBlob:
    """A reproducible layer blob holding these files."""
    entries = [Entry(path, "file", data=data) for path, data in files.items()]
    return write_layer(entries, tmp_path / f"{name}.tar.gz")


def image(store: ImageStore, tmp_path: Path, tag: str, *layers: dict[str, bytes]) -> str:
    """Add an image made of these layers (bottom first); returns its manifest digest."""
    blobs = [
        layer(tmp_path, f"{tag.replace('/', '_')}-{i}", files) for i, files in enumerate(layers)
    ]
    return store.add_image(blobs, {"Env": ["PATH=/bin"], "Cmd": ["sh"]}, {"a": "b"}, tag).digest


def listing(root: Path) -> list[tuple[str, int]]:
    """Every path under root with its size (0 for directories), for before/after comparisons."""
    out = []
    for path in sorted(root.rglob("*")):
        if path.name == "lock":
            continue
        out.append((str(path.relative_to(root)), 0 if path.is_dir() else path.lstat().st_size))
    return out


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(home=tmp_path / "home")


# -- digests ----------------------------------------------------------------------------


def test_digest_parsing() -> None:
    assert str(Digest.parse(f"sha256:{HEX}")) == f"sha256:{HEX}"
    assert Digest.parse(f"sha256:{HEX}").hex == HEX
    assert (
        parse_digest(sha256_bytes(b""))
        == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        HEX,
        f"sha256:{HEX[:-1]}",
        f"sha256:{HEX.upper()}",
        f"sha512:{HEX}",
        f"sha256:{HEX}0",
        "sha256:../../etc",
    ],
)
def test_bad_digests_are_user_errors(text: str) -> None:
    with pytest.raises(UserError, match=r"accepted: sha256:<64 lowercase hex digits>"):
        Digest.parse(text)


def test_default_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ISOBENCH_HOME", str(tmp_path))
    assert default_home() == tmp_path
    monkeypatch.delenv("ISOBENCH_HOME")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_home() == Path("/var/lib/isobench")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_home() == Path.home() / ".local/share/isobench"


# -- blobs ------------------------------------------------------------------------------


def test_put_blob_is_content_addressed_and_idempotent(store: ImageStore, tmp_path: Path) -> None:
    desc = store.put_blob(b"hello", "text/plain")
    assert desc.digest == sha256_bytes(b"hello") and desc.size == 5
    (tmp_path / "f").write_bytes(b"hello")
    assert store.put_blob(tmp_path / "f", "text/plain", expected_digest=desc.digest) == desc
    assert store.read_blob(desc.digest) == b"hello"
    assert (
        store.has_blob(desc.digest)
        and store.blob_path(desc.digest).name == Digest.parse(desc.digest).hex
    )
    layout = json.loads((store.oci / "oci-layout").read_text())
    assert layout == {"imageLayoutVersion": "1.0.0"}
    assert list(store.tmp.iterdir()) == []


def test_put_blob_with_wrong_expected_digest_names_both_and_leaves_nothing(
    store: ImageStore,
) -> None:
    wrong = f"sha256:{HEX}"
    with pytest.raises(UserError) as exc:
        store.put_blob(b"hello", "text/plain", expected_digest=wrong)
    assert wrong in str(exc.value) and sha256_bytes(b"hello") in str(exc.value)
    assert not store.has_blob(wrong) and not store.has_blob(sha256_bytes(b"hello"))
    assert list(store.tmp.iterdir()) == []


def test_corrupt_blob_is_detected_on_read(store: ImageStore) -> None:
    desc = store.put_blob(b"hello", "text/plain")
    path = store.blob_path(desc.digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"hellO")
    with pytest.raises(
        UserError,
        match=rf"blob {desc.digest} is corrupt \(its content hashes to {sha256_bytes(b'hellO')}\)",
    ):
        store.read_blob(desc.digest)
    with pytest.raises(UserError, match="is not in the store"):
        store.read_blob(f"sha256:{HEX}")


# -- images, references, gc ---------------------------------------------------------


def test_add_image_writes_an_oci_manifest_and_config(store: ImageStore, tmp_path: Path) -> None:
    digest = image(store, tmp_path, "t/one:1", {"bin/a": b"a"}, {"bin/b": b"b"})
    manifest = store.manifest("t/one:1")
    assert manifest.digest == digest and manifest.annotations == {"a": "b"}
    assert [d.media_type for d in manifest.layers] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ] * 2
    raw = json.loads(store.read_blob(digest))
    assert (
        raw["schemaVersion"] == 2
        and raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    )
    config = store.config(digest)
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    assert config["config"] == {"Env": ["PATH=/bin"], "Cmd": ["sh"]}
    diff_ids = config["rootfs"]["diff_ids"]  # type: ignore[index]
    assert diff_ids == [
        layer(tmp_path, "x", {"bin/a": b"a"}).diff_id,
        layer(tmp_path, "y", {"bin/b": b"b"}).diff_id,
    ]
    assert (
        store.images() == [("t/one:1", store.images()[0][1])]
        and store.images()[0][1].digest == digest
    )


def test_resolve_by_tag_digest_and_prefix(store: ImageStore, tmp_path: Path) -> None:
    digest = image(store, tmp_path, "t/one:1", {"a": b"a"})
    hexpart = digest.removeprefix("sha256:")
    assert store.resolve("t/one:1") == digest
    assert store.resolve(digest) == digest
    assert store.resolve(hexpart[:12]) == digest
    assert store.resolve(f"sha256:{hexpart[:20]}") == digest
    for bad in ("t/one:2", hexpart[:11], "", f"sha256:{HEX}"):
        with pytest.raises(UserError, match=r"unknown image reference.*`isobench image ls`"):
            store.resolve(bad)


def test_bad_tag_is_refused(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="tag 'a b' is not valid"):
        image(store, tmp_path, "a b", {"a": b"a"})


def test_remove_collects_only_what_no_tagged_image_needs(store: ImageStore, tmp_path: Path) -> None:
    shared = {"base": b"shared"}
    one = image(store, tmp_path, "t/one:1", shared, {"one": b"1"})
    two = image(store, tmp_path, "t/two:1", shared, {"two": b"2"})
    one_layers = [d.digest for d in store.manifest(one).layers]
    two_layers = [d.digest for d in store.manifest(two).layers]
    assert one_layers[0] == two_layers[0]
    dirs = store.layer_dirs(one)
    assert [p.exists() for p in dirs] == [True, True]
    store.remove("t/one:1")
    assert not store.has_blob(one) and not store.has_blob(one_layers[1])
    assert store.has_blob(one_layers[0]) and all(store.has_blob(d) for d in two_layers)
    assert dirs[0].exists() and not dirs[1].exists()  # the shared base stays unpacked
    assert [t for t, _ in store.images()] == ["t/two:1"]
    store.remove(two[:19])
    assert (
        store.images() == []
        and list(store.blobs.iterdir()) == []
        and list(store.layers.iterdir()) == []
    )
    assert list(store.tmp.iterdir()) == []


def test_moving_a_tag_collects_the_old_image(store: ImageStore, tmp_path: Path) -> None:
    old = image(store, tmp_path, "t/one:1", {"a": b"old"})
    new = image(store, tmp_path, "t/one:1", {"a": b"new"})
    assert old != new and not store.has_blob(old) and store.resolve("t/one:1") == new


def test_gc_keeps_an_image_a_container_still_uses(store: ImageStore, tmp_path: Path) -> None:
    digest = image(store, tmp_path, "t/one:1", {"a": b"a"})
    record = store.home / "containers" / "c1" / "image.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"ref": "t/one:1", "manifest": digest, "lowers": []}))
    store.remove("t/one:1")
    assert store.images() == [] and store.has_blob(digest)
    assert store.resolve(digest) == digest and len(store.layer_dirs(digest)) == 1
    record.unlink()
    store.gc()
    assert not store.has_blob(digest)


def test_layer_dirs_unpacks_once_in_order(store: ImageStore, tmp_path: Path) -> None:
    digest = image(store, tmp_path, "t/one:1", {"etc/a": b"bottom"}, {"etc/b": b"top"})
    bottom, top = store.layer_dirs(digest)
    assert (bottom / "etc" / "a").read_bytes() == b"bottom" and (
        top / "etc" / "b"
    ).read_bytes() == b"top"
    inode = (bottom / "etc" / "a").stat().st_ino
    assert store.layer_dirs("t/one:1") == [bottom, top]
    assert (bottom / "etc" / "a").stat().st_ino == inode


def test_corrupt_layer_blob_is_refused_and_the_store_is_unchanged(
    store: ImageStore, tmp_path: Path
) -> None:
    digest = image(store, tmp_path, "t/one:1", {"a": os.urandom(50_000)})
    blob = store.blob_path(store.manifest(digest).layers[0].digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    before = listing(store.home)
    with pytest.raises(UserError, match="is corrupt"):
        store.layer_dirs(digest)
    assert listing(store.home) == before


# -- export and import -------------------------------------------------------------------


def test_export_then_import_gives_the_same_image(store: ImageStore, tmp_path: Path) -> None:
    digest = image(store, tmp_path, "t/one:1", {"a": b"a"}, {"b": b"b"})
    store.export("t/one:1", tmp_path / "layout")
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == [
        "t/one:1"
    ]
    other = ImageStore(home=tmp_path / "other")
    assert other.import_layout(tmp_path / "layout") == digest
    assert other.resolve("t/one:1") == digest
    assert other.import_layout(tmp_path / "layout", tag="t/copy:2") == digest
    assert sorted(t or "" for t, _ in other.images()) == ["t/copy:2", "t/one:1"]
    with pytest.raises(UserError, match="not empty"):
        store.export(digest, tmp_path / "layout")


def _tamper_layer(layout: Path, store: ImageStore, digest: str) -> None:
    layer_digest = store.manifest(digest).layers[0].digest
    path = layout / "blobs" / "sha256" / Digest.parse(layer_digest).hex
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))


def _rewrite(
    layout: Path, digest: str, diff_id: str | None = None, tar: bytes | None = None
) -> None:
    """Make a consistent layout (every digest and size right) with a new first diff_id or layer tar."""
    blobs = layout / "blobs" / "sha256"

    def put(data: bytes) -> dict[str, object]:
        (blobs / Digest.parse(sha256_bytes(data)).hex).write_bytes(data)
        return {"digest": sha256_bytes(data), "size": len(data)}

    manifest = json.loads((blobs / Digest.parse(digest).hex).read_text())
    config = json.loads((blobs / Digest.parse(manifest["config"]["digest"]).hex).read_text())
    if tar is not None:
        manifest["layers"][0].update(put(gzip.compress(tar, mtime=0)))
        diff_id = sha256_bytes(tar)
    config["rootfs"]["diff_ids"][0] = diff_id
    manifest["config"].update(put(json.dumps(config).encode()))
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(put(json.dumps(manifest).encode()))
    (layout / "index.json").write_text(json.dumps(index))


def _escaping_tar() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("../../etc/evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return raw.getvalue()


def _wrong_size(layout: Path, store: ImageStore, digest: str) -> None:
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["size"] += 1
    (layout / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_tamper_layer, "is corrupt"),
        (
            lambda layout, store, digest: _rewrite(layout, digest, diff_id=f"sha256:{HEX}"),
            "diff_id",
        ),
        (
            lambda layout, store, digest: _rewrite(layout, digest, tar=_escaping_tar()),
            "'../../etc/evil'",
        ),
        (_wrong_size, "its descriptor says"),
    ],
)
def test_import_of_a_bad_layout_is_refused_and_the_store_is_unchanged(
    store: ImageStore, tmp_path: Path, damage: object, message: str
) -> None:
    digest = image(store, tmp_path, "t/one:1", {"a": os.urandom(20_000)})
    store.export(digest, tmp_path / "layout")
    target = ImageStore(home=tmp_path / "target")
    image(target, tmp_path, "t/other:1", {"z": b"z"})
    before = listing(target.home)
    damage(tmp_path / "layout", store, digest)  # type: ignore[operator]
    with pytest.raises(UserError, match=message):
        target.import_layout(tmp_path / "layout", tag="t/imported:1")
    assert listing(target.home) == before


def test_import_of_something_that_is_not_a_layout(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not an OCI image layout"):
        store.import_layout(tmp_path / "nothing")


# -- tarball -----------------------------------------------------------------------------


def test_write_layer_is_reproducible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"data")
    os.symlink("d/f", src / "l")
    entries = [
        ("l", src / "l"),
        ("d/f", src / "d" / "f"),
        ("d", src / "d"),
        Entry("h", "hardlink", target="d/f"),
    ]
    first = write_layer(entries, tmp_path / "1.tar.gz")
    os.utime(src / "d" / "f", (123, 123))  # mtimes on disk do not matter
    second = write_layer(list(reversed(entries)), tmp_path / "2.tar.gz")  # nor the order given
    assert (first.diff_id, first.digest, first.size) == (second.diff_id, second.digest, second.size)
    assert (tmp_path / "1.tar.gz").read_bytes() == (tmp_path / "2.tar.gz").read_bytes()
    assert first.digest == sha256_bytes((tmp_path / "1.tar.gz").read_bytes())
    header = (tmp_path / "1.tar.gz").read_bytes()[:10]
    assert header[3] & 0x08 == 0 and header[4:8] == b"\0\0\0\0"  # no file name, mtime 0
    with tarfile.open(tmp_path / "1.tar.gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["d", "d/f", "h", "l"]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    assert members[2].islnk() and members[2].linkname == "d/f"
    assert first.diff_id == sha256_bytes(gzip.decompress((tmp_path / "1.tar.gz").read_bytes()))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert write_layer(entries, tmp_path / "3.tar.gz").digest != first.digest


def test_whiteout_entries(tmp_path: Path) -> None:
    blob = write_layer(
        [Entry.whiteout("etc/passwd"), Entry.opaque("var/cache")], tmp_path / "w.tar.gz"
    )
    with tarfile.open(blob.path) as tar:
        assert tar.getnames() == ["etc/.wh.passwd", "var/cache/.wh..wh..opq"]
        assert all(m.isreg() and m.size == 0 for m in tar.getmembers())
