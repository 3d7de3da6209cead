"""linux.resources of config.json -> validated cgroup resources (cpu, memory, pids, block IO, devices).

The half of spec loading that feeds the cgroup drivers; spec_load.py does the rest
of the document. Errors name the JSON path and what is accepted, as everywhere.
"""

from __future__ import annotations

import re

from harness.runtime.spec import (
    INT64_MAX,
    UINT32_MAX,
    UINT64_MAX,
    BlockIOResources,
    CpuResources,
    DeviceRule,
    MemoryResources,
    PidsResources,
    Resources,
    ThrottleDevice,
    WeightDevice,
)
from harness.runtime.spec_json import (
    _each_object,
    _fail,
    _int,
    _obj,
    _opt_bool,
    _opt_choice,
    _opt_int,
    _positive_or_unlimited,
    _show,
    _str,
    _str_map,
)

_CPU_LIST = re.compile(r"[0-9]{1,9}(-[0-9]{1,9})?(,[0-9]{1,9}(-[0-9]{1,9})?)*")
_MAX_CPU_SHARES = 262144  # the kernel's MAX_SHARES; runc maps 2..262144 onto cgroup v2 weights


def _cpuset(value: object, path: str) -> str | None:
    if value is None:
        return None
    accepted = 'a cpuset list like "0-1,3"'
    text = _str(value, path, accepted)
    if not _CPU_LIST.fullmatch(text):
        _fail(path, f"{_show(text)} is not a cpuset list", accepted)
    for span in text.split(","):
        first, _, last = span.partition("-")
        if last and int(last) < int(first):
            _fail(path, f"range {_show(span)} runs backwards", accepted)
    return text


def _cpu(value: object, path: str) -> CpuResources | None:
    if value is None:
        return None
    cpu = _obj(value, path)
    shares_accepted = f"an integer from 2 to {_MAX_CPU_SHARES}, or 0 (unset)"
    shares = _opt_int(cpu.get("shares"), f"{path}.shares", 0, _MAX_CPU_SHARES, shares_accepted)
    if shares == 1:
        _fail(f"{path}.shares", "1 is less than 2", shares_accepted)
    quota_accepted = "a positive number of microseconds per period, -1 (unlimited) or 0 (unset)"
    return CpuResources(
        shares=shares or None,  # runc treats 0 as unset
        quota=_positive_or_unlimited(cpu.get("quota"), f"{path}.quota", quota_accepted),
        period=_cpu_period(cpu.get("period"), f"{path}.period"),
        cpus=_cpuset(cpu.get("cpus"), f"{path}.cpus"),
        mems=_cpuset(cpu.get("mems"), f"{path}.mems"),
        idle=_opt_int(cpu.get("idle"), f"{path}.idle", 0, 1, "0 (normal) or 1 (SCHED_IDLE)"),
    )


def _cpu_period(value: object, path: str) -> int | None:
    accepted = "microseconds from 1000 to 1000000, or 0 (unset)"
    period = _opt_int(value, path, 0, 1_000_000, accepted)
    if period is not None and 0 < period < 1000:
        _fail(path, f"{period} is below 1000", accepted)
    return period or None


def _memory(value: object, path: str) -> MemoryResources | None:
    if value is None:
        return None
    memory = _obj(value, path)
    accepted = "a positive number of bytes, -1 (unlimited) or 0 (unset)"
    limit = _positive_or_unlimited(memory.get("limit"), f"{path}.limit", accepted)
    swap = _positive_or_unlimited(memory.get("swap"), f"{path}.swap", accepted)
    # OCI's swap is the memory+swap total, so it can never be below the memory limit.
    if limit is not None and swap is not None and -1 not in (limit, swap) and swap < limit:
        _fail(
            f"{path}.swap",
            f"{swap} is less than the memory limit {limit}",
            "memory+swap bytes at least the memory limit, or -1 (unlimited)",
        )
    return MemoryResources(
        limit=limit,
        reservation=_positive_or_unlimited(
            memory.get("reservation"), f"{path}.reservation", accepted
        ),
        swap=swap,
        swappiness=_opt_int(memory.get("swappiness"), f"{path}.swappiness", 0, 100),
        disable_oom_killer=_opt_bool(memory.get("disableOOMKiller"), f"{path}.disableOOMKiller"),
    )


def _pids(value: object, path: str) -> PidsResources | None:
    if value is None:
        return None
    pids = _obj(value, path)
    accepted = "a positive number of processes, or -1 or 0 (no limit)"
    limit = _opt_int(pids.get("limit"), f"{path}.limit", -1, INT64_MAX, accepted)
    return None if limit is None else PidsResources(limit=limit)


def _blkio_weight(value: object, path: str) -> int | None:
    accepted = "an integer from 10 to 1000, or 0 (unset)"
    weight = _opt_int(value, path, 0, 1000, accepted)
    if weight is not None and 0 < weight < 10:
        _fail(path, f"{weight} is less than 10", accepted)
    return weight or None


def _weight_devices(value: object, path: str) -> tuple[WeightDevice, ...]:
    return tuple(
        WeightDevice(
            major=_int(item.get("major"), f"{item_path}.major", 0, UINT32_MAX),
            minor=_int(item.get("minor"), f"{item_path}.minor", 0, UINT32_MAX),
            weight=_blkio_weight(item.get("weight"), f"{item_path}.weight"),
            leaf_weight=_blkio_weight(item.get("leafWeight"), f"{item_path}.leafWeight"),
        )
        for item, item_path in _each_object(value, path)
    )


def _throttle_devices(value: object, path: str) -> tuple[ThrottleDevice, ...]:
    return tuple(
        ThrottleDevice(
            major=_int(item.get("major"), f"{item_path}.major", 0, UINT32_MAX),
            minor=_int(item.get("minor"), f"{item_path}.minor", 0, UINT32_MAX),
            rate=_int(item.get("rate"), f"{item_path}.rate", 0, UINT64_MAX),
        )
        for item, item_path in _each_object(value, path)
    )


def _block_io(value: object, path: str) -> BlockIOResources | None:
    if value is None:
        return None
    blkio = _obj(value, path)
    return BlockIOResources(
        weight=_blkio_weight(blkio.get("weight"), f"{path}.weight"),
        leaf_weight=_blkio_weight(blkio.get("leafWeight"), f"{path}.leafWeight"),
        weight_device=_weight_devices(blkio.get("weightDevice"), f"{path}.weightDevice"),
        throttle_read_bps_device=_throttle_devices(
            blkio.get("throttleReadBpsDevice"), f"{path}.throttleReadBpsDevice"
        ),
        throttle_write_bps_device=_throttle_devices(
            blkio.get("throttleWriteBpsDevice"), f"{path}.throttleWriteBpsDevice"
        ),
        throttle_read_iops_device=_throttle_devices(
            blkio.get("throttleReadIOPSDevice"), f"{path}.throttleReadIOPSDevice"
        ),
        throttle_write_iops_device=_throttle_devices(
            blkio.get("throttleWriteIOPSDevice"), f"{path}.throttleWriteIOPSDevice"
        ),
    )


def _device_rule(rule: dict[str, object], path: str) -> DeviceRule:
    access_accepted = 'one or more of the letters "rwm"'
    access = rule.get("access")
    access = "rwm" if access is None else _str(access, f"{path}.access", access_accepted)
    if not access or not set(access) <= set("rwm"):
        _fail(f"{path}.access", f"{_show(access)} is not made of r, w, m", access_accepted)
    allow = _opt_bool(rule.get("allow"), f"{path}.allow")
    if allow is None:
        _fail(f"{path}.allow", "missing", "true or false")
    return DeviceRule(
        allow=allow,
        type=_opt_choice(rule.get("type"), f"{path}.type", ("a", "b", "c"), "device type") or "a",
        major=_opt_int(rule.get("major"), f"{path}.major", 0, UINT32_MAX),
        minor=_opt_int(rule.get("minor"), f"{path}.minor", 0, UINT32_MAX),
        access=access,
    )


def parse_resources(value: object, path: str) -> Resources | None:
    """linux.resources (None when absent), every field checked."""
    if value is None:
        return None
    res = _obj(value, path)
    rules = _each_object(res.get("devices"), f"{path}.devices")
    return Resources(
        cpu=_cpu(res.get("cpu"), f"{path}.cpu"),
        memory=_memory(res.get("memory"), f"{path}.memory"),
        pids=_pids(res.get("pids"), f"{path}.pids"),
        block_io=_block_io(res.get("blockIO"), f"{path}.blockIO"),
        devices=tuple(_device_rule(rule, rule_path) for rule, rule_path in rules),
        unified=_str_map(res.get("unified"), f"{path}.unified"),
    )
