"""Content addresses and the OCI documents built on them: digests, descriptors, manifests, index.json."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from harness.errors import UserError

ALGORITHM = "sha256"
CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Digest:
    """A validated sha256 digest; str() gives the canonical "sha256:<hex>" form."""

    hex: str

    @classmethod
    def parse(cls, text: str, what: str = "digest") -> Digest:
        """Parse "sha256:<64 lowercase hex>"; anything else is a UserError naming `what`."""
        algorithm, sep, hexpart = text.partition(":")
        if not sep or algorithm != ALGORITHM or not _HEX.fullmatch(hexpart):
            raise UserError(
                f"{what} {text!r} is not a digest; accepted: sha256:<64 lowercase hex digits>"
            )
        return cls(hexpart)

    def __str__(self) -> str:
        return f"{ALGORITHM}:{self.hex}"


def parse_digest(text: str, what: str = "digest") -> str:
    """The canonical string form of a digest, or a UserError naming `what`."""
    return str(Digest.parse(text, what))


def is_digest(text: str) -> bool:
    """Whether text is exactly "sha256:<64 lowercase hex>"."""
    algorithm, sep, hexpart = text.partition(":")
    return bool(sep) and algorithm == ALGORITHM and _HEX.fullmatch(hexpart) is not None


def sha256_bytes(data: bytes) -> str:
    """ "sha256:<hex>" of some bytes."""
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def sha256_file(path: Path) -> str:
    """ "sha256:<hex>" of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return f"{ALGORITHM}:{digest.hexdigest()}"


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class HashingWriter:
    """Passes writes through to `sink` (or nowhere) while hashing and counting them."""

    def __init__(self, sink: _Writable | None = None) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        if self._sink is not None:
            self._sink.write(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: gzip and tarfile call this on their file object."""

    @property
    def digest(self) -> str:
        return f"{ALGORITHM}:{self._hash.hexdigest()}"


class HashingReader:
    """Reads from `source` while hashing and counting what was read."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) whatever is left, so the digest covers the whole stream."""
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        return f"{ALGORITHM}:{self._hash.hexdigest()}"


# -- OCI documents: descriptors, manifests, index ------------------------------------------

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
CREATED = "org.opencontainers.image.created"
EPOCH = "1970-01-01T00:00:00Z"
OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
MAX_JSON_BYTES = 4 << 20  # manifests and configs are kilobytes; refuse to read a huge "manifest"
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/:@+-]{0,254}")


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and size."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The descriptor as OCI JSON (mediaType, digest, size[, annotations])."""
        doc: dict[str, object] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return doc

    @classmethod
    def from_json(cls, doc: object, what: str) -> Descriptor:
        """Parse and validate a descriptor object; UserError naming `what` when malformed."""
        if not isinstance(doc, dict):
            raise UserError(f"{what}: a descriptor must be a JSON object")
        media_type, size, annotations = (
            doc.get("mediaType"),
            doc.get("size"),
            doc.get("annotations", {}),
        )
        if not isinstance(media_type, str) or not media_type:
            raise UserError(f"{what}: descriptor has no mediaType")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise UserError(f"{what}: descriptor size {size!r} is not a non-negative integer")
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise UserError(f"{what}: descriptor annotations must map strings to strings")
        return cls(
            media_type,
            parse_digest(str(doc.get("digest")), f"{what} digest"),
            size,
            dict(annotations),
        )


@dataclass(frozen=True)
class Manifest:
    """An image manifest: its own digest, the config descriptor, layer descriptors bottom-first."""

    digest: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str]


def canonical_json(doc: object) -> bytes:
    """Sorted keys, no spaces: the same document always gives the same bytes (and digest)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_json(data: bytes, what: str) -> dict[str, object]:
    """A JSON object from bytes, or a UserError naming `what`."""
    if len(data) > MAX_JSON_BYTES:
        raise UserError(
            f"{what} is {len(data)} bytes; accepted: at most {MAX_JSON_BYTES} bytes of JSON"
        )
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{what} is not a JSON object")
    return doc


def parse_manifest(digest: str, doc: dict[str, object]) -> Manifest:
    """Validate an OCI image manifest document."""
    what = f"manifest {digest}"
    if (
        doc.get("schemaVersion") != 2
        or doc.get("mediaType", MEDIA_TYPE_MANIFEST) != MEDIA_TYPE_MANIFEST
    ):
        raise UserError(
            f"{what} is not an OCI image manifest; accepted: schemaVersion 2, {MEDIA_TYPE_MANIFEST}"
        )
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise UserError(f"{what} has no layers list")
    annotations = Descriptor.from_json(
        {"mediaType": "-", "digest": digest, "size": 0, "annotations": doc.get("annotations", {})},
        what,
    ).annotations
    return Manifest(
        digest,
        Descriptor.from_json(doc.get("config"), f"{what} config"),
        tuple(Descriptor.from_json(layer, f"{what} layer {i}") for i, layer in enumerate(layers)),
        annotations,
    )


def diff_ids(config: dict[str, object], manifest: Manifest) -> list[str]:
    """rootfs.diff_ids of an image config, checked against the manifest's layer count."""
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or len(ids) != len(manifest.layers):
        raise UserError(
            f"image config {manifest.config.digest}: rootfs.diff_ids must list one digest per layer "
            f"({len(manifest.layers)} layers)"
        )
    return [parse_digest(str(d), f"image config {manifest.config.digest} diff_id") for d in ids]


def parse_index(data: bytes, what: str) -> list[Descriptor]:
    """The manifest descriptors of an OCI index.json."""
    doc = parse_json(data, what)
    manifests = doc.get("manifests", [])
    if doc.get("schemaVersion") != 2 or not isinstance(manifests, list):
        raise UserError(
            f"{what} is not an OCI image index; accepted: schemaVersion 2 with a manifests list"
        )
    return [Descriptor.from_json(m, f"{what} entry {i}") for i, m in enumerate(manifests)]


def index_doc(entries: list[Descriptor]) -> dict[str, object]:
    """An index.json document listing these manifests."""
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [e.to_json() for e in entries],
    }


def check_tag(name: str) -> str:
    """A tag name as accepted in index.json ref.name: letters, digits and ._/:@+- up to 255 characters."""
    if not _TAG.fullmatch(name) or name.startswith("sha256:"):
        raise UserError(
            f"tag {name!r} is not valid; accepted: up to 255 of A-Z a-z 0-9 . _ / : @ + - "
            "(for example isobench/workload:latest), not starting with sha256:"
        )
    return name


def is_hex(text: str) -> bool:
    """Whether text is non-empty lowercase hex."""
    return bool(text) and all(c in "0123456789abcdef" for c in text)


def write_json_atomic(path: Path, doc: object, tmp_dir: Path) -> None:
    """Write JSON to tmp_dir (same filesystem), then rename over path: readers see old or new, never half."""
    fd, name = tempfile.mkstemp(prefix=f"isobench-{os.getpid()}-json-", dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n")
            f.flush()
            os.fsync(
                f.fileno()
            )  # the index is the one file whose loss after a crash would lose images
        os.chmod(name, 0o644)
        os.rename(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise
