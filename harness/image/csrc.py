"""Small C programs that ship inside the workload image (harness/image/csrc/*.c).

Some measurements need code no packaged tool has: a guest agent for the VM, a
round-trip latency probe for IPC and TCP. Each `csrc/<name>.c` is compiled by the
host's gcc into a static binary and goes into the image's tools layer at
/usr/bin/<name>: static, so it runs the same in a container, in a chroot and as a
process of a VM's initramfs, whatever libc is around it.

Binaries are cached under the image store by a key over the source, the flags and
the compiler's version, so a rebuild with nothing changed compiles nothing. gcc
is deterministic for the same inputs (no timestamps; the build-id note hashes the
content), so two machines with the same compiler make the same bytes, and the
image digest stays a checked fact.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import EnvironmentError_

SOURCE_DIR = Path(__file__).with_name("csrc")
CC = "gcc"
# -static: no loader or libc needed where it runs; -O2: the probes time tight loops.
CFLAGS = ("-O2", "-static", "-Wall", "-Wextra", "-std=gnu11", "-pthread")
IMAGE_BIN = "usr/bin"


@dataclass(frozen=True)
class Program:
    """One compiled program: its name in the image, the binary on the host, the source's sha256."""

    name: str
    binary: Path
    source_sha256: str


def compiler_version(cc: str = CC) -> str:
    """The first line of `cc --version`; part of every program's cache key."""
    try:
        proc = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        raise EnvironmentError_(
            f"{cc} is not installed; `make setup` installs gcc and libc6-dev"
        ) from None
    if proc.returncode != 0:
        raise EnvironmentError_(f"{cc} --version exited {proc.returncode}")
    return proc.stdout.splitlines()[0].strip() if proc.stdout else cc


def compile_programs(cache_dir: Path, source_dir: Path = SOURCE_DIR) -> list[Program]:
    """Every source_dir/*.c as a static binary in cache_dir, compiled only when its key is new."""
    sources = sorted(source_dir.glob("*.c"))
    if not sources:
        return []
    version = compiler_version()
    cache_dir.mkdir(parents=True, exist_ok=True)
    programs = []
    for source in sources:
        text = source.read_bytes()
        key = hashlib.sha256(
            b"\0".join([text, " ".join(CFLAGS).encode(), version.encode()])
        ).hexdigest()
        binary = cache_dir / f"{source.stem}-{key[:16]}"
        if not binary.exists():
            _compile(source, binary)
        programs.append(Program(source.stem, binary, hashlib.sha256(text).hexdigest()))
    return programs


def _compile(source: Path, binary: Path) -> None:
    """gcc into a temp name beside binary, then rename: a killed build leaves no half binary."""
    fd, tmp = tempfile.mkstemp(prefix=f".{binary.name}-", dir=binary.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [CC, *CFLAGS, "-o", tmp, str(source)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            first = next((line for line in proc.stderr.splitlines() if "error" in line), "")
            raise EnvironmentError_(
                f"compiling {source.name} failed (gcc exit {proc.returncode}): "
                f"{first or proc.stderr.strip()[:300]}"
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
