"""The libvirt connection: the embedded QEMU driver by default, any URI on request.

`qemu:///embed?root=<dir>` runs libvirt's QEMU driver inside this process, no
daemon. It needs three things the daemon would otherwise give it: a
`<root>/etc/qemu.conf` with `stdio_handler = "file"` (no virtlogd to hand QEMU's
output to), an event loop registered before the first open and kept turning in a
thread (QEMU monitor replies arrive through it), and the root itself kept between
runs so the QEMU capability cache under `<root>/cache` is reused.

libvirt allows one process per embed root (a lock on `<root>/run/qemu/driver.pid`)
and one embed root per process, for the life of the process.
"""

from __future__ import annotations

import threading
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import EnvironmentError_, UserError

if TYPE_CHECKING:
    import libvirt

EMBED_PREFIX = "qemu:///embed"
STATE_SUBDIR = "libvirt"  # under the isobench home: the default embed root
# QEMU runs as root: the kernel, initramfs and disks stay where the run put them,
# and no security driver relabels them or records their owner in xattrs (a shared
# kernel cache would otherwise collect "remembered" owners from every run).
QEMU_CONF = (
    'stdio_handler = "file"\n'
    'user = "root"\n'
    'group = "root"\n'
    "dynamic_ownership = 0\n"
    "remember_owner = 0\n"
    'security_driver = "none"\n'
)
# libvirt's driver refuses to start as root unless its compiled-in qemu user exists.
QEMU_USER = "libvirt-qemu"
# libvirt binds each domain's QEMU monitor at
# <root>/lib/qemu/domain-<id>-<first 20 chars of the name>/monitor.sock, and a
# UNIX socket path holds at most 107 bytes: with ids up to five digits the root
# may take what is left.
MONITOR_SUFFIX_LEN = len("/lib/qemu/domain-99999-") + 20 + len("/monitor.sock")
MAX_EMBED_ROOT_LEN = 107 - MONITOR_SUFFIX_LEN

_loop_lock = threading.Lock()
_loop_started = False


def default_uri() -> str:
    """The embedded driver rooted in the isobench home (kept between runs)."""
    from harness.image.store import default_home

    return f"{EMBED_PREFIX}?root={default_home() / STATE_SUBDIR}"


def embed_root(uri: str) -> Path | None:
    """The root of an embed URI, None for any other URI; a malformed embed URI is a UserError."""
    if not uri.startswith(EMBED_PREFIX):
        return None
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)
    roots = query.get("root", [])
    if len(roots) != 1 or not roots[0].startswith("/"):
        raise UserError(
            f"--libvirt-uri {uri}: an embed URI needs one absolute root; "
            f"accepted: {EMBED_PREFIX}?root=/some/dir, qemu:///system or any libvirt URI"
        )
    if len(roots[0].encode()) > MAX_EMBED_ROOT_LEN:
        raise UserError(
            f"--libvirt-uri {uri}: the embed root is {len(roots[0].encode())} bytes long; "
            f"libvirt puts each guest's monitor socket under it and a socket path holds "
            f"107 bytes, so the root must be at most {MAX_EMBED_ROOT_LEN} "
            "(a shorter --libvirt-uri root or ISOBENCH_HOME)"
        )
    return Path(roots[0])


def prepare_embed_root(root: Path) -> None:
    """Create the root and its qemu.conf (rewritten only when it differs)."""
    conf = root / "etc" / "qemu.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    if not conf.exists() or conf.read_text() != QEMU_CONF:
        conf.write_text(QEMU_CONF)


def import_libvirt() -> Any:
    """The libvirt module, or an EnvironmentError_ saying how to get it."""
    import os
    import tempfile

    # Before the import (libvirt reads it once, at init): its log lines go to a file,
    # not the terminal; errors reach the caller as exceptions.
    log = os.path.join(tempfile.gettempdir(), "isobench-libvirt.log")
    os.environ.setdefault("LIBVIRT_LOG_OUTPUTS", f"3:file:{log}")
    try:
        import libvirt
    except ImportError as exc:
        raise EnvironmentError_(
            "libvirt-python is not installed (pip install 'libvirt-python>=9,<13'; "
            "it builds against Debian's libvirt-dev)"
        ) from exc
    return libvirt


def ensure_event_loop() -> None:
    """Register libvirt's default event loop once per process and turn it in a daemon thread."""
    global _loop_started
    libvirt = import_libvirt()
    with _loop_lock:
        if _loop_started:
            return
        # libvirt prints every error to stderr by default; ours become exceptions with one line.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()

        def turn() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=turn, name="libvirt-events", daemon=True).start()
        _loop_started = True


def open_connection(uri: str | None = None) -> libvirt.virConnect:
    """A read-write connection to uri (default: the embedded driver); one-line errors."""
    uri = uri or default_uri()
    root = embed_root(uri)
    libvirt = import_libvirt()
    if root is not None:
        _check_qemu_user()
        prepare_embed_root(root)
    ensure_event_loop()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise EnvironmentError_(f"libvirt {uri}: cannot connect: {_one_line(exc)}") from exc
    if conn is None:  # older bindings return None instead of raising
        raise EnvironmentError_(f"libvirt {uri}: cannot connect")
    return conn


def _check_qemu_user() -> None:
    import os
    import pwd

    if os.geteuid() != 0:
        return  # unprivileged embedded drivers run QEMU as the caller
    try:
        pwd.getpwnam(QEMU_USER)
    except KeyError:
        raise EnvironmentError_(
            f"libvirt's QEMU driver needs the system user {QEMU_USER} when run as root "
            f"(`make setup` creates it: useradd --system --user-group --no-create-home {QEMU_USER})"
        ) from None


def versions(conn: libvirt.virConnect) -> dict[str, str]:
    """libvirt's and the hypervisor's versions, as dotted strings."""

    def dotted(number: int) -> str:
        return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"

    return {"libvirt": dotted(conn.getLibVersion()), "hypervisor": dotted(conn.getVersion())}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
