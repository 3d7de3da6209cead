"""An external OCI runtime (runc, the reference; crun) as an enforcement adapter.

The Job's resources go verbatim into config.json's linux.resources: the same
request the in-house runtime gets, applied by runc's own cgroup code. One
bundle rootfs (a plain copy of the image) is shared; each job gets its own
bundle directory with a config.json pointing at it, so several jobs can run at
once (the CPU weight test). Freeze, thaw and kill are `runc pause`, `resume`
and `kill --all`; crun on a v1-hybrid host runs in a private mount namespace
(one helper process per job), so for crun they go through the cgroup driver
(the same freezer files).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from harness.enforcement.adapters import IO_DEVICE, Launched, memory_high_reason
from harness.enforcement.model import Job
from harness.errors import ContainerError, EnvironmentError_, StateError
from harness.image.commands import write_bundle
from harness.image.store import ImageStore
from harness.platforms.base import RunContext
from harness.platforms.common import checked_digest
from harness.platforms.oci import OciPlatform
from harness.platforms.oci_runtimes import ReferenceRuntime
from harness.runtime.bundle import add_cgroup_namespace
from harness.runtime.cgroups import CgroupManager, new_manager
from harness.runtime.lifecycle import CGROUP_PARENT

CLI_TIMEOUT_S = 30.0


class OciAdapter:
    """Jobs as containers of runc or crun (see the module docstring)."""

    def __init__(self, runtime_name: str, store: ImageStore | None = None) -> None:
        self.name = f"oci:{runtime_name}"
        self._store = store
        self._platform = OciPlatform(runtime_name, store)
        self._runtime = ReferenceRuntime(runtime_name, root="")
        self._ctx: RunContext | None = None
        self._dir: Path | None = None
        self._base: dict[str, Any] = {}
        self._ids: list[str] = []

    def available(self) -> tuple[bool, str]:
        """The oci platform's own probe (the runtime installed and running a busybox bundle)."""
        ok, reason = self._platform.available()
        self._platform.teardown()  # stops crun's helper; this adapter starts its own
        return ok, reason

    def prepare(self, ctx: RunContext) -> None:
        """Write the shared bundle rootfs and point the runtime's state at the workdir."""
        store = self._store or ImageStore()
        checked_digest(store, ctx)
        self._ctx = ctx
        self._dir = ctx.workdir / f"enforce-{self._runtime.name}-{ctx.run_id}"
        self._dir.mkdir(parents=True, exist_ok=True)
        write_bundle(store, ctx.image_ref, self._dir / "bundle")
        self._base = json.loads((self._dir / "bundle" / "config.json").read_text())
        self._runtime.root = str(self._dir / "state")
        ok, reason = self._runtime.available(str(self._dir / "bundle"))  # starts crun's helper
        if not ok:
            raise EnvironmentError_(f"{self.name} cannot run here: {reason}")

    def not_applicable(self, feature: str) -> str | None:
        """Everything runc writes; memory.high only on cgroup v2."""
        return memory_high_reason() if feature == "memory.high" else None

    def _config(self, job: Job, container_id: str) -> dict[str, Any]:
        assert self._dir is not None
        config = copy.deepcopy(self._base)
        config["process"]["args"] = list(job.argv)
        config["process"]["terminal"] = False
        config["root"] = {"path": str(self._dir / "bundle" / "rootfs"), "readonly": False}
        add_cgroup_namespace(config)
        linux = config["linux"]
        linux["cgroupsPath"] = f"{CGROUP_PARENT}/{container_id}"
        linux["resources"] = copy.deepcopy(job.resources)
        if job.block_device:
            rdev = os.stat(job.block_device).st_rdev
            node = {"path": IO_DEVICE, "type": "b", "major": os.major(rdev),
                    "minor": os.minor(rdev), "fileMode": 0o660, "uid": 0, "gid": 0}  # fmt: skip
            linux["devices"] = [*linux.get("devices", []), node]
        return config

    def launch(self, job: Job, instance: str) -> Launched:
        """`<runtime> run` of a bundle whose config.json carries job.resources."""
        if self._ctx is None or self._dir is None:
            raise StateError(f"{self.name} adapter: prepare() has not run")
        container_id = f"isobench-{self._ctx.run_id}-{instance}"
        bundle = self._dir / instance
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(self._config(job, container_id), indent=1))
        self._ids.append(container_id)
        out, err = self._dir / f"{instance}.out", self._dir / f"{instance}.err"
        runtime = self._runtime
        if runtime.hides_cgroup2:
            # crun's helper serves one request at a time, from one caller: a job of its own
            # per launch, so that jobs can run at once (the CPU weight test runs three).
            runtime = ReferenceRuntime(self._runtime.name, root=self._runtime.root)
            ok, why = runtime.available(str(self._dir / "bundle"))
            if not ok:
                raise EnvironmentError_(f"{self.name} cannot run here: {why}")
        cgroup = new_manager(f"{CGROUP_PARENT}/{container_id}")

        def body() -> int:
            try:
                result = runtime.execute(
                    str(bundle),
                    container_id,
                    stdout=str(out),
                    stderr=str(err),
                    timeout_s=job.timeout_s,
                )
                return result.exit_code
            finally:
                if runtime is not self._runtime:
                    runtime.close()

        controls = self._controls(container_id, cgroup)
        return Launched(cgroup, body, (out, err), controls)

    def _controls(self, container_id: str, cgroup: CgroupManager) -> dict[str, Any]:
        if (
            self._runtime.hides_cgroup2
        ):  # crun behind its helper: the CLI is not reachable from here
            return {
                "freeze": cgroup.freeze,
                "thaw": cgroup.thaw,
                "kill": lambda: cgroup.kill_all(signal.SIGKILL),
            }
        return {
            "freeze": lambda: self._cli("pause", container_id),
            "thaw": lambda: self._cli("resume", container_id),
            "kill": lambda: self._cli("kill", "--all", container_id, "KILL"),
        }

    def _cli(self, *args: str) -> None:
        assert self._runtime.binary is not None
        argv = [self._runtime.binary, "--root", self._runtime.root, *args]
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
        )
        if proc.returncode != 0:
            raise ContainerError(f"{' '.join(argv)}: {proc.stderr.strip()}")

    def describe(self) -> dict[str, object]:
        """How limits are applied."""
        return {
            "name": self.name,
            "runtime": self._runtime.describe(),
            "limits": "config.json linux.resources, applied by the runtime itself",
            "cgroup": f"{CGROUP_PARENT}/isobench-<run id>-<instance> (linux.cgroupsPath)",
            "freeze/kill": (
                "cgroup freezer / kill through the cgroup driver (crun runs behind a helper)"
                if self._runtime.hides_cgroup2
                else f"{self._runtime.name} pause / resume / kill --all"
            ),
        }

    def teardown(self) -> None:
        """Force-delete what a failed job left, stop crun's helper, remove the bundle."""
        if self._runtime.binary is not None and self._runtime.root:
            for container_id in self._ids:
                if (Path(self._runtime.root) / container_id).exists():
                    self._runtime.force_delete(container_id)
        self._ids.clear()
        self._runtime.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
