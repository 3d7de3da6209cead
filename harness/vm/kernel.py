"""The guest kernel: --guest-kernel, else the host's own, else a Debian package kept in a cache.

Direct kernel boot needs a bzImage and, since Debian builds virtio as modules,
the matching lib/modules/<version> tree. Order (issue 5): an explicit path; the
host's /boot/vmlinuz-$(uname -r) with /lib/modules/$(uname -r); a Debian
linux-image-<version>-amd64 package fetched with `apt-get download` and unpacked
with `dpkg -x` into the cache, where it stays for the next run.
"""

from __future__ import annotations

import os
import platform
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import EnvironmentError_, UserError

DEBIAN_META_PACKAGE = "linux-image-amd64"  # depends on the current linux-image-<abi>-amd64
COMPLETE_MARKER = ".complete"  # written last: a killed fetch leaves no half kernel in the cache
ACCEPTED = "a bzImage kernel file (such as /boot/vmlinuz-<version>)"
_SETUP_HEADER_MAGIC = b"HdrS"  # x86 boot protocol, at 0x202; the version string offset at 0x20e


@dataclass(frozen=True)
class GuestKernel:
    """A kernel to boot: the bzImage, its modules tree (None: nothing to load), version, origin."""

    vmlinuz: Path
    modules_root: Path | None  # the lib/modules/<version> directory
    version: str
    source: str  # "--guest-kernel", "host /boot", "debian package linux-image-..."


def default_cache_dir() -> Path:
    """$ISOBENCH_KERNEL_CACHE, else /var/cache/isobench/kernels as root, else ~/.cache/isobench/kernels."""
    env = os.environ.get("ISOBENCH_KERNEL_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/isobench/kernels")
    return Path.home() / ".cache" / "isobench" / "kernels"


def find_kernel(explicit: Path | None, cache_dir: Path) -> GuestKernel:
    """The kernel to boot, in the order of the module docstring."""
    if explicit is not None:
        version = bzimage_version(explicit)
        return GuestKernel(explicit, _modules_for(explicit, version), version, "--guest-kernel")
    release = platform.release()
    host = Path("/boot") / f"vmlinuz-{release}"
    if os.access(host, os.R_OK):
        modules = Path("/lib/modules") / release
        return GuestKernel(
            host, modules if modules.is_dir() else None, bzimage_version(host), "host /boot"
        )
    return debian_kernel(cache_dir)


def bzimage_version(path: Path) -> str:
    """The kernel release a bzImage carries in its setup header; UserError for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x210)
            if len(head) == 0x210:
                # The version string sits past the setup code, at the offset the header gives.
                (offset,) = struct.unpack_from("<H", head, 0x20E)
                f.seek(offset + 0x200)
                version_text = f.read(256)
    except FileNotFoundError:
        raise UserError(f"guest kernel {path}: no such file; accepted: {ACCEPTED}") from None
    except OSError as e:
        raise UserError(
            f"guest kernel {path}: cannot read ({e.strerror}); accepted: {ACCEPTED}"
        ) from None
    if (
        len(head) < 0x210
        or head[0x202:0x206] != _SETUP_HEADER_MAGIC
        or head[0x1FE:0x200] != b"\x55\xaa"
    ):
        raise UserError(
            f"guest kernel {path}: not a bzImage (no x86 boot header); accepted: {ACCEPTED}"
        )
    text = version_text.split(b"\0", 1)[0].decode("ascii", "replace")
    if not text.strip():
        raise UserError(
            f"guest kernel {path}: bzImage without a version string; accepted: {ACCEPTED}"
        )
    return text.split()[0]


def _modules_for(vmlinuz: Path, version: str) -> Path | None:
    """The modules of an explicit kernel: beside it as `dpkg -x` lays them out, else the host's."""
    for candidate in (
        vmlinuz.parent.parent / "lib" / "modules" / version,
        Path("/lib/modules") / version,
    ):
        if candidate.is_dir():
            return candidate
    return None


def debian_kernel(cache_dir: Path) -> GuestKernel:
    """A Debian kernel from the cache, fetching the current one first when the cache has none."""
    cached = _cached(cache_dir)
    if cached is not None:
        return cached
    package = _current_package()
    _fetch(package, cache_dir)
    fetched = _cached(cache_dir)
    if fetched is None:  # the package unpacked but held no vmlinuz: not a kernel package
        raise EnvironmentError_(f"{package} unpacked into {cache_dir} but holds no boot/vmlinuz-*")
    return fetched


def _cached(cache_dir: Path) -> GuestKernel | None:
    """The newest completely unpacked linux-image-*-amd64 in the cache (kept from an earlier run)."""
    if not cache_dir.is_dir():
        return None
    for root in sorted(cache_dir.glob("linux-image-*-amd64"), reverse=True):
        if not (root / COMPLETE_MARKER).exists():
            continue
        for vmlinuz in sorted((root / "boot").glob("vmlinuz-*")):
            version = vmlinuz.name[len("vmlinuz-") :]
            modules = root / "lib" / "modules" / version
            return GuestKernel(
                vmlinuz,
                modules if modules.is_dir() else None,
                version,
                f"debian package {root.name}",
            )
    return None


def _current_package() -> str:
    """linux-image-<abi>-amd64, the package Debian's linux-image-amd64 currently depends on."""
    proc = _run(["apt-cache", "depends", DEBIAN_META_PACKAGE], Path("/"))
    for line in proc.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            return name
    raise EnvironmentError_(
        f"`apt-cache depends {DEBIAN_META_PACKAGE}` names no linux-image package "
        "(run apt-get update, or pass --guest-kernel PATH)"
    )


def _fetch(package: str, cache_dir: Path) -> None:
    """apt-get download + dpkg -x into a temp dir in the cache, then one rename into place."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".fetch-{os.getpid()}-", dir=cache_dir))
    except OSError as e:
        raise EnvironmentError_(
            f"cannot create the kernel cache {cache_dir} ({e.strerror}); "
            "run `make setup` as root or pass --guest-kernel PATH"
        ) from None
    try:
        _run(["apt-get", "download", package], work)
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise EnvironmentError_(
                f"`apt-get download {package}` in {work} left {len(debs)} .deb files"
            )
        deb = debs[0]
        tree = work / package
        _run(["dpkg", "-x", str(deb), str(tree)], work)
        (tree / COMPLETE_MARKER).write_text(package + "\n")
        try:
            tree.rename(cache_dir / package)
        except OSError:
            if not (cache_dir / package / COMPLETE_MARKER).exists():
                raise  # not another process's finished fetch: a real failure
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(argv: list[str], cwd: Path) -> str:
    """A command's stdout; EnvironmentError_ quoting the exact command when it fails."""
    command = f"cd {cwd} && {' '.join(argv)}"
    try:
        proc = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=900, check=False
        )
    except OSError as e:
        raise EnvironmentError_(
            f"`{command}`: {e.strerror}; install apt and dpkg or pass --guest-kernel PATH"
        ) from None
    except subprocess.TimeoutExpired:
        raise EnvironmentError_(f"`{command}` took more than 900 s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise EnvironmentError_(
            f"`{command}` exited {proc.returncode}: {last}; "
            "run `make setup` as root (it fetches the kernel) or pass --guest-kernel PATH"
        )
    return proc.stdout
