"""The benchmark catalog: names, command lines, sizes, selection, and a smoke run of every benchmark."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.image.csrc import compile_programs
from harness.platforms.peer import stop, wait_listening
from harness.workloads import BENCHMARKS, CATEGORIES, PROFILES, bind_scratch, workloads
from harness.workloads.sizing import (
    MEMORY_FLOOR_MIB,
    TIMEOUT_S,
    last_level_cache_bytes,
    memory_array_mib,
)
from harness.workloads.storage import ROOT_DIR, fio_workload

DATA = Path(__file__).resolve().parent.parent / "data"
IMAGE_COMMANDS = {
    "/usr/bin/fio",
    "/usr/bin/stress-ng",
    "/usr/bin/sysbench",
    "/usr/bin/iperf3",
    "/usr/bin/isobench-probe",
}

PROBE_MECHANISMS = ("pipe", "unix", "tcp", "shm", "mq", "sem", "signal")
# benchmark -> a captured output of its own command line (tests/data/README.md)
CAPTURED = {
    "cpu.sysbench.1thread": "sysbench/cpu-1thread.txt",
    "cpu.sysbench.allthreads": "sysbench/cpu-allthreads.txt",
    "cpu.stress-ng.matrix.1thread": "stress-ng/matrix-1thread.txt",
    "cpu.stress-ng.matrix.allthreads": "stress-ng/matrix-allthreads.txt",
    "memory.probe.stream": "probe-stream.txt",
    "memory.sysbench.seq": "sysbench/memory-seq-read.txt",
    "memory.stress-ng.randlist": "stress-ng/randlist.txt",
    "io.fio.seqread.root": "fio/seqread-1m.json",
    "io.fio.seqwrite.root": "fio/seqwrite-1m.json",
    "io.fio.randread.root": "fio/randread-4k.json",
    "io.fio.randwrite.root": "fio/randwrite-4k.json",
    "io.fio.seqread.volume": "fio/seqread-1m.json",
    "io.fio.seqwrite.volume": "fio/seqwrite-1m.json",
    "io.fio.randread.volume": "fio/randread-4k.json",
    "io.fio.randwrite.volume": "fio/randwrite-4k.json",
    "ipc.stress-ng.pipe": "stress-ng/pipe.txt",
    "ipc.stress-ng.unix-socket": "stress-ng/sockpair.txt",
    "ipc.stress-ng.tcp-loopback": "stress-ng/sock-ipv4.txt",
    "ipc.stress-ng.shm": "stress-ng/shm-sysv.txt",
    "ipc.stress-ng.mq": "stress-ng/mq.txt",
    "ipc.stress-ng.sem": "stress-ng/sem-sysv.txt",
    "ipc.stress-ng.signal": "stress-ng/sigq.txt",
    **{f"ipc.probe.{m}.rtt": f"probe-rtt-{m}.txt" for m in PROBE_MECHANISMS},
    "syscall.sysbench.getppid": "sysbench/lua-getppid.txt",
    "network.iperf3.loopback": "iperf3/loopback.json",
    "network.iperf3.to-host": "iperf3/to-host.json",
    "network.iperf3.from-host": "iperf3/from-host.json",
    "network.probe.tcp-rr": "probe-tcp-rr.txt",
}


def captured(name: str) -> str:
    return (DATA / name).read_text()


# ---------------------------------------------------------------- every benchmark


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_is_well_formed(name: str, profile: str) -> None:
    workload = BENCHMARKS[name](profile)
    assert workload.benchmark == name
    assert workload.category == name.split(".")[0]
    assert workload.category in CATEGORIES
    names = [metric.name for metric in workload.metrics]
    assert len(names) == len(set(names))
    assert workload.metric(workload.primary).name == workload.primary
    assert workload.timeout_s == TIMEOUT_S[profile]
    assert workload.sizes
    # Commands run inside the image: its tools, or busybox sh starting them.
    program = workload.argv[0]
    assert program in IMAGE_COMMANDS or (
        program == "/bin/sh" and any(tool in workload.argv[2] for tool in IMAGE_COMMANDS)
    )


def test_the_catalog_covers_every_category_but_startup() -> None:
    assert {name.split(".")[0] for name in BENCHMARKS} == set(CATEGORIES) - {"startup"}


def numeric_sizes(name: str, profile: str) -> dict[str, int]:
    sizes = BENCHMARKS[name](profile).sizes
    return {k: v for k, v in sizes.items() if isinstance(v, int) and not isinstance(v, bool)}


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_profiles_grow(name: str) -> None:
    """Every numeric size is at most as big at smoke as at quick, at quick as at full; one grows."""
    smoke, quick, full = (numeric_sizes(name, profile) for profile in PROFILES)
    assert smoke.keys() == quick.keys() == full.keys()
    assert all(smoke[key] <= quick[key] <= full[key] for key in smoke)
    assert any(smoke[key] < full[key] for key in smoke)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_parse_captured_output_gives_exactly_the_declared_metrics(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The probe checks its arrays' size; the capture's were 128 MiB.
    monkeypatch.setattr("harness.workloads.probe.memory_array_mib", lambda **_: 128)
    workload = BENCHMARKS[name]("smoke")
    values = workload.parse(captured(CAPTURED[name]))
    assert list(values) == [metric.name for metric in workload.metrics]
    assert values[workload.primary] > 0


def test_parse_refuses_another_benchmark_s_output() -> None:
    from harness.workloads import ParseError

    with pytest.raises(ParseError):
        BENCHMARKS["io.fio.randwrite.root"]("smoke").parse(captured("fio/randread-4k.json"))
    with pytest.raises(ParseError):
        BENCHMARKS["ipc.stress-ng.mq"]("smoke").parse(captured("stress-ng/pipe.txt"))


def test_stress_ng_runs_that_stopped_short_are_refused() -> None:
    from harness.workloads import ParseError

    tcp = BENCHMARKS["ipc.stress-ng.tcp-loopback"]
    with pytest.raises(ParseError, match="finished prematurely"):
        tcp("smoke").parse(captured("stress-ng/sock-ipv4-lo-down.txt"))
    # The smoke capture did 100 bogo-ops; quick asks for 300.
    with pytest.raises(ParseError, match="did 100 of 180 bogo-ops"):
        tcp("quick").parse(captured("stress-ng/sock-ipv4.txt"))
    # All-threads runs do ops per CPU: 400 on two CPUs meets 200 each.
    matrix = BENCHMARKS["cpu.stress-ng.matrix.allthreads"]("smoke")
    assert matrix.parse(captured("stress-ng/matrix-allthreads.txt"))["bogo_ops"] == 400


# ---------------------------------------------------------------- command lines


def test_sysbench_cpu_one_thread_argv() -> None:
    assert BENCHMARKS["cpu.sysbench.1thread"]("quick").argv == (
        "/usr/bin/sysbench",
        "cpu",
        "run",
        "--cpu-max-prime=10000",
        "--time=0",
        "--events=5000",
        "--threads=1",
    )


def test_all_thread_variants_scale_work_with_usable_cpus() -> None:
    sysbench = BENCHMARKS["cpu.sysbench.allthreads"]("quick")
    assert sysbench.argv[:2] == ("/bin/sh", "-c")
    assert "n=$(nproc)" in sysbench.argv[2]
    assert '--events="$((5000 * n))" --threads="$n"' in sysbench.argv[2]
    matrix = BENCHMARKS["cpu.stress-ng.matrix.allthreads"]("quick")
    assert '--matrix "$n" --matrix-ops "$((500 * n))" "$@"' in matrix.argv[2]
    assert matrix.argv[3:] == (
        "sh",
        "--matrix-method",
        "prod",
        "--matrix-size",
        "128",
        "--metrics-brief",
        "--stdout",
        "--log-brief",
        "--temp-path",
        "/tmp",
    )


def test_stress_ng_ipc_argv() -> None:
    tcp = BENCHMARKS["ipc.stress-ng.tcp-loopback"]("quick")
    assert tcp.argv == (
        "/usr/bin/stress-ng",
        "--sock",
        "1",
        "--sock-ops",
        "180",
        "--sock-domain",
        "ipv4",
        "--sock-if",
        "lo",
        "--metrics-brief",
        "--stdout",
        "--log-brief",
        "--temp-path",
        "/tmp",
    )
    assert BENCHMARKS["ipc.stress-ng.unix-socket"]("smoke").argv[1] == "--sockpair"
    assert BENCHMARKS["ipc.stress-ng.sem"]("smoke").argv[1] == "--sem-sysv"
    assert BENCHMARKS["ipc.stress-ng.shm"]("smoke").argv[1] == "--shm-sysv"
    assert BENCHMARKS["ipc.stress-ng.signal"]("smoke").argv[1] == "--sigq"


def test_fio_volume_argv() -> None:
    workload = BENCHMARKS["io.fio.randread.volume"]("quick")
    assert workload.scratch == "volume"
    assert workload.argv == (
        "/usr/bin/fio",
        "--name=isobench-randread",
        "--directory=/scratch",
        "--rw=randread",
        "--bs=4k",
        "--size=24M",
        "--ioengine=psync",
        "--iodepth=1",
        "--direct=1",
        "--unlink=1",
        "--output-format=json",
    )
    assert workload.primary == "read_iops"
    assert workload.sizes["direct"] is True


def test_fio_root_argv_makes_and_removes_its_directory() -> None:
    workload = BENCHMARKS["io.fio.seqwrite.root"]("smoke")
    assert workload.scratch == "root"
    assert workload.argv[:2] == ("/bin/sh", "-c")
    assert workload.argv[2].startswith(f'mkdir -p {ROOT_DIR} && /usr/bin/fio "$@"')
    assert f"rmdir {ROOT_DIR}" in workload.argv[2]
    assert f"--directory={ROOT_DIR}" in workload.argv
    # Writes count once on the device.
    assert "--end_fsync=1" in workload.argv
    assert workload.primary == "write_bw_mib_s"
    assert "--end_fsync=1" not in BENCHMARKS["io.fio.seqread.root"]("smoke").argv


def test_fio_buffered_variant_is_recorded() -> None:
    workload = fio_workload("randwrite", "root", "smoke", direct=False)
    assert "--direct=0" in workload.argv
    assert workload.sizes["direct"] is False


def test_fio_workload_refuses_unknown_kinds() -> None:
    with pytest.raises(ValueError, match=r"no fio benchmark trim\.root"):
        fio_workload("trim", "root", "smoke")


def test_iperf3_waits_for_its_server_and_sends_a_fixed_amount() -> None:
    script = BENCHMARKS["network.iperf3.loopback"]("quick").argv[2]
    assert "-s -1 -B 127.0.0.1 -p 15201" in script
    assert ":3B61 00000000:0000 0A" in script  # port 15201 listening, as /proc/net/tcp writes it
    assert "-c 127.0.0.1 -p 15201 -n 1536M -J" in script


def test_syscall_benchmark_passes_its_lua_script_as_an_argument() -> None:
    workload = BENCHMARKS["syscall.sysbench.getppid"]("smoke")
    assert workload.argv[3] == "sh"
    assert "ffi.C.getppid()" in workload.argv[4]
    assert workload.parse(captured("sysbench/lua-getppid.txt"))["ns_per_call"] == pytest.approx(
        168.38  # latency sum 168.38 ms over 1000 events x 1000 calls
    )


# ---------------------------------------------------------------- sizes


def fake_cache(root: Path, levels: dict[int, str]) -> Path:
    for i, (level, size) in enumerate(levels.items()):
        index = root / f"index{i}"
        index.mkdir(parents=True)
        (index / "level").write_text(f"{level}\n")
        (index / "size").write_text(f"{size}\n")
    return root


def test_last_level_cache_is_the_highest_level(tmp_path: Path) -> None:
    cache = fake_cache(tmp_path, {1: "32K", 2: "1024K", 3: "32768K"})
    assert last_level_cache_bytes(cache) == 32 * 2**20
    assert memory_array_mib(cache) == 128


def test_memory_arrays_have_a_floor(tmp_path: Path) -> None:
    assert last_level_cache_bytes(tmp_path) is None
    assert memory_array_mib(tmp_path) == MEMORY_FLOOR_MIB
    small = fake_cache(tmp_path / "small", {1: "48K", 2: "2M"})
    assert memory_array_mib(small) == MEMORY_FLOOR_MIB


def test_memory_benchmarks_use_the_array_size() -> None:
    array_mib = memory_array_mib()
    stream = BENCHMARKS["memory.probe.stream"]("quick")
    assert stream.sizes["array_mib"] == array_mib
    assert stream.argv[1:3] == ("stream", str(array_mib))  # three arrays of this many MiB
    randlist = BENCHMARKS["memory.stress-ng.randlist"]("quick")
    items = array_mib * 2**20 // 64
    assert randlist.sizes["items"] == items
    ns = randlist.parse(captured("stress-ng/randlist.txt"))["ns_per_access"]
    assert ns == pytest.approx(1e9 / (1.01 * 2 * items))
    sysbench = BENCHMARKS["memory.sysbench.seq"]("quick")
    assert f"--memory-block-size={array_mib}M" in sysbench.argv
    # smoke: a quarter, for every memory benchmark
    smoke_mib = array_mib // 4
    assert memory_array_mib(profile="smoke") == smoke_mib
    assert BENCHMARKS["memory.probe.stream"]("smoke").sizes["array_mib"] == smoke_mib
    assert BENCHMARKS["memory.stress-ng.randlist"]("smoke").sizes["items"] == smoke_mib * 2**14
    smoke_sysbench = BENCHMARKS["memory.sysbench.seq"]("smoke")
    assert f"--memory-block-size={smoke_mib}M" in smoke_sysbench.argv


# ---------------------------------------------------------------- selection


def test_workloads_all_in_catalog_order() -> None:
    assert [w.benchmark for w in workloads(None, "smoke")] == list(BENCHMARKS)


def test_workloads_by_name_category_and_prefix() -> None:
    chosen = workloads(["io.fio.randread", "cpu", "cpu.sysbench.1thread"], "quick")
    assert [w.benchmark for w in chosen] == [
        "io.fio.randread.root",
        "io.fio.randread.volume",
        "cpu.sysbench.1thread",
        "cpu.sysbench.allthreads",
        "cpu.stress-ng.matrix.1thread",
        "cpu.stress-ng.matrix.allthreads",
    ]


def test_unknown_benchmark_names_the_accepted_ones() -> None:
    with pytest.raises(UserError) as caught:
        workloads(["cpu.sysbench.2threads"], "smoke")
    message = str(caught.value)
    assert message.startswith("unknown benchmark 'cpu.sysbench.2threads'; accepted:")
    assert "cpu, io, ipc, memory, network, syscall" in message
    assert all(name in message for name in BENCHMARKS)
    with pytest.raises(UserError, match="unknown benchmark 'cp'"):
        workloads(["cp"], "smoke")  # a prefix of a name's part is not a prefix of the name


def test_unknown_profile_names_the_accepted_ones() -> None:
    with pytest.raises(UserError, match="unknown profile 'fast'; accepted: smoke, quick, full"):
        workloads(None, "fast")
    with pytest.raises(UserError, match="unknown profile"):
        BENCHMARKS["io.fio.seqread.volume"]("fast")


# ---------------------------------------------------------------- bind_scratch


def test_bind_scratch_replaces_the_volume_path_only() -> None:
    workload = BENCHMARKS["io.fio.seqwrite.volume"]("smoke")
    bound = bind_scratch(workload, "/tmp/host dir")
    assert "--directory=/tmp/host dir" in bound.argv
    assert not any("/scratch" in arg for arg in bound.argv)
    assert bound.parse is workload.parse
    assert bound.sizes == workload.sizes
    root = BENCHMARKS["io.fio.seqwrite.root"]("smoke")
    assert bind_scratch(root, "/tmp/x") is root


def test_bind_scratch_leaves_other_paths_alone() -> None:
    workload = BENCHMARKS["io.fio.seqread.volume"]("smoke")
    argv = ("/scratch", "/scratch/a", "/scratchy", "/x/scratch", "a=/scratch")
    odd = dataclasses.replace(workload, argv=argv)
    assert bind_scratch(odd, "/h").argv == ("/h", "/h/a", "/scratchy", "/x/scratch", "a=/h")


# ---------------------------------------------------------------- a real run of everything


def test_every_benchmark_runs_at_smoke_size_on_this_host(tmp_path: Path) -> None:
    """Each catalog command, bare on the host, gives a positive primary metric and leaves nothing."""
    # isobench's own programs are in the image only: run the same compiled binaries here.
    own = {f"/usr/bin/{p.name}": str(p.binary) for p in compile_programs(tmp_path / "csrc")}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    root_dir_existed = Path(ROOT_DIR).exists()
    failures: list[str] = []
    timings: list[str] = []
    started = time.monotonic()
    for workload in workloads(None, "smoke"):
        # A host-side server (network benchmarks) listens on loopback, as on bare.
        bound = bind_scratch(workload, str(scratch)).with_peer("127.0.0.1")
        bound = dataclasses.replace(
            bound,
            argv=(own.get(bound.argv[0], bound.argv[0]), *bound.argv[1:]),
            peer_argv=(own.get(bound.peer_argv[0], bound.peer_argv[0]), *bound.peer_argv[1:])
            if bound.peer_argv
            else None,
        )
        t0 = time.monotonic()
        server = (
            subprocess.Popen(bound.peer_argv, stdout=subprocess.DEVNULL)
            if bound.peer_argv
            else None
        )
        try:
            if server is not None:
                assert bound.peer_port is not None
                wait_listening(server, None, "127.0.0.1", bound.peer_port)
            proc = subprocess.run(
                bound.argv,
                capture_output=True,
                text=True,
                timeout=bound.timeout_s,
                env={**os.environ, **dict(bound.env)},
                check=False,
            )
        finally:
            if server is not None:
                stop(server)
        elapsed = time.monotonic() - t0
        try:
            values = bound.parse(proc.stdout)
        except Exception as exc:
            failures.append(
                f"{workload.benchmark}: exit {proc.returncode}: {exc}; {proc.stderr[-300:]}"
            )
            continue
        primary = values[workload.primary]
        timings.append(
            f"{workload.benchmark:34} {elapsed:5.2f} s  {workload.primary} = {primary:.4g}"
        )
        if proc.returncode != 0 or not primary > 0:
            failures.append(
                f"{workload.benchmark}: exit {proc.returncode}, {workload.primary}={primary}"
            )
        assert list(scratch.iterdir()) == [], f"{workload.benchmark} left files in the volume"
    total = time.monotonic() - started
    print("\n".join(timings), f"\nsmoke catalog on the host: {total:.1f} s", sep="")
    assert not failures, "\n".join(failures)
    assert root_dir_existed or not Path(ROOT_DIR).exists()
    assert not Path("/tmp/isobench-getppid.lua").exists()
    assert total < 60
