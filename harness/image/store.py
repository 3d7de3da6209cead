"""The content-addressed image store: an OCI image layout plus each layer unpacked once.

    <home>/oci/            a valid OCI image layout (oci-layout, index.json, blobs/sha256/...);
                           a tag is an index.json entry annotated org.opencontainers.image.ref.name
    <home>/layers/<hex>/   a layer unpacked (overlayfs whiteouts), keyed by its diff_id; never written again
    <home>/tmp/            staging on the same filesystem, so publishing is a rename; isobench-<pid>-...
    <home>/build-cache/    build inputs -> manifest digest (build.py)
    <home>/lock            flock: index updates and garbage collection exclude each other

Blobs are written to tmp/ and renamed into place, so a blob file is either
absent or complete; its digest is checked again whenever it is read. One
ImageStore object is not meant to be shared between threads. Export to and
import from a plain OCI image layout live in layout.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from harness.errors import OSFailure, UserError
from harness.image import digest as oci
from harness.image import layout
from harness.image.digest import (
    CHUNK,
    CREATED,
    EPOCH,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_MANIFEST,
    REF_NAME,
    Descriptor,
    Digest,
    HashingWriter,
    Manifest,
    canonical_json,
    parse_digest,
    sha256_bytes,
)
from harness.image.layers import check_layer, remove_tree, unpack
from harness.image.tarball import MEDIA_TYPE_TAR_GZIP, LayerBlob

# containers.py keeps each image container's record here; its manifest must survive gc.
CONTAINER_RECORDS = "containers/*/image.json"
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}


def default_home() -> Path:
    """$ISOBENCH_HOME, else /var/lib/isobench as root, else ~/.local/share/isobench."""
    env = os.environ.get("ISOBENCH_HOME")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/isobench")
    return Path.home() / ".local" / "share" / "isobench"


class ImageStore:
    """Blobs, tags and unpacked layers under one home directory (see the module docstring)."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.oci = self.home / "oci"
        self.blobs = self.oci / "blobs" / "sha256"
        self.layers = self.home / "layers"
        self.tmp = self.home / "tmp"
        self._lock_depth = 0

    # -- blobs --------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob with this digest lives (whether or not it exists)."""
        return self.blobs / Digest.parse(digest).hex

    def has_blob(self, digest: str) -> bool:
        """Whether the blob is in the store (its content is not checked)."""
        return self.blob_path(digest).is_file()

    def put_blob(
        self, source: bytes | Path, media_type: str, expected_digest: str | None = None
    ) -> Descriptor:
        """Store bytes or a file's content as a blob (atomically); returns its descriptor.

        Not a garbage-collection root by itself: tag an image that refers to it
        (add_image does both under the store lock).
        """
        expected = (
            None if expected_digest is None else parse_digest(expected_digest, "expected digest")
        )
        self._ensure()
        fd, name = tempfile.mkstemp(prefix=f"isobench-{os.getpid()}-blob-", dir=self.tmp)
        staged = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                writer = HashingWriter(out)
                if isinstance(source, bytes):
                    writer.write(source)
                else:
                    with open(source, "rb") as f:
                        while chunk := f.read(CHUNK):
                            writer.write(chunk)
            if expected is not None and writer.digest != expected:
                what = source if isinstance(source, Path) else f"{len(source)} bytes"
                raise UserError(
                    f"blob {what} has the wrong digest: expected {expected}, it hashes to {writer.digest}"
                )
            target = self.blob_path(writer.digest)
            if target.exists():
                staged.unlink()
            else:
                # Blobs are immutable: a stray write should fail, not corrupt one.
                os.chmod(staged, 0o444)
                os.rename(staged, target)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise OSFailure(
                "write blob", str(source if isinstance(source, Path) else staged), exc.errno or 0
            ) from exc
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return Descriptor(media_type, writer.digest, writer.size)

    def read_blob(self, digest: str) -> bytes:
        """A blob's content, verified against its digest."""
        digest = parse_digest(digest)
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise UserError(
                f"blob {digest} is not in the store {self.oci}; accepted: digests shown by `isobench image inspect`"
            ) from None
        actual = sha256_bytes(data)
        if actual != digest:
            raise UserError(f"blob {digest} is corrupt (its content hashes to {actual})")
        return data

    # -- tags and references ------------------------------------------------

    def images(self) -> list[tuple[str | None, Descriptor]]:
        """(tag or None, manifest descriptor) for every index.json entry."""
        return [(d.annotations.get(REF_NAME), d) for d in self._index()]

    def resolve(self, ref: str) -> str:
        """The manifest digest for a tag, a full digest, or a unique hex prefix of at least 12 digits."""
        entries = self._index()
        for entry in entries:
            if entry.annotations.get(REF_NAME) == ref:
                return entry.digest
        hexpart = ref.removeprefix("sha256:")
        if len(hexpart) == 64 and oci.is_hex(hexpart):
            digest = f"sha256:{hexpart}"
            # A manifest no tag points at any more still resolves while a container holds it.
            if any(e.digest == digest for e in entries) or self.has_blob(digest):
                return digest
        elif len(hexpart) >= 12 and oci.is_hex(hexpart):
            matches = sorted(
                {e.digest for e in entries if e.digest.removeprefix("sha256:").startswith(hexpart)}
            )
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise UserError(
                    f"image reference {ref!r} matches {len(matches)} images; accepted: a longer prefix or the full digest"
                )
        raise UserError(
            f"unknown image reference {ref!r}; accepted: a tag, sha256:<digest> or a unique prefix of at least "
            "12 hex digits (see `isobench image ls`)"
        )

    def tag(self, name: str, manifest: Descriptor) -> None:
        """Point tag `name` at a manifest; an image left with no tag is garbage-collected."""
        oci.check_tag(name)
        with self._lock():
            self._ensure()
            if not self.has_blob(manifest.digest):
                raise UserError(
                    f"cannot tag {name!r}: manifest {manifest.digest} is not in the store"
                )
            entries = self._index()
            dropped = {e.digest for e in entries if e.annotations.get(REF_NAME) == name}
            kept = [
                e
                for e in entries
                if e.annotations.get(REF_NAME) != name and e.digest != manifest.digest
            ]
            # Other tags of the same manifest stay; an untagged entry for it is now redundant.
            kept += [
                e
                for e in entries
                if e.digest == manifest.digest and e.annotations.get(REF_NAME) not in (None, name)
            ]
            entry = Descriptor(
                MEDIA_TYPE_MANIFEST, manifest.digest, manifest.size, {REF_NAME: name}
            )
            self._write_index([*kept, entry])
            if dropped - {e.digest for e in kept} - {manifest.digest}:
                self.gc()

    def remove(self, ref: str) -> None:
        """Untag (a tag) or forget (a digest) an image, then collect what no image needs any more."""
        with self._lock():
            entries = self._index()
            if any(e.annotations.get(REF_NAME) == ref for e in entries):
                kept = [e for e in entries if e.annotations.get(REF_NAME) != ref]
            else:
                digest = self.resolve(ref)
                kept = [e for e in entries if e.digest != digest]
            self._write_index(kept)
            self.gc()

    def gc(self) -> list[str]:
        """Remove blobs and unpacked layers that no index entry and no image container needs."""
        with self._lock():
            roots = {e.digest for e in self._index()}
            for record in self.home.glob(CONTAINER_RECORDS):
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    roots.add(parse_digest(str(json.loads(record.read_text()).get("manifest"))))
            keep_blobs: set[str] = set()
            keep_layers: set[str] = set()
            for digest in roots:
                try:
                    manifest = self.manifest(digest)
                    diff_ids = oci.diff_ids(self._config_doc(manifest), manifest)
                except (UserError, OSError):
                    if self.has_blob(digest):
                        return []  # a needed image we cannot read: collecting could delete its layers
                    continue
                keep_blobs |= {digest, manifest.config.digest, *(d.digest for d in manifest.layers)}
                keep_layers |= {Digest.parse(d).hex for d in diff_ids}
            removed: list[str] = []
            for blob in sorted(self.blobs.glob("*")) if self.blobs.is_dir() else []:
                if f"sha256:{blob.name}" not in keep_blobs:
                    blob.unlink(missing_ok=True)
                    removed.append(f"blob sha256:{blob.name}")
            for layer in sorted(self.layers.glob("*")) if self.layers.is_dir() else []:
                if layer.name not in keep_layers:
                    # Renamed away first, so a half-deleted layer is never visible under layers/.
                    doomed = self.tmp / f"isobench-{os.getpid()}-gc-{layer.name}"
                    os.rename(layer, doomed)
                    remove_tree(doomed)
                    removed.append(f"layer sha256:{layer.name}")
            return removed

    # -- images -------------------------------------------------------------

    def manifest(self, ref: str) -> Manifest:
        """The image manifest (config and layer descriptors, annotations)."""
        digest = self.resolve(ref)
        return oci.parse_manifest(
            digest, oci.parse_json(self.read_blob(digest), f"manifest {digest}")
        )

    def config(self, ref: str) -> dict[str, object]:
        """The image config JSON (architecture, os, config.Env/Cmd, rootfs.diff_ids, history)."""
        return self._config_doc(self.manifest(ref))

    def layer_dirs(self, ref: str) -> list[Path]:
        """The image's unpacked layer directories, bottom to top, unpacking (and verifying) missing ones."""
        manifest = self.manifest(ref)
        diff_ids = oci.diff_ids(self._config_doc(manifest), manifest)
        dirs: list[Path] = []
        with self._lock(exclusive=False):  # gc waits until every layer is in place
            self._ensure()
            for desc, diff_id in zip(manifest.layers, diff_ids, strict=True):
                dest = self.layers / Digest.parse(diff_id).hex
                if not dest.is_dir():
                    unpack(
                        self.blob_path(desc.digest),
                        diff_id,
                        dest,
                        self.tmp,
                        expected_digest=desc.digest,
                    )
                dirs.append(dest)
        return dirs

    def add_image(
        self,
        layers: list[LayerBlob],
        config: dict[str, object],
        annotations: dict[str, str],
        tag: str,
        *,
        history: list[dict[str, object]] | None = None,
    ) -> Descriptor:
        """Store layers (bottom first), an image config and a manifest, tag it; returns the manifest descriptor.

        `config` is the config's execution part (Env, Cmd, WorkingDir ...); the
        image config around it gets rootfs.diff_ids from the layers, in order.
        A LayerBlob whose digest is already in the store is not copied again.
        """
        oci.check_tag(tag)
        diff_ids = [parse_digest(blob.diff_id, "diff_id") for blob in layers]
        created = annotations.get(CREATED, EPOCH)
        with self._lock():
            descs = []
            for blob in layers:
                if blob.digest is not None and self.has_blob(blob.digest):
                    size = self.blob_path(blob.digest).stat().st_size
                    descs.append(Descriptor(MEDIA_TYPE_TAR_GZIP, parse_digest(blob.digest), size))
                else:
                    descs.append(self.put_blob(blob.path, MEDIA_TYPE_TAR_GZIP, blob.digest))
            image_config = {
                "created": created,
                "architecture": _ARCHITECTURES.get(platform.machine(), platform.machine()),
                "os": "linux",
                "config": config,
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": history
                if history is not None
                else [{"created": created, "created_by": "isobench"}] * len(layers),
            }
            config_desc = self.put_blob(canonical_json(image_config), MEDIA_TYPE_CONFIG)
            manifest_doc: dict[str, object] = {
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_MANIFEST,
                "config": config_desc.to_json(),
                "layers": [d.to_json() for d in descs],
            }
            if annotations:
                manifest_doc["annotations"] = dict(annotations)
            manifest = self.put_blob(canonical_json(manifest_doc), MEDIA_TYPE_MANIFEST)
            self.tag(tag, manifest)
        return manifest

    def commit_layer(self, base: str, layer_path: Path, diff_id: str, tag: str) -> Descriptor:
        """A new image: `base`'s layers plus one more layer file on top, tagged; returns its manifest descriptor."""
        digest = self.resolve(base)
        manifest = self.manifest(digest)
        config = self._config_doc(manifest)
        actual = check_layer(layer_path, f"layer {layer_path}")
        if actual != parse_digest(diff_id, "diff_id"):
            raise UserError(
                f"layer {layer_path} hashes to diff_id {actual}, not the {diff_id} given"
            )
        blobs = [
            LayerBlob(self.blob_path(d.digest), did, d.size, digest=d.digest)
            for d, did in zip(manifest.layers, oci.diff_ids(config, manifest), strict=True)
        ]
        blobs.append(LayerBlob(layer_path, actual, layer_path.stat().st_size))
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        previous = config.get("history")
        history = [h for h in previous if isinstance(h, dict)] if isinstance(previous, list) else []
        history.append({"created": now, "created_by": f"isobench image commit (base {digest})"})
        annotations = {**manifest.annotations, CREATED: now, "org.isobench.image.base": digest}
        exec_config = config.get("config")
        return self.add_image(
            blobs,
            exec_config if isinstance(exec_config, dict) else {},
            annotations,
            tag,
            history=history,
        )

    # -- interchange --------------------------------------------------------

    def export(self, ref: str, layout_dir: Path, tag: str | None = None) -> None:
        """Write a plain OCI image layout holding this one image, named `tag` (default: its tag here)."""
        layout.export(self, ref, layout_dir, tag)

    def import_layout(self, layout_dir: Path, tag: str | None = None) -> str:
        """Read an OCI image layout into the store, verifying every digest, size and diff_id; returns the manifest digest."""
        return layout.import_layout(self, layout_dir, tag)

    def stale_tmp(self) -> list[Path]:
        """tmp/ entries whose process (the pid in isobench-<pid>-...) is gone: safe to remove."""
        stale = []
        for entry in sorted(self.tmp.iterdir()) if self.tmp.is_dir() else []:
            pid = entry.name.split("-")[1] if entry.name.startswith("isobench-") else ""
            if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
                stale.append(entry)
        return stale

    # -- internals ----------------------------------------------------------

    def _config_doc(self, manifest: Manifest) -> dict[str, object]:
        what = f"image config {manifest.config.digest}"
        return oci.parse_json(self.read_blob(manifest.config.digest), what)

    def _index(self) -> list[Descriptor]:
        path = self.oci / "index.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        return oci.parse_index(data, str(path))

    def _write_index(self, entries: list[Descriptor]) -> None:
        entries = sorted(entries, key=lambda e: (e.annotations.get(REF_NAME) or "", e.digest))
        oci.write_json_atomic(self.oci / "index.json", oci.index_doc(entries), self.tmp)

    def _ensure(self) -> None:
        """Make the directories and an empty, valid OCI layout if missing."""
        try:
            for directory in (self.blobs, self.layers, self.tmp):
                directory.mkdir(parents=True, exist_ok=True)
            if not (self.oci / "oci-layout").exists():
                oci.write_json_atomic(self.oci / "oci-layout", oci.OCI_LAYOUT, self.tmp)
            if not (self.oci / "index.json").exists():
                oci.write_json_atomic(self.oci / "index.json", oci.index_doc([]), self.tmp)
        except OSError as exc:
            raise OSFailure(
                "create image store", str(exc.filename or self.home), exc.errno or 0
            ) from exc

    @contextlib.contextmanager
    def _lock(self, exclusive: bool = True) -> Iterator[None]:
        """flock on <home>/lock; re-entrant within this object (a nested call keeps the outer lock)."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.home / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OSFailure("open lock", str(self.home / "lock"), exc.errno or 0) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            self._lock_depth = 1
            yield
        finally:
            self._lock_depth = 0
            os.close(fd)
