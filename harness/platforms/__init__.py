"""The platforms: one protocol (base.py), one module per platform, and this literal registry.

Nothing registers itself: the platforms that exist are the keys below. Order
is the default order of a run's columns (bare first: every ratio is to bare).
The vm issue adds "vm".
"""

from __future__ import annotations

from collections.abc import Callable

from harness.errors import UserError
from harness.platforms.bare import BarePlatform
from harness.platforms.base import Platform
from harness.platforms.container import ContainerPlatform
from harness.platforms.oci import OciPlatform

PLATFORMS: dict[str, Callable[[], Platform]] = {
    "bare": BarePlatform,
    "container": ContainerPlatform,
    "oci:runc": lambda: OciPlatform("runc"),
    "oci:crun": lambda: OciPlatform("crun"),
}


def select(names: list[str] | None) -> list[Platform]:
    """New platform objects for names (every registered one for None), in the order given."""
    if names is None:
        names = list(PLATFORMS)
    unknown = [name for name in names if name not in PLATFORMS]
    if unknown:
        raise UserError(
            f"unknown platform {', '.join(repr(n) for n in unknown)}; "
            f"accepted: {', '.join(PLATFORMS)}"
        )
    return [PLATFORMS[name]() for name in dict.fromkeys(names)]
