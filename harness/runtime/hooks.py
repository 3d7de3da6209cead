"""OCI lifecycle hooks: run each with the container's state JSON on stdin."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from harness.errors import ContainerError
from harness.runtime.spec import Hook


def run_hooks(phase: str, hooks: Iterable[Hook], state: Mapping[str, object]) -> None:
    """Run hooks in order; the first that fails (non-zero, timeout, cannot exec) raises ContainerError."""
    import subprocess  # here: most containers have no hooks, and the CLI starts faster without it

    payload = json.dumps(state).encode()
    for hook in hooks:
        argv = list(hook.args) or [hook.path]
        env = dict(item.split("=", 1) for item in hook.env)
        try:
            proc = subprocess.run(
                argv,
                executable=hook.path,
                input=payload,
                env=env,
                capture_output=True,
                timeout=hook.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ContainerError(
                f"{phase} hook {hook.path}: timed out after {hook.timeout} s"
            ) from None
        except OSError as exc:
            raise ContainerError(f"{phase} hook {hook.path}: {exc.strerror}") from None
        if proc.returncode != 0:
            detail = proc.stderr.decode(errors="replace").strip().splitlines()
            tail = f": {detail[-1]}" if detail else ""
            raise ContainerError(f"{phase} hook {hook.path} exited with {proc.returncode}{tail}")


def hook_to_dict(hook: Hook) -> dict[str, object]:
    """For state.json, so poststop hooks run at delete even if the bundle changed."""
    return {
        "path": hook.path,
        "args": list(hook.args),
        "env": list(hook.env),
        "timeout": hook.timeout,
    }


def hook_from_dict(raw: Mapping[str, object]) -> Hook:
    """Inverse of hook_to_dict."""
    timeout, args, env = raw.get("timeout"), raw.get("args"), raw.get("env")
    return Hook(
        path=str(raw["path"]),
        args=tuple(str(a) for a in args) if isinstance(args, list) else (),
        env=tuple(str(e) for e in env) if isinstance(env, list) else (),
        timeout=timeout if isinstance(timeout, int) else None,
    )
