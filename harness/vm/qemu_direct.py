"""A guest launched as a plain qemu-system-x86_64 process, no libvirt: for tests and as the baseline.

Same kernel, initramfs, vCPUs, memory and devices as the libvirt domain: the
agent's virtio-serial channel on a UNIX socket, the serial console into a log
file, an optional raw scratch disk on virtio-blk (serial isobench-scratch).
The process is ours (a child, named after the run id); close() kills it by pid
and removes its work dir (socket, pidfile). The console log is the caller's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import EnvironmentError_, IsobenchError, UserError
from harness.image.initramfs import SCRATCH_SERIAL
from harness.vm.agent import AGENT_CHANNEL, AgentClient, Ready
from harness.vm.guest import GUEST_CMDLINE

QEMU = "qemu-system-x86_64"
ACCELS = ("tcg", "kvm")
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes with its NUL
KILL_WAIT_S = 10.0


@dataclass(frozen=True)
class QemuConfig:
    """What to boot and with what devices; console_log is where the serial console goes."""

    kernel: Path
    initramfs: Path
    console_log: Path
    vcpus: int = 1
    memory_mib: int = 512
    accel: str = "tcg"
    cmdline: str = GUEST_CMDLINE
    scratch_disk: Path | None = None  # a raw file, already formatted (make_scratch_disk)
    disk_cache: str = "none"  # QEMU -drive cache=; none = O_DIRECT on the host file
    disk_aio: str = "threads"


def make_scratch_disk(path: Path, size_mib: int) -> Path:
    """A sparse raw file of size_mib formatted ext4 (the guest's /init mounts it at /scratch)."""
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    try:
        proc = subprocess.run(
            ["mkfs.ext4", "-F", "-q", str(path)], capture_output=True, text=True, check=False
        )
    except OSError:
        path.unlink(missing_ok=True)
        raise EnvironmentError_("mkfs.ext4 is not installed (Debian package e2fsprogs)") from None
    if proc.returncode != 0:
        path.unlink(missing_ok=True)
        raise EnvironmentError_(
            f"mkfs.ext4 -F -q {path} exited {proc.returncode}: {proc.stderr.strip()}"
        )
    return path


def qemu_argv(config: QemuConfig, name: str, agent_socket: Path, pidfile: Path) -> list[str]:
    """The qemu-system-x86_64 command line for config."""
    if config.accel not in ACCELS:
        raise UserError(f"accelerator {config.accel!r}; accepted: {', '.join(ACCELS)}")
    argv = [
        QEMU,
        "-name", f"guest={name},process={name}",
        "-accel", config.accel,
        "-m", f"{config.memory_mib}M",
        "-smp", str(config.vcpus),
        "-kernel", str(config.kernel),
        "-initrd", str(config.initramfs),
        "-append", config.cmdline,
        "-nographic", "-nodefaults", "-no-reboot",
        "-pidfile", str(pidfile),
        "-chardev", f"file,id=console0,path={config.console_log}",
        "-serial", "chardev:console0",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=agent0,path={agent_socket},server=on,wait=off",
        "-device", f"virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_CHANNEL}",
    ]  # fmt: skip
    if config.accel == "kvm":
        argv += ["-cpu", "host"]
    if config.scratch_disk is not None:
        drive = f"file={config.scratch_disk},format=raw,if=none,id=scratch0"
        argv += [
            "-drive", f"{drive},cache={config.disk_cache},aio={config.disk_aio}",
            "-device", f"virtio-blk-pci,drive=scratch0,serial={SCRATCH_SERIAL}",
        ]  # fmt: skip
    return argv


class QemuGuest:
    """One running QEMU process and its work dir; close() is idempotent."""

    def __init__(self, proc: subprocess.Popen[bytes], work_dir: Path, config: QemuConfig) -> None:
        self.proc = proc
        self.work_dir = work_dir
        self.config = config
        self.agent_socket = work_dir / "agent.sock"
        self.pidfile = work_dir / "qemu.pid"

    @property
    def pid(self) -> int:
        """QEMU's process id."""
        return self.proc.pid

    def wait_exit(self, timeout_s: float) -> int | None:
        """QEMU's exit status once it has ended, None if it still runs after timeout_s."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Kill QEMU (by pid: our own child) if it still runs, reap it, remove the work dir."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait_exit(KILL_WAIT_S) is None:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> QemuGuest:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def launch(config: QemuConfig, run_id: str, parent_dir: Path = Path("/tmp")) -> QemuGuest:
    """Start QEMU for config; the process and its work dir carry the run id."""
    name = f"isobench-{run_id}-qemu"
    if shutil.which(QEMU) is None:
        raise EnvironmentError_(f"{QEMU} is not installed (Debian package qemu-system-x86)")
    for path, what in ((config.kernel, "kernel"), (config.initramfs, "initramfs")):
        if not path.is_file():
            raise UserError(f"guest {what} {path}: no such file; accepted: an existing file")
    work_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent_dir))
    socket_path = work_dir / "agent.sock"
    if len(str(socket_path)) > MAX_SOCKET_PATH:
        shutil.rmtree(work_dir)
        raise UserError(
            f"QEMU work dir {work_dir}: too long for a UNIX socket path; accepted: a parent dir "
            f"leaving the socket path under {MAX_SOCKET_PATH} bytes"
        )
    try:
        argv = qemu_argv(config, name, socket_path, work_dir / "qemu.pid")
        with open(work_dir / "qemu.stderr", "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return QemuGuest(proc, work_dir, config)


def boot_to_ready(
    config: QemuConfig, run_id: str, ready_timeout_s: float, parent_dir: Path = Path("/tmp")
) -> tuple[QemuGuest, AgentClient, Ready]:
    """Launch and wait for the agent; on any failure QEMU is gone and the console log stays."""
    guest = launch(config, run_id, parent_dir)
    try:
        deadline = time.monotonic() + ready_timeout_s
        client = AgentClient.connect(guest.agent_socket, ready_timeout_s)
        try:
            ready = client.wait_ready(max(0.0, deadline - time.monotonic()))
        except BaseException:
            client.close()
            raise
    except IsobenchError as e:
        reason = _qemu_failure(guest) or str(e)
        guest.close()
        raise EnvironmentError_(
            f"guest never became ready within {ready_timeout_s:g} s: {reason} "
            f"(console log: {config.console_log})"
        ) from None
    except BaseException:
        guest.close()
        raise
    return guest, client, ready


def _qemu_failure(guest: QemuGuest) -> str | None:
    """Why QEMU ended, when it has: its exit status and last stderr line."""
    status = guest.proc.poll()
    if status is None:
        return None
    try:
        lines = (guest.work_dir / "qemu.stderr").read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return f"QEMU exited {status}" + (f": {lines[-1]}" if lines else "")


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and os.path.exists(f"/proc/{pid}")
