"""`isobench image ...`: each command as a function over the store; cli.py only parses arguments."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from harness.errors import UserError
from harness.image import overlay, snapshot
from harness.image.containers import ImageContainers
from harness.image.initramfs import InitramfsInfo, write_initramfs
from harness.image.store import ImageStore
from harness.runtime.spec_default import default_spec


@contextmanager
def merged_view(store: ImageStore, ref: str) -> Iterator[Path]:
    """A read-only overlay of the image's layers, unmounted afterwards: exactly the image's files."""
    lowers = store.layer_dirs(store.resolve(ref))
    target = _staging_dir(store, "view")
    try:
        overlay.mount_readonly(lowers, target)
        try:
            yield target
        finally:
            overlay.unmount(target, remove=False)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def list_images(store: ImageStore) -> list[str]:
    """One line per image: tag, manifest digest, compressed size."""
    lines = [f"{'REFERENCE':40s} {'DIGEST':20s} {'SIZE':>10s}"]
    for tag, desc in store.images():
        manifest = store.manifest(desc.digest)
        size = sum(layer.size for layer in manifest.layers)
        lines.append(f"{tag or '<none>':40s} {desc.digest[:19]:20s} {_mib(size):>10s}")
    return lines


def inspect(store: ImageStore, ref: str) -> str:
    """The manifest, config and layers of an image as one JSON document."""
    digest = store.resolve(ref)
    manifest = store.manifest(digest)
    doc = {
        "digest": digest,
        "tags": [tag for tag, desc in store.images() if desc.digest == digest and tag],
        "annotations": manifest.annotations,
        "layers": [{"digest": d.digest, "size": d.size} for d in manifest.layers],
        "config": store.config(digest),
    }
    return json.dumps(doc, indent=2)


def commit(store: ImageStore, containers: ImageContainers, container_id: str, tag: str) -> str:
    """A container's changes as a new layer on top of its image, tagged; returns the manifest digest."""
    container = containers.get(container_id)
    base = str(container.image()["manifest"])
    tmp = _staging_dir(store, "commit")
    try:
        layer = snapshot.upper_to_layer(container.upper, tmp / "layer.tar.gz")
        desc = store.commit_layer(base, tmp / "layer.tar.gz", layer.diff_id, tag)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return desc.digest


def diff(containers: ImageContainers, container_id: str) -> list[str]:
    """`A /path`, `C /path`, `D /path` for what the container changed (like `docker diff`)."""
    container = containers.get(container_id)
    return [f"{kind} {path}" for kind, path in snapshot.diff(container.upper, container.lowers())]


def write_bundle(
    store: ImageStore, ref: str, bundle: Path, args: Sequence[str] | None = None
) -> Path:
    """An OCI runtime bundle (config.json + a plain copy of the image's files) that runc runs unchanged."""
    if bundle.exists() and any(bundle.iterdir()):
        raise UserError(f"{bundle} is not empty; accepted: a new or empty directory")
    bundle.mkdir(parents=True, exist_ok=True)
    try:
        with merged_view(store, ref) as view:
            shutil.copytree(view, bundle / "rootfs", symlinks=True)
        config = default_spec(args=list(args) if args else ["sh"])
        process = config["process"]
        assert isinstance(process, dict)
        process["terminal"] = False
        env = store.config(store.resolve(ref)).get("config", {})
        if isinstance(env, dict) and isinstance(env.get("Env"), list):
            process["env"] = env["Env"]
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
    except BaseException:
        shutil.rmtree(bundle, ignore_errors=True)
        raise
    return bundle


def _staging_dir(store: ImageStore, what: str) -> Path:
    """A staging dir named isobench-<pid>-<what>-...: `isobench cleanup` removes it once the pid is gone."""
    store.tmp.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"isobench-{os.getpid()}-{what}-", dir=store.tmp))


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def initramfs(store: ImageStore, ref: str, out: Path, modules: Sequence[Path]) -> InitramfsInfo:
    """The image's files as a gzip newc cpio for a VM, with kernel modules and an init."""
    with merged_view(store, ref) as view:
        return write_initramfs(view, out, modules=list(modules) or None)
