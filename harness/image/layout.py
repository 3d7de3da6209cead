"""Export an image from the store as a plain OCI image layout, and import one back.

A layout is staged beside its target (export) or under the store's tmp/ (import)
and only then renamed into place, verifying every digest, size and diff_id on
the way, so an interrupted or refused transfer leaves nothing half-written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import UserError
from harness.image import digest as oci
from harness.image.digest import (
    CHUNK,
    MEDIA_TYPE_MANIFEST,
    REF_NAME,
    Descriptor,
    Digest,
    HashingWriter,
    canonical_json,
)
from harness.image.layers import check_layer, remove_tree
from harness.image.tarball import MEDIA_TYPE_TAR_GZIP

if TYPE_CHECKING:
    from harness.image.store import ImageStore

LAYER_MEDIA_TYPES = (
    MEDIA_TYPE_TAR_GZIP,
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
)


def export(store: ImageStore, ref: str, layout_dir: Path, tag: str | None = None) -> None:
    """Write a plain OCI image layout holding this one image, named `tag` (default: its tag here)."""
    digest = store.resolve(ref)
    manifest = store.manifest(digest)
    if tag is None:
        tags = [t for t, d in store.images() if d.digest == digest and t]
        tag = ref if ref in tags else (tags[0] if tags else None)
    if layout_dir.exists() and (not layout_dir.is_dir() or any(layout_dir.iterdir())):
        raise UserError(
            f"{layout_dir} is not empty; accepted: a new or empty directory for the layout"
        )
    size = store.blob_path(digest).stat().st_size
    entry = Descriptor(MEDIA_TYPE_MANIFEST, digest, size, {REF_NAME: tag} if tag else {})
    layout_dir.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place: an interrupted export leaves no half layout.
    stage = Path(tempfile.mkdtemp(prefix=f".isobench-{os.getpid()}-export-", dir=layout_dir.parent))
    try:
        (stage / "blobs" / "sha256").mkdir(parents=True)
        for blob in dict.fromkeys(
            [digest, manifest.config.digest, *(d.digest for d in manifest.layers)]
        ):
            _copy_verified(
                store.blob_path(blob),
                stage / "blobs" / "sha256" / Digest.parse(blob).hex,
                blob,
                None,
            )
        (stage / "oci-layout").write_bytes(canonical_json(oci.OCI_LAYOUT))
        (stage / "index.json").write_bytes(canonical_json(oci.index_doc([entry])))
        os.chmod(stage, 0o755)
        if layout_dir.exists():
            layout_dir.rmdir()
        os.rename(stage, layout_dir)
    except BaseException:
        remove_tree(stage)
        raise


def import_layout(store: ImageStore, layout_dir: Path, tag: str | None = None) -> str:
    """Read an OCI image layout into the store, verifying every digest, size and diff_id; returns the manifest digest."""
    if tag is not None:
        oci.check_tag(tag)
    store._ensure()
    stage = Path(tempfile.mkdtemp(prefix=f"isobench-{os.getpid()}-import-", dir=store.tmp))
    try:
        entry, name, staged = _stage_layout(layout_dir, tag, stage)
        name = tag or name
        if name is not None:
            # Checked before anything is committed: a bad name leaves the store as it was.
            oci.check_tag(name)
        with store._lock():
            for digest, path in staged.items():
                if not store.has_blob(digest):
                    os.chmod(path, 0o444)
                    os.rename(path, store.blob_path(digest))
            if name:
                store.tag(name, entry)
            elif all(e.digest != entry.digest for e in store._index()):
                store._write_index([*store._index(), entry])
    finally:
        remove_tree(stage)
    return entry.digest


def _copy_verified(src: Path, dst: Path, digest: str, size: int | None) -> None:
    """Copy a blob, checking its size (when known) and digest on the way."""
    try:
        with open(src, "rb") as f, open(dst, "wb") as out:
            actual_size = os.fstat(f.fileno()).st_size
            if size is not None and actual_size != size:
                raise UserError(
                    f"blob {digest} ({src}) is {actual_size} bytes, its descriptor says {size}"
                )
            writer = HashingWriter(out)
            while chunk := f.read(CHUNK):
                writer.write(chunk)
    except FileNotFoundError:
        raise UserError(f"blob {digest} is missing ({src})") from None
    if writer.digest != digest:
        raise UserError(f"blob {digest} is corrupt (its content hashes to {writer.digest})")


def _stage_layout(
    layout_dir: Path, tag: str | None, stage: Path
) -> tuple[Descriptor, str | None, dict[str, Path]]:
    """Copy one image of an OCI layout into stage, verifying everything; (manifest, its ref.name, blobs)."""
    try:
        marker = oci.parse_json(
            (layout_dir / "oci-layout").read_bytes(), f"{layout_dir}/oci-layout"
        )
        entries = oci.parse_index(
            (layout_dir / "index.json").read_bytes(), f"{layout_dir}/index.json"
        )
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(
            f"{layout_dir} is not an OCI image layout (no oci-layout or index.json); accepted: a directory "
            "written by `isobench image export` or `skopeo copy ... oci:DIR:TAG`"
        ) from None
    if marker.get("imageLayoutVersion") != "1.0.0":
        raise UserError(f"{layout_dir}/oci-layout: imageLayoutVersion must be 1.0.0")
    images = [e for e in entries if e.media_type == MEDIA_TYPE_MANIFEST]
    named = [e for e in images if tag is not None and e.annotations.get(REF_NAME) == tag]
    if len(named) == 1 or len(images) == 1:
        entry = named[0] if named else images[0]
    else:
        names = sorted(str(e.annotations.get(REF_NAME)) for e in images)
        raise UserError(
            f"{layout_dir} holds {len(images)} image manifests {names}; accepted: a layout with one, "
            "or --tag naming one of them"
        )
    staged: dict[str, Path] = {}

    def take(desc: Descriptor) -> Path:
        hexpart = Digest.parse(desc.digest).hex
        _copy_verified(
            layout_dir / "blobs" / "sha256" / hexpart, stage / hexpart, desc.digest, desc.size
        )
        staged[desc.digest] = stage / hexpart
        return stage / hexpart

    manifest = oci.parse_manifest(
        entry.digest, oci.parse_json(take(entry).read_bytes(), f"manifest {entry.digest}")
    )
    config = oci.parse_json(
        take(manifest.config).read_bytes(), f"image config {manifest.config.digest}"
    )
    for layer, diff_id in zip(manifest.layers, oci.diff_ids(config, manifest), strict=True):
        if layer.media_type not in LAYER_MEDIA_TYPES:
            raise UserError(
                f"layer {layer.digest} has media type {layer.media_type}; accepted: {', '.join(LAYER_MEDIA_TYPES)}"
            )
        actual = check_layer(take(layer), f"layer {layer.digest}")
        if actual != diff_id:
            raise UserError(
                f"layer {layer.digest}: its tar hashes to {actual}, the config's diff_id is {diff_id}"
            )
    plain = Descriptor(MEDIA_TYPE_MANIFEST, entry.digest, entry.size)
    return plain, entry.annotations.get(REF_NAME), staged
