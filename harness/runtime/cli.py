"""`isobench-runtime`: runc-compatible command line over harness.runtime.lifecycle.

Verbs, flags and output follow runc 1.1 so that a tool driving runc can drive
this binary by changing only its name. Imports are kept lean: this process's
start-up time is part of every launch it measures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time

from harness.errors import IsobenchError, UserError


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="isobench-runtime",
        description="OCI container runtime of isobench (runc-compatible verbs).",
    )
    p.add_argument(
        "--root", default=None, help="state directory (default /run/isobench-runtime as root)"
    )
    p.add_argument("--log", default=None, help="append errors to this file")
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="format of --log")
    p.add_argument("--debug", action="store_true", help="accepted for runc compatibility")
    p.add_argument(
        "--systemd-cgroup", action="store_true", help="not supported (no systemd driver)"
    )
    p.add_argument("--rootless", default="auto", help="accepted for runc compatibility")
    p.add_argument("--criu", default=None, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    spec = sub.add_parser("spec", help="write a default config.json (like `runc spec`)")
    spec.add_argument("--bundle", "-b", default=".", help="bundle directory")
    spec.add_argument("--rootless", action="store_true", help="a spec for unprivileged use")

    for name, text in (
        ("create", "create a container; its process waits for `start`"),
        ("run", "create and start a container; wait for it"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("--bundle", "-b", default=".", help="bundle directory (default: current)")
        c.add_argument("--pid-file", default=None, help="write the init's host pid here")
        c.add_argument(
            "--console-socket",
            default=None,
            help="unix socket that receives the pty master (terminal: true)",
        )
        c.add_argument(
            "--no-pivot", action="store_true", help="accepted; pivot_root is always used"
        )
        c.add_argument(
            "--no-new-keyring", action="store_true", help="accepted for runc compatibility"
        )
        c.add_argument("--preserve-fds", type=int, default=0, help="not supported (must be 0)")
        if name == "run":
            c.add_argument("--detach", "-d", action="store_true", help="return once started")
            c.add_argument(
                "--no-subreaper", action="store_true", help="accepted for runc compatibility"
            )
            c.add_argument(
                "--keep", action="store_true", help="do not delete the container on exit"
            )
        c.add_argument("id")

    sub.add_parser("start", help="start a created container").add_argument("id")
    sub.add_parser("state", help="print the OCI state of a container").add_argument("id")
    kill = sub.add_parser("kill", help="send a signal to a container's init (default SIGTERM)")
    kill.add_argument(
        "--all", "-a", action="store_true", help="signal every process in the container"
    )
    kill.add_argument("id")
    kill.add_argument("signal", nargs="?", default="SIGTERM")
    delete = sub.add_parser("delete", help="delete a stopped container (--force: any)")
    delete.add_argument(
        "--force", "-f", action="store_true", help="kill it first if it is not stopped"
    )
    delete.add_argument("id")
    lst = sub.add_parser("list", help="list containers")
    lst.add_argument("--format", "-f", choices=("table", "json"), default="table")
    lst.add_argument("--quiet", "-q", action="store_true", help="ids only")
    sub.add_parser("pause", help="freeze every process of a container").add_argument("id")
    sub.add_parser("resume", help="thaw a paused container").add_argument("id")
    return p


def _log_error(args: argparse.Namespace, message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.log:
        try:
            with open(args.log, "a") as f:
                if args.log_format == "json":
                    f.write(json.dumps({"level": "error", "msg": message, "time": stamp}) + "\n")
                else:
                    f.write(f'time="{stamp}" level=error msg="{message}"\n')
        except OSError:
            pass
    print(f"isobench-runtime: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `isobench-runtime` console script."""
    args = _build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except IsobenchError as exc:
        _log_error(args, str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _unsupported(args: argparse.Namespace) -> None:
    if args.systemd_cgroup:
        raise UserError(
            "--systemd-cgroup: no systemd cgroup driver; accepted: cgroupfs (omit the flag)"
        )
    if getattr(args, "preserve_fds", 0):
        raise UserError("--preserve-fds: not supported; accepted: 0")


def _dispatch(args: argparse.Namespace) -> int:
    _unsupported(args)
    if args.verb == "spec":
        return _spec(args.bundle, args.rootless)

    from harness.runtime.lifecycle import Runtime
    from harness.runtime.spec_load import parse_signal

    rt = Runtime(root=args.root) if args.root else Runtime()
    verb = args.verb
    if verb == "create":
        rt.create(
            _bundle(args.bundle),
            args.id,
            pid_file=args.pid_file,
            console_socket=args.console_socket,
        )
        return 0
    if verb == "run":
        return _run(rt, args)
    if verb == "start":
        rt.start(args.id)
    elif verb == "state":
        print(json.dumps(rt.state(args.id), indent=2))
    elif verb == "kill":
        rt.kill(args.id, parse_signal(args.signal), all_processes=args.all)
    elif verb == "delete":
        rt.delete(args.id, force=args.force)
    elif verb == "list":
        _list(rt.list(), args.format, args.quiet)
    elif verb in ("pause", "resume"):
        rt.pause(args.id) if verb == "pause" else rt.resume(args.id)
    return 0


def _bundle(path: str) -> str:
    return os.path.abspath(path)


def _run(rt: object, args: argparse.Namespace) -> int:
    from harness.runtime.lifecycle import Runtime
    from harness.runtime.pid1 import FORWARDED_SIGNALS

    assert isinstance(rt, Runtime)
    if args.detach:
        rt.create(
            _bundle(args.bundle),
            args.id,
            pid_file=args.pid_file,
            start_now=True,
            console_socket=args.console_socket,
        )
        return 0
    init_pid: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(init_pid[0], signum)

    def on_created(pid: int) -> None:
        init_pid.append(pid)
        for signum in FORWARDED_SIGNALS:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signum, forward)

    return rt.run(
        _bundle(args.bundle), args.id, pid_file=args.pid_file, on_created=on_created, keep=args.keep
    )


def _spec(bundle: str, rootless: bool) -> int:
    from harness.runtime.spec_default import default_spec

    path = os.path.join(bundle, "config.json")
    if os.path.exists(path):
        raise UserError(
            f"{path} exists; accepted: a bundle directory without config.json (remove it first)"
        )
    if not os.path.isdir(bundle):
        raise UserError(f"--bundle {bundle}: not a directory; accepted: an existing directory")
    with open(path, "w") as f:
        json.dump(default_spec(rootless=rootless), f, indent="\t")
    return 0


def _list(rows: list[dict[str, object]], fmt: str, quiet: bool) -> None:
    if quiet:
        for row in rows:
            print(row["id"])
        return
    if fmt == "json":
        print(json.dumps(rows))
        return
    print(f"{'ID':<24}{'PID':<10}{'STATUS':<10}{'BUNDLE':<40}{'CREATED':<32}OWNER")
    for row in rows:
        print(
            f"{row['id']!s:<24}{row.get('pid', 0)!s:<10}{row['status']!s:<10}"
            f"{row['bundle']!s:<40}{row.get('created', '')!s:<32}{row.get('owner', '')}"
        )


if __name__ == "__main__":
    sys.exit(main())
