"""The container platform: isobench's own runtime, in-process, one fresh container per workload run.

Each run is a new container from the image (harness.image.containers): an
overlay root over the image's layers with its own empty upper dir, mounted
inside the container's mount namespace; all six namespaces (pid, network, ipc,
uts, mount, cgroup); a cgroup `/isobench-runtime/<container id>` carrying the
limits. Ids are `isobench-<run id>-<n>`. The container's startup is not in the
workload's metrics (the tool measures itself); `launch_latency` times it.

Network: the platform's own named network namespace, made once per run and
joined by every container through the spec's namespace path, with a veth pair
to the run's peer namespace on the host (harness.platforms.network); a
benchmark's host-side server runs there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from harness.errors import ContainerError, IsobenchError, StateError
from harness.image.containers import ImageContainers
from harness.image.store import ImageStore
from harness.platforms.base import Limits, Outcome, RunContext
from harness.platforms.burst import Burst, check_codes, exit_times, summarize
from harness.platforms.common import (
    TIMED_OUT,
    checked_digest,
    cpuset_for,
    limits_record,
    read_text,
    reset_dir,
    timeout_note,
)
from harness.platforms.network import PlatformNetwork
from harness.runtime.bundle import busybox_bundle
from harness.runtime.lifecycle import CGROUP_PARENT, Runtime
from harness.runtime.spec import CpuResources, Namespace, Resources, Spec
from harness.workloads.base import Workload

SCRATCH = "/scratch"


@dataclasses.dataclass(frozen=True)
class _Launch:
    exit_code: int
    wall_s: float
    timed_out: bool


class ContainerPlatform:
    """The in-house runtime through harness.image.containers (see the module docstring)."""

    def __init__(self, store: ImageStore | None = None, runtime: Runtime | None = None) -> None:
        self.name = "container"
        self._store = store
        self._runtime = runtime or Runtime()
        self._containers: ImageContainers | None = None
        self._ctx: RunContext | None = None
        self._dir: Path | None = None
        self._spec: Spec | None = None  # a /bin/true spec, for describe()
        self._count = 0
        self.scratch: Path | None = None  # the host side of /scratch
        self.network = PlatformNetwork("container", store)

    def available(self) -> tuple[bool, str]:
        """Root, and a probe: one busybox container run by the runtime in a throwaway state root."""
        if os.geteuid() != 0:
            return False, "needs root (namespaces, cgroups and overlay mounts)"
        try:
            with tempfile.TemporaryDirectory(prefix=f"isobench-probe-{os.getpid()}-") as tmp:
                bundle = busybox_bundle(Path(tmp) / "bundle", ["/bin/true"])
                probe = Runtime(root=os.path.join(tmp, "state"))
                code = probe.run(str(bundle), f"isobench-probe-{os.getpid()}-container")
        except (IsobenchError, OSError) as exc:
            return False, f"the in-house runtime cannot run a container here: {exc}"
        if code != 0:
            return False, f"a probe container running /bin/true exited with status {code}"
        return True, ""

    def prepare(self, ctx: RunContext) -> None:
        """Resolve the image (unpacking its layers once) and make the run's directory."""
        store = self._store or ImageStore()
        checked_digest(store, ctx)
        self._ctx = ctx
        self._containers = ImageContainers(store, self._runtime)
        self._dir = ctx.workdir / f"container-{ctx.run_id}"
        self.scratch = self._dir / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.network.open(ctx, self._dir / "peer")
        # The spec the runs get, made once here: describe() reports it, and the
        # layers are unpacked before anything is timed.
        probe = f"isobench-{ctx.run_id}-0"
        self._spec = self._container_spec(probe, ["/bin/true"], (), volume=False)[0]
        self._containers.remove(probe)

    def _container_spec(
        self,
        container_id: str,
        argv: Sequence[str],
        env: Sequence[tuple[str, str]],
        volume: bool,
    ) -> tuple[Spec, str]:
        """The container's dirs and its spec: the image's, with this run's env, mounts and limits."""
        assert self._containers is not None and self._ctx is not None
        mounts: list[dict[str, object]] = []
        if volume:
            source = str(self.scratch)
            mounts.append(
                {
                    "destination": SCRATCH,
                    "type": "bind",
                    "source": source,
                    "options": ["rbind", "rw"],
                }
            )
        spec, rootfs = self._containers.prepare(
            self._ctx.image_ref,
            container_id,
            argv,
            memory_limit=self._ctx.limits.memory_bytes,
            extra_mounts=mounts,
        )
        # ImageContainers knows memory limits only: env and cpuset go onto its spec here.
        process = dataclasses.replace(
            spec.process, env=spec.process.env + tuple(f"{k}={v}" for k, v in env)
        )
        cpus = cpuset_for(self._ctx.limits)
        linux = spec.linux
        if self.network.netns_path is not None:  # the platform's netns, with its veth
            namespaces = tuple(
                Namespace("network", self.network.netns_path) if ns.type == "network" else ns
                for ns in linux.namespaces
            )
            linux = dataclasses.replace(linux, namespaces=namespaces)
        if cpus is not None:
            resources = spec.linux.resources or Resources()
            resources = dataclasses.replace(resources, cpu=CpuResources(cpus=cpus))
            linux = dataclasses.replace(linux, resources=resources)
        return dataclasses.replace(spec, process=process, linux=linux), rootfs

    def _launch(
        self,
        argv: Sequence[str],
        env: Sequence[tuple[str, str]],
        volume: bool,
        stdio: tuple[int, int, int],
        timeout_s: float | None,
    ) -> _Launch:
        """One new container from its dirs to their removal; killed at the timeout."""
        assert self._containers is not None and self._ctx is not None
        self._count += 1
        container_id = f"isobench-{self._ctx.run_id}-{self._count}"
        killed = threading.Event()

        def kill() -> None:
            with contextlib.suppress(IsobenchError, OSError):
                self._runtime.kill(container_id, signal.SIGKILL, all_processes=True)
                killed.set()

        timer = threading.Timer(timeout_s, kill) if timeout_s else None
        start = time.perf_counter()
        try:
            spec, rootfs = self._container_spec(container_id, argv, env, volume)
            if timer is not None:
                timer.start()
            code = self._runtime.run(spec, container_id, rootfs_overlay=rootfs, stdio=stdio)
        finally:
            if timer is not None:
                timer.cancel()
            with contextlib.suppress(IsobenchError):
                self._containers.remove(container_id)
        return _Launch(code, time.perf_counter() - start, killed.is_set())

    def run(self, workload: Workload) -> Outcome:
        """A new container running the workload's argv (its host-side server first, in the peer netns)."""
        if self._dir is None or self.scratch is None:
            raise StateError("container platform: prepare() has not run")
        return self.network.run(workload, self._dir, self._run_client)

    def _run_client(self, workload: Workload) -> Outcome:
        assert self._dir is not None and self.scratch is not None
        reset_dir(self.scratch)
        out_path, err_path = self._dir / "stdout", self._dir / "stderr"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with (
            open(os.devnull, "rb") as stdin,
            open(out_path, "wb") as out,
            open(err_path, "wb") as err,
        ):
            launch = self._launch(
                workload.argv,
                workload.env,
                workload.scratch == "volume",
                (stdin.fileno(), out.fileno(), err.fileno()),
                workload.timeout_s,
            )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        stderr = read_text(err_path)
        if launch.timed_out:
            stderr += timeout_note(workload.timeout_s)
        return Outcome(
            exit_code=TIMED_OUT if launch.timed_out else launch.exit_code,
            stdout=read_text(out_path),
            stderr=stderr,
            wall_s=launch.wall_s,
            resources={
                "cpu_user_s": after.ru_utime - before.ru_utime,
                "cpu_system_s": after.ru_stime - before.ru_stime,
            },
        )

    def launch_latency(self) -> float:
        """A new container running /bin/true: upper dir, namespaces, cgroup, run, delete, remove."""
        with open(os.devnull, "r+b") as null:
            fd = null.fileno()
            launch = self._launch(["/bin/true"], (), False, (fd, fd, fd), None)
        if launch.exit_code != 0:
            raise ContainerError(f"container: /bin/true exited with status {launch.exit_code}")
        return launch.wall_s

    def launch_burst(self, count: int) -> Burst:
        """count containers of /bin/true created and started back to back, each timed to its exit.

        The runtime is in-process, so launches are issued one after another from this
        process (as a shell loop of `runc run &` would); they run concurrently.
        """
        assert self._containers is not None and self._ctx is not None
        started: dict[int, float] = {}
        ids: dict[int, str] = {}
        try:
            with open(os.devnull, "r+b") as null:
                fd = null.fileno()
                for _ in range(count):
                    self._count += 1
                    container_id = f"isobench-{self._ctx.run_id}-{self._count}"
                    launched = time.perf_counter()
                    spec, rootfs = self._container_spec(container_id, ["/bin/true"], (), False)
                    record = self._runtime.create(
                        spec,
                        container_id,
                        start_now=True,
                        rootfs_overlay=rootfs,
                        stdio=(fd, fd, fd),
                    )
                    started[record.pid] = launched
                    ids[record.pid] = container_id
            ended = exit_times(started)
            codes = {pid: self._runtime.wait(container_id) for pid, container_id in ids.items()}
        finally:
            for container_id in ids.values():
                with contextlib.suppress(IsobenchError):
                    self._runtime.delete(container_id, force=True)
                with contextlib.suppress(IsobenchError):
                    self._containers.remove(container_id)
        check_codes(codes, self.name)
        return summarize(started, ended)

    def teardown(self) -> None:
        """Remove the run's containers (a crash can leave one), the network, the run's directory."""
        if self._containers is not None and self._ctx is not None:
            prefix = f"isobench-{self._ctx.run_id}-"
            records: list[dict[str, object]] = []
            with contextlib.suppress(IsobenchError, OSError):
                records = self._runtime.list()
            for record in records:
                if str(record["id"]).startswith(prefix):
                    with contextlib.suppress(IsobenchError):
                        self._runtime.delete(str(record["id"]), force=True)
            root = self._containers.root
            if root.is_dir():
                for entry in root.iterdir():
                    if entry.name.startswith(prefix):
                        with contextlib.suppress(IsobenchError):
                            self._containers.remove(entry.name)
        self.network.close()  # before the rmtree: the servers' chroot is mounted below the dir
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.scratch = None

    def describe(self) -> dict[str, object]:
        """The runtime, namespaces, capabilities, root filesystem, cgroup, limits and network."""
        ctx, spec = self._ctx, self._spec
        caps = spec.process.capabilities if spec else None
        return {
            "name": self.name,
            "runtime": "isobench in-process (harness.runtime.lifecycle.Runtime)",
            "state_root": self._runtime.root,
            "namespaces": sorted(ns.type for ns in spec.linux.namespaces) if spec else None,
            "capabilities": list(caps.bounding or ()) if caps else None,
            "no_new_privileges": spec.process.no_new_privileges if spec else None,
            "masked_paths": len(spec.linux.masked_paths) if spec else None,
            "readonly_paths": len(spec.linux.readonly_paths) if spec else None,
            "root_filesystem": (
                "overlayfs over the image's layers, a fresh upper dir per container, "
                "mounted inside the container's mount namespace"
            ),
            "mounts": {
                SCRATCH: "rbind rw of a host dir under the workdir, emptied before each run"
            },
            "network": self.network.describe(),
            "cgroup": f"{CGROUP_PARENT}/isobench-<run id>-<n>, one per container",
            "limits": limits_record(
                ctx.limits if ctx else Limits(),
                "the container's cgroup (cpuset.cpus, memory limit)",
            ),
            "container_ids": f"isobench-{ctx.run_id}-<n>" if ctx else None,
            "launch_latency": "new container running /bin/true: dirs, create, start, wait, delete",
            "image_digest": ctx.image_digest if ctx else None,
        }
