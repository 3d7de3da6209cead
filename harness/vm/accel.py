"""`--accel auto|kvm|tcg`: which accelerator a run's guests get, and why (recorded with results).

/dev/kvm existing proves little: on a VM without nested virtualisation it opens
fine and a guest then hangs at kernel entry. So auto boots a probe guest under
KVM and takes KVM only when its agent becomes ready within PROBE_BOUND_S. The
verdict is cached per host boot and QEMU version (a reboot or an upgrade can
change it), so only the first run after either pays for the probe.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.errors import EnvironmentError_, UserError

CHOICES = ("auto", "kvm", "tcg")
PROBE_BOUND_S = 20.0  # a KVM guest is agent-ready in well under a second; TCG here takes ~5 s
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
CACHE_NAME = "accel.json"

Probe = Callable[[], tuple[bool, str]]  # boots a KVM guest: (agent ready in time?, what happened)


@dataclass(frozen=True)
class Decision:
    """The accelerator chosen, the one-line reason, and whether a probe guest was booted for it."""

    accel: str  # "kvm" or "tcg"
    reason: str
    probed: bool = False
    cached: bool = False


def cache_key(qemu_version: str, boot_id_path: Path = BOOT_ID) -> str:
    """What the cached verdict holds for: this boot of the host and this QEMU."""
    try:
        boot_id = boot_id_path.read_text().strip()
    except OSError:
        boot_id = "unknown-boot"
    return f"{boot_id}|{qemu_version}"


def decide(
    requested: str,
    *,
    dev_kvm: Path,
    probe: Probe,
    cache_file: Path,
    key: str,
) -> Decision:
    """The accelerator for `--accel requested` (see the module docstring)."""
    if requested not in CHOICES:
        raise UserError(f"--accel {requested}; accepted: {', '.join(CHOICES)}")
    if requested == "tcg":
        return Decision("tcg", "--accel tcg: QEMU's TCG emulation, as asked")
    usable_dev = dev_kvm.exists() and os.access(dev_kvm, os.R_OK | os.W_OK)
    if requested == "kvm":
        if not usable_dev:
            raise EnvironmentError_(
                f"--accel kvm: {dev_kvm} is missing or not read-write here; accepted: --accel auto or tcg"
            )
        return Decision("kvm", "--accel kvm: as asked (not probed)")
    if not usable_dev:
        return Decision("tcg", f"{dev_kvm} missing or not read-write: TCG emulation")
    cached = _load(cache_file).get(key)
    if isinstance(cached, dict) and cached.get("accel") in ("kvm", "tcg"):
        return Decision(str(cached["accel"]), str(cached["reason"]), probed=True, cached=True)
    ok, what = probe()
    if ok:
        decision = Decision("kvm", f"a KVM probe guest became ready: {what}", probed=True)
    else:
        decision = Decision(
            "tcg",
            f"{dev_kvm} exists but a KVM probe guest did not become ready within "
            f"{PROBE_BOUND_S:g} s ({what}); no working nested virtualisation: TCG emulation",
            probed=True,
        )
    _store(cache_file, key, decision)
    return decision


def cached_decision(cache_file: Path, key: str) -> Decision | None:
    """The verdict a previous probe left for key, without probing (for `isobench doctor`)."""
    cached = _load(cache_file).get(key)
    if isinstance(cached, dict) and cached.get("accel") in ("kvm", "tcg"):
        return Decision(str(cached["accel"]), str(cached["reason"]), probed=True, cached=True)
    return None


def _load(cache_file: Path) -> dict[str, object]:
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: probe again
    return data if isinstance(data, dict) else {}


def _store(cache_file: Path, key: str, decision: Decision) -> None:
    # Only the current key is kept: verdicts of earlier boots or QEMUs are stale anyway.
    record = {key: {k: v for k, v in asdict(decision).items() if k in ("accel", "reason")}}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(cache_file)
