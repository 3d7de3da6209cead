"""The platforms: one protocol (base.py), one module per platform, and this literal registry.

Nothing registers itself: the platforms that exist are the keys below. Order
is the default order of a run's columns (bare first: every ratio is to bare).
vm comes last: its guest boots slowest, and under TCG its figures are labelled apart.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.errors import UserError
from harness.platforms.bare import BarePlatform
from harness.platforms.base import Platform
from harness.platforms.container import ContainerPlatform
from harness.platforms.oci import OciPlatform
from harness.platforms.vm import VmOptions, VmPlatform

PLATFORMS: dict[str, Callable[[], Platform]] = {
    "bare": BarePlatform,
    "container": ContainerPlatform,
    "oci:runc": lambda: OciPlatform("runc"),
    "oci:crun": lambda: OciPlatform("crun"),
    "vm": VmPlatform,
}


def select(names: list[str] | None, vm_options: VmOptions | None = None) -> list[Platform]:
    """New platform objects for names (every registered one for None), in the order given.

    vm_options: the vm platform's command-line choices (URI, accelerator, kernel).
    """
    if names is None:
        names = list(PLATFORMS)
    unknown = [name for name in names if name not in PLATFORMS]
    if unknown:
        raise UserError(
            f"unknown platform {', '.join(repr(n) for n in unknown)}; "
            f"accepted: {', '.join(PLATFORMS)}"
        )
    return [
        VmPlatform(vm_options) if name == "vm" and vm_options else PLATFORMS[name]()
        for name in dict.fromkeys(names)
    ]
