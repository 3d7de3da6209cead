"""config.json -> a validated Spec: every field checked once, errors name the JSON path and what is accepted."""

from __future__ import annotations

import json
import os
import re
import signal

from harness.errors import OSFailure, UserError
from harness.runtime.spec import (
    CAPABILITY_NAMES,
    INT64_MAX,
    NAMESPACE_TYPES,
    RLIMIT_NAMES,
    ROOTFS_PROPAGATIONS,
    SECCOMP_ACTIONS,
    SECCOMP_OPS,
    UINT32_MAX,
    UINT64_MAX,
    Capabilities,
    Device,
    Hook,
    Hooks,
    IDMapping,
    Linux,
    Mount,
    Namespace,
    Process,
    Rlimit,
    Root,
    Seccomp,
    SeccompArg,
    SeccompRule,
    Spec,
    User,
)
from harness.runtime.spec_json import (
    _abs_path,
    _abs_paths,
    _bool,
    _choice,
    _each_object,
    _env,
    _fail,
    _int,
    _list,
    _obj,
    _opt_abs_path,
    _opt_choice,
    _opt_int,
    _opt_str,
    _show,
    _str,
    _str_list,
    _str_map,
)
from harness.runtime.spec_resources import parse_resources

_HOOK_PHASES = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)

_OCI_VERSION = re.compile(r"1\.[012]\.[0-9]+(-(rc|dev)[0-9A-Za-z.+-]*)?")
_MAX_SIGNAL = int(signal.SIGRTMAX)


def _oci_version(value: object) -> str:
    accepted = "1.0.x, 1.1.x or 1.2.x, optionally with an -rc or -dev suffix"
    version = _str(value, "ociVersion", accepted)
    if not _OCI_VERSION.fullmatch(version):
        _fail("ociVersion", f"unsupported version {_show(version)}", accepted)
    return version


def _root(value: object, bundle: str) -> Root:
    root = _obj(value, "root", "an object with the path of the root filesystem")
    accepted = "a directory path, absolute or relative to the bundle"
    path = _str(root.get("path"), "root.path", accepted)
    if not path:
        _fail("root.path", "empty", accepted)
    return Root(
        path=os.path.normpath(os.path.join(bundle, path)),
        readonly=_bool(root.get("readonly"), "root.readonly", False),
    )


def _capability_set(value: object, path: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    accepted = "a capability name from capabilities(7), CAP_CHOWN to CAP_CHECKPOINT_RESTORE"
    names = _str_list(value, path)
    for i, name in enumerate(names):
        if name not in CAPABILITY_NAMES:
            _fail(f"{path}[{i}]", f"unknown capability {_show(name)}", accepted)
    return names


def _capabilities(value: object, path: str) -> Capabilities | None:
    if value is None:
        return None
    caps = _obj(value, path)
    return Capabilities(
        bounding=_capability_set(caps.get("bounding"), f"{path}.bounding"),
        effective=_capability_set(caps.get("effective"), f"{path}.effective"),
        inheritable=_capability_set(caps.get("inheritable"), f"{path}.inheritable"),
        permitted=_capability_set(caps.get("permitted"), f"{path}.permitted"),
        ambient=_capability_set(caps.get("ambient"), f"{path}.ambient"),
    )


def _rlimits(value: object, path: str) -> tuple[Rlimit, ...]:
    limits: list[Rlimit] = []
    for item, item_path in _each_object(value, path):
        rtype = _choice(item.get("type"), f"{item_path}.type", tuple(RLIMIT_NAMES), "rlimit")
        if any(limit.type == rtype for limit in limits):
            _fail(f"{item_path}.type", f"duplicate rlimit {rtype}", "each rlimit type at most once")
        bound = f"an integer from 0 to {UINT64_MAX} (unlimited), soft <= hard"
        soft = _int(item.get("soft"), f"{item_path}.soft", 0, UINT64_MAX, bound)
        hard = _int(item.get("hard"), f"{item_path}.hard", 0, UINT64_MAX, bound)
        if soft > hard:
            _fail(f"{item_path}.soft", f"{soft} is more than the hard limit {hard}", bound)
        limits.append(Rlimit(type=rtype, soft=soft, hard=hard))
    return tuple(limits)


def _user(value: object, path: str) -> User:
    if value is None:
        return User()
    user = _obj(value, path)
    gids = _list(user.get("additionalGids"), f"{path}.additionalGids", "a list of group ids")
    return User(
        uid=_opt_int(user.get("uid"), f"{path}.uid", 0, UINT32_MAX) or 0,
        gid=_opt_int(user.get("gid"), f"{path}.gid", 0, UINT32_MAX) or 0,
        additional_gids=tuple(
            _int(gid, f"{path}.additionalGids[{i}]", 0, UINT32_MAX) for i, gid in enumerate(gids)
        ),
        umask=_opt_int(user.get("umask"), f"{path}.umask", 0, 0o777),
    )


def _process(value: object) -> Process:
    proc = _obj(value, "process", "an object describing the container's first process")
    args_accepted = "a list of strings: the program, then its arguments"
    args = _str_list(proc.get("args"), "process.args")
    if not args:
        _fail("process.args", "missing or empty", args_accepted)
    if not args[0]:
        _fail("process.args[0]", "the program name is empty", args_accepted)
    return Process(
        args=args,
        cwd=_abs_path(proc.get("cwd"), "process.cwd", "an absolute path inside the container"),
        env=_env(proc.get("env"), "process.env"),
        user=_user(proc.get("user"), "process.user"),
        terminal=_bool(proc.get("terminal"), "process.terminal", False),
        capabilities=_capabilities(proc.get("capabilities"), "process.capabilities"),
        no_new_privileges=_bool(proc.get("noNewPrivileges"), "process.noNewPrivileges", False),
        rlimits=_rlimits(proc.get("rlimits"), "process.rlimits"),
        oom_score_adj=_opt_int(proc.get("oomScoreAdj"), "process.oomScoreAdj", -1000, 1000),
    )


def _mount(mount: dict[str, object], path: str) -> Mount:
    # OCI 1.0 allowed relative destinations for Solaris; on Linux they must be absolute.
    accepted = "an absolute path inside the container"
    return Mount(
        destination=_abs_path(mount.get("destination"), f"{path}.destination", accepted),
        type=_opt_str(mount.get("type"), f"{path}.type"),
        source=_opt_str(mount.get("source"), f"{path}.source"),
        options=_str_list(mount.get("options"), f"{path}.options"),
    )


def _hook_phase(hooks: dict[str, object], phase: str) -> tuple[Hook, ...]:
    path = f"hooks.{phase}"
    return tuple(
        Hook(
            path=_abs_path(hook.get("path"), f"{hook_path}.path"),
            args=_str_list(hook.get("args"), f"{hook_path}.args"),
            env=_env(hook.get("env"), f"{hook_path}.env"),
            timeout=_opt_int(hook.get("timeout"), f"{hook_path}.timeout", 1, INT64_MAX),
        )
        for hook, hook_path in _each_object(hooks.get(phase), path)
    )


def _hooks(value: object) -> Hooks:
    if value is None:
        return Hooks()
    hooks = _obj(value, "hooks", f"an object of hook lists: {', '.join(_HOOK_PHASES)}")
    return Hooks(
        prestart=_hook_phase(hooks, "prestart"),
        create_runtime=_hook_phase(hooks, "createRuntime"),
        create_container=_hook_phase(hooks, "createContainer"),
        start_container=_hook_phase(hooks, "startContainer"),
        poststart=_hook_phase(hooks, "poststart"),
        poststop=_hook_phase(hooks, "poststop"),
    )


def _namespaces(value: object, path: str) -> tuple[Namespace, ...]:
    namespaces: list[Namespace] = []
    for item, item_path in _each_object(value, path):
        ns_type = _choice(item.get("type"), f"{item_path}.type", NAMESPACE_TYPES, "namespace type")
        if any(ns.type == ns_type for ns in namespaces):
            _fail(
                f"{item_path}.type",
                f"duplicate namespace type {_show(ns_type)}",
                "each namespace type at most once",
            )
        ns_path = _opt_abs_path(item.get("path"), f"{item_path}.path")
        namespaces.append(Namespace(type=ns_type, path=ns_path))
    return tuple(namespaces)


def _id_mappings(value: object, path: str) -> tuple[IDMapping, ...]:
    return tuple(
        IDMapping(
            container_id=_int(item.get("containerID"), f"{item_path}.containerID", 0, UINT32_MAX),
            host_id=_int(item.get("hostID"), f"{item_path}.hostID", 0, UINT32_MAX),
            size=_int(item.get("size"), f"{item_path}.size", 1, UINT32_MAX),
        )
        for item, item_path in _each_object(value, path)
    )


def _device(device: dict[str, object], path: str) -> Device:
    dtype = _choice(device.get("type"), f"{path}.type", ("c", "b", "u", "p"), "device type")
    if dtype == "p":  # a FIFO has no device numbers
        major = _opt_int(device.get("major"), f"{path}.major", 0, UINT32_MAX) or 0
        minor = _opt_int(device.get("minor"), f"{path}.minor", 0, UINT32_MAX) or 0
    else:
        major = _int(device.get("major"), f"{path}.major", 0, UINT32_MAX)
        minor = _int(device.get("minor"), f"{path}.minor", 0, UINT32_MAX)
    return Device(
        path=_abs_path(device.get("path"), f"{path}.path", "an absolute path inside the container"),
        type=dtype,
        major=major,
        minor=minor,
        file_mode=_opt_int(device.get("fileMode"), f"{path}.fileMode", 0, 0o7777),
        uid=_opt_int(device.get("uid"), f"{path}.uid", 0, UINT32_MAX),
        gid=_opt_int(device.get("gid"), f"{path}.gid", 0, UINT32_MAX),
    )


def _seccomp_arg(arg: dict[str, object], path: str) -> SeccompArg:
    return SeccompArg(
        index=_int(arg.get("index"), f"{path}.index", 0, 5, "a syscall argument index from 0 to 5"),
        value=_int(arg.get("value"), f"{path}.value", 0, UINT64_MAX),
        op=_choice(arg.get("op"), f"{path}.op", SECCOMP_OPS, "seccomp operator"),
        value_two=_opt_int(arg.get("valueTwo"), f"{path}.valueTwo", 0, UINT64_MAX) or 0,
    )


def _seccomp_rule(rule: dict[str, object], path: str) -> SeccompRule:
    names_accepted = "a non-empty list of syscall names"
    names = _str_list(rule.get("names"), f"{path}.names")
    if not names:
        _fail(f"{path}.names", "missing or empty", names_accepted)
    for i, name in enumerate(names):
        if not name:
            _fail(f"{path}.names[{i}]", "empty name", names_accepted)
    args = _each_object(rule.get("args"), f"{path}.args")
    return SeccompRule(
        names=names,
        action=_choice(rule.get("action"), f"{path}.action", SECCOMP_ACTIONS, "seccomp action"),
        errno_ret=_opt_int(rule.get("errnoRet"), f"{path}.errnoRet", 0, UINT32_MAX),
        args=tuple(_seccomp_arg(arg, arg_path) for arg, arg_path in args),
    )


def _seccomp(value: object, path: str) -> Seccomp | None:
    if value is None:
        return None
    seccomp = _obj(value, path)
    rules = _each_object(seccomp.get("syscalls"), f"{path}.syscalls")
    return Seccomp(
        default_action=_choice(
            seccomp.get("defaultAction"), f"{path}.defaultAction", SECCOMP_ACTIONS, "seccomp action"
        ),
        architectures=_str_list(seccomp.get("architectures"), f"{path}.architectures"),
        flags=_str_list(seccomp.get("flags"), f"{path}.flags"),
        syscalls=tuple(_seccomp_rule(rule, rule_path) for rule, rule_path in rules),
        default_errno_ret=_opt_int(
            seccomp.get("defaultErrnoRet"), f"{path}.defaultErrnoRet", 0, UINT32_MAX
        ),
    )


def _linux(value: object) -> Linux:
    if value is None:
        return Linux()
    linux = _obj(value, "linux")
    namespaces = _namespaces(linux.get("namespaces"), "linux.namespaces")
    uid_mappings = _id_mappings(linux.get("uidMappings"), "linux.uidMappings")
    gid_mappings = _id_mappings(linux.get("gidMappings"), "linux.gidMappings")
    if (uid_mappings or gid_mappings) and not any(ns.type == "user" for ns in namespaces):
        _fail(
            "linux.uidMappings" if uid_mappings else "linux.gidMappings",
            "ID mappings without a user namespace",
            'a {"type": "user"} entry in linux.namespaces, or no mappings',
        )
    return Linux(
        namespaces=namespaces,
        uid_mappings=uid_mappings,
        gid_mappings=gid_mappings,
        devices=tuple(
            _device(device, device_path)
            for device, device_path in _each_object(linux.get("devices"), "linux.devices")
        ),
        cgroups_path=_opt_str(linux.get("cgroupsPath"), "linux.cgroupsPath"),
        resources=parse_resources(linux.get("resources"), "linux.resources"),
        rootfs_propagation=_opt_choice(
            linux.get("rootfsPropagation"),
            "linux.rootfsPropagation",
            ROOTFS_PROPAGATIONS,
            "mount propagation",
        ),
        seccomp=_seccomp(linux.get("seccomp"), "linux.seccomp"),
        sysctl=_str_map(linux.get("sysctl"), "linux.sysctl"),
        masked_paths=_abs_paths(linux.get("maskedPaths"), "linux.maskedPaths"),
        readonly_paths=_abs_paths(linux.get("readonlyPaths"), "linux.readonlyPaths"),
    )


def parse_spec(data: object, bundle: str) -> Spec:
    """Validate a decoded config.json; a relative root.path is resolved against `bundle`."""
    top = _obj(data, "top level")
    bundle = os.path.abspath(bundle)
    return Spec(
        oci_version=_oci_version(top.get("ociVersion")),
        bundle=bundle,
        root=_root(top.get("root"), bundle),
        process=_process(top.get("process")),
        hostname=_opt_str(top.get("hostname"), "hostname"),
        domainname=_opt_str(top.get("domainname"), "domainname"),
        mounts=tuple(
            _mount(mount, path) for mount, path in _each_object(top.get("mounts"), "mounts")
        ),
        hooks=_hooks(top.get("hooks")),
        linux=_linux(top.get("linux")),
        annotations=_str_map(top.get("annotations"), "annotations"),
    )


def _one_line(path: str) -> str:
    """A file path as given, or JSON-quoted when it holds characters that would break the line."""
    return path if path.isprintable() else json.dumps(path)


def load_bundle(bundle_dir: str) -> Spec:
    """Read and validate <bundle_dir>/config.json; root.path must be an existing directory."""
    bundle = os.path.abspath(bundle_dir)
    if not os.path.isdir(bundle):
        raise UserError(
            f"bundle {_one_line(bundle)}: no such directory; "
            "accepted: a bundle directory holding config.json and the root filesystem"
        )
    config_path = os.path.join(bundle, "config.json")
    shown = _one_line(config_path)
    try:
        with open(config_path, encoding="utf-8") as config_file:
            text = config_file.read()
    except FileNotFoundError:
        raise UserError(
            f"{shown}: no such file; accepted: an OCI runtime-spec config.json in the bundle"
        ) from None
    except UnicodeDecodeError as err:
        raise UserError(
            f"{shown}: not UTF-8 at byte {err.start}; accepted: a UTF-8 JSON file"
        ) from None
    except OSError as err:
        raise OSFailure("read", config_path, err.errno or 0) from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(
            f"{shown}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}; "
            "accepted: a JSON object"
        ) from None
    except (ValueError, RecursionError) as err:  # a number with too many digits, deep nesting
        raise UserError(f"{shown}: unreadable JSON: {err}; accepted: a JSON object") from None
    spec = parse_spec(data, bundle)
    if not os.path.isdir(spec.root.path):
        problem = "is not a directory" if os.path.exists(spec.root.path) else "does not exist"
        raise UserError(
            f"config.json: root.path: {_one_line(spec.root.path)} {problem}; "
            "accepted: a directory holding the root filesystem, absolute or relative to the bundle"
        )
    return spec


_SIGNAL_NUMBER = re.compile(r"[0-9]{1,3}")


def parse_signal(value: str) -> int:
    """A signal number from "KILL", "SIGKILL", "sigterm" or "9" (names in any case)."""
    text = value.strip().upper()
    if _SIGNAL_NUMBER.fullmatch(text):
        if 1 <= int(text) <= _MAX_SIGNAL:
            return int(text)
    else:
        name = text if text.startswith("SIG") else f"SIG{text}"
        if name in signal.Signals.__members__:
            return int(signal.Signals[name])
    raise UserError(
        f"unknown signal {_show(value)}; "
        f"accepted: a number 1-{_MAX_SIGNAL} or a name like SIGTERM, TERM, KILL"
    )
