"""fio benchmarks: 1 MiB sequential and 4 KiB random reads and writes, on two filesystems.

"root" puts the file on the platform's root filesystem (the container's overlay,
the VM's root disk) under /var/tmp/isobench-io; "volume" puts it in /scratch, a
host directory bound in (the VM's scratch disk). Each run moves a fixed amount
of data once (size-based, not time-based), one job, synchronous IO at queue
depth 1, so completion latency is the device's and the filesystem's per-IO cost.

Direct IO (O_DIRECT) is requested by default. fio never falls back to buffered
IO: where a filesystem refuses O_DIRECT the job ends with error 22 (EINVAL) and
the parser reports it. A platform in that case builds the workload with
fio_workload(..., direct=False); sizes["direct"] records which one ran.
"""

from __future__ import annotations

from harness.workloads.base import Metric, Workload
from harness.workloads.parsers import parse_fio_json, select
from harness.workloads.sizing import TIMEOUT_S, check_profile

FIO = "/usr/bin/fio"
ROOT_DIR = "/var/tmp/isobench-io"
VOLUME_DIR = "/scratch"
SCRATCHES = ("root", "volume")

# kind -> (fio rw, block size, direction measured, primary metric suffix)
KINDS: dict[str, tuple[str, str, str, str]] = {
    "seqread": ("read", "1M", "read", "bw_mib_s"),
    "seqwrite": ("write", "1M", "write", "bw_mib_s"),
    "randread": ("randread", "4k", "read", "iops"),
    "randwrite": ("randwrite", "4k", "write", "iops"),
}
# File size in MiB per profile; each run reads or writes it once. Reads lay the file
# out first (not measured). Here: seq ~1 GiB/s, random 4 KiB ~13k IOPS direct.
FILE_MIB = {
    "smoke": {"seq": 32, "rand": 4},
    "quick": {"seq": 192, "rand": 24},
    "full": {"seq": 4096, "rand": 1024},
}


def _metrics(direction: str) -> tuple[Metric, ...]:
    return (
        Metric(f"{direction}_bw_mib_s", "MiB/s", higher_is_better=True),
        Metric(f"{direction}_iops", "IO/s", higher_is_better=True),
        Metric(f"{direction}_clat_p50_us", "us", higher_is_better=False),
        Metric(f"{direction}_clat_p99_us", "us", higher_is_better=False),
        Metric(f"{direction}_runtime_s", "s", higher_is_better=False),
    )


def fio_options(kind: str, directory: str, size_mib: int, *, direct: bool) -> tuple[str, ...]:
    """fio's command-line job: one file in directory, written or read once, removed after."""
    rw, block, direction, _ = KINDS[kind]
    options = (
        f"--name=isobench-{kind}",
        f"--directory={directory}",
        f"--rw={rw}",
        f"--bs={block}",
        f"--size={size_mib}M",
        "--ioengine=psync",
        "--iodepth=1",
        f"--direct={int(direct)}",
        "--unlink=1",
        "--output-format=json",
    )
    # Written data counts once it is on the device, not when it reaches the page cache.
    return (*options, "--end_fsync=1") if direction == "write" else options


def fio_workload(kind: str, scratch: str, profile: str, *, direct: bool = True) -> Workload:
    """io.fio.<kind>.<scratch> at profile's size; direct=False for filesystems without O_DIRECT."""
    if kind not in KINDS or scratch not in SCRATCHES:
        raise ValueError(f"no fio benchmark {kind}.{scratch}")
    size_mib = FILE_MIB[check_profile(profile)]["seq" if kind.startswith("seq") else "rand"]
    _, block, direction, primary = KINDS[kind]
    if scratch == "volume":
        argv: tuple[str, ...] = (FIO, *fio_options(kind, VOLUME_DIR, size_mib, direct=direct))
    else:
        # The image has /var/tmp but not our directory; remove it again so runs leave nothing.
        script = f'mkdir -p {ROOT_DIR} && {FIO} "$@"; rc=$?; rmdir {ROOT_DIR} 2>/dev/null; exit $rc'
        argv = (
            "/bin/sh",
            "-c",
            script,
            "sh",
            *fio_options(kind, ROOT_DIR, size_mib, direct=direct),
        )
    metrics = _metrics(direction)
    names = [metric.name for metric in metrics]
    return Workload(
        benchmark=f"io.fio.{kind}.{scratch}",
        category="io",
        argv=argv,
        metrics=metrics,
        primary=f"{direction}_{primary}",
        parse=lambda text: select(parse_fio_json(text), names, "fio"),
        timeout_s=TIMEOUT_S[profile],
        scratch=scratch,
        sizes={
            "file_mib": size_mib,
            "block": block,
            "direct": direct,
            "ioengine": "psync",
            "iodepth": 1,
        },
    )
