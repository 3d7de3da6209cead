"""The oci platforms: the same image through an external OCI runtime's CLI (runc, crun).

prepare() writes one bundle per run with `write_bundle`: a plain copy of the
image's files (not an overlay) and `runc spec`'s config. Each workload run
rewrites config.json with its argv, env, /scratch bind and limits, and runs
`<runtime> run` in the foreground, its stdout/stderr going to files. For
parity with the container platform the config adds the cgroup namespace (all
six namespaces) and a writable root (runc spec's root is read-only, and "root"
IO workloads write under /var/tmp). Container ids are
`isobench-<run id>-<runtime>-<n>`; their cgroups sit where the container
platform's do, `/isobench-runtime/<container id>` (runc's default would nest
them in the caller's own cgroup), and the runtime removes them on delete.

Network: as the container platform's, the platform's own named network
namespace with a veth pair to the run's peer (harness.platforms.network),
joined through config.json's linux.namespaces[].path.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from harness.errors import ContainerError, EnvironmentError_, IsobenchError, StateError
from harness.image.commands import write_bundle
from harness.image.store import ImageStore
from harness.platforms.base import Limits, Outcome, RunContext
from harness.platforms.burst import Burst
from harness.platforms.common import (
    checked_digest,
    cpuset_for,
    limits_record,
    read_text,
    reset_dir,
    timeout_note,
)
from harness.platforms.network import PlatformNetwork
from harness.platforms.oci_runtimes import ReferenceRuntime
from harness.runtime.bundle import add_cgroup_namespace, busybox_bundle
from harness.runtime.lifecycle import CGROUP_PARENT
from harness.workloads.base import Workload

SCRATCH = "/scratch"
RUNTIMES = ("runc", "crun")


class OciPlatform:
    """One external runtime (runc or crun) running the image's bundle (see the module docstring)."""

    def __init__(self, runtime_name: str, store: ImageStore | None = None) -> None:
        if runtime_name not in RUNTIMES:
            raise ValueError(f"runtime {runtime_name!r}; accepted: {', '.join(RUNTIMES)}")
        self.name = f"oci:{runtime_name}"
        self._store = store
        self._runtime = ReferenceRuntime(runtime_name, root="")
        self._available: tuple[bool, str] | None = None
        self._ctx: RunContext | None = None
        self._dir: Path | None = None
        self._base: dict[str, object] = {}  # write_bundle's config.json
        self._count = 0
        self.scratch: Path | None = None  # the host side of /scratch
        self.network = PlatformNetwork(self.name, store)
        self._netns_fd: int | None = None

    @property
    def bundle(self) -> Path:
        """The run's bundle directory (config.json + rootfs)."""
        if self._dir is None:
            raise StateError(f"{self.name}: prepare() has not run")
        return self._dir / "bundle"

    def available(self) -> tuple[bool, str]:
        """Root, the runtime installed, and a probe: it runs a busybox bundle's /bin/true here."""
        if self._available is not None:
            return self._available
        if os.geteuid() != 0:
            return False, "needs root (the runtime makes namespaces and cgroups)"
        if self._runtime.binary is None:
            return (
                False,
                f"{self._runtime.name} not installed (Debian package {self._runtime.name})",
            )
        try:
            with tempfile.TemporaryDirectory(prefix=f"isobench-probe-{os.getpid()}-") as tmp:
                bundle = busybox_bundle(Path(tmp) / "bundle", ["/bin/true"])
                self._runtime.root = os.path.join(tmp, "state")
                self._available = self._runtime.available(str(bundle))
        except (IsobenchError, OSError) as exc:
            self._available = (False, f"{self._runtime.name} probe: {exc}")
        return self._available

    def prepare(self, ctx: RunContext) -> None:
        """Write the run's bundle (a plain copy of the image) and point the runtime's state at the workdir."""
        ok, reason = self.available()
        if not ok:
            raise EnvironmentError_(f"{self.name} cannot run here: {reason}")
        store = self._store or ImageStore()
        checked_digest(store, ctx)
        self._ctx = ctx
        self._dir = ctx.workdir / f"oci-{self._runtime.name}-{ctx.run_id}"
        self.scratch = self._dir / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)
        write_bundle(store, ctx.image_ref, self.bundle)
        self._base = json.loads((self.bundle / "config.json").read_text())
        self._runtime.root = str(self._dir / "state")
        self.network.open(ctx, self._dir / "peer")
        if self.network.netns_path is not None:
            # Held open for _netns_path: see there.
            self._netns_fd = os.open(self.network.netns_path, os.O_RDONLY | os.O_CLOEXEC)

    def _netns_path(self) -> str | None:
        """The path the runtime joins the platform's netns by.

        crun on a v1-hybrid host runs from a helper in a private mount namespace
        made before the netns was: the bind mount under /run/netns never reached
        it. /proc/<pid>/fd/<fd> of this process's open handle reaches the same
        namespace from any mount namespace.
        """
        if self._netns_fd is not None and self._runtime.hides_cgroup2:
            return f"/proc/{os.getpid()}/fd/{self._netns_fd}"
        return self.network.netns_path

    def _config(
        self,
        container_id: str,
        argv: Sequence[str],
        env: Sequence[tuple[str, str]],
        volume: bool,
    ) -> str:
        """The bundle's config with this run's argv, env, mounts and limits, as JSON text."""
        assert self._ctx is not None
        config = copy.deepcopy(self._base)
        process = config["process"]
        assert isinstance(process, dict)
        process["args"] = list(argv)
        process["env"] = [*process.get("env", []), *(f"{k}={v}" for k, v in env)]
        config["root"] = {"path": "rootfs", "readonly": False}
        add_cgroup_namespace(config)
        if volume:
            mounts = config["mounts"]
            assert isinstance(mounts, list)
            mounts.append(
                {
                    "destination": SCRATCH,
                    "type": "bind",
                    "source": str(self.scratch),
                    "options": ["rbind", "rw"],
                }
            )
        linux = config["linux"]
        assert isinstance(linux, dict)
        netns = self._netns_path()
        if netns is not None:  # the platform's netns, with its veth
            for ns in linux.get("namespaces", []):
                if ns.get("type") == "network":
                    ns["path"] = netns
        # Next to the container platform's cgroups: runc's default would nest the container
        # in the caller's own cgroup (and under its limits), crun's is /<id>.
        linux["cgroupsPath"] = f"{CGROUP_PARENT}/{container_id}"
        resources = linux.setdefault("resources", {})
        limits = self._ctx.limits
        if limits.memory_bytes is not None:
            resources["memory"] = {"limit": limits.memory_bytes}
        cpus = cpuset_for(limits)
        if cpus is not None:
            resources["cpu"] = {"cpus": cpus}
        return json.dumps(config, indent=1)

    def _write_config(self, text: str) -> None:
        path = self.bundle / "config.json"
        tmp = path.with_name("config.json.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def _next_id(self) -> str:
        assert self._ctx is not None
        self._count += 1
        return f"isobench-{self._ctx.run_id}-{self._runtime.name}-{self._count}"

    def run(self, workload: Workload) -> Outcome:
        """`<runtime> run` of the workload's argv (its host-side server first, in the peer netns)."""
        if self._dir is None:
            raise StateError(f"{self.name}: prepare() has not run")
        return self.network.run(workload, self._dir, self._run_client)

    def _run_client(self, workload: Workload) -> Outcome:
        assert self._dir is not None and self.scratch is not None
        reset_dir(self.scratch)
        # The rootfs is a plain directory kept for the whole run: clear what a "root" workload wrote.
        reset_dir(self.bundle / "rootfs" / "var" / "tmp")
        container_id = self._next_id()
        volume = workload.scratch == "volume"
        self._write_config(self._config(container_id, workload.argv, workload.env, volume))
        out_path, err_path = self._dir / "stdout", self._dir / "stderr"
        result = self._runtime.execute(
            str(self.bundle),
            container_id,
            stdout=str(out_path),
            stderr=str(err_path),
            timeout_s=workload.timeout_s,
        )
        stderr = read_text(err_path)
        if result.timed_out:
            stderr += timeout_note(workload.timeout_s)
        return Outcome(
            exit_code=result.exit_code,
            stdout=read_text(out_path),
            stderr=stderr,
            wall_s=result.wall_s,
            resources={"cpu_user_s": result.cpu_user_s, "cpu_system_s": result.cpu_system_s},
        )

    def launch_latency(self) -> float:
        """`<runtime> run` of /bin/true in the bundle: launch to exit, the CLI's own start included."""
        container_id = self._next_id()
        self._write_config(self._config(container_id, ["/bin/true"], (), False))
        result = self._runtime.execute(str(self.bundle), container_id)
        if result.exit_code != 0:
            raise ContainerError(
                f"{self.name}: /bin/true exited with status {result.exit_code}: {result.stderr.strip()}"
            )
        return result.wall_s

    def launch_burst(self, count: int) -> Burst:
        """count `<runtime> run`s of /bin/true started at once, one small bundle each, timed to exit.

        Every bundle's config points at the run's one rootfs, read-only: /bin/true writes
        nothing, and concurrent containers must not share a writable root.
        """
        assert self._dir is not None
        ids = [self._next_id() for _ in range(count)]
        runs = [(str(self._dir / f"burst-{container_id}"), container_id) for container_id in ids]
        try:
            for bundle, container_id in runs:
                os.mkdir(bundle)
                config = json.loads(self._config(container_id, ["/bin/true"], (), False))
                config["root"] = {"path": str(self.bundle / "rootfs"), "readonly": True}
                Path(bundle, "config.json").write_text(json.dumps(config))
            try:
                return self._runtime.burst(runs)
            except RuntimeError as exc:
                raise ContainerError(f"{self.name}: burst: {exc}") from None
        finally:
            for bundle, container_id in runs:
                if (self._dir / "state" / container_id).exists():
                    with contextlib.suppress(OSError, RuntimeError):
                        self._runtime.force_delete(container_id)
                shutil.rmtree(bundle, ignore_errors=True)

    def teardown(self) -> None:
        """Force-delete what a crash left in the state root, stop crun's helper, the network, the bundle."""
        if self._netns_fd is not None:
            os.close(self._netns_fd)
            self._netns_fd = None
        if self._dir is not None:
            state = self._dir / "state"
            if state.is_dir() and self._runtime.binary is not None:
                for entry in state.iterdir():
                    with contextlib.suppress(OSError, RuntimeError):
                        self._runtime.force_delete(entry.name)
            self.network.close()  # before the rmtree: the servers' chroot is mounted below the dir
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._runtime.close()
        self._available = None  # the helper is gone: a new prepare() probes again
        self.scratch = None

    def describe(self) -> dict[str, object]:
        """The runtime and its version, how it was run, the bundle, namespaces, limits and network."""
        ctx = self._ctx
        linux = self._base.get("linux", {})
        namespaces = linux.get("namespaces", []) if isinstance(linux, dict) else []
        names = sorted({str(ns["type"]) for ns in namespaces} | {"cgroup"}) if namespaces else None
        hidden = self._runtime.hides_cgroup2
        return {
            "name": self.name,
            "runtime": self._runtime.describe(),
            "how": (
                f"{self._runtime.name} run --bundle <bundle> <id> (the CLI, foreground)"
                + (
                    ", from a helper process in a private mount namespace without the cgroup2 "
                    "mount at /sys/fs/cgroup/unified (crun refuses v1-hybrid hosts)"
                    if hidden
                    else ""
                )
            ),
            "bundle": str(self.bundle) if self._dir else None,
            "root_filesystem": (
                "a plain copy of the image's files (write_bundle) on the host filesystem, "
                "writable, kept for the whole run: not overlayfs"
            ),
            "namespaces": names,
            "mounts": {
                SCRATCH: "rbind rw of a host dir under the workdir, emptied before each run"
            },
            "network": {
                **self.network.describe(),
                **(
                    {
                        "joined_by": "/proc/<isobench pid>/fd/<fd>: the helper's mount namespace "
                        "predates the /run/netns bind mount"
                    }
                    if self._netns_fd is not None and hidden
                    else {}
                ),
            },
            "cgroup": f"{CGROUP_PARENT}/<container id>, like the container platform's",
            "limits": limits_record(
                ctx.limits if ctx else Limits(), "config.json linux.resources (cpu.cpus, memory)"
            ),
            "container_ids": f"isobench-{ctx.run_id}-{self._runtime.name}-<n>" if ctx else None,
            "launch_latency": f"{self._runtime.name} run of /bin/true, launch to exit",
            "image_digest": ctx.image_digest if ctx else None,
        }
