"""`isobench image build`: the workload image, assembled from host files, reproducibly.

Two layers, so images that share a base share its blob:
  base   busybox (static) and its applet links, the ELF interpreter and libc, libgcc_s
         (glibc dlopens it to unwind threads), a minimal /etc, /tmp and empty mount points;
  tools  each tool at its host path plus its shared-library closure (ldd), minus what base has,
         and isobench's own small C programs (csrc/*.c, static) at /usr/bin/<name>.
Each file sits at the path the loader or PATH names it by (/bin/busybox, /usr/bin/fio,
/lib/x86_64-linux-gnu/libc.so.6, /lib64/ld-linux-x86-64.so.2), in real directories even
where the host has merged-/usr directory symlinks; file symlinks (sonames, the
interpreter link) are kept with their targets.

A rebuild first computes a key from every input (path, size, mtime, inode, mode, link
target), the tool list and this code; a key seen before whose blobs are all still in the
store returns the earlier image without writing a byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.errors import EnvironmentError_, UserError
from harness.image import csrc, tarball
from harness.image.digest import (
    CREATED,
    EPOCH,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    check_tag,
    write_json_atomic,
)
from harness.image.layers import remove_tree
from harness.image.store import ImageStore
from harness.image.tarball import Entry, write_layer

DEFAULT_TOOLS = ["fio", "stress-ng", "sysbench", "iperf3"]
DEFAULT_TAG = "isobench/workload:latest"
BUILD_VERSION = "1"  # named in the image's os-release; the reuse key also hashes this code
BUSYBOX = Path("/bin/busybox")
# glibc dlopens libgcc_s for pthread_cancel/pthread_exit unwinding: no DT_NEEDED names it.
GLIBC_DLOPENED = ["libgcc_s.so.1"]
# Shipped with the tools, never loaded for what isobench runs: (tool, host path, why left out).
OPTIONAL_FILES = [
    ("fio", "/usr/lib/x86_64-linux-gnu/fio", "dlopen'd fio ioengine plugin (optional engine)"),
    ("sysbench", "/usr/share/sysbench", "sysbench OLTP Lua script (needs a database server)"),
]
EXEC_CONFIG: dict[str, object] = {
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    "Cmd": ["/bin/sh"],
    "WorkingDir": "/",
}
ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
    "etc/os-release": (
        f'NAME="isobench"\nID=isobench\nVERSION_ID="{BUILD_VERSION}"\n'
        'PRETTY_NAME="isobench workload image (host binaries)"\n'
    ),
}
# Mount points and scratch dirs with their usual modes (sticky, world-writable tmp dirs).
EMPTY_DIRS = {
    "tmp": 0o1777,
    "var/tmp": 0o1777,
    "proc": 0o555,
    "sys": 0o555,
    "dev": 0o755,
    "root": 0o700,
}
_TOOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_VERSION = re.compile(r"\d+(?:\.\d+)+")
CACHE_DIR = "build-cache"


@dataclass(frozen=True)
class LayerSummary:
    """One built layer: its digests, compressed and uncompressed size, number of entries."""

    name: str
    digest: str
    diff_id: str
    size: int
    uncompressed_size: int
    files: int


@dataclass(frozen=True)
class BuildResult:
    """What `image build` made (or found already made): digest, layer sizes, what was left out."""

    digest: str
    tag: str
    layers: tuple[LayerSummary, ...]
    dropped: tuple[tuple[str, str], ...]  # (host path, why it is not in the image)
    reused: bool

    @property
    def size(self) -> int:
        """Compressed size of all layers, bytes."""
        return sum(layer.size for layer in self.layers)

    @property
    def uncompressed_size(self) -> int:
        """Size of all layer tars, bytes."""
        return sum(layer.uncompressed_size for layer in self.layers)

    def summary(self) -> list[str]:
        """Human-readable lines: one per layer, the total, what was dropped, whether reused."""
        lines = [
            f"{layer.name:6s} {layer.digest[:19]}  {_mib(layer.size)} compressed, "
            f"{_mib(layer.uncompressed_size)} uncompressed, {layer.files} entries"
            for layer in self.layers
        ]
        lines.append(
            f"total  {_mib(self.size)} compressed, {_mib(self.uncompressed_size)} uncompressed, "
            f"{sum(layer.files for layer in self.layers)} entries"
        )
        groups: dict[tuple[str, str], list[str]] = {}
        for path, why in self.dropped:
            groups.setdefault((os.path.dirname(path), why), []).append(path)
        for (directory, why), paths in groups.items():
            what = paths[0] if len(paths) == 1 else f"{directory}/ ({len(paths)} files)"
            lines.append(f"dropped {what}: {why}")
        lines.append(f"{self.tag}: {'reused, nothing changed' if self.reused else 'built'}")
        return lines


def build_image(
    store: ImageStore, tag: str = DEFAULT_TAG, tools: Sequence[str] = DEFAULT_TOOLS
) -> BuildResult:
    """Build (or reuse) the workload image from host files and tag it; see the module docstring."""
    check_tag(tag)  # a bad tag fails before the tarring, not after it
    paths = _find_tools(tools)
    closures = {name: _ldd(path) for name, path in paths.items()}
    base = _base_tree(closures)
    upper = _Tree()
    for name, path in paths.items():
        upper.add_host(path)
        for lib in closures[name]:
            upper.add_host(lib)
    programs = csrc.compile_programs(store.home / CACHE_DIR / "csrc")
    for program in programs:
        upper.add_host(program.binary, f"{csrc.IMAGE_BIN}/{program.name}")
    upper.subtract(base)
    dropped = tuple(_dropped(paths))
    key = _cache_key(base, upper, paths)
    cached = _reuse(store, key, tag)
    if cached is not None:
        return cached
    annotations = {
        CREATED: EPOCH,
        "org.opencontainers.image.title": "isobench workload",
        "org.isobench.build.version": BUILD_VERSION,
        "org.isobench.tools": ",".join(paths),
    }
    for name, path in paths.items():
        annotations[f"org.isobench.tool.{name}.version"] = _version(path)
        annotations[f"org.isobench.tool.{name}.path"] = str(path)
    for program in programs:
        annotations[f"org.isobench.program.{program.name}.sha256"] = program.source_sha256
    if programs:
        annotations["org.isobench.program.compiler"] = csrc.compiler_version()
    store.tmp.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"isobench-{os.getpid()}-build-", dir=store.tmp))
    try:
        blobs = [
            write_layer(tree.members(), work / f"{name}.tar.gz")
            for name, tree in (("base", base), ("tools", upper))
        ]
        manifest = store.add_image(blobs, EXEC_CONFIG, annotations, tag)
    finally:
        remove_tree(work)
    result = BuildResult(
        digest=manifest.digest,
        tag=tag,
        layers=tuple(
            LayerSummary(
                name, str(b.digest), b.diff_id, b.size, b.uncompressed_size or 0, b.entries or 0
            )
            for name, b in zip(("base", "tools"), blobs, strict=True)
        ),
        dropped=dropped,
        reused=False,
    )
    (store.home / CACHE_DIR).mkdir(parents=True, exist_ok=True)
    record = {
        **asdict(result),
        "manifest_size": manifest.size,
        "config": _config_digest(store, manifest),
    }
    write_json_atomic(store.home / CACHE_DIR / f"{key}.json", record, store.tmp)
    return result


class _Tree:
    """The entries of one layer by archive path: host files, and what the build writes itself."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def add_host(self, host: Path, image_path: str | None = None, depth: int = 0) -> None:
        """Add a host file at the path it is named by, its parents as real directories.

        A symlink is kept and what it points to is added too (libfoo.so.1 ->
        libfoo.so.1.2.3, /lib64/ld-linux-x86-64.so.2 -> /lib/...); directory
        symlinks on the way (merged-/usr /lib -> usr/lib) become real directories,
        so the image has each file where the loader and PATH name it.
        """
        path = tarball.clean_path(str(host) if image_path is None else image_path)
        if depth > 40:
            raise EnvironmentError_(f"too many symlinks resolving {host} on this host")
        parent = ""
        for part in path.split("/")[:-1]:
            parent = f"{parent}/{part}".lstrip("/")
            if parent not in self.entries:
                self.entries[parent] = Entry(parent, "dir", mode=_host_dir_mode("/" + parent))
        st = os.lstat(host)
        entry = Entry.from_host(path, host, st)
        self.entries.setdefault(path, entry)
        if entry.kind == "symlink":
            # The image path is resolved lexically (its parents are real directories there);
            # the host path is left to the kernel, so the content is what the host resolves.
            target_image = os.path.normpath(
                os.path.join("/" + path.rpartition("/")[0], entry.target)
            )
            self.add_host(Path(os.path.join(host.parent, entry.target)), target_image, depth + 1)

    def add_dir(self, path: str, mode: int) -> None:
        """A directory (and missing parents, 0755) made by the build, not copied from the host."""
        parent = path.rpartition("/")[0]
        if parent:
            self.add_dir(parent, self.entries[parent].mode if parent in self.entries else 0o755)
        self.entries[path] = Entry(path, "dir", mode=mode)

    def add_data(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """A regular file with this content."""
        self.add_dir(path.rpartition("/")[0], 0o755)
        self.entries[path] = Entry(path, "file", mode=mode, data=data)

    def subtract(self, other: _Tree) -> None:
        """Drop what `other` (a lower layer) already has, identically, and directories left empty by that."""
        for path, entry in list(self.entries.items()):
            if entry.kind != "dir" and other.entries.get(path) == entry:
                del self.entries[path]
        needed = {p.rpartition("/")[0] for p, e in self.entries.items() if e.kind != "dir"}
        for path in list(self.entries):
            if self.entries[path].kind == "dir" and not any(
                n == path or n.startswith(path + "/") for n in needed
            ):
                del self.entries[path]  # only led to something the lower layer has

    def members(self) -> list[Entry]:
        """The entries to write (write_layer sorts them)."""
        return list(self.entries.values())


def _base_tree(closures: dict[str, list[Path]]) -> _Tree:
    """busybox and its applets, the interpreter and libc (and what they need), /etc, mount points."""
    if not BUSYBOX.is_file():
        raise EnvironmentError_(
            f"{BUSYBOX} is missing; accepted: install the busybox-static package (make setup)"
        )
    tree = _Tree()
    tree.add_host(BUSYBOX)
    bindir = tarball.clean_path(str(BUSYBOX.parent))
    for applet in _run([str(BUSYBOX), "--list"]).split():
        if "/" not in applet and applet != "busybox":
            tree.entries.setdefault(
                f"{bindir}/{applet}",
                Entry(f"{bindir}/{applet}", "symlink", mode=0o777, target="busybox"),
            )
    libcs = {lib for libs in closures.values() for lib in libs if lib.name.startswith("libc.so")}
    for libc in sorted(libcs):
        for lib in [libc, *_ldd(libc)]:
            tree.add_host(lib)
        for name in GLIBC_DLOPENED:
            if (libc.parent / name).exists():
                tree.add_host(libc.parent / name)
    for name, mode in EMPTY_DIRS.items():
        tree.add_dir(name, mode)
    for name, text in ETC_FILES.items():
        tree.add_data(name, text.encode())
    return tree


def _host_dir_mode(path: str) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o755


def _find_tools(tools: Sequence[str]) -> dict[str, Path]:
    if not tools:
        raise UserError(
            f"no tools to build; accepted: a comma-separated list such as {','.join(DEFAULT_TOOLS)}"
        )
    found: dict[str, Path] = {}
    for tool in tools:
        name = Path(tool).name if tool.startswith("/") else tool
        if not _TOOL_NAME.fullmatch(name):
            raise UserError(
                f"tool {tool!r} is not a program name; accepted: names like {', '.join(DEFAULT_TOOLS)}"
            )
        where = tool if tool.startswith("/") else shutil.which(tool)
        if where is None or not os.access(where, os.X_OK):
            raise EnvironmentError_(
                f"tool {tool!r} is not installed on this host; `make setup` installs {' '.join(DEFAULT_TOOLS)}"
            )
        found.setdefault(name, Path(where))
    return found


def _ldd(path: Path) -> list[Path]:
    """The shared libraries (and interpreter) `path` loads, as the host's loader resolves them."""
    proc = subprocess.run(
        ["ldd", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        if "not a dynamic executable" in proc.stdout + proc.stderr:
            return []  # static: nothing to bring along
        raise EnvironmentError_(f"ldd {path} failed: {(proc.stderr or proc.stdout).strip()}")
    libs: list[Path] = []
    for line in proc.stdout.splitlines():
        name, arrow, rest = line.strip().partition("=>")
        if arrow and rest.strip().startswith("not found"):
            raise EnvironmentError_(
                f"{path} needs {name.strip()}, which this host's loader cannot find"
            )
        location = (rest if arrow else name).strip().split(" (")[0]
        if location.startswith("/"):  # linux-vdso.so.1 is in the kernel, not a file
            libs.append(Path(location))
    return libs


def _dropped(paths: dict[str, Path]) -> list[tuple[str, str]]:
    dropped = []
    for tool, where, why in OPTIONAL_FILES:
        root = Path(where)
        if tool in paths and root.exists():
            files = (
                sorted(p for p in root.rglob("*") if not p.is_dir()) if root.is_dir() else [root]
            )
            dropped += [(str(p), why) for p in files]
    return dropped


def _cache_key(base: _Tree, upper: _Tree, paths: dict[str, Path]) -> str:
    """sha256 over every input's identity (path, kind, mode, target, size, mtime, inode) and this code."""
    digest = hashlib.sha256()
    for module in (Path(__file__), Path(tarball.__file__), Path(csrc.__file__)):
        digest.update(module.read_bytes())
    digest.update(
        json.dumps([sorted(paths.items()), tarball.default_mtime()], default=str).encode()
    )
    for name, tree in (("base", base), ("tools", upper)):
        for path in sorted(tree.entries):
            entry = tree.entries[path]
            identity: list[object] = [name, path, entry.kind, entry.mode, entry.target]
            if entry.source is not None:
                st = os.stat(entry.source)
                identity += [str(entry.source), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]
            else:
                identity.append(hashlib.sha256(entry.data).hexdigest())
            digest.update(json.dumps(identity).encode() + b"\n")
    return digest.hexdigest()


def _reuse(store: ImageStore, key: str, tag: str) -> BuildResult | None:
    """The image built from exactly these inputs before, if all its blobs are still in the store."""
    try:
        record = json.loads((store.home / CACHE_DIR / f"{key}.json").read_text())
        result = BuildResult(
            digest=record["digest"],
            tag=tag,
            layers=tuple(LayerSummary(**layer) for layer in record["layers"]),
            dropped=tuple((str(p), str(w)) for p, w in record["dropped"]),
            reused=True,
        )
        needed = [result.digest, record["config"], *(layer.digest for layer in result.layers)]
        if not all(store.has_blob(d) for d in needed):
            return None
        size = int(record["manifest_size"])
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return None  # no usable record: build
    if not any(t == tag and d.digest == result.digest for t, d in store.images()):
        store.tag(tag, Descriptor(MEDIA_TYPE_MANIFEST, result.digest, size))
    return result


def _config_digest(store: ImageStore, manifest: Descriptor) -> str:
    return store.manifest(manifest.digest).config.digest


def _version(path: Path) -> str:
    """The version number in the first line of `tool --version` (the whole line if it has none)."""
    first = next((line for line in _run([str(path), "--version"]).splitlines() if line.strip()), "")
    match = _VERSION.search(first)
    # Only the number: stress-ng's line also names the running kernel, which must not change the digest.
    return match.group(0) if match else first.strip()[:200]


def _run(argv: list[str]) -> str:
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentError_(f"{' '.join(argv)} could not run: {exc}") from None
    if proc.returncode != 0:
        raise EnvironmentError_(
            f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[:200]}"
        )
    return proc.stdout + proc.stderr


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
