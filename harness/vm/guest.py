"""The guest's initramfs: the workload image's files, the kernel modules a virtio guest needs, the agent.

Debian builds virtio and ext4 as modules, so the archive carries the ones the
guest's devices use (the agent's virtio-serial port, the scratch virtio-blk disk
and its ext4) with everything they depend on, found through each module's own
.modinfo. /init (initramfs.DEFAULT_INIT) loads them, mounts the scratch disk and
execs /usr/bin/isobench-agent, which the image build compiles in. Archives are
cached by (image digest, kernel version, the code that writes them).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from harness.errors import UserError
from harness.image import initramfs, kmod
from harness.image.commands import merged_view
from harness.image.store import ImageStore
from harness.vm.kernel import GuestKernel

# The modules for the guest's devices, by the kernel's module name. ext4's crc32c
# is a soft dependency (`softdep=pre: crypto-crc32c`, not in depends=), hence named
# here: without it an ext4 with metadata checksums does not mount.
GUEST_MODULES = ("virtio_pci", "virtio_console", "virtio_blk", "ext4", "crc32c_generic")
# quiet: under TCG every console byte costs emulated port I/O; panic=-1: a kernel
# panic reboots at once, and QEMU's -no-reboot turns that into an exit.
GUEST_CMDLINE = "console=ttyS0 panic=-1 quiet"
_CODE = (Path(__file__), Path(initramfs.__file__), Path(kmod.__file__))


def guest_modules(kernel: GuestKernel, wanted: tuple[str, ...] = GUEST_MODULES) -> list[Path]:
    """The module files for `wanted` and everything they depend on; empty without a modules tree."""
    if kernel.modules_root is None:
        return []
    index: dict[str, Path] = {}
    for path in kmod.module_files([kernel.modules_root]):
        name = path.name.split(".ko")[0].replace("-", "_")
        index.setdefault(name, path)
    builtin = _builtin(kernel.modules_root)
    chosen: dict[str, Path] = {}
    pending = list(wanted)
    while pending:
        name = pending.pop()
        if name in chosen or name in builtin:
            continue
        found = index.get(name)
        if found is None:
            raise UserError(
                f"guest kernel {kernel.version}: module {name} is not under {kernel.modules_root}; "
                "accepted: a kernel whose modules tree holds the virtio and ext4 modules "
                f"({', '.join(GUEST_MODULES)}) or has them built in"
            )
        chosen[name] = found
        pending.extend(kmod.load_module(found).depends)
    return sorted(chosen.values())


def _builtin(modules_root: Path) -> set[str]:
    """Names of the drivers compiled into the kernel (modules.builtin): nothing to load for them."""
    listing = modules_root / "modules.builtin"
    if not listing.is_file():
        return set()
    lines = listing.read_text().split()
    return {Path(line).name.split(".ko")[0].replace("-", "_") for line in lines}


def build_guest_initramfs(
    store: ImageStore, image_ref: str, kernel: GuestKernel, out_dir: Path
) -> Path:
    """The guest initramfs for this image and kernel in out_dir, written only when not cached."""
    digest = store.resolve(image_ref)
    key = hashlib.sha256()
    for part in (digest, kernel.version, str(kernel.modules_root)):
        key.update(part.encode() + b"\0")
    for source in _CODE:
        key.update(source.read_bytes())
    out = out_dir / f"guest-{key.hexdigest()[:24]}.cpio.gz"
    if out.exists():
        return out
    modules = guest_modules(kernel)
    out_dir.mkdir(parents=True, exist_ok=True)
    with merged_view(store, digest) as view:
        agent = view / initramfs.AGENT_PATH.lstrip("/")
        if not agent.is_file():
            raise UserError(
                f"image {image_ref} has no {initramfs.AGENT_PATH}; "
                "accepted: an image built by `isobench image build` (it compiles the guest agent in)"
            )
        # write_initramfs writes a temp file and renames it: `out` is whole or absent.
        initramfs.write_initramfs(view, out, modules=modules or None)
    return out
