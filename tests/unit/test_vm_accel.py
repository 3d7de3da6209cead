"""--accel decisions with a fake probe and a fake /dev/kvm; the stats summary on fixed records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.errors import EnvironmentError_, UserError
from harness.vm.accel import cache_key, cached_decision, decide
from harness.vm.monitor import StatsSampler, summarise


class FakeProbe:
    def __init__(self, ok: bool, what: str) -> None:
        self.ok, self.what, self.calls = ok, what, 0

    def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        return self.ok, self.what


@pytest.fixture
def kvm_dev(tmp_path: Path) -> Path:
    dev = tmp_path / "kvm"
    dev.write_text("")
    return dev


def test_auto_without_dev_kvm_is_tcg_without_probing(tmp_path: Path) -> None:
    probe = FakeProbe(True, "")
    d = decide("auto", dev_kvm=tmp_path / "none", probe=probe, cache_file=tmp_path / "c", key="k")
    assert (d.accel, d.probed) == ("tcg", False)
    assert "missing" in d.reason and probe.calls == 0


def test_auto_with_a_hanging_kvm_guest_is_tcg_with_the_reason_and_cached(
    tmp_path: Path, kvm_dev: Path
) -> None:
    probe = FakeProbe(False, "no READY; console empty")
    cache = tmp_path / "cache.json"
    d = decide("auto", dev_kvm=kvm_dev, probe=probe, cache_file=cache, key="boot1|qemu7")
    assert d.accel == "tcg" and d.probed and not d.cached
    assert "did not become ready within 20 s" in d.reason and "console empty" in d.reason
    again = decide("auto", dev_kvm=kvm_dev, probe=probe, cache_file=cache, key="boot1|qemu7")
    assert (again.accel, again.reason, again.cached) == ("tcg", d.reason, True)
    assert probe.calls == 1  # the second run paid nothing
    assert cached_decision(cache, "boot1|qemu7") == again
    # A reboot (another boot id) or another QEMU probes again.
    decide("auto", dev_kvm=kvm_dev, probe=probe, cache_file=cache, key="boot2|qemu7")
    assert probe.calls == 2
    assert cached_decision(cache, "boot1|qemu7") is None


def test_auto_with_a_working_kvm_guest_is_kvm(tmp_path: Path, kvm_dev: Path) -> None:
    d = decide(
        "auto", dev_kvm=kvm_dev, probe=FakeProbe(True, "ready after 0.3 s"),
        cache_file=tmp_path / "c", key="k",
    )  # fmt: skip
    assert d.accel == "kvm" and "ready after 0.3 s" in d.reason


def test_explicit_choices_and_bad_input(tmp_path: Path, kvm_dev: Path) -> None:
    probe = FakeProbe(False, "")
    kw: dict[str, Any] = dict(probe=probe, cache_file=tmp_path / "c", key="k")
    assert decide("tcg", dev_kvm=kvm_dev, **kw).accel == "tcg"
    assert decide("kvm", dev_kvm=kvm_dev, **kw).accel == "kvm"
    assert probe.calls == 0
    with pytest.raises(EnvironmentError_, match=r"--accel kvm: .* accepted: --accel auto or tcg"):
        decide("kvm", dev_kvm=tmp_path / "none", **kw)
    with pytest.raises(UserError, match="--accel fast; accepted: auto, kvm, tcg"):
        decide("fast", dev_kvm=kvm_dev, **kw)


def test_a_damaged_cache_is_probed_again(tmp_path: Path, kvm_dev: Path) -> None:
    cache = tmp_path / "c"
    cache.write_text("{not json")
    probe = FakeProbe(False, "hung")
    assert decide("auto", dev_kvm=kvm_dev, probe=probe, cache_file=cache, key="k").accel == "tcg"
    assert probe.calls == 1


def test_cache_key_names_the_boot_and_the_qemu(tmp_path: Path) -> None:
    boot = tmp_path / "boot_id"
    boot.write_text("abc\n")
    assert cache_key("QEMU emulator version 7.2.19", boot) == "abc|QEMU emulator version 7.2.19"
    assert cache_key("q", tmp_path / "missing").startswith("unknown-boot|")


RECORDS = [
    {"cpu.time": 1_000_000_000, "cpu.user": 0, "block.0.rd.bytes": 100, "block.0.wr.bytes": 0,
     "vcpu.current": 2, "vcpu.0.time": 0, "vcpu.1.time": 0, "vcpu.0.wait": 0, "vcpu.1.wait": 0,
     "balloon.rss": 1000},
    {"cpu.time": 3_500_000_000, "cpu.user": 2_000_000_000, "block.0.rd.bytes": 4196,
     "block.0.wr.bytes": 8192, "vcpu.current": 2, "vcpu.0.time": 1_000_000_000,
     "vcpu.1.time": 500_000_000, "vcpu.0.wait": 10_000_000, "vcpu.1.wait": 0, "balloon.rss": 3000},
    {"cpu.time": 4_000_000_000, "cpu.user": 2_000_000_000, "block.0.rd.bytes": 4196,
     "block.0.wr.bytes": 8192, "vcpu.current": 2, "vcpu.0.time": 2_000_000_000,
     "vcpu.1.time": 1_000_000_000, "vcpu.0.wait": 10_000_000, "vcpu.1.wait": 0, "balloon.rss": 2000},
]  # fmt: skip


def test_summary_is_counter_deltas_and_peak_rss() -> None:
    s = summarise(RECORDS)
    assert s["vm_cpu_time_s"] == pytest.approx(3.0)
    assert s["vm_cpu_user_s"] == pytest.approx(2.0)
    assert s["vm_block_0_rd_bytes"] == 4096 and s["vm_block_0_wr_bytes"] == 8192
    assert s["vm_vcpu_time_s"] == pytest.approx(3.0)
    assert s["vm_vcpu_wait_s"] == pytest.approx(0.01)
    assert "vm_vcpu_delay_s" not in s  # not reported by this driver: left out, not zero
    assert s["vm_rss_peak_kib"] == 3000 and s["vm_stats_samples"] == 3
    assert summarise([]) == {}


def test_sampler_takes_records_before_during_and_after() -> None:
    import time

    feed = iter(RECORDS * 100)
    with StatsSampler(lambda: dict(next(feed)), interval_s=0.01) as sampler:
        time.sleep(0.1)
    assert len(sampler.samples) >= 3
    assert sampler.summary()["vm_stats_samples"] == len(sampler.samples)


def test_doctor_explains_the_cached_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.doctor import _kvm_verdict
    from harness.vm.accel import CACHE_NAME

    monkeypatch.setenv("ISOBENCH_HOME", str(tmp_path))
    assert "not probed yet" in _kvm_verdict("QEMU 7.2")
    dev = tmp_path / "kvm"
    dev.write_text("")
    decide(
        "auto", dev_kvm=dev, probe=FakeProbe(False, "guest hung at kernel entry"),
        cache_file=tmp_path / CACHE_NAME, key=cache_key("QEMU 7.2"),
    )  # fmt: skip
    line = _kvm_verdict("QEMU 7.2")
    assert line.startswith("kvm: not used, VMs run under TCG") and "guest hung" in line


def test_a_host_peer_workload_is_not_applicable_on_the_vm() -> None:
    from harness.errors import NotApplicable
    from harness.platforms.vm import VmPlatform
    from harness.workloads import BENCHMARKS, workloads

    peered = [w for w in workloads(list(BENCHMARKS), "smoke") if w.peer_argv is not None]
    assert peered, "the catalog has host-peer network benchmarks"
    platform = VmPlatform()
    platform._guest = object()  # type: ignore[assignment]
    platform._state = object()  # type: ignore[assignment]
    with pytest.raises(NotApplicable, match="no network device"):
        platform.run(peered[0])
