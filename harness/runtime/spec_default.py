"""What `runc spec` writes (runc 1.1), so that `isobench-runtime spec` writes the same."""

from __future__ import annotations

import os

from harness.runtime.spec import DOCKER_READONLY_PATHS

# What `runc spec` (runc 1.1) masks: Docker's list without /proc/interrupts and powercap.
_RUNC_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)


def _default_mounts(rootless: bool) -> list[dict[str, object]]:
    devpts_options = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    if not rootless:
        devpts_options.append("gid=5")  # group 5 (tty) is not mapped into a rootless user namespace
    mounts: list[dict[str, object]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": devpts_options,
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
    ]
    if rootless:
        # Without its own network namespace a user namespace may not mount a fresh sysfs, so
        # bind the host's; that bind already carries a read-only /sys/fs/cgroup.
        mounts.append(
            {
                "destination": "/sys",
                "type": "none",
                "source": "/sys",
                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
            }
        )
    else:
        mounts.append(
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            }
        )
        mounts.append(
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            }
        )
    return mounts


def default_spec(args: list[str] | None = None, rootless: bool = False) -> dict[str, object]:
    """What `runc spec` (runc 1.1) writes, hostname "isobench"; rootless like `--rootless`."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    if rootless:  # runc's ToRootless: no network namespace, a user namespace mapping only us
        ns_types = ["pid", "ipc", "uts", "mount", "user"]
    else:
        # runc 1.1's list: no cgroup namespace (the harness's own bundles add one).
        ns_types = ["pid", "network", "ipc", "uts", "mount"]
    linux: dict[str, object] = {}
    if rootless:
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
    else:  # an unprivileged user cannot write cgroup limits, so rootless leaves them out
        linux["resources"] = {"devices": [{"allow": False, "access": "rwm"}]}
    linux["namespaces"] = [{"type": ns_type} for ns_type in ns_types]
    linux["maskedPaths"] = list(_RUNC_MASKED_PATHS)
    linux["readonlyPaths"] = list(DOCKER_READONLY_PATHS)
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": list(args) if args is not None else ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm",
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                "ambient": caps,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "isobench",
        "mounts": _default_mounts(rootless),
        "linux": linux,
    }
