"""OCI runtime-spec config.json (versions 1.0 to 1.2) -> validated, frozen dataclasses.

Every field the runtime acts on is checked here, once, with an error that names
the JSON path of the bad field and what would be accepted. Nothing downstream
re-validates user input.
"""

from __future__ import annotations

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
