"""What a benchmark is: a command run inside the workload image, and a parser of its output.

One `Workload` is one benchmark at one profile's sizes. Platforms run its
`argv` inside the image (the same files everywhere) and hand the captured
stdout to `parse`, which returns the metric values. Metrics are what the tool
itself measured inside the platform (sysbench's events/s, fio's IOPS), so the
launch of a container or a VM is not part of them; startup is its own category.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

PEER = "{peer}"  # in argv and peer_argv: the host-side peer's address as the platform sees it
CATEGORIES = ("cpu", "memory", "io", "startup", "ipc", "syscall", "network")
PROFILES = ("smoke", "quick", "full")


@dataclass(frozen=True)
class Metric:
    """One number a benchmark reports; units in the name's unit field (events/s, MiB/s, us ...)."""

    name: str
    unit: str
    higher_is_better: bool


@dataclass(frozen=True)
class Workload:
    """One benchmark at one profile's sizes, ready to run on any platform."""

    benchmark: str  # e.g. "cpu.sysbench.1thread"
    category: str  # one of CATEGORIES: the pytest-benchmark `group`
    argv: tuple[str, ...]  # run inside the image (paths as in the image)
    metrics: tuple[Metric, ...]
    primary: str  # the metric overhead ratios are computed on
    parse: Callable[[str], dict[str, float]]  # stdout -> {metric name: value}; raises ParseError
    timeout_s: float = 300.0
    # IO benchmarks: where their files go. "root": a directory on the platform's
    # root filesystem (the container's overlay); "volume": /scratch, a host
    # directory bind-mounted in (or the VM's scratch disk).
    scratch: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    sizes: dict[str, object] = field(default_factory=dict)  # recorded with results
    # Network benchmarks with a host side: peer_argv (a server, the image's binary)
    # runs on the host, in the run's peer network namespace (bare: the host's own),
    # listening on peer_port before argv starts, and is killed after it.
    peer_argv: tuple[str, ...] | None = None
    peer_port: int | None = None

    def metric(self, name: str) -> Metric:
        """The metric called name."""
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)

    def with_peer(self, address: str) -> Workload:
        """The workload with PEER in argv and peer_argv replaced by address."""
        argv = tuple(arg.replace(PEER, address) for arg in self.argv)
        peer = tuple(arg.replace(PEER, address) for arg in self.peer_argv or ()) or None
        return dataclasses.replace(self, argv=argv, peer_argv=peer)
