"""A minimal OCI bundle from the host's busybox-static, for tests and the startup benchmark.

The workload image (harness/image) supersedes this for benchmarks; this one
exists so that the runtime can be exercised and compared with runc before any
image is built, with exactly the config `runc spec` writes plus the changes named.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from harness.errors import EnvironmentError_
from harness.runtime.spec_default import default_spec

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


def find_busybox() -> str:
    """The host's busybox binary; it must be the static build so it runs in an empty rootfs."""
    for path in BUSYBOX_CANDIDATES:
        if os.path.exists(path):
            return path
    raise EnvironmentError_(
        "busybox not found; install the Debian package busybox-static (make setup does)"
    )


def busybox_rootfs(rootfs: Path) -> Path:
    """rootfs/bin/busybox plus one symlink per applet, and the usual empty directories."""
    busybox = find_busybox()
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    target = rootfs / "bin" / "busybox"
    shutil.copy2(busybox, target)
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        link = rootfs / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    for name in ("proc", "sys", "dev", "etc", "tmp", "root"):
        (rootfs / name).mkdir(exist_ok=True)
    (rootfs / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
    )
    (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    return rootfs


def busybox_bundle(
    bundle: Path,
    args: list[str],
    *,
    memory_limit: int | None = None,
    hostname: str | None = None,
    rootfs: Path | None = None,
) -> Path:
    """A bundle whose config.json is `runc spec`'s default with terminal off and these args.

    `rootfs`, when given, is shared (symlinked) instead of copied, so many
    bundles can use one tree.
    """
    bundle.mkdir(parents=True, exist_ok=True)
    if rootfs is None:
        busybox_rootfs(bundle / "rootfs")
    elif not (bundle / "rootfs").exists():
        (bundle / "rootfs").symlink_to(rootfs)
    config = default_spec(args=args)
    add_cgroup_namespace(config)
    process = config["process"]
    assert isinstance(process, dict)
    process["terminal"] = False
    if hostname is not None:
        config["hostname"] = hostname
    if memory_limit is not None:
        linux = config["linux"]
        assert isinstance(linux, dict)
        resources = linux.setdefault("resources", {})
        resources["memory"] = {"limit": memory_limit}
    (bundle / "config.json").write_text(json.dumps(config, indent=2))
    return bundle


def add_cgroup_namespace(config: dict[str, object]) -> None:
    """All six namespaces: `runc spec` leaves out the cgroup one, isobench's containers have it."""
    linux = config["linux"]
    assert isinstance(linux, dict)
    namespaces = linux["namespaces"]
    assert isinstance(namespaces, list)
    if {"type": "cgroup"} not in namespaces:
        namespaces.append({"type": "cgroup"})
