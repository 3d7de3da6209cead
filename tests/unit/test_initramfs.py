"""The initramfs writer and reader, and kernel-module ordering (no root needed).

Modules are fake but valid ELF objects built here with a .modinfo section, since
no kernel (and so no real module) ships on these hosts.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.image import kmod
from harness.image.initramfs import (
    DEFAULT_INIT,
    MODULE_DIR,
    NewcEntry,
    read_newc,
    write_initramfs,
)

FILES = {  # name -> (content, permission bits)
    "bin/sh": (b"#!fake shell\n" * 100, 0o755),
    "etc/passwd": (b"root:x:0:0:root:/root:/bin/sh\n", 0o644),
    "usr/lib/deep/nested/lib.so": (os.urandom(70_001), 0o644),
    "usr/bin/tool": (b"\x7fELF tool", 0o4755),
    "usr/bin/empty": (b"", 0o600),
}
HARDLINK_DATA = b"hardlinked payload that must be stored once\n" * 3


def make_root(root: Path, mtime: int = 1_700_000_000) -> Path:
    """A small image root: files, a symlink, an empty dir, nested dirs and a hardlink pair."""
    for name, (data, perms) in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(perms)
    (root / "bin" / "ls").symlink_to("sh")
    (root / "lib").symlink_to("usr/lib")
    (root / "tmp").mkdir()
    (root / "usr" / "bin" / "link-a").write_bytes(HARDLINK_DATA)
    os.link(root / "usr" / "bin" / "link-a", root / "usr" / "bin" / "link-b")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)
    return root


def entries(path: Path) -> dict[str, NewcEntry]:
    return {e.name: e for e in read_newc(path)}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path]:
    root = make_root(tmp_path / "root")
    out = tmp_path / "initrd.gz"
    write_initramfs(root, out)
    return root, out


# ------------------------------------------------------------------ the archive


def test_every_file_round_trips_with_content_and_mode(built: tuple[Path, Path]) -> None:
    root, out = built
    got = entries(out)
    for name, (data, perms) in FILES.items():
        entry = got[name]
        assert sha(entry.data) == sha((root / name).read_bytes()) == sha(data), name
        assert stat.S_ISREG(entry.mode) and stat.S_IMODE(entry.mode) == perms, name
    assert stat.S_ISLNK(got["bin/ls"].mode) and got["bin/ls"].data == b"sh"
    assert got["lib"].data == b"usr/lib"
    assert stat.S_ISDIR(got["tmp"].mode) and got["tmp"].data == b""
    assert stat.S_ISDIR(got["usr/lib/deep/nested"].mode)
    assert all(e.uid == 0 and e.gid == 0 and e.mtime == 0 for e in got.values())


def test_names_are_sorted_parents_first_and_complete(built: tuple[Path, Path]) -> None:
    root, out = built
    names = [e.name for e in read_newc(out)]
    source = {str(p.relative_to(root)) for p in root.rglob("*")}
    assert set(names) == source | {"init", "dev", "dev/console"}
    assert names == sorted(names, key=lambda n: n.split("/"))
    for i, name in enumerate(names):
        if "/" in name:
            assert name.rpartition("/")[0] in names[:i], name


def test_hardlinks_share_an_inode_and_store_the_data_once(built: tuple[Path, Path]) -> None:
    _, out = built
    got = entries(out)
    a, b = got["usr/bin/link-a"], got["usr/bin/link-b"]
    assert a.ino == b.ino and a.nlink == b.nlink == 2
    assert a.data == b.data == HARDLINK_DATA  # the reader hands the group's data to both
    raw = gzip.decompress(out.read_bytes())
    assert raw.count(HARDLINK_DATA) == 1
    # newc carries it with the last member; the first has size 0 in its header.
    header_a = raw[raw.index(b"usr/bin/link-a\0") - 110 :]
    assert int(header_a[54:62], 16) == 0
    others = [e.ino for e in got.values() if e.name not in ("usr/bin/link-a", "usr/bin/link-b")]
    assert len(set(others)) == len(others) and a.ino not in others


def test_directory_nlink_counts_subdirectories(built: tuple[Path, Path]) -> None:
    _, out = built
    got = entries(out)
    assert got["usr"].nlink == 2 + 2  # usr/bin, usr/lib
    assert got["usr/lib/deep/nested"].nlink == 2
    assert got["bin/sh"].nlink == 1


def test_init_and_console_are_added(built: tuple[Path, Path]) -> None:
    _, out = built
    got = entries(out)
    init = got["init"]
    assert stat.S_ISREG(init.mode) and stat.S_IMODE(init.mode) == 0o755
    assert init.data.decode() == DEFAULT_INIT
    assert init.data.startswith(b"#!/bin/sh\n")
    console = got["dev/console"]
    assert stat.S_ISCHR(console.mode) and (console.rdev_major, console.rdev_minor) == (5, 1)
    assert MODULE_DIR not in got  # no modules asked for, none added


def test_trailer_and_gzip_header_are_fixed(built: tuple[Path, Path]) -> None:
    _, out = built
    blob = out.read_bytes()
    flags, mtime = blob[3], struct.unpack_from("<I", blob, 4)[0]
    assert (flags, mtime) == (0, 0)  # no file name, no timestamp
    raw = gzip.decompress(blob)
    assert raw.rstrip(b"\0").endswith(b"TRAILER!!!")
    assert raw[raw.rindex(b"070701") :].startswith(b"070701" + b"0" * 8)
    assert len(raw) % 4 == 0


def test_same_files_give_byte_identical_archives(tmp_path: Path) -> None:
    one = write_initramfs(make_root(tmp_path / "a"), tmp_path / "a.gz")
    again = write_initramfs(tmp_path / "a", tmp_path / "a2.gz")
    # Other place, other inode numbers, other mtimes: same archive.
    other = write_initramfs(make_root(tmp_path / "b", mtime=12345), tmp_path / "b.gz")
    assert one.sha256 == again.sha256 == other.sha256
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()
    assert one.sha256 == sha((tmp_path / "a.gz").read_bytes())
    assert one.size_bytes == (tmp_path / "a.gz").stat().st_size
    assert one.entries == len(list(read_newc(tmp_path / "a.gz")))


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_gnu_cpio_reads_the_same_archive(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = built
    raw = gzip.decompress(out.read_bytes())
    listed = subprocess.run(
        ["cpio", "-it", "--quiet"], input=raw, capture_output=True, check=True
    ).stdout.decode()
    assert listed.splitlines() == [e.name for e in read_newc(out)]
    dest = tmp_path / "extracted"
    dest.mkdir()
    # dev/console is left out: creating a device node needs root.
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/console"],
        input=raw,
        cwd=dest,
        check=True,
    )
    for name, (data, perms) in FILES.items():
        assert (dest / name).read_bytes() == data, name
        assert stat.S_IMODE((dest / name).stat().st_mode) == perms, name
    assert os.readlink(dest / "bin" / "ls") == "sh"
    a, b = (dest / "usr" / "bin" / "link-a").stat(), (dest / "usr" / "bin" / "link-b").stat()
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert (dest / "usr" / "bin" / "link-a").read_bytes() == HARDLINK_DATA


# ------------------------------------------------------------------ init script and bad input


def test_init_script_replaces_the_default_and_an_image_init(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    (root / "init").write_text("#!/bin/sh\necho image init\n")
    write_initramfs(root, tmp_path / "out.gz", init_script="#!/bin/sh\necho mine\n")
    got = entries(tmp_path / "out.gz")
    assert got["init"].data == b"#!/bin/sh\necho mine\n"
    assert [e.name for e in read_newc(tmp_path / "out.gz")].count("init") == 1


def test_init_interpreter_is_found_through_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "busybox").write_bytes(b"bb")
    (root / "usr" / "bin" / "sh").symlink_to("busybox")
    (root / "bin").symlink_to("usr/bin")  # merged /usr
    info = write_initramfs(root, tmp_path / "out.gz")
    assert info.entries == len(list(read_newc(tmp_path / "out.gz")))


def test_init_interpreter_missing_from_the_image_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "bin").symlink_to("/bin")  # the host's /bin must not count
    with pytest.raises(UserError, match=r"init interpreter /bin/sh is not in the image"):
        write_initramfs(root, tmp_path / "out.gz")
    with pytest.raises(UserError, match="does not start with #!"):
        write_initramfs(root, tmp_path / "out.gz", init_script="echo hi\n")
    assert not (tmp_path / "out.gz").exists()
    assert list(tmp_path.iterdir()) == [root]  # no temporary file left behind


def test_bad_root_and_output_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a directory; accepted: a directory"):
        write_initramfs(tmp_path / "missing", tmp_path / "out.gz")
    root = make_root(tmp_path / "root")
    with pytest.raises(UserError, match="is not a directory; accepted: a path in an existing"):
        write_initramfs(root, tmp_path / "no" / "out.gz")


def test_reader_refuses_truncated_and_foreign_files(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    _, out = built
    raw = gzip.decompress(out.read_bytes())
    cut = tmp_path / "cut.cpio"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match=r"truncated|without a TRAILER"):
        list(read_newc(cut))
    no_trailer = tmp_path / "no-trailer.cpio"
    no_trailer.write_bytes(raw[: raw.rindex(b"070701")])
    with pytest.raises(UserError, match="without a TRAILER!!! entry"):
        list(read_newc(no_trailer))
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"070707" + b"0" * 200)  # old ASCII cpio, not newc
    with pytest.raises(UserError, match="bad magic b'070707' at byte 0; accepted: newc"):
        list(read_newc(foreign))
    bad_gzip = tmp_path / "bad.gz"
    bad_gzip.write_bytes(out.read_bytes()[:100])
    with pytest.raises(UserError, match="cannot read as gzip"):
        list(read_newc(bad_gzip))
    assert len(list(read_newc(_plain(raw, tmp_path)))) == len(list(read_newc(out)))


def _plain(raw: bytes, tmp_path: Path) -> Path:
    path = tmp_path / "plain.cpio"
    path.write_bytes(raw)
    return path


# ------------------------------------------------------------------ kernel modules


def fake_module(path: Path, info: dict[str, str], elf64: bool = True, big: bool = False) -> Path:
    """A minimal ELF relocatable object with a .modinfo section, enough for modinfo parsing."""
    order = ">" if big else "<"
    modinfo = b"".join(f"{k}={v}".encode() + b"\0" for k, v in info.items()) + b"\0\0\0"
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    ehsize, shentsize = (64, 64) if elf64 else (52, 40)
    modinfo_at = ehsize
    shstrtab_at = modinfo_at + len(modinfo)
    shoff = (shstrtab_at + len(shstrtab) + 7) // 8 * 8
    ident = b"\x7fELF" + bytes([2 if elf64 else 1, 2 if big else 1, 1, 0]) + bytes(8)
    ehdr_fmt = order + ("HHIQQQIHHHHHH" if elf64 else "HHIIIIIHHHHHH")
    ehdr = ident + struct.pack(ehdr_fmt, 1, 62, 1, 0, 0, shoff, 0, ehsize, 0, 0, shentsize, 3, 2)
    sh_fmt = order + ("IIQQQQIIQQ" if elf64 else "10I")

    def section(name: int, kind: int, offset: int, size: int) -> bytes:
        return struct.pack(sh_fmt, name, kind, 0, 0, offset, size, 0, 0, 1, 0)

    body = ehdr + modinfo + shstrtab
    body += bytes(shoff - len(body))
    body += section(0, 0, 0, 0) + section(1, 1, modinfo_at, len(modinfo))
    body += section(10, 3, shstrtab_at, len(shstrtab))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path


def mod(directory: Path, file_name: str, depends: str, vermagic: str = "6.1.0-test SMP") -> Path:
    name = file_name.split(".")[0].replace("-", "_")
    info = {"license": "GPL", "depends": depends, "name": name, "vermagic": vermagic}
    return fake_module(directory / file_name, info)


def test_modules_are_stored_and_listed_deps_first(tmp_path: Path) -> None:
    mods = tmp_path / "modules" / "kernel" / "drivers"
    mod(mods / "block", "virtio_blk.ko", "virtio,virtio_ring")
    mod(mods / "virtio", "virtio_ring.ko", "virtio")
    mod(mods / "virtio", "virtio.ko", "")
    mod(mods / "char", "virtio-console.ko", "virtio_ring,virtio")
    extra = mod(tmp_path / "single", "aaa_first_by_name.ko", "virtio_blk")
    (mods / "README").write_text("not a module")
    root = make_root(tmp_path / "root")
    info = write_initramfs(root, tmp_path / "out.gz", modules=[tmp_path / "modules", extra])
    order = info.modules
    assert sorted(order) == sorted(
        [
            "virtio.ko",
            "virtio_ring.ko",
            "virtio_blk.ko",
            "virtio-console.ko",
            "aaa_first_by_name.ko",
        ]
    )
    pos = {name: order.index(name) for name in order}
    assert (
        pos["virtio.ko"]
        < pos["virtio_ring.ko"]
        < pos["virtio_blk.ko"]
        < pos["aaa_first_by_name.ko"]
    )
    assert pos["virtio_ring.ko"] < pos["virtio-console.ko"]
    got = entries(tmp_path / "out.gz")
    assert got[f"{MODULE_DIR}/load-order"].data.decode().splitlines() == order
    for name in order:
        source = next((tmp_path).rglob(name))
        assert got[f"{MODULE_DIR}/{name}"].data == source.read_bytes()
    assert got["lib"].data == b"usr/lib"  # the image's own lib symlink stays as it is


def test_xz_modules_are_stored_decompressed(tmp_path: Path) -> None:
    plain = mod(tmp_path / "build", "virtio.ko", "")
    packed = tmp_path / "mods" / "virtio.ko.xz"
    packed.parent.mkdir()
    packed.write_bytes(lzma.compress(plain.read_bytes(), format=lzma.FORMAT_XZ))
    info = write_initramfs(make_root(tmp_path / "root"), tmp_path / "out.gz", modules=[packed])
    assert info.modules == ["virtio.ko"]
    assert entries(tmp_path / "out.gz")[f"{MODULE_DIR}/virtio.ko"].data == plain.read_bytes()


def test_module_parsing_handles_elf32_big_endian(tmp_path: Path) -> None:
    path = fake_module(tmp_path / "m.ko", {"name": "m", "depends": "a,b-c"}, elf64=False, big=True)
    loaded = kmod.load_module(path)
    assert (loaded.name, loaded.depends) == ("m", ("a", "b_c"))


def test_module_name_falls_back_to_the_file_name(tmp_path: Path) -> None:
    path = fake_module(tmp_path / "snd-hda.ko", {"depends": ""})
    assert kmod.load_module(path).name == "snd_hda"


@pytest.mark.skipif(shutil.which("modinfo") is None, reason="kmod's modinfo not installed")
def test_depends_agree_with_kmod_modinfo(tmp_path: Path) -> None:
    path = mod(tmp_path, "virtio_blk.ko", "virtio,virtio_ring")
    proc = subprocess.run(
        ["modinfo", "-F", "depends", str(path)], capture_output=True, text=True, check=True
    )
    assert tuple(sorted(proc.stdout.strip().split(","))) == kmod.load_module(path).depends


def test_dependency_cycle_is_refused(tmp_path: Path) -> None:
    mod(tmp_path / "m", "a.ko", "b")
    mod(tmp_path / "m", "b.ko", "c")
    mod(tmp_path / "m", "c.ko", "a")
    with pytest.raises(UserError, match=r"dependency cycle: a -> b -> c -> a; accepted"):
        write_initramfs(make_root(tmp_path / "root"), tmp_path / "out.gz", modules=[tmp_path / "m"])
    assert not (tmp_path / "out.gz").exists()


def test_missing_dependency_is_refused(tmp_path: Path) -> None:
    path = mod(tmp_path / "m", "virtio_blk.ko", "virtio,virtio_ring")
    mod(tmp_path / "m", "virtio.ko", "")
    with pytest.raises(
        UserError, match=r"virtio_blk .* depends on virtio_ring, which is not among"
    ):
        kmod.collect_modules([path.parent])


@pytest.mark.parametrize(
    ("file_name", "content", "message"),
    [
        ("bad.ko", b"not an elf", "not an ELF file"),
        ("bad.ko", b"\x7fELF" + bytes([2, 1]) + bytes(100), "malformed ELF|no section name table"),
        ("bad.ko.xz", b"not xz", "corrupt xz data"),
        ("bad.ko.zst", b"(\xb5/\xfd", "zstd-compressed modules are not supported"),
        ("bad.txt", b"", "unknown file type"),
    ],
)
def test_bad_module_files_are_refused(
    tmp_path: Path, file_name: str, content: bytes, message: str
) -> None:
    path = tmp_path / file_name
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        kmod.collect_modules([path])


def test_module_without_modinfo_section_is_refused(tmp_path: Path) -> None:
    path = fake_module(tmp_path / "m.ko", {})
    data = path.read_bytes().replace(b".modinfo", b".notinfo")
    path.write_bytes(data)
    with pytest.raises(UserError, match=r"no \.modinfo section"):
        kmod.load_module(path)


def test_modules_of_different_kernels_are_refused(tmp_path: Path) -> None:
    mod(tmp_path / "m", "a.ko", "", vermagic="6.1.0-18-amd64 SMP")
    mod(tmp_path / "m", "b.ko", "", vermagic="6.12.0-1-amd64 SMP")
    with pytest.raises(UserError, match="different kernels"):
        kmod.collect_modules([tmp_path / "m"])


def test_missing_module_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no such file or directory; accepted: \.ko or \.ko\.xz"):
        kmod.collect_modules([tmp_path / "nope"])
