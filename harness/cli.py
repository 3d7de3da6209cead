"""`isobench`: argument parsing only; every command calls into a module."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import IsobenchError

if TYPE_CHECKING:
    from harness.platforms.vm import VmOptions


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 (like every other bad input)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="isobench", description="What isolation costs and whether it holds.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    clean = sub.add_parser(
        "cleanup",
        help="remove what crashed runs left: containers, guests, cgroups, mounts, netns, veths, dirs",
    )
    clean.add_argument(
        "--root", default=None, help="runtime state directory (default: the runtime's)"
    )
    clean.add_argument(
        "--dry-run", action="store_true", help="list what would be removed, remove nothing"
    )
    clean.add_argument(
        "--all",
        action="store_true",
        help="also running containers without the isobench- prefix, and kept ones",
    )
    clean.add_argument(
        "--libvirt-uri", default=None, help="where to sweep guests (default: the embedded driver)"
    )

    run = sub.add_parser(
        "run", help="run the benchmark suite in randomised blocks; writes a results file"
    )
    run.add_argument("--profile", choices=("smoke", "quick", "full"), default="quick")
    run.add_argument(
        "--platform", default=None, help="comma-separated (default: every platform this host runs)"
    )
    run.add_argument(
        "--bench", default=None, help="comma-separated benchmarks or categories (default: all)"
    )
    run.add_argument("--blocks", type=int, default=None, help="blocks (default: the profile's)")
    run.add_argument(
        "--seed", type=int, default=None, help="platform-order seed (default: random, recorded)"
    )
    run.add_argument("--results", type=Path, default=Path("results"), help="results directory")
    run.add_argument(
        "--resume", type=Path, default=None, help="continue a killed run's results file"
    )
    run.add_argument(
        "--image", default="isobench/workload:latest", help="image reference (built if missing)"
    )
    _vm_arguments(run)

    report = sub.add_parser("report", help="HTML page, Markdown summary and CSV from results files")
    report.add_argument("results", nargs="+", type=Path)
    report.add_argument(
        "--out", type=Path, default=None, help="output directory (default: reports/<run>)"
    )
    report.add_argument(
        "--include-tcg",
        action="store_true",
        help="put emulated (TCG) VM figures into overhead ratios",
    )

    sub.add_parser("doctor", help="what this host can run, and why not")

    vm = sub.add_parser("vm", help="the VM guest: kernel")
    vm_verbs = vm.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    fetch = vm_verbs.add_parser(
        "fetch-kernel", help="find the guest kernel (fetching a Debian one into the cache)"
    )
    fetch.add_argument("--guest-kernel", type=Path, default=None, help="a bzImage to use")
    fetch.add_argument("--cache-dir", type=Path, default=None, help="Debian kernel cache")

    image = sub.add_parser("image", help="the workload image: build, inspect, snapshot, export")
    image.add_argument(
        "--home", type=Path, default=None, help="image store (default $ISOBENCH_HOME)"
    )
    verbs = image.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    build = verbs.add_parser("build", help="build the workload image from host files")
    build.add_argument("--tag", default="isobench/workload:latest")
    build.add_argument(
        "--tools", default=None, help="comma-separated (default: fio,stress-ng,sysbench,iperf3)"
    )
    verbs.add_parser("ls", help="list images")
    verbs.add_parser("inspect", help="manifest, config and layers as JSON").add_argument("ref")
    verbs.add_parser("rm", help="untag an image; unreferenced blobs and layers go").add_argument(
        "ref"
    )
    commit = verbs.add_parser("commit", help="a container's changes as a new image")
    commit.add_argument("container_id")
    commit.add_argument("tag")
    verbs.add_parser("diff", help="what a container changed (A/C/D path)").add_argument(
        "container_id"
    )
    export = verbs.add_parser("export", help="write a plain OCI image layout")
    export.add_argument("ref")
    export.add_argument("--layout", type=Path, required=True)
    imp = verbs.add_parser(
        "import", help="read an OCI image layout into the store, verifying every digest"
    )
    imp.add_argument("--layout", type=Path, required=True)
    imp.add_argument("--tag", default=None)
    bundle = verbs.add_parser("bundle", help="write an OCI runtime bundle (config.json + rootfs)")
    bundle.add_argument("ref")
    bundle.add_argument("dir", type=Path)
    initramfs = verbs.add_parser("initramfs", help="gzip newc cpio of the image, for VMs")
    initramfs.add_argument("ref")
    initramfs.add_argument("out", type=Path)
    initramfs.add_argument(
        "--modules", type=Path, action="append", default=[], help="a .ko or a directory"
    )
    run = verbs.add_parser("run", help="run a command in a new container from the image")
    run.add_argument(
        "--keep", action="store_true", help="keep the container's changes (for commit/diff)"
    )
    run.add_argument("--memory", type=int, default=None, help="memory limit in bytes")
    run.add_argument("ref")
    run.add_argument("container_id")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="command (after --)")
    verbs.add_parser("containers", help="list containers started from images")
    verbs.add_parser("rm-container", help="remove a kept container").add_argument("container_id")
    return parser


def _vm_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--libvirt-uri",
        default=None,
        help="vm platform: libvirt URI (default: the embedded driver, qemu:///embed?root=<home>/libvirt)",
    )
    run.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="vm platform: auto = KVM only when a probe guest really boots under it",
    )
    run.add_argument(
        "--guest-kernel", type=Path, default=None, help="vm platform: the guest's bzImage"
    )
    run.add_argument(
        "--include-tcg",
        action="store_true",
        help="vm platform: record that this run's TCG figures go into overhead ratios",
    )


def _vm_options(args: argparse.Namespace) -> VmOptions:
    from harness.platforms.vm import VmOptions

    if args.guest_kernel is not None and not args.guest_kernel.is_file():
        from harness.errors import UserError

        raise UserError(
            f"--guest-kernel {args.guest_kernel}: no such file; accepted: a bzImage kernel file"
        )
    if args.libvirt_uri is not None:
        from harness.vm.connection import embed_root

        embed_root(args.libvirt_uri)  # a malformed embed URI is bad input: exit 2, before any work
    return VmOptions(
        uri=args.libvirt_uri,
        accel=args.accel,
        guest_kernel=args.guest_kernel,
        include_tcg=args.include_tcg,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `isobench` console script."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "cleanup":
            from harness.runtime.cleanup import cleanup

            lines = cleanup(
                root=args.root,
                dry_run=args.dry_run,
                everything=args.all,
                libvirt_uri=args.libvirt_uri,
            )
            for line in lines:
                print(line)
            return 0
        if args.command == "image":
            return _image(args)
        if args.command == "run":
            benches = args.bench.split(",") if args.bench else []
            if "enforce" in benches:
                return _enforce(args, benches)
            from harness.runner import run_suite

            path = run_suite(
                profile=args.profile,
                platforms=args.platform.split(",") if args.platform else None,
                benchmarks=args.bench.split(",") if args.bench else None,
                blocks=args.blocks,
                seed=args.seed,
                results_dir=args.results,
                resume=args.resume,
                image_ref=args.image,
                vm_options=_vm_options(args),
            )
            print(path)
            return 0
        if args.command == "report":
            from harness.report import build_report, load_results, summary_lines

            results = load_results(args.results)
            out = args.out or Path("reports") / args.results[0].stem
            paths = build_report(results, out, include_tcg=args.include_tcg)
            for line in summary_lines(results, include_tcg=args.include_tcg):
                print(line)
            print(f"report: {paths.html}")
            return 0
        if args.command == "vm":
            from harness.vm.kernel import default_cache_dir, find_kernel

            kernel = find_kernel(args.guest_kernel, args.cache_dir or default_cache_dir())
            print(
                f"{kernel.vmlinuz} {kernel.version} modules={kernel.modules_root} ({kernel.source})"
            )
            return 0
        if args.command == "doctor":
            from harness.doctor import doctor_lines

            print("\n".join(doctor_lines()))
            return 0
    except IsobenchError as exc:
        print(f"isobench: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def _image(args: argparse.Namespace) -> int:
    from harness.image import commands
    from harness.image.containers import ImageContainers
    from harness.image.store import ImageStore

    store = ImageStore(args.home)
    verb = args.verb
    if verb == "build":
        from harness.image.build import DEFAULT_TOOLS, build_image

        tools = args.tools.split(",") if args.tools else list(DEFAULT_TOOLS)
        result = build_image(store, tag=args.tag, tools=tools)
        for line in result.summary():
            print(line)
        print(result.digest)
    elif verb == "ls":
        print("\n".join(commands.list_images(store)))
    elif verb == "inspect":
        print(commands.inspect(store, args.ref))
    elif verb == "rm":
        store.remove(args.ref)
    elif verb == "commit":
        print(commands.commit(store, ImageContainers(store), args.container_id, args.tag))
    elif verb == "diff":
        print("\n".join(commands.diff(ImageContainers(store), args.container_id)))
    elif verb == "export":
        store.export(args.ref, args.layout)
    elif verb == "import":
        print(store.import_layout(args.layout, tag=args.tag))
    elif verb == "bundle":
        print(commands.write_bundle(store, args.ref, args.dir))
    elif verb == "initramfs":
        info = commands.initramfs(store, args.ref, args.out, args.modules)
        print(f"{info.path}: {info.entries} entries, {info.size_bytes} bytes, sha256:{info.sha256}")
    elif verb == "run":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            raise _usage(
                "image run: no command; accepted: isobench image run REF ID -- CMD [ARG...]"
            )
        containers = ImageContainers(store)
        return containers.run(
            args.ref, args.container_id, cmd, keep=args.keep, memory_limit=args.memory
        )
    elif verb == "containers":
        for row in ImageContainers(store).list():
            print(f"{row['id']!s:40s} {row['image']!s}")
    elif verb == "rm-container":
        ImageContainers(store).remove(args.container_id)
    return 0


def _enforce(args: argparse.Namespace, benches: list[str]) -> int:
    """`run --bench enforce`: its own run (see harness.enforcement.run); exit 1 when a test fails."""
    from rich.console import Console

    from harness.enforcement.run import exit_code, run_enforcement, table

    if benches != ["enforce"] or args.resume is not None or args.blocks is not None:
        raise _usage(
            "--bench enforce is a run of its own; accepted: --bench enforce with --profile, "
            "--platform, --results and --image (no other benchmarks, --blocks or --resume)"
        )
    path, records = run_enforcement(
        profile=args.profile,
        platforms=args.platform.split(",") if args.platform else None,
        results_dir=args.results,
        image_ref=args.image,
    )
    Console().print(table([r.to_json() for r in records]))
    print(path)
    return exit_code(records)


def _usage(message: str) -> IsobenchError:
    from harness.errors import UserError

    return UserError(message)


if __name__ == "__main__":
    sys.exit(main())
