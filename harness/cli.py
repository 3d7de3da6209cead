"""`isobench`: argument parsing only; every command calls into a module."""

from __future__ import annotations

import argparse
import sys

from harness.errors import IsobenchError


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isobench", description="What isolation costs and whether it holds."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    clean = sub.add_parser(
        "cleanup", help="remove cgroups, mounts and state dirs left by crashed runs"
    )
    clean.add_argument(
        "--root", default=None, help="runtime state directory to sweep (default: the runtime's)"
    )
    clean.add_argument(
        "--dry-run", action="store_true", help="list what would be removed, remove nothing"
    )
    clean.add_argument(
        "--all",
        action="store_true",
        help="also kill running containers whose id lacks the isobench- prefix",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `isobench` console script."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "cleanup":
            from harness.runtime.cleanup import cleanup

            for line in cleanup(root=args.root, dry_run=args.dry_run, everything=args.all):
                print(line)
            return 0
    except IsobenchError as exc:
        print(f"isobench: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
