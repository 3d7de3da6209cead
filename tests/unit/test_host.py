"""host_facts() on this machine and on fake /proc and /sys trees: every key, JSON, never an exception."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness import host
from harness.doctor import tuning_lines

KEYS = {
    "cpu_model",
    "cores",
    "physical_cores",
    "smt",
    "memory_bytes",
    "swap_bytes",
    "kernel",
    "arch",
    "cgroup_version",
    "governor",
    "turbo",
    "thp",
    "kvm",
    "root",
    "tools",
    "libvirt_python",
    "machine_id",
}

HYBRID = (
    "23 27 0:22 / /sys rw,relatime - sysfs sysfs rw\n"
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)
PLAIN_V1 = "".join(HYBRID.splitlines(keepends=True)[:3])
PURE_V2 = "31 23 0:28 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
NO_CGROUPS = "23 27 0:22 / /sys rw,relatime - sysfs sysfs rw\n"

CPUINFO_SMT = "\n\n".join(
    f"processor\t: {n}\nmodel name\t: Fake CPU 9000\nphysical id\t: 0\n"
    f"siblings\t: 4\ncore id\t\t: {n // 2}\ncpu cores\t: 2"
    for n in range(4)
)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every path host.py reads at an empty tree under tmp_path."""
    monkeypatch.setattr(host, "PROC", tmp_path / "proc")
    monkeypatch.setattr(host, "SYS", tmp_path / "sys")
    monkeypatch.setattr(host, "MACHINE_ID", tmp_path / "etc" / "machine-id")
    monkeypatch.setattr(host, "DEV_KVM", tmp_path / "dev" / "kvm")
    monkeypatch.setattr(host, "TOOLS", {"isobench-no-such-tool": ["--version"]})
    return tmp_path


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_this_host_has_every_fact_and_they_serialise() -> None:
    facts = host.host_facts()
    assert set(facts) == KEYS
    assert json.loads(json.dumps(facts)) == facts
    assert isinstance(facts["cores"], int) and facts["cores"] >= 1
    assert facts["kvm"]["usable"] is None  # type: ignore[index]
    assert isinstance(facts["tools"], dict) and set(facts["tools"]) == set(host.TOOLS)


def test_an_empty_tree_gives_unknown_not_an_exception(fake: Path) -> None:
    facts = host.host_facts()
    assert set(facts) == KEYS
    json.dumps(facts)
    for key in ("cpu_model", "physical_cores", "smt", "memory_bytes", "swap_bytes", "thp"):
        assert facts[key] == "unknown", key
    assert facts["cgroup_version"] == "unknown"
    assert facts["governor"] == "unknown (no cpufreq)"
    assert facts["turbo"] == "unknown"
    assert facts["kvm"] == {"dev_kvm": False, "usable": None, "note": host.kvm()["note"]}
    assert facts["tools"] == {"isobench-no-such-tool": None}
    # No /etc/machine-id: a hash of the hostname, stable across calls.
    assert re.fullmatch(r"[0-9a-f]{32}", str(facts["machine_id"]))
    assert host.host_facts()["machine_id"] == facts["machine_id"]


def test_a_fake_tree_is_read(fake: Path) -> None:
    _write(fake / "proc" / "cpuinfo", CPUINFO_SMT)
    _write(fake / "proc" / "meminfo", "MemTotal:  2048 kB\nSwapTotal:  1024 kB\n")
    _write(fake / "proc" / "self" / "mountinfo", HYBRID)
    cpu = fake / "sys" / "devices" / "system" / "cpu"
    for n in range(2):
        _write(cpu / f"cpu{n}" / "cpufreq" / "scaling_governor", "powersave\n")
    _write(cpu / "intel_pstate" / "no_turbo", "0\n")
    _write(
        fake / "sys" / "kernel" / "mm" / "transparent_hugepage" / "enabled",
        "[always] madvise never\n",
    )
    _write(fake / "etc" / "machine-id", "0123456789abcdef0123456789abcdef\n")
    facts = host.host_facts()
    assert facts["cpu_model"] == "Fake CPU 9000"
    assert facts["physical_cores"] == 2
    assert facts["smt"] == "on"  # no smt/active: 4 siblings on 2 cores
    assert (facts["memory_bytes"], facts["swap_bytes"]) == (2048 * 1024, 1024 * 1024)
    assert facts["cgroup_version"] == "1 (hybrid)"
    assert facts["governor"] == "powersave"
    assert facts["turbo"] == "on"
    assert facts["thp"] == "always"
    assert facts["machine_id"] == "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("mountinfo", "expected"),
    [(HYBRID, "1 (hybrid)"), (PLAIN_V1, "1"), (PURE_V2, "2"), (NO_CGROUPS, "none")],
)
def test_cgroup_version(fake: Path, mountinfo: str, expected: str) -> None:
    _write(fake / "proc" / "self" / "mountinfo", mountinfo)
    assert host.cgroup_version() == expected


def test_smt_active_file_wins_and_mixed_governors_are_named(fake: Path) -> None:
    cpu = fake / "sys" / "devices" / "system" / "cpu"
    _write(cpu / "smt" / "active", "0\n")
    _write(cpu / "cpu0" / "cpufreq" / "scaling_governor", "performance\n")
    _write(cpu / "cpu1" / "cpufreq" / "scaling_governor", "powersave\n")
    _write(cpu / "cpufreq" / "boost", "0\n")
    assert host._smt([{}]) == "off"
    assert host.governor() == "mixed: performance, powersave"
    assert host.turbo() == "off"


def test_unreadable_or_odd_files_give_unknown(fake: Path) -> None:
    _write(fake / "sys" / "kernel" / "mm" / "transparent_hugepage" / "enabled", "no brackets\n")
    (fake / "proc" / "cpuinfo").mkdir(parents=True)  # a directory: reading it fails
    facts = host.host_facts()
    assert facts["thp"] == "unknown"
    assert facts["cpu_model"] == "unknown"


def test_tool_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    assert host.tool_version("isobench-no-such-tool", []) is None
    assert host.tool_version("sh", ["-c", "echo; echo 'fake 1.2' >&2"]) == "fake 1.2"
    assert host.tool_version("sh", ["-c", "true"]) == "unknown"


def test_doctor_advice_for_noisy_settings() -> None:
    facts: dict[str, object] = {
        "governor": "powersave",
        "turbo": "on",
        "smt": "on",
        "thp": "always",
        "swap_bytes": 1 << 30,
    }
    lines = tuning_lines(facts)
    assert any(line.startswith("governor: powersave: results will be noisy") for line in lines)
    assert any("cpupower frequency-set -g performance" in line for line in lines)
    assert any(line.startswith("turbo: on:") for line in lines)
    assert any(line.startswith("smt: on:") for line in lines)
    quiet = tuning_lines(
        {"governor": "performance", "turbo": "off", "smt": "off", "thp": "madvise", "swap_bytes": 0}
    )
    assert quiet == [
        "governor: performance",
        "turbo: off",
        "smt: off",
        "thp: madvise",
        "swap: none",
    ]
