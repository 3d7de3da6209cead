"""Containers started from an image reference: an overlay root over the image's layers.

Each container gets `<home>/containers/<id>/upper` and `work` (its changes).
The container's init mounts the overlay inside its own mount namespace, so the
host holds no mount for it. A kept container (`isobench image run --keep`) also
records its image in `image.json`, for `isobench image diff` and `commit`.
`isobench image bundle` writes a plain on-disk bundle for other runtimes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import IsobenchError, UserError
from harness.image import overlay
from harness.image.store import ImageStore
from harness.runtime.bundle import add_cgroup_namespace
from harness.runtime.lifecycle import Runtime
from harness.runtime.spec import Spec
from harness.runtime.spec_default import default_spec
from harness.runtime.spec_load import parse_spec
from harness.runtime.state import check_id

CONTAINERS_DIR = "containers"
ROOT_MOUNT_TARGET = (
    ".root"  # shared by all containers: each mounts its overlay there in its own namespace
)


@dataclass(frozen=True)
class ImageContainer:
    """Where one image container's pieces live."""

    id: str
    path: Path

    @property
    def upper(self) -> Path:
        return self.path / "upper"

    @property
    def work(self) -> Path:
        return self.path / "work"

    def image(self) -> dict[str, object]:
        """The image.json record: ref, manifest digest, lower layer dirs."""
        try:
            record: dict[str, object] = json.loads((self.path / "image.json").read_text())
        except FileNotFoundError:
            raise UserError(
                f"container {self.id!r} was not started from an image; accepted: an id from "
                "`isobench image run` (see `isobench image containers`)"
            ) from None
        return record

    def lowers(self) -> list[Path]:
        lowers = self.image()["lowers"]
        assert isinstance(lowers, list)
        return [Path(str(p)) for p in lowers]


class ImageContainers:
    """Prepare, run and remove containers whose root is an image's layers plus an upper dir."""

    def __init__(self, store: ImageStore, runtime: Runtime | None = None) -> None:
        self.store = store
        self.runtime = runtime if runtime is not None else Runtime()
        self.root = store.home / CONTAINERS_DIR
        # Per manifest digest: an image is immutable, so its layer dirs and config
        # are looked up once per process, not once per container launch; likewise
        # the validated spec per (image, command, limits).
        self._images: dict[str, tuple[list[Path], dict[str, object]]] = {}
        self._specs: dict[str, Spec] = {}

    def _image(self, digest: str) -> tuple[list[Path], dict[str, object]]:
        if digest not in self._images:
            config = self.store.config(digest).get("config", {})
            assert isinstance(config, dict)
            self._images[digest] = (self.store.layer_dirs(digest), config)
        return self._images[digest]

    def get(self, container_id: str) -> ImageContainer:
        """The container's directories (which may not exist)."""
        check_id(container_id)
        return ImageContainer(container_id, self.root / container_id)

    def prepare(
        self,
        ref: str,
        container_id: str,
        args: Sequence[str],
        *,
        keep: bool = False,
        memory_limit: int | None = None,
        hostname: str | None = None,
        extra_mounts: Sequence[dict[str, object]] = (),
    ) -> tuple[Spec, str]:
        """Make the container's upper and work dirs; return the spec to run and its overlay mount data.

        The overlay is mounted by the container's init inside its own mount
        namespace, so the host never holds the mount: nothing to unmount, nothing
        left behind if the run is killed. Every container mounts it on the same
        (empty) host directory, which only has to exist. Filesystem metadata is
        the cost here (about 0.1 ms per mkdir or rmdir on this kind of disk), so
        a container that is not kept gets its two dirs and nothing else.
        """
        container = self.get(container_id)
        digest = self.store.resolve(ref)
        lowers, image_config = self._image(digest)
        try:
            container.path.mkdir(parents=True)
        except FileExistsError:
            raise UserError(
                f"container id {container_id!r} is already used in {self.root}; accepted: a new id "
                "(or `isobench image rm-container` the old one)"
            ) from None
        try:
            container.upper.mkdir()
            container.work.mkdir()
            data = overlay.overlay_data(
                [str(p) for p in lowers], str(container.upper), str(container.work)
            )
            if len(data) > overlay.MOUNT_DATA_MAX:
                raise UserError(
                    f"image {ref} has too many layers for one overlay mount ({len(data)} bytes of "
                    f"mount options); accepted: at most {overlay.MOUNT_DATA_MAX} bytes (squash the image)"
                )
            if keep:  # what `commit` and `diff` need later; cleanup leaves kept containers alone
                record = {"ref": ref, "manifest": digest, "lowers": [str(p) for p in lowers]}
                (container.path / "image.json").write_text(json.dumps(record))
            key = json.dumps([digest, list(args), memory_limit, hostname, list(extra_mounts)])
            if key not in self._specs:
                config = _bundle_config(args, image_config, memory_limit, hostname, extra_mounts)
                config["root"] = {"path": str(self._mount_target()), "readonly": False}
                self._specs[key] = parse_spec(config, str(self.root))
            return dataclasses.replace(self._specs[key], bundle=str(container.path)), data
        except BaseException:
            self._remove_dir(container)
            raise

    def _mount_target(self) -> Path:
        target = self.root / ROOT_MOUNT_TARGET
        target.mkdir(parents=True, exist_ok=True)
        return target

    def run(
        self,
        ref: str,
        container_id: str,
        args: Sequence[str],
        *,
        keep: bool = False,
        stdio: tuple[int, int, int] | None = None,
        **kw: object,
    ) -> int:
        """Run a command in a new container from the image; remove it afterwards unless keep."""
        spec, rootfs_overlay = self.prepare(ref, container_id, args, keep=keep, **kw)  # type: ignore[arg-type]
        try:
            return self.runtime.run(spec, container_id, rootfs_overlay=rootfs_overlay, stdio=stdio)
        finally:
            if not keep:
                self._remove_dir(self.get(container_id))

    def remove(self, container_id: str) -> None:
        """Delete the runtime's container if it still exists, unmount the overlay, remove the directory."""
        container = self.get(container_id)
        if not container.path.exists():
            raise UserError(
                f"no image container {container_id!r} in {self.root}; accepted: an id shown by "
                "`isobench image containers`"
            )
        with contextlib.suppress(IsobenchError):
            self.runtime.delete(container_id, force=True)
        self._remove_dir(container)

    def list(self) -> list[dict[str, object]]:
        """Every image container on this host, with its image."""
        out: list[dict[str, object]] = []
        if not self.root.is_dir():
            return out
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith("."):
                continue
            with contextlib.suppress(IsobenchError, OSError, ValueError):
                record = ImageContainer(entry.name, entry).image()
                out.append(
                    {"id": entry.name, "image": record["ref"], "manifest": record["manifest"]}
                )
        return out

    def _remove_dir(self, container: ImageContainer) -> None:
        _remove_container_dir(container.path)


def _bundle_config(
    args: Sequence[str],
    image_config: dict[str, object],
    memory_limit: int | None,
    hostname: str | None,
    extra_mounts: Sequence[dict[str, object]],
) -> dict[str, object]:
    """`runc spec`'s config with the image's environment (the caller sets root: writable, the overlay)."""
    config = default_spec(args=list(args))
    add_cgroup_namespace(config)
    process = config["process"]
    assert isinstance(process, dict)
    process["terminal"] = False
    env = image_config.get("Env")
    if isinstance(env, list) and env:
        process["env"] = [str(e) for e in env]
    if hostname is not None:
        config["hostname"] = hostname
    mounts = config["mounts"]
    assert isinstance(mounts, list)
    mounts.extend(extra_mounts)
    if memory_limit is not None:
        linux = config["linux"]
        assert isinstance(linux, dict)
        resources = linux.setdefault("resources", {})
        assert isinstance(resources, dict)
        resources["memory"] = {"limit": memory_limit}
    return config


def stale_containers(store: ImageStore, runtime: Runtime, everything: bool = False) -> list[str]:
    """Image containers a crashed run left: no runtime container, not kept (all of them with everything)."""
    root = store.home / CONTAINERS_DIR
    if not root.is_dir():
        return []
    live = {str(s["id"]) for s in runtime.list()}
    return [
        entry.name
        for entry in sorted(root.iterdir())
        if not entry.name.startswith(".")
        and entry.name not in live
        and (everything or not (entry / "image.json").exists())
    ]


def remove_stale(store: ImageStore, runtime: Runtime, names: list[str]) -> None:
    """Unmount and remove the named image-container directories."""
    containers = ImageContainers(store, runtime)
    for name in names:
        _remove_container_dir(containers.root / name)
        with contextlib.suppress(OSError):
            os.rmdir(containers.root)


def _remove_container_dir(path: Path) -> None:
    """Remove a container dir; the common case (two empty dirs) without shutil.rmtree's cost."""
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path / "image.json")
        for sub in ("work/work", "work", "upper", ""):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(path / sub if sub else path)
    except OSError:  # not empty: the container wrote files
        shutil.rmtree(path, ignore_errors=True)
