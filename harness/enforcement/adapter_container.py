"""The in-house runtime as an enforcement adapter: the Job's resources go into the container's spec.

Each job is a new container from the image (overlay root, all six
namespaces; state root under the run's workdir), its cgroup `/isobench-runtime/isobench-<run id>-<instance>`
written by the runtime's own cgroup driver from the spec, exactly as for any
container; freeze, thaw and kill are the runtime's pause, resume and kill.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import stat
from pathlib import Path

from harness.enforcement.adapters import IO_DEVICE, Launched, memory_high_reason
from harness.enforcement.model import Job
from harness.errors import IsobenchError, StateError
from harness.image.containers import ImageContainers
from harness.image.store import ImageStore
from harness.platforms.base import RunContext
from harness.platforms.common import checked_digest
from harness.platforms.container import ContainerPlatform
from harness.runtime.cgroups import new_manager
from harness.runtime.lifecycle import CGROUP_PARENT, Runtime
from harness.runtime.spec import Device
from harness.runtime.spec_resources import parse_resources


class ContainerAdapter:
    """Jobs as containers of the in-house runtime (see the module docstring)."""

    def __init__(self, store: ImageStore | None = None) -> None:
        self.name = "container"
        self._store = store
        self._runtime = Runtime()
        self._containers: ImageContainers | None = None
        self._ctx: RunContext | None = None
        self._dir: Path | None = None
        self._ids: list[str] = []

    def available(self) -> tuple[bool, str]:
        """The container platform's own probe (root, one busybox container)."""
        return ContainerPlatform(self._store, self._runtime).available()

    def prepare(self, ctx: RunContext) -> None:
        """Resolve the image and make the adapter's output directory."""
        store = self._store or ImageStore()
        checked_digest(store, ctx)
        self._ctx = ctx
        self._dir = ctx.workdir / f"enforce-container-{ctx.run_id}"
        self._dir.mkdir(parents=True, exist_ok=True)
        # A state root of the run's own: `isobench cleanup` of any other session kills live
        # isobench-* containers of the default root (a freeze test's container vanished so).
        self._runtime = Runtime(root=str(self._dir / "state"))
        self._containers = ImageContainers(store, self._runtime)

    def not_applicable(self, feature: str) -> str | None:
        """Everything the cgroup drivers write; memory.high only on cgroup v2."""
        return memory_high_reason() if feature == "memory.high" else None

    def launch(self, job: Job, instance: str) -> Launched:
        """A new container running job.argv under job.resources."""
        if self._containers is None or self._ctx is None or self._dir is None:
            raise StateError("container adapter: prepare() has not run")
        container_id = f"isobench-{self._ctx.run_id}-{instance}"
        spec, rootfs = self._containers.prepare(self._ctx.image_ref, container_id, job.argv)
        self._ids.append(container_id)
        cgroups_path = f"{CGROUP_PARENT}/{container_id}"
        devices = spec.linux.devices
        if job.block_device:
            host = os.stat(job.block_device)
            node = Device(
                IO_DEVICE, "b", os.major(host.st_rdev), os.minor(host.st_rdev), 0o660, 0, 0
            )
            devices = (*devices, node)
            assert stat.S_ISBLK(host.st_mode), job.block_device
        linux = dataclasses.replace(
            spec.linux,
            resources=parse_resources(job.resources, "linux.resources"),
            cgroups_path=cgroups_path,
            devices=devices,
        )
        spec = dataclasses.replace(spec, linux=linux)
        out, err = self._dir / f"{instance}.out", self._dir / f"{instance}.err"
        containers, runtime = self._containers, self._runtime

        def body() -> int:
            try:
                with open(os.devnull, "rb") as i, open(out, "wb") as o, open(err, "wb") as e:
                    fds = (i.fileno(), o.fileno(), e.fileno())
                    return runtime.run(spec, container_id, rootfs_overlay=rootfs, stdio=fds)
            finally:
                with contextlib.suppress(IsobenchError):
                    containers.remove(container_id)

        controls = {
            "freeze": lambda: runtime.pause(container_id),
            "thaw": lambda: runtime.resume(container_id),
            "kill": lambda: runtime.kill(container_id, signal.SIGKILL, all_processes=True),
        }
        return Launched(new_manager(cgroups_path), body, (out, err), controls)

    def describe(self) -> dict[str, object]:
        """How limits are applied."""
        return {
            "name": self.name,
            "limits": "linux.resources of the container's spec, written by the runtime's cgroup driver",
            "cgroup": f"{CGROUP_PARENT}/isobench-<run id>-<instance>",
            "freeze/kill": "Runtime.pause / resume / kill --all",
            "state_root": self._runtime.root,
        }

    def teardown(self) -> None:
        """Delete what a failed job left (its container and cgroup)."""
        if self._containers is not None:
            for container_id in self._ids:
                with contextlib.suppress(IsobenchError, OSError):
                    self._runtime.delete(container_id, force=True)
                with contextlib.suppress(IsobenchError, OSError):
                    self._containers.remove(container_id)
        self._ids.clear()
