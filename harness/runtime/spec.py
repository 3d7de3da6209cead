"""The OCI runtime-spec config.json (versions 1.0 to 1.2) as frozen dataclasses, and its vocabulary.

spec_load.py turns a config.json into these, checking every field once;
nothing downstream re-validates user input. spec_default.py writes what
`runc spec` writes.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field

# ---------------------------------------------------------------- the contract


@dataclass(frozen=True)
class Namespace:
    """linux.namespaces[]: `type` is one of NAMESPACE_TYPES; `path` joins an existing one."""

    type: str
    path: str | None = None


@dataclass(frozen=True)
class IDMapping:
    """linux.uidMappings[] / gidMappings[]."""

    container_id: int
    host_id: int
    size: int


@dataclass(frozen=True)
class Mount:
    """mounts[]: destination is absolute inside the container."""

    destination: str
    type: str | None = None
    source: str | None = None
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rlimit:
    """process.rlimits[]: type like "RLIMIT_NOFILE"."""

    type: str
    soft: int
    hard: int


@dataclass(frozen=True)
class Capabilities:
    """process.capabilities: each set as given (names like "CAP_KILL"); None = set not given."""

    bounding: tuple[str, ...] | None = None
    effective: tuple[str, ...] | None = None
    inheritable: tuple[str, ...] | None = None
    permitted: tuple[str, ...] | None = None
    ambient: tuple[str, ...] | None = None


@dataclass(frozen=True)
class User:
    """process.user."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    umask: int | None = None


@dataclass(frozen=True)
class Process:
    """process: what runs as the container's PID 1."""

    args: tuple[str, ...]
    cwd: str = "/"
    env: tuple[str, ...] = ()
    user: User = field(default_factory=User)
    terminal: bool = False
    capabilities: Capabilities | None = None
    no_new_privileges: bool = False
    rlimits: tuple[Rlimit, ...] = ()
    oom_score_adj: int | None = None


@dataclass(frozen=True)
class Root:
    """root: `path` is absolute (resolved against the bundle directory)."""

    path: str
    readonly: bool = False


@dataclass(frozen=True)
class Hook:
    """hooks.<phase>[]."""

    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@dataclass(frozen=True)
class Hooks:
    """hooks, by phase (prestart is deprecated in 1.2 but still honoured)."""

    prestart: tuple[Hook, ...] = ()
    create_runtime: tuple[Hook, ...] = ()
    create_container: tuple[Hook, ...] = ()
    start_container: tuple[Hook, ...] = ()
    poststart: tuple[Hook, ...] = ()
    poststop: tuple[Hook, ...] = ()


@dataclass(frozen=True)
class CpuResources:
    """linux.resources.cpu (cpus/mems are cpuset list strings like "0-1,3")."""

    shares: int | None = None
    quota: int | None = None
    period: int | None = None
    cpus: str | None = None
    mems: str | None = None
    idle: int | None = None


@dataclass(frozen=True)
class MemoryResources:
    """linux.resources.memory, bytes. `swap` is memory+swap (OCI semantics); -1 means unlimited."""

    limit: int | None = None
    reservation: int | None = None
    swap: int | None = None
    swappiness: int | None = None
    disable_oom_killer: bool | None = None


@dataclass(frozen=True)
class PidsResources:
    """linux.resources.pids: limit -1 (or 0 in older specs) means no limit."""

    limit: int


@dataclass(frozen=True)
class WeightDevice:
    """linux.resources.blockIO.weightDevice[]."""

    major: int
    minor: int
    weight: int | None = None
    leaf_weight: int | None = None


@dataclass(frozen=True)
class ThrottleDevice:
    """linux.resources.blockIO.throttle*Device[]: rate in bytes/s or IO/s."""

    major: int
    minor: int
    rate: int


@dataclass(frozen=True)
class BlockIOResources:
    """linux.resources.blockIO (v1 blkio names; the v2 driver converts to io.*)."""

    weight: int | None = None
    leaf_weight: int | None = None
    weight_device: tuple[WeightDevice, ...] = ()
    throttle_read_bps_device: tuple[ThrottleDevice, ...] = ()
    throttle_write_bps_device: tuple[ThrottleDevice, ...] = ()
    throttle_read_iops_device: tuple[ThrottleDevice, ...] = ()
    throttle_write_iops_device: tuple[ThrottleDevice, ...] = ()


@dataclass(frozen=True)
class DeviceRule:
    """linux.resources.devices[]: the device cgroup allow/deny list."""

    allow: bool
    type: str = "a"  # a, b or c
    major: int | None = None  # None = wildcard
    minor: int | None = None
    access: str = "rwm"


@dataclass(frozen=True)
class Resources:
    """linux.resources."""

    cpu: CpuResources | None = None
    memory: MemoryResources | None = None
    pids: PidsResources | None = None
    block_io: BlockIOResources | None = None
    devices: tuple[DeviceRule, ...] = ()
    unified: tuple[tuple[str, str], ...] = ()  # cgroup v2 file name -> value, in the given order


@dataclass(frozen=True)
class Device:
    """linux.devices[]: an extra device node to create in the container's /dev."""

    path: str
    type: str  # c, b, u or p
    major: int = 0
    minor: int = 0
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class SeccompArg:
    """linux.seccomp.syscalls[].args[]."""

    index: int
    value: int
    op: str  # SCMP_CMP_NE, _LT, _LE, _EQ, _GE, _GT, _MASKED_EQ
    value_two: int = 0


@dataclass(frozen=True)
class SeccompRule:
    """linux.seccomp.syscalls[]."""

    names: tuple[str, ...]
    action: str  # SCMP_ACT_*
    errno_ret: int | None = None
    args: tuple[SeccompArg, ...] = ()


@dataclass(frozen=True)
class Seccomp:
    """linux.seccomp."""

    default_action: str
    architectures: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    syscalls: tuple[SeccompRule, ...] = ()
    default_errno_ret: int | None = None


@dataclass(frozen=True)
class Linux:
    """linux."""

    namespaces: tuple[Namespace, ...] = ()
    uid_mappings: tuple[IDMapping, ...] = ()
    gid_mappings: tuple[IDMapping, ...] = ()
    devices: tuple[Device, ...] = ()
    cgroups_path: str | None = None
    resources: Resources | None = None
    rootfs_propagation: str | None = None
    seccomp: Seccomp | None = None
    sysctl: tuple[tuple[str, str], ...] = ()
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()

    def namespace(self, ns_type: str) -> Namespace | None:
        """The namespace entry of this type, or None when the container shares the host's."""
        for ns in self.namespaces:
            if ns.type == ns_type:
                return ns
        return None


@dataclass(frozen=True)
class Spec:
    """A whole validated config.json; `bundle` is the absolute bundle directory."""

    oci_version: str
    bundle: str
    root: Root
    process: Process
    hostname: str | None = None
    domainname: str | None = None
    mounts: tuple[Mount, ...] = ()
    hooks: Hooks = field(default_factory=Hooks)
    linux: Linux = field(default_factory=Linux)
    annotations: tuple[tuple[str, str], ...] = ()


# ---------------------------------------------------------------- vocabulary

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")

# Bit numbers from linux/capability.h.
CAPABILITY_NAMES: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

RLIMIT_NAMES: dict[str, int] = {
    "RLIMIT_CPU": resource.RLIMIT_CPU,
    "RLIMIT_FSIZE": resource.RLIMIT_FSIZE,
    "RLIMIT_DATA": resource.RLIMIT_DATA,
    "RLIMIT_STACK": resource.RLIMIT_STACK,
    "RLIMIT_CORE": resource.RLIMIT_CORE,
    "RLIMIT_RSS": resource.RLIMIT_RSS,
    "RLIMIT_NPROC": resource.RLIMIT_NPROC,
    "RLIMIT_NOFILE": resource.RLIMIT_NOFILE,
    "RLIMIT_MEMLOCK": resource.RLIMIT_MEMLOCK,
    "RLIMIT_AS": resource.RLIMIT_AS,
    "RLIMIT_LOCKS": 10,  # Python's resource module does not export it; asm-generic/resource.h
    "RLIMIT_SIGPENDING": resource.RLIMIT_SIGPENDING,
    "RLIMIT_MSGQUEUE": resource.RLIMIT_MSGQUEUE,
    "RLIMIT_NICE": resource.RLIMIT_NICE,
    "RLIMIT_RTPRIO": resource.RLIMIT_RTPRIO,
    "RLIMIT_RTTIME": resource.RLIMIT_RTTIME,
}

SECCOMP_ACTIONS = (
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
)

SECCOMP_OPS = (
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
)

ROOTFS_PROPAGATIONS = (
    "shared",
    "slave",
    "private",
    "unbindable",
    "rshared",
    "rslave",
    "rprivate",
    "runbindable",
)

DOCKER_DEFAULT_CAPS = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

DOCKER_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)

DOCKER_READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
