"""config.json parsing: a runc-style config, runc's own default, and every kind of bad input."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.runtime.spec import (
    CAPABILITY_NAMES,
    DOCKER_DEFAULT_CAPS,
    RLIMIT_NAMES,
    BlockIOResources,
    CpuResources,
    Hook,
    IDMapping,
    MemoryResources,
    Mount,
    Namespace,
    PidsResources,
    Rlimit,
    SeccompArg,
    SeccompRule,
    ThrottleDevice,
    User,
    WeightDevice,
)
from harness.runtime.spec_default import default_spec
from harness.runtime.spec_load import load_bundle, parse_signal, parse_spec

Json = dict[str, object]


def runc_style_config() -> Json:
    """A config.json shaped like the ones runc and Docker write, with every section filled in."""
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": False,
            "user": {"uid": 1000, "gid": 1000, "additionalGids": [5, 20], "umask": 0o22},
            "args": ["/usr/bin/fio", "--name=seq", "--rw=read"],
            "env": ["PATH=/usr/bin:/bin", "EMPTY=", "EQUALS=a=b"],
            "cwd": "/work",
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_KILL"],
                "permitted": ["CAP_KILL"],
                "ambient": [],
            },
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024},
                {"type": "RLIMIT_CORE", "hard": 2**64 - 1, "soft": 0},
            ],
            "noNewPrivileges": True,
            "oomScoreAdj": -500,
            "apparmorProfile": "docker-default",
            "consoleSize": {"height": 24, "width": 80},
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "bench",
        "domainname": "example.org",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/data",
                "type": "bind",
                "source": "/srv/data",
                "options": ["rbind", "ro"],
            },
        ],
        "hooks": {
            "prestart": [{"path": "/usr/bin/netns-setup", "args": ["netns-setup", "up"]}],
            "createRuntime": [{"path": "/bin/true"}],
            "poststop": [{"path": "/bin/cleanup", "env": ["DEBUG=1"], "timeout": 5}],
        },
        "annotations": {"org.opencontainers.image.ref.name": "bench", "b": "2", "a": "1"},
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/var/run/netns/bench"},
                {"type": "mount"},
                {"type": "user"},
            ],
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "devices": [
                {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666},
                {"path": "/dev/fifo", "type": "p"},
            ],
            "cgroupsPath": "/isobench/run-1/ctr",
            "resources": {
                "devices": [
                    {"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
                ],
                "memory": {"limit": 536870912, "reservation": 268435456, "swap": -1},
                "cpu": {
                    "shares": 0,
                    "quota": 50000,
                    "period": 100000,
                    "cpus": "0-1,3",
                    "mems": "0",
                },
                "pids": {"limit": 128},
                "blockIO": {
                    "weight": 500,
                    "weightDevice": [{"major": 8, "minor": 0, "weight": 100}],
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                    "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 100}],
                },
                "unified": {"memory.high": "400M", "io.max": "8:0 rbps=max"},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
            },
            "rootfsPropagation": "rslave",
            "seccomp": {
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": 1,
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls": [
                    {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                    {
                        "names": ["personality"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}],
                    },
                    {
                        "names": ["clone"],
                        "action": "SCMP_ACT_ERRNO",
                        "errnoRet": 38,
                        "args": [
                            {
                                "index": 0,
                                "value": 2114060288,
                                "valueTwo": 0,
                                "op": "SCMP_CMP_MASKED_EQ",
                            }
                        ],
                    },
                ],
            },
            "sysctl": {"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"},
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"],
            "mountLabel": "",
        },
        "vendor.extension": {"anything": [1, 2, 3]},
    }


def test_runc_style_config_parses_to_the_dataclasses(tmp_path: Path) -> None:
    spec = parse_spec(runc_style_config(), str(tmp_path))

    assert spec.oci_version == "1.0.2-dev"
    assert spec.bundle == str(tmp_path)
    assert spec.root.path == str(tmp_path / "rootfs")
    assert spec.root.readonly is True
    assert (spec.hostname, spec.domainname) == ("bench", "example.org")

    process = spec.process
    assert process.args == ("/usr/bin/fio", "--name=seq", "--rw=read")
    assert process.cwd == "/work"
    assert process.env == ("PATH=/usr/bin:/bin", "EMPTY=", "EQUALS=a=b")
    assert process.user == User(uid=1000, gid=1000, additional_gids=(5, 20), umask=0o22)
    assert process.terminal is False
    assert process.no_new_privileges is True
    assert process.oom_score_adj == -500
    assert process.capabilities is not None
    assert process.capabilities.bounding == ("CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE")
    assert process.capabilities.effective == ("CAP_KILL",)
    assert process.capabilities.inheritable is None
    assert process.capabilities.ambient == ()
    assert process.rlimits == (
        Rlimit(type="RLIMIT_NOFILE", soft=1024, hard=4096),
        Rlimit(type="RLIMIT_CORE", soft=0, hard=2**64 - 1),
    )

    assert spec.mounts[1] == Mount(
        destination="/dev/shm",
        type="tmpfs",
        source="shm",
        options=("nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
    )
    assert spec.mounts[0].options == ()
    assert spec.hooks.prestart == (Hook(path="/usr/bin/netns-setup", args=("netns-setup", "up")),)
    assert spec.hooks.create_runtime == (Hook(path="/bin/true"),)
    assert spec.hooks.poststop == (Hook(path="/bin/cleanup", env=("DEBUG=1",), timeout=5),)
    assert spec.hooks.start_container == ()
    assert spec.annotations == (
        ("org.opencontainers.image.ref.name", "bench"),
        ("b", "2"),
        ("a", "1"),
    )


def test_runc_style_linux_section(tmp_path: Path) -> None:
    linux = parse_spec(runc_style_config(), str(tmp_path)).linux

    assert linux.namespace("network") == Namespace(type="network", path="/var/run/netns/bench")
    assert linux.namespace("ipc") is None
    assert linux.uid_mappings == (IDMapping(container_id=0, host_id=100000, size=65536),)
    assert linux.devices[0].major == 10
    assert linux.devices[0].file_mode == 0o666
    assert (linux.devices[1].type, linux.devices[1].major) == ("p", 0)
    assert linux.cgroups_path == "/isobench/run-1/ctr"
    assert linux.rootfs_propagation == "rslave"
    assert linux.sysctl == (("net.ipv4.ip_forward", "1"), ("kernel.shm_rmid_forced", "1"))
    assert linux.masked_paths == ("/proc/kcore",)
    assert linux.readonly_paths == ("/proc/sys",)

    resources = linux.resources
    assert resources is not None
    assert resources.memory == MemoryResources(limit=536870912, reservation=268435456, swap=-1)
    # runc treats cpu.shares 0 as "not set".
    assert resources.cpu == CpuResources(quota=50000, period=100000, cpus="0-1,3", mems="0")
    assert resources.pids == PidsResources(limit=128)
    assert resources.block_io == BlockIOResources(
        weight=500,
        weight_device=(WeightDevice(major=8, minor=0, weight=100),),
        throttle_read_bps_device=(ThrottleDevice(major=8, minor=0, rate=1048576),),
        throttle_write_iops_device=(ThrottleDevice(major=8, minor=16, rate=100),),
    )
    assert [(rule.allow, rule.type, rule.major, rule.access) for rule in resources.devices] == [
        (False, "a", None, "rwm"),
        (True, "c", 1, "rw"),
    ]
    assert resources.unified == (("memory.high", "400M"), ("io.max", "8:0 rbps=max"))

    seccomp = linux.seccomp
    assert seccomp is not None
    assert seccomp.default_action == "SCMP_ACT_ERRNO"
    assert seccomp.default_errno_ret == 1
    assert seccomp.architectures == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86")
    assert seccomp.syscalls[0] == SeccompRule(names=("read", "write"), action="SCMP_ACT_ALLOW")
    assert seccomp.syscalls[2] == SeccompRule(
        names=("clone",),
        action="SCMP_ACT_ERRNO",
        errno_ret=38,
        args=(SeccompArg(index=0, value=2114060288, op="SCMP_CMP_MASKED_EQ"),),
    )


def test_absolute_root_path_is_normalised_and_bundle_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = runc_style_config()
    config["root"] = {"path": "/srv//images/../rootfs/"}
    monkeypatch.chdir(tmp_path)

    spec = parse_spec(config, "bundle")

    assert spec.root.path == "/srv/rootfs"
    assert spec.bundle == str(tmp_path / "bundle")
    assert spec.root.readonly is False


@pytest.mark.parametrize(
    "version", ["1.0.0", "1.0.2-dev", "1.0.0-rc5", "1.0.0-rc1-dev", "1.1.0", "1.2.1", "1.2.0-rc.1"]
)
def test_accepted_oci_versions(version: str, tmp_path: Path) -> None:
    config = runc_style_config()
    config["ociVersion"] = version
    assert parse_spec(config, str(tmp_path)).oci_version == version


def test_default_spec_matches_runc_and_round_trips(tmp_path: Path) -> None:
    written = json.loads(json.dumps(default_spec()))

    spec = parse_spec(written, str(tmp_path))

    assert spec.oci_version == "1.0.2-dev"
    assert spec.hostname == "isobench"
    assert spec.process.args == ("sh",)
    assert spec.process.terminal is True
    assert spec.process.no_new_privileges is True
    assert spec.process.capabilities is not None
    assert spec.process.capabilities.bounding == (
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
    )
    assert spec.process.rlimits == (Rlimit(type="RLIMIT_NOFILE", soft=1024, hard=1024),)
    assert spec.root.path == str(tmp_path / "rootfs")
    assert [m.destination for m in spec.mounts] == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ]
    assert spec.mounts[2].options[-1] == "gid=5"
    # runc 1.1.5's `runc spec` has no cgroup namespace.
    assert [ns.type for ns in spec.linux.namespaces] == ["pid", "network", "ipc", "uts", "mount"]
    assert spec.linux.resources is not None
    assert spec.linux.resources.devices[0].allow is False
    assert "/proc/kcore" in spec.linux.masked_paths
    assert spec.linux.readonly_paths[-1] == "/proc/sysrq-trigger"


def test_default_spec_args_and_rootless(tmp_path: Path) -> None:
    spec = parse_spec(default_spec(["fio", "--version"], rootless=True), str(tmp_path))

    assert spec.process.args == ("fio", "--version")
    assert spec.linux.namespace("network") is None
    assert spec.linux.namespace("user") is not None
    assert spec.linux.uid_mappings == (IDMapping(container_id=0, host_id=os.geteuid(), size=1),)
    assert spec.linux.gid_mappings == (IDMapping(container_id=0, host_id=os.getegid(), size=1),)
    sys_mount = next(m for m in spec.mounts if m.destination == "/sys")
    assert (sys_mount.source, sys_mount.options[0]) == ("/sys", "rbind")
    assert all(m.destination != "/sys/fs/cgroup" for m in spec.mounts)
    assert not any(opt.startswith(("gid=", "uid=")) for m in spec.mounts for opt in m.options)
    assert spec.linux.resources is None


def test_vocabularies() -> None:
    assert CAPABILITY_NAMES["CAP_CHOWN"] == 0
    assert CAPABILITY_NAMES["CAP_CHECKPOINT_RESTORE"] == 40
    assert sorted(CAPABILITY_NAMES.values()) == list(range(41))
    assert set(DOCKER_DEFAULT_CAPS) <= set(CAPABILITY_NAMES)
    assert len(DOCKER_DEFAULT_CAPS) == 14
    assert sorted(RLIMIT_NAMES.values()) == list(range(16))


# ---------------------------------------------------------------- bad input

DELETE = object()


def _changed(keys: tuple[str | int, ...], value: object) -> object:
    """The runc-style config with the value at `keys` replaced (or removed, for DELETE)."""
    config = runc_style_config()
    if not keys:
        return value
    parent: object = config
    for key in keys[:-1]:
        parent = parent[key]  # type: ignore[index]
    if value is DELETE:
        del parent[keys[-1]]  # type: ignore[attr-defined]
    else:
        parent[keys[-1]] = value  # type: ignore[index]
    return config


BAD_INPUTS: list[tuple[tuple[str | int, ...], object, str]] = [
    ((), ["not", "an", "object"], "top level"),
    (("ociVersion",), DELETE, "ociVersion"),
    (("ociVersion",), "2.0.0", "ociVersion"),
    (("ociVersion",), "1.3.0", "ociVersion"),
    (("ociVersion",), 1.0, "ociVersion"),
    (("root",), DELETE, "root"),
    (("root", "path"), "", "root.path"),
    (("root", "readonly"), "yes", "root.readonly"),
    (("process",), DELETE, "process"),
    (("process", "args"), [], "process.args"),
    (("process", "args"), "sh -c true", "process.args"),
    (("process", "args", 1), 7, "process.args[1]"),
    (("process", "args", 0), "", "process.args[0]"),
    (("process", "cwd"), "work", "process.cwd"),
    (("process", "cwd"), DELETE, "process.cwd"),
    (("process", "env", 0), "PATH", "process.env[0]"),
    (("process", "env", 1), "=value", "process.env[1]"),
    (("process", "user", "uid"), -1, "process.user.uid"),
    (("process", "user", "uid"), True, "process.user.uid"),
    (("process", "user", "gid"), "0", "process.user.gid"),
    (("process", "user", "additionalGids", 1), 1.5, "process.user.additionalGids[1]"),
    (("process", "terminal"), 1, "process.terminal"),
    (("process", "capabilities", "bounding", 1), "CAP_FLY", "process.capabilities.bounding[1]"),
    (
        ("process", "capabilities", "effective"),
        {"CAP_KILL": True},
        "process.capabilities.effective",
    ),
    (("process", "rlimits", 0, "type"), "RLIMIT_FOO", "process.rlimits[0].type"),
    (("process", "rlimits", 1, "type"), "RLIMIT_NOFILE", "process.rlimits[1].type"),
    (("process", "rlimits", 0, "soft"), 8192, "process.rlimits[0].soft"),
    (("process", "rlimits", 0, "hard"), -1, "process.rlimits[0].hard"),
    (("process", "oomScoreAdj"), 1001, "process.oomScoreAdj"),
    (("mounts",), {"destination": "/proc"}, "mounts"),
    (("mounts", 2, "destination"), "data", "mounts[2].destination"),
    (("mounts", 1, "options"), "nosuid,noexec", "mounts[1].options"),
    (("mounts", 1, "options", 0), None, "mounts[1].options[0]"),
    (("hostname",), 42, "hostname"),
    (("hooks", "prestart", 0, "path"), "netns-setup", "hooks.prestart[0].path"),
    (("hooks", "poststop", 0, "timeout"), 0, "hooks.poststop[0].timeout"),
    (("hooks", "createRuntime"), {"path": "/bin/true"}, "hooks.createRuntime"),
    (("annotations",), ["a=b"], "annotations"),
    (("annotations", "b"), 2, 'annotations["b"]'),
    (("linux",), [], "linux"),
    (("linux", "namespaces", 2, "type"), "foo", "linux.namespaces[2].type"),
    (("linux", "namespaces", 2, "type"), "pid", "linux.namespaces[2].type"),
    (("linux", "namespaces", 1, "path"), "netns/bench", "linux.namespaces[1].path"),
    (("linux", "namespaces", 3), {"type": "ipc"}, "linux.uidMappings"),
    (("linux", "uidMappings", 0, "size"), 0, "linux.uidMappings[0].size"),
    (("linux", "gidMappings", 0, "hostID"), DELETE, "linux.gidMappings[0].hostID"),
    (("linux", "devices", 0, "path"), "dev/fuse", "linux.devices[0].path"),
    (("linux", "devices", 0, "type"), "x", "linux.devices[0].type"),
    (("linux", "devices", 0, "major"), DELETE, "linux.devices[0].major"),
    (("linux", "rootfsPropagation"), "recursive", "linux.rootfsPropagation"),
    (("linux", "sysctl", "net.ipv4.ip_forward"), 1, 'linux.sysctl["net.ipv4.ip_forward"]'),
    (("linux", "maskedPaths", 0), "proc/kcore", "linux.maskedPaths[0]"),
    (("linux", "readonlyPaths"), "/proc/sys", "linux.readonlyPaths"),
    (("linux", "resources", "memory", "limit"), -5, "linux.resources.memory.limit"),
    (("linux", "resources", "memory", "limit"), "512m", "linux.resources.memory.limit"),
    (("linux", "resources", "memory", "reservation"), -7, "linux.resources.memory.reservation"),
    (("linux", "resources", "memory", "swap"), 1024, "linux.resources.memory.swap"),
    (("linux", "resources", "memory", "swappiness"), 101, "linux.resources.memory.swappiness"),
    (("linux", "resources", "cpu", "shares"), 1, "linux.resources.cpu.shares"),
    (("linux", "resources", "cpu", "quota"), -3, "linux.resources.cpu.quota"),
    (("linux", "resources", "cpu", "period"), 999, "linux.resources.cpu.period"),
    (("linux", "resources", "cpu", "period"), 1_000_001, "linux.resources.cpu.period"),
    (("linux", "resources", "cpu", "cpus"), "0-1;3", "linux.resources.cpu.cpus"),
    (("linux", "resources", "cpu", "mems"), "3-1", "linux.resources.cpu.mems"),
    (("linux", "resources", "pids", "limit"), -2, "linux.resources.pids.limit"),
    (("linux", "resources", "pids", "limit"), False, "linux.resources.pids.limit"),
    (("linux", "resources", "blockIO", "weight"), 5, "linux.resources.blockIO.weight"),
    (("linux", "resources", "blockIO", "weight"), 1001, "linux.resources.blockIO.weight"),
    (
        ("linux", "resources", "blockIO", "throttleReadBpsDevice", 0, "rate"),
        -1,
        "linux.resources.blockIO.throttleReadBpsDevice[0].rate",
    ),
    (("linux", "resources", "devices", 1, "type"), "u", "linux.resources.devices[1].type"),
    (("linux", "resources", "devices", 1, "access"), "rwx", "linux.resources.devices[1].access"),
    (("linux", "resources", "devices", 0, "allow"), DELETE, "linux.resources.devices[0].allow"),
    (
        ("linux", "resources", "unified", "memory.high"),
        400,
        'linux.resources.unified["memory.high"]',
    ),
    (("linux", "seccomp", "defaultAction"), "SCMP_ACT_DENY", "linux.seccomp.defaultAction"),
    (("linux", "seccomp", "syscalls", 0, "action"), "allow", "linux.seccomp.syscalls[0].action"),
    (("linux", "seccomp", "syscalls", 0, "names"), [], "linux.seccomp.syscalls[0].names"),
    (("linux", "seccomp", "syscalls", 0, "names", 1), "", "linux.seccomp.syscalls[0].names[1]"),
    (
        ("linux", "seccomp", "syscalls", 1, "args", 0, "op"),
        "SCMP_CMP_IN",
        "linux.seccomp.syscalls[1].args[0].op",
    ),
    (
        ("linux", "seccomp", "syscalls", 1, "args", 0, "index"),
        6,
        "linux.seccomp.syscalls[1].args[0].index",
    ),
]


@pytest.mark.parametrize(
    ("keys", "value", "json_path"),
    BAD_INPUTS,
    ids=[f"{json_path}={value!r}"[:60] for _, value, json_path in BAD_INPUTS],
)
def test_bad_input_is_a_one_line_user_error_naming_the_path(
    keys: tuple[str | int, ...], value: object, json_path: str, tmp_path: Path
) -> None:
    with pytest.raises(UserError) as raised:
        parse_spec(_changed(keys, value), str(tmp_path))

    message = str(raised.value)
    assert message.startswith(f"config.json: {json_path}: ")
    assert "; accepted: " in message
    assert "\n" not in message


def test_error_messages_say_what_is_accepted(tmp_path: Path) -> None:
    bad_namespace = _changed(("linux", "namespaces", 2, "type"), "foo")
    with pytest.raises(
        UserError, match=r"^config\.json: linux\.namespaces\[2\]\.type: unknown namespace"
    ):
        parse_spec(bad_namespace, str(tmp_path))
    with pytest.raises(UserError) as raised:
        parse_spec(bad_namespace, str(tmp_path))
    assert str(raised.value) == (
        'config.json: linux.namespaces[2].type: unknown namespace type "foo"; '
        "accepted: pid, network, mount, ipc, uts, user, cgroup, time"
    )

    with pytest.raises(UserError) as raised:
        parse_spec(_changed(("linux", "resources", "memory", "limit"), -5), str(tmp_path))
    assert str(raised.value) == (
        "config.json: linux.resources.memory.limit: -5 is negative; "
        "accepted: a positive number of bytes, -1 (unlimited) or 0 (unset)"
    )


def _every_position(
    value: object, keys: tuple[str | int, ...] = ()
) -> Iterator[tuple[str | int, ...]]:
    yield keys
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _every_position(item, (*keys, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _every_position(item, (*keys, index))


WEIRD_VALUES: list[object] = [None, True, 0, -1, 2**70, 1.5, "", "x\ny", [], [None], {}, {"a": [1]}]


def test_weird_values_anywhere_raise_only_user_errors(tmp_path: Path) -> None:
    """Any weird value at any position gives a Spec or a UserError, never another exception."""
    for keys in _every_position(runc_style_config()):
        for weird in WEIRD_VALUES:
            try:
                parse_spec(_changed(keys, weird), str(tmp_path))
            except UserError as err:
                assert "\n" not in str(err), (keys, weird)


# ---------------------------------------------------------------- load_bundle


def _write_bundle(bundle: Path, config_text: str, rootfs: bool = True) -> None:
    bundle.mkdir()
    (bundle / "config.json").write_text(config_text)
    if rootfs:
        (bundle / "rootfs").mkdir()


def test_load_bundle_reads_config_and_resolves_root(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    _write_bundle(bundle, json.dumps(default_spec(["true"])))

    spec = load_bundle(str(bundle))

    assert spec.bundle == str(bundle)
    assert spec.root.path == str(bundle / "rootfs")
    assert spec.process.args == ("true",)


def test_load_bundle_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^bundle .*/nowhere: no such directory; accepted: "):
        load_bundle(str(tmp_path / "nowhere"))


def test_load_bundle_missing_config(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"/config\.json: no such file; accepted: "):
        load_bundle(str(tmp_path))


def test_load_bundle_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    _write_bundle(bundle, '{\n  "ociVersion": "1.0.2",\n  "root" {}\n}\n')

    with pytest.raises(
        UserError, match=r"malformed JSON at line 3 column 10: .*; accepted: "
    ) as raised:
        load_bundle(str(bundle))
    assert "\n" not in str(raised.value)


def test_load_bundle_top_level_not_an_object(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    _write_bundle(bundle, "[1, 2]")

    with pytest.raises(
        UserError, match=r"^config\.json: top level: got a list; accepted: a JSON object$"
    ):
        load_bundle(str(bundle))


def test_load_bundle_root_missing(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    _write_bundle(bundle, json.dumps(default_spec()), rootfs=False)

    with pytest.raises(UserError) as raised:
        load_bundle(str(bundle))
    assert str(raised.value).startswith(
        f"config.json: root.path: {bundle}/rootfs does not exist; accepted: a directory"
    )


def test_load_bundle_root_is_a_file(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    _write_bundle(bundle, json.dumps(default_spec()), rootfs=False)
    (bundle / "rootfs").write_text("not a directory")

    with pytest.raises(
        UserError, match=r"^config\.json: root\.path: .*/rootfs is not a directory; "
    ):
        load_bundle(str(bundle))


# ---------------------------------------------------------------- parse_signal


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("KILL", signal.SIGKILL),
        ("SIGKILL", signal.SIGKILL),
        ("9", 9),
        ("sigterm", signal.SIGTERM),
        ("Term", signal.SIGTERM),
        ("hup", signal.SIGHUP),
        ("64", 64),
        ("RTMIN", signal.SIGRTMIN),
    ],
)
def test_parse_signal_accepts_names_and_numbers(text: str, number: int) -> None:
    assert parse_signal(text) == number


@pytest.mark.parametrize("text", ["FOO", "SIGFOO", "0", "65", "-9", "", "9.0", "SIG_DFL"])
def test_parse_signal_rejects_unknown(text: str) -> None:
    with pytest.raises(UserError) as raised:
        parse_signal(text)
    assert str(raised.value) == (
        f"unknown signal {json.dumps(text)}; "
        "accepted: a number 1-64 or a name like SIGTERM, TERM, KILL"
    )


def test_zero_means_unset_as_runc_reads_it() -> None:
    """Tools that drive runc write 0 for fields they do not set; runc skips them."""
    data = json.loads(json.dumps(default_spec()))
    data["linux"]["resources"] = {
        "memory": {"limit": 0, "reservation": 0, "swap": 0},
        "cpu": {"quota": 0, "period": 0, "shares": 0},
    }
    resources = parse_spec(data, "/bundle").linux.resources
    assert resources is not None
    assert resources.memory == MemoryResources(limit=None, reservation=None, swap=None)
    assert resources.cpu is not None
    assert (resources.cpu.quota, resources.cpu.period, resources.cpu.shares) == (None, None, None)
