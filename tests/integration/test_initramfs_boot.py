"""The initramfs as a guest would use it, without a guest kernel (root, busybox).

No kernel ships on these hosts, and the VM issue boots real guests; here the
archive is unpacked and its /init run as PID 1 of fresh mount and PID namespaces,
which exercises the script itself: busybox mounts, module-list loop, readiness
line and the hand-over to the agent. Also device nodes and overlayfs whiteouts,
which need root to create.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.image.initramfs import AGENT_PATH, NewcEntry, read_newc, write_initramfs
from harness.runtime.bundle import busybox_rootfs

pytestmark = pytest.mark.requires("root")

UNSHARE = ["unshare", "--mount", "--pid", "--fork", "--propagation", "private"]
AGENT = """#!/bin/sh
echo "agent pid=$$"
cat /proc/mounts
"""


def unpack(archive: Iterator[NewcEntry], dest: Path) -> None:
    """Create every member under dest, as the kernel's initramfs unpacker would."""
    for entry in archive:
        path = dest / entry.name
        kind = stat.S_IFMT(entry.mode)
        if kind == stat.S_IFDIR:
            path.mkdir(exist_ok=True)
        elif kind == stat.S_IFLNK:
            path.symlink_to(entry.data.decode())
            continue  # chmod would follow the link
        elif kind == stat.S_IFREG:
            path.write_bytes(entry.data)
        else:
            os.mknod(path, entry.mode, os.makedev(entry.rdev_major, entry.rdev_minor))
        path.chmod(stat.S_IMODE(entry.mode))


@pytest.mark.requires("busybox")
def test_default_init_mounts_the_guest_userland_and_hands_over_to_the_agent(
    tmp_path: Path,
) -> None:
    root = busybox_rootfs(tmp_path / "root")
    agent = root / AGENT_PATH.lstrip("/")
    agent.parent.mkdir(parents=True, exist_ok=True)
    agent.write_text(AGENT)
    agent.chmod(0o755)
    out = tmp_path / "initrd.gz"
    write_initramfs(root, out)
    dest = tmp_path / "unpacked"
    dest.mkdir()
    unpack(read_newc(out), dest)

    # A private mount namespace: everything /init mounts disappears with its last process.
    proc = subprocess.run(
        [*UNSHARE, "chroot", str(dest), "/init"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},  # the kernel hands init no PATH either
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "isobench-init: ready" in lines
    assert lines.index("isobench-init: ready") < lines.index("agent pid=1")  # exec, not fork
    mounts = {
        (line.split()[1], line.split()[2]) for line in lines[lines.index("agent pid=1") + 1 :]
    }
    assert {
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev", "devtmpfs"),
        ("/dev/pts", "devpts"),
        ("/tmp", "tmpfs"),
    } <= mounts
    assert "insmod" not in proc.stdout + proc.stderr  # no modules, no load attempts
    assert str(dest) not in Path("/proc/self/mountinfo").read_text()


def test_device_nodes_keep_their_numbers_and_whiteouts_are_dropped(tmp_path: Path) -> None:
    root = busybox_rootfs(tmp_path / "root")
    os.mknod(root / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "dev" / "loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    (root / "dev" / "loop0").chmod(0o660)  # mknod's mode went through the umask
    os.mkfifo(root / "tmp" / "fifo", 0o600)
    os.mknod(root / "etc" / "deleted", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # a whiteout
    write_initramfs(root, tmp_path / "out.gz")
    got = {e.name: e for e in read_newc(tmp_path / "out.gz")}
    null, loop = got["dev/null"], got["dev/loop0"]
    assert stat.S_ISCHR(null.mode) and (null.rdev_major, null.rdev_minor) == (1, 3)
    assert stat.S_ISBLK(loop.mode) and (loop.rdev_major, loop.rdev_minor) == (7, 0)
    assert stat.S_IMODE(loop.mode) == 0o660
    assert stat.S_ISFIFO(got["tmp/fifo"].mode)
    assert "etc/deleted" not in got
    assert stat.S_ISCHR(got["dev/console"].mode)  # added next to the image's own nodes


def test_an_overlay_merged_view_is_packed_as_the_layers_say(tmp_path: Path) -> None:
    lower = busybox_rootfs(tmp_path / "lower")
    (lower / "etc" / "old").write_text("removed by the upper layer\n")
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (upper / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\n")  # shadows the lower one
    os.mknod(upper / "etc" / "old", stat.S_IFCHR, os.makedev(0, 0))
    merged = tmp_path / "merged"
    merged.mkdir()
    # Two lower dirs and no upper dir: a read-only view, as the image issue mounts layers.
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={upper}:{lower}", str(merged)],
        check=True,
    )
    try:
        write_initramfs(merged, tmp_path / "out.gz")
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    got = {e.name: e for e in read_newc(tmp_path / "out.gz")}
    assert "etc/old" not in got
    assert got["etc/hosts"].data == b"127.0.0.1 localhost\n"
    assert got["etc/passwd"].data == b"root:x:0:0::/:/bin/sh\n"
    busybox = hashlib.sha256((lower / "bin" / "busybox").read_bytes()).hexdigest()
    assert hashlib.sha256(got["bin/busybox"].data).hexdigest() == busybox
