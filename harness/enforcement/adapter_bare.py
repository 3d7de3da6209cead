"""Bare metal as an enforcement adapter: host processes in a host cgroup that isobench makes.

The bare platform provides the root (the image's files chrooted, host
namespaces); each job gets a host cgroup
`/isobench-runtime/isobench-<run id>-<instance>` (where `isobench cleanup`
sweeps), written by the runtime's cgroup driver from the Job's resources and
joined by a host /bin/sh before it execs chroot, so no instruction of the
load runs outside it. Device rules are left out: bare does not restrict
devices. Freeze, thaw and kill are the cgroup driver's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
from pathlib import Path

from harness.enforcement.adapters import IO_DEVICE, Launched, memory_high_reason
from harness.enforcement.model import Job
from harness.errors import IsobenchError, StateError
from harness.image.store import ImageStore
from harness.platforms.bare import CHROOT, HOST_SH, JOIN_CGROUP, BarePlatform
from harness.platforms.base import RunContext
from harness.runtime.cgroups import new_manager
from harness.runtime.lifecycle import CGROUP_PARENT
from harness.runtime.spec_resources import parse_resources

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BareAdapter:
    """Jobs as chrooted host processes in a host cgroup (see the module docstring)."""

    def __init__(self, store: ImageStore | None = None) -> None:
        self.name = "bare"
        self._platform = BarePlatform(store)
        self._ctx: RunContext | None = None
        self._dir: Path | None = None
        self._cgroups: list[str] = []

    def available(self) -> tuple[bool, str]:
        """The bare platform's check (root, chroot)."""
        return self._platform.available()

    def prepare(self, ctx: RunContext) -> None:
        """Mount the bare platform's root (no limits: each job has its own cgroup)."""
        self._platform.prepare(ctx)
        self._ctx = ctx
        self._dir = ctx.workdir / f"enforce-bare-{ctx.run_id}"
        self._dir.mkdir(parents=True, exist_ok=True)

    def not_applicable(self, feature: str) -> str | None:
        """Everything the cgroup driver writes; memory.high only on cgroup v2."""
        return memory_high_reason() if feature == "memory.high" else None

    def launch(self, job: Job, instance: str) -> Launched:
        """Create the cgroup, write the limits, run `sh -c join -- chroot <root> argv`."""
        if self._ctx is None or self._dir is None:
            raise StateError("bare adapter: prepare() has not run")
        root = self._platform.root
        path = f"{CGROUP_PARENT}/isobench-{self._ctx.run_id}-{instance}"
        cgroup = new_manager(path)
        cgroup.create()
        self._cgroups.append(path)
        wanted = {k: v for k, v in job.resources.items() if k != "devices"}
        resources = parse_resources(wanted, "linux.resources")
        assert resources is not None  # a dict always parses to Resources
        cgroup.set(resources)
        if job.block_device:
            node = root / IO_DEVICE.lstrip("/")
            host = os.stat(job.block_device)
            with contextlib.suppress(FileNotFoundError):
                node.unlink()
            os.mknod(node, stat.S_IFBLK | 0o660, host.st_rdev)
        dirs = list(dict.fromkeys(cgroup.paths().values()))
        argv = [HOST_SH, "-c", JOIN_CGROUP, "isobench-join", *dirs, "--", CHROOT, str(root), *job.argv]  # fmt: skip
        out, err = self._dir / f"{instance}.out", self._dir / f"{instance}.err"

        def body() -> int:
            try:
                with open(out, "wb") as o, open(err, "wb") as e:
                    proc = subprocess.Popen(
                        argv, stdin=subprocess.DEVNULL, stdout=o, stderr=e,
                        env={"PATH": PATH}, start_new_session=True,
                    )  # fmt: skip
                code = proc.wait()
                return 128 - code if code < 0 else code
            finally:
                with contextlib.suppress(IsobenchError):
                    cgroup.kill_all(signal.SIGKILL)  # what the load left in the background
                with contextlib.suppress(IsobenchError):
                    cgroup.destroy()

        controls = {
            "freeze": cgroup.freeze,
            "thaw": cgroup.thaw,
            "kill": lambda: cgroup.kill_all(signal.SIGKILL),
        }
        return Launched(cgroup, body, (out, err), controls)

    def describe(self) -> dict[str, object]:
        """How limits are applied."""
        return {
            "name": self.name,
            "limits": "a host cgroup per job, written by the runtime's cgroup driver, joined before exec",
            "cgroup": f"{CGROUP_PARENT}/isobench-<run id>-<instance>",
            "freeze/kill": "the cgroup driver's freeze / thaw / kill_all",
            "devices": "not restricted (bare has no device cgroup rules)",
        }

    def teardown(self) -> None:
        """Kill and remove any job cgroup still there, then tear the root down."""
        for path in self._cgroups:
            cgroup = new_manager(path)
            with contextlib.suppress(IsobenchError):
                cgroup.kill_all(signal.SIGKILL)
            with contextlib.suppress(IsobenchError):
                cgroup.destroy()
        self._cgroups.clear()
        self._platform.teardown()
