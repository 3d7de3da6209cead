"""Guest kernel lookup and the guest's module set (no root, no download: files made in tmp_path).

The bzImages here are only their x86 boot header (enough for the version lookup);
booting the real Debian kernel is tests/integration/test_vm_qemu.py's job.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import UserError
from harness.vm import kernel as kernel_mod
from harness.vm.guest import GUEST_MODULES, guest_modules
from harness.vm.kernel import COMPLETE_MARKER, GuestKernel, bzimage_version, find_kernel
from tests.unit.test_initramfs import mod


def fake_bzimage(path: Path, version: str) -> Path:
    """The setup header of a bzImage: boot flag, HdrS magic, the version string's offset."""
    head = bytearray(0x400)
    head[0x1FE:0x200] = b"\x55\xaa"
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x20E, 0x100)  # the string is at this offset + 0x200
    text = f"{version} (builder@example) #1 SMP PREEMPT_DYNAMIC".encode() + b"\0"
    head[0x300 : 0x300 + len(text)] = text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(head) + b"\0" * 4096)
    return path


def test_an_explicit_kernel_gives_its_version_and_the_modules_beside_it(tmp_path: Path) -> None:
    root = tmp_path / "linux-image-6.1.0-99-amd64"
    vmlinuz = fake_bzimage(root / "boot" / "vmlinuz-6.1.0-99-amd64", "6.1.0-99-amd64")
    (root / "lib" / "modules" / "6.1.0-99-amd64").mkdir(parents=True)
    got = find_kernel(vmlinuz, tmp_path / "cache")
    assert got == GuestKernel(
        vmlinuz, root / "lib" / "modules" / "6.1.0-99-amd64", "6.1.0-99-amd64", "--guest-kernel"
    )
    assert not (tmp_path / "cache").exists()  # nothing fetched when a kernel is given


@pytest.mark.parametrize(
    ("content", "why"),
    [(None, "no such file"), (b"", "not a bzImage"), (b"\x7fELF" + bytes(4096), "not a bzImage")],
)
def test_missing_or_garbage_kernels_are_user_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, why: str
) -> None:
    path = tmp_path / "vmlinuz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=f"{why}.*accepted: a bzImage"):
        bzimage_version(path)
    assert main(["vm", "fetch-kernel", "--guest-kernel", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and why in err


def test_the_cache_serves_only_complete_unpacked_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel_mod.platform, "release", lambda: "no-such-host-kernel")
    cache = tmp_path / "cache"
    half = cache / "linux-image-6.1.0-98-amd64"  # a fetch killed before its marker
    fake_bzimage(half / "boot" / "vmlinuz-6.1.0-98-amd64", "6.1.0-98-amd64")
    done = cache / "linux-image-6.1.0-50-amd64"
    vmlinuz = fake_bzimage(done / "boot" / "vmlinuz-6.1.0-50-amd64", "6.1.0-50-amd64")
    (done / COMPLETE_MARKER).write_text("linux-image-6.1.0-50-amd64\n")
    got = find_kernel(None, cache)
    assert (got.vmlinuz, got.version, got.modules_root) == (vmlinuz, "6.1.0-50-amd64", None)
    assert got.source == "debian package linux-image-6.1.0-50-amd64"


def test_guest_modules_are_the_wanted_ones_and_their_dependencies(tmp_path: Path) -> None:
    tree = tmp_path / "lib" / "modules" / "6.1.0-test"
    drivers = tree / "kernel" / "drivers"
    mod(drivers / "virtio", "virtio.ko", "")
    mod(drivers / "virtio", "virtio_ring.ko", "virtio")
    mod(drivers / "virtio", "virtio_pci.ko", "virtio_ring,virtio")
    mod(drivers / "char", "virtio_console.ko", "virtio_ring,virtio")
    mod(drivers / "block", "virtio_blk.ko", "virtio_ring,virtio")
    mod(drivers / "net", "virtio_net.ko", "virtio_ring,virtio")  # not wanted: stays out
    mod(tree / "kernel" / "fs", "ext4.ko", "crc16")
    mod(tree / "kernel" / "lib", "crc16.ko", "")
    # crc32c_generic is built into this kernel: listed in modules.builtin, nothing to load.
    (tree / "modules.builtin").write_text("kernel/crypto/crc32c_generic.ko\n")
    got = guest_modules(GuestKernel(tmp_path / "vmlinuz", tree, "6.1.0-test", "test"))
    assert sorted(p.name for p in got) == sorted(
        ["virtio.ko", "virtio_ring.ko", "virtio_pci.ko", "virtio_console.ko", "virtio_blk.ko",
         "ext4.ko", "crc16.ko"]
    )  # fmt: skip
    (tree / "modules.builtin").unlink()
    with pytest.raises(UserError, match="module crc32c_generic is not under"):
        guest_modules(GuestKernel(tmp_path / "vmlinuz", tree, "6.1.0-test", "test"))
    assert guest_modules(GuestKernel(tmp_path / "vmlinuz", None, "x", "test")) == []
    assert "virtio_console" in GUEST_MODULES
