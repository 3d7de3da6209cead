"""Kernel modules for the initramfs: find them, read their .modinfo, order them so deps load first.

The dependency list comes from the module's own `.modinfo` ELF section (the
`depends=` key that modpost writes), parsed here rather than through `modinfo`,
so building an initramfs needs no kmod tools and no installed kernel.
"""

from __future__ import annotations

import lzma
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError

ACCEPTED = ".ko or .ko.xz files, or directories holding them"

# ELF class (e_ident[4]) -> offset and format of e_shoff, offset of e_shentsize (followed by
# e_shnum and e_shstrndx), format of one section header.
_ELF_LAYOUT = {1: (0x20, "I", 0x2E, "10I"), 2: (0x28, "Q", 0x3A, "IIQQQQIIQQ")}


@dataclass(frozen=True)
class KernelModule:
    """One module as it goes into the archive: stored uncompressed, because busybox insmod wants plain .ko."""

    name: str  # the kernel's name for it (dashes as underscores), what other modules' depends= use
    file_name: str  # the name under /lib/modules/isobench/, always ending in .ko
    data: bytes
    depends: tuple[str, ...]
    vermagic: str
    source: Path


def module_files(paths: Iterable[Path]) -> list[Path]:
    """Every module file named by `paths`: files as given, directories searched recursively."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and _is_module_name(p.name))
            )
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(
                f"kernel module path {path}: no such file or directory; accepted: {ACCEPTED}"
            )
    return found


def _is_module_name(name: str) -> bool:
    return name.endswith((".ko", ".ko.xz", ".ko.zst"))


def load_module(path: Path) -> KernelModule:
    """Read one module file, decompressing .ko.xz, and parse its .modinfo."""
    name = path.name
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(
            f"kernel module {path}: cannot read ({e.strerror}); accepted: {ACCEPTED}"
        ) from e
    if name.endswith(".ko.xz"):
        try:
            data = lzma.decompress(raw)
        except lzma.LZMAError as e:
            raise UserError(
                f"kernel module {path}: corrupt xz data ({e}); accepted: {ACCEPTED}"
            ) from e
        file_name = name[: -len(".xz")]
    elif name.endswith(".ko.zst"):
        # The standard library has no zstd before 3.14; one format more is not worth a dependency.
        raise UserError(
            f"kernel module {path}: zstd-compressed modules are not supported; accepted: {ACCEPTED} "
            "(decompress it first with `unzstd`)"
        )
    elif name.endswith(".ko"):
        data, file_name = raw, name
    else:
        raise UserError(f"kernel module {path}: unknown file type; accepted: {ACCEPTED}")
    info = modinfo(data, path)
    mod_name = (info.get("name") or [file_name[: -len(".ko")]])[0].replace("-", "_")
    listed = ",".join(info.get("depends", []))
    depends = tuple(sorted({dep.replace("-", "_") for dep in listed.split(",") if dep}))
    return KernelModule(mod_name, file_name, data, depends, (info.get("vermagic") or [""])[0], path)


def modinfo(data: bytes, path: Path) -> dict[str, list[str]]:
    """The key=value strings of the ELF section .modinfo (keys such as alias repeat, hence lists)."""
    section = _elf_section(data, ".modinfo", path)
    info: dict[str, list[str]] = {}
    # Entries are NUL-terminated; alignment may leave runs of NULs between them.
    for item in section.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def _elf_section(data: bytes, wanted: str, path: Path) -> bytes:
    """The bytes of one named section of an ELF file (32 or 64 bit, either byte order)."""

    def bad(why: str) -> UserError:
        return UserError(f"kernel module {path}: {why}; accepted: {ACCEPTED} (ELF objects)")

    if data[:4] != b"\x7fELF" or len(data) < 52:
        raise bad("not an ELF file")
    layout = _ELF_LAYOUT.get(data[4])
    order = {1: "<", 2: ">"}.get(data[5])
    if layout is None or order is None:
        raise bad("unknown ELF class or byte order")
    shoff_at, shoff_fmt, shent_at, sh_fmt = layout
    try:
        (shoff,) = struct.unpack_from(order + shoff_fmt, data, shoff_at)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, shent_at)
        headers = [
            struct.unpack_from(order + sh_fmt, data, shoff + i * shentsize) for i in range(shnum)
        ]
        if shstrndx >= len(headers):
            raise bad("no section name table")
        # In both classes sh_name is field 0, sh_offset field 4, sh_size field 5.
        names_start = headers[shstrndx][4]
        names = data[names_start : names_start + headers[shstrndx][5]]
        for header in headers:
            name = names[header[0] : names.index(b"\0", header[0])].decode("ascii", "replace")
            if name == wanted:
                if header[4] + header[5] > len(data):
                    raise bad(f"section {wanted} runs past the end of the file")
                return data[header[4] : header[4] + header[5]]
    except (struct.error, ValueError) as e:
        raise bad(f"malformed ELF section headers ({e})") from e
    raise bad(f"no {wanted} section")


def load_order(modules: list[KernelModule]) -> list[KernelModule]:
    """The modules in an order where every module comes after the ones it depends on."""
    by_name: dict[str, KernelModule] = {}
    for mod in modules:
        other = by_name.get(mod.name)
        if other is not None and other.data != mod.data:
            raise UserError(
                f"kernel module {mod.name} given twice with different contents ({other.source}, {mod.source}); "
                "accepted: each module once"
            )
        by_name[mod.name] = mod
    stored = {m.file_name for m in by_name.values()}
    if len(stored) != len(by_name):
        raise UserError(
            "two different kernel modules share a file name; accepted: unique module file names"
        )
    vermagics = sorted({m.vermagic for m in by_name.values() if m.vermagic})
    if len(vermagics) > 1:
        # Modules built for different kernels would fail at insmod inside the guest, far from here.
        raise UserError(
            f"kernel modules come from different kernels (vermagic {vermagics}); accepted: modules of one kernel build"
        )
    ordered: list[KernelModule] = []
    done: set[str] = set()
    # Depth-first, names sorted, so the order is the same on every build.
    for name in sorted(by_name):
        _visit(name, by_name, done, [], ordered)
    return ordered


def _visit(
    name: str,
    by_name: dict[str, KernelModule],
    done: set[str],
    path: list[str],
    ordered: list[KernelModule],
) -> None:
    if name in done:
        return
    if name in path:
        cycle = " -> ".join([*path[path.index(name) :], name])
        raise UserError(
            f"kernel module dependency cycle: {cycle}; accepted: acyclic depends= lists"
        )
    mod = by_name[name]
    for dep in mod.depends:
        if dep not in by_name:
            raise UserError(
                f"kernel module {name} ({mod.source}) depends on {dep}, which is not among the modules given; "
                f"accepted: add {dep}.ko (or the directory holding it) to the modules"
            )
        _visit(dep, by_name, done, [*path, name], ordered)
    done.add(name)
    ordered.append(mod)


def collect_modules(paths: Iterable[Path]) -> list[KernelModule]:
    """Load every module named by `paths` and return them in load order."""
    return load_order([load_module(p) for p in module_files(paths)])
