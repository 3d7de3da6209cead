"""Host <-> platform networking: one peer network namespace per run, one veth pair per isolated platform.

The host side of a network benchmark runs in the run's *peer* namespace
`isobench-<run id>-peer`, never in the host's own: isobench adds addresses only
inside namespaces it made. Each isolated platform gets a named namespace
`isobench-<run id>-<platform>` (made with `ip netns add`, a bind mount under
/run/netns) and a veth pair, one end in the peer namespace (10.213.<slot>.1/30)
and one in the platform's (10.213.<slot>.2/30), default MTU, no route beyond
the /30. The platform's containers join that namespace by its path in the
spec (linux.namespaces[].path), the in-house runtime and runc/crun alike.

Why named namespaces joined by path, rather than a veth moved into each
container by pid: containers are made fresh for every workload run, so a
per-container veth would be built (and its cost paid) at every launch, and
every runtime would need a hook between create and start; a namespace made
once in prepare() is the same for every runtime, and its name under /run/netns
survives a SIGKILL where a sweep can find it. Why `ip` (iproute2) rather than
netlink from Python: the names stay inspectable with `ip netns`, and the few
commands run once per run.

veth names are limited to 15 characters, so they carry a token of the run id
(`ib<token><slot><h|c>`, h: the peer end, c: the platform end). The mapping is
written, before anything is made, to /run/isobench-net/<run id>.json with the
pid that owns the run; `isobench cleanup` (sweep()) removes what a run whose
owner is gone left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from harness.errors import EnvironmentError_, NotApplicable, StateError
from harness.image.store import ImageStore
from harness.platforms.bare import BarePlatform
from harness.platforms.base import Limits, Outcome, RunContext
from harness.platforms.peer import run_with_peer
from harness.runtime.state import proc_start_time
from harness.workloads.base import Workload

STATE_DIR = Path("/run/isobench-net")
NETNS_DIR = Path("/run/netns")
NETNS_PREFIX = "isobench-"
SUBNET = "10.213"  # 10.213.<slot>.0/30: private, inside namespaces isobench made only
PREFIX_LEN = 30
MAX_SLOTS = 256
IFNAMSIZ = 15  # the kernel's limit on interface names (16 with the NUL)
VETH = re.compile(r"^ib([0-9a-f]{6})[0-9a-f]{2}[hc]$")
IP_TIMEOUT_S = 30.0


def run_token(run_id: str) -> str:
    """Six hex digits standing for the run id in names that cannot hold it (veths)."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:6]


def netns_name(run_id: str, role: str) -> str:
    """The named network namespace of one role in a run: "peer" or a platform's name."""
    return f"{NETNS_PREFIX}{run_id}-{role.replace(':', '-')}"


def veth_names(token: str, slot: int) -> tuple[str, str]:
    """(peer end, platform end) of slot's veth pair; both within the kernel's 15 characters."""
    if not 0 <= slot < MAX_SLOTS:
        raise ValueError(f"slot {slot}; accepted: 0 to {MAX_SLOTS - 1}")
    peer, platform = f"ib{token}{slot:02x}h", f"ib{token}{slot:02x}c"
    assert len(peer) <= IFNAMSIZ
    return peer, platform


def slot_addresses(slot: int) -> tuple[str, str]:
    """(peer address, platform address) of slot's /30: 10.213.<slot>.1 and .2."""
    if not 0 <= slot < MAX_SLOTS:
        raise ValueError(f"slot {slot}; accepted: 0 to {MAX_SLOTS - 1}")
    return f"{SUBNET}.{slot}.1", f"{SUBNET}.{slot}.2"


def free_slot(used: set[int]) -> int:
    """The lowest slot not in used."""
    for slot in range(MAX_SLOTS):
        if slot not in used:
            return slot
    raise EnvironmentError_(f"all {MAX_SLOTS} veth slots of the run are in use")


@dataclasses.dataclass(frozen=True)
class Link:
    """One platform's veth pair: its namespace, both ends' names and addresses, the MTU."""

    platform: str
    slot: int
    netns: str
    peer_netns: str
    peer_veth: str
    platform_veth: str
    peer_address: str
    platform_address: str
    mtu: int

    @property
    def netns_path(self) -> str:
        """What a spec's network namespace `path` joins."""
        return str(NETNS_DIR / self.netns)

    @property
    def peer_netns_path(self) -> str:
        """The peer namespace, where the host side of a network benchmark runs."""
        return str(NETNS_DIR / self.peer_netns)

    def describe(self) -> dict[str, object]:
        """The network path, for a platform's describe()."""
        return {
            "path": "veth pair: host-side peer netns <-> the platform's own netns (joined by path)",
            "netns": self.netns_path,
            "peer_netns": self.peer_netns_path,
            "veth": {"peer_end": self.peer_veth, "platform_end": self.platform_veth},
            "peer_address": f"{self.peer_address}/{PREFIX_LEN}",
            "platform_address": f"{self.platform_address}/{PREFIX_LEN}",
            "mtu": self.mtu,
            "routes": f"the /{PREFIX_LEN} only (no default route); lo up",
        }


def ip_available() -> tuple[bool, str]:
    """Whether iproute2's ip is installed (it makes the namespaces and veths)."""
    if shutil.which("ip") is None:
        return False, "ip not found (Debian package iproute2): no veth to the platform"
    return True, ""


def _ip(*args: str, missing_ok: bool = False) -> str:
    """Run `ip ARGS`; its stdout, or EnvironmentError_ with its stderr (missing_ok: gone is fine)."""
    binary = shutil.which("ip")
    if binary is None:
        raise EnvironmentError_("ip not found (Debian package iproute2)")
    proc = subprocess.run(
        [binary, *args], capture_output=True, text=True, check=False, timeout=IP_TIMEOUT_S
    )
    if proc.returncode != 0:
        gone = ("Cannot find device", "No such file or directory", "does not exist")
        if missing_ok and any(text in proc.stderr for text in gone):
            return ""
        raise EnvironmentError_(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def _delete_netns(name: str) -> None:
    if _netns_exists(name):
        _ip("netns", "delete", name, missing_ok=True)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise record updates (several platforms of a run, or a concurrent sweep)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class RunNetwork:
    """The run's peer namespace and its platforms' veth pairs, recorded in STATE_DIR/<run id>.json."""

    def __init__(self, run_id: str, state_dir: Path = STATE_DIR) -> None:
        self.run_id = run_id
        self.token = run_token(run_id)
        self.peer_netns = netns_name(run_id, "peer")
        self._state_dir = state_dir

    @property
    def record_path(self) -> Path:
        """The run's record: owner pid, token, and a slot per attached platform."""
        return self._state_dir / f"{self.run_id}.json"

    def _load(self) -> dict[str, object]:
        try:
            record: dict[str, object] = json.loads(self.record_path.read_text())
        except FileNotFoundError:
            pid = os.getpid()
            record = {"run_id": self.run_id, "token": self.token, "peer_netns": self.peer_netns}
            record.update(owner_pid=pid, owner_start=proc_start_time(pid), links={})
        return record

    def _save(self, record: dict[str, object]) -> None:
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp, self.record_path)

    def attach(self, platform: str) -> Link:
        """Make platform's namespace and its veth pair to the peer (and the peer, if first)."""
        with _locked(self._state_dir):
            record = self._load()
            links = record["links"]
            assert isinstance(links, dict)
            if platform in links:
                raise StateError(f"network: {platform} is already attached to run {self.run_id}")
            slot = free_slot(set(links.values()))
            links[platform] = slot
            self._save(record)  # first: a sweep after a SIGKILL finds whatever follows
            try:
                return self._make(platform, slot)
            except BaseException:
                self._unmake(platform, slot)
                self._forget(record, platform)
                raise

    def _make(self, platform: str, slot: int) -> Link:
        if not _netns_exists(self.peer_netns):
            _ip("netns", "add", self.peer_netns)
            _ip("-n", self.peer_netns, "link", "set", "lo", "up")
        netns = netns_name(self.run_id, platform)
        _ip("netns", "add", netns)
        # lo up, as a new namespace of the runtime's own gets it (loopback benchmarks use it).
        _ip("-n", netns, "link", "set", "lo", "up")
        peer_veth, platform_veth = veth_names(self.token, slot)
        peer_addr, platform_addr = slot_addresses(slot)
        # Both ends are born in their namespaces: the host's never holds them, even for a moment.
        _ip("link", "add", peer_veth, "netns", self.peer_netns, "type", "veth",
            "peer", "name", platform_veth, "netns", netns)  # fmt: skip
        for ns, dev, addr in ((self.peer_netns, peer_veth, peer_addr),
                              (netns, platform_veth, platform_addr)):  # fmt: skip
            _ip("-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        shown = json.loads(_ip("-n", netns, "-j", "link", "show", "dev", platform_veth))
        return Link(
            platform=platform,
            slot=slot,
            netns=netns,
            peer_netns=self.peer_netns,
            peer_veth=peer_veth,
            platform_veth=platform_veth,
            peer_address=peer_addr,
            platform_address=platform_addr,
            mtu=int(shown[0]["mtu"]),
        )

    def _unmake(self, platform: str, slot: int) -> None:
        """Remove slot's veth pair and platform's namespace; what is already gone is fine."""
        peer_veth, _ = veth_names(self.token, slot)
        if _netns_exists(self.peer_netns):
            # Deleting the pair synchronously: a namespace's own devices go asynchronously.
            _ip("-n", self.peer_netns, "link", "delete", peer_veth, missing_ok=True)
        _delete_netns(netns_name(self.run_id, platform))

    def _forget(self, record: dict[str, object], platform: str) -> None:
        """Drop platform from the record; the last one out removes the peer and the record."""
        links = record["links"]
        assert isinstance(links, dict)
        links.pop(platform, None)
        if links:
            self._save(record)
            return
        _delete_netns(self.peer_netns)
        self.record_path.unlink(missing_ok=True)

    def detach(self, link: Link) -> None:
        """Remove link's veth pair and namespace (and the peer, when no platform is left)."""
        with _locked(self._state_dir):
            self._unmake(link.platform, link.slot)
            if self.record_path.exists():
                self._forget(self._load(), link.platform)


def _owner_alive(record: dict[str, object]) -> bool:
    pid, start = record.get("owner_pid"), record.get("owner_start")
    return isinstance(pid, int) and start is not None and proc_start_time(pid) == start


def sweep(dry_run: bool = False, state_dir: Path = STATE_DIR) -> Iterator[str]:
    """Remove the namespaces and veths of runs whose owner process is gone; one line per thing."""
    verb = "would remove" if dry_run else "removed"
    live_runs: set[str] = set()
    live_tokens: set[str] = set()
    if not state_dir.is_dir():
        return
    with _locked(state_dir):
        for path in sorted(state_dir.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                run_id = str(record["run_id"])
            except (OSError, ValueError, KeyError, TypeError):
                if not dry_run:
                    path.unlink(missing_ok=True)
                yield f"{verb} unreadable network record {path}"
                continue
            if _owner_alive(record):
                live_runs.add(run_id)
                live_tokens.add(run_token(run_id))
                continue
            network = RunNetwork(run_id, state_dir)
            for platform, slot in dict(record.get("links", {})).items():
                if not dry_run:
                    network._unmake(platform, int(slot))
                yield f"{verb} veth pair {' '.join(veth_names(network.token, int(slot)))} and netns {netns_name(run_id, platform)}"
            if not dry_run:
                _delete_netns(network.peer_netns)
                path.unlink(missing_ok=True)
            yield f"{verb} peer netns {network.peer_netns} of a killed run"
        yield from _sweep_orphans(verb, dry_run, live_runs, live_tokens)


def _sweep_orphans(
    verb: str, dry_run: bool, live_runs: set[str], live_tokens: set[str]
) -> Iterator[str]:
    """Namespaces and host-netns veths with isobench's names that no live run's record owns."""
    if NETNS_DIR.is_dir():
        for entry in sorted(NETNS_DIR.glob(f"{NETNS_PREFIX}*")):
            if any(entry.name.startswith(f"{NETNS_PREFIX}{run}-") for run in live_runs):
                continue
            if not dry_run:
                _delete_netns(entry.name)
            yield f"{verb} netns {entry.name} (no live run owns it)"
    for dev in sorted(os.listdir("/sys/class/net")):
        match = VETH.match(dev)
        if match and match[1] not in live_tokens:
            if not dry_run:
                _ip("link", "delete", dev, missing_ok=True)
            yield f"{verb} veth {dev} in the host namespace (no live run owns it)"


class PlatformNetwork:
    """An isolated platform's network side: its Link, and a chroot of the image for host-side servers."""

    def __init__(self, platform: str, store: ImageStore | None = None) -> None:
        self.platform = platform
        self._store = store
        self._network: RunNetwork | None = None
        self._host: BarePlatform | None = None
        self.link: Link | None = None
        self.unavailable = ""  # why there is no link, when there is none

    def open(self, ctx: RunContext, workdir: Path) -> None:
        """Attach the platform to the run's peer; prepare the servers' chroot under workdir."""
        ok, self.unavailable = ip_available()
        if not ok:
            return
        self._network = RunNetwork(ctx.run_id)
        try:
            self.link = self._network.attach(self.platform)
            # The servers' root: bare's chroot of the image, without bare's limits.
            self._host = BarePlatform(store=self._store)
            self._host.prepare(dataclasses.replace(ctx, workdir=workdir, limits=Limits()))
        except BaseException:
            self.close()
            raise

    @property
    def netns_path(self) -> str | None:
        """The namespace the platform's containers join (None: no link, their own new one)."""
        return self.link.netns_path if self.link else None

    def run(
        self, workload: Workload, log_dir: Path, run_client: Callable[[Workload], Outcome]
    ) -> Outcome:
        """run_client(workload), with its host-side server in the peer namespace if it has one."""
        if workload.peer_argv is None:
            return run_client(workload)
        if self.link is None or self._host is None:
            raise NotApplicable(
                f"{self.platform}: {workload.benchmark} needs a host-side peer over a veth: "
                f"{self.unavailable or 'no link (prepare() has not run)'}"
            )
        return run_with_peer(
            workload,
            self.link.peer_address,
            self.link.peer_netns_path,
            self._host.start_peer,
            log_dir,
            run_client,
        )

    def close(self) -> None:
        """Unmount the servers' chroot, remove the veth pair and namespace; safe to call twice."""
        try:
            if self._host is not None:
                self._host.teardown()
                self._host = None
        finally:
            if self._network is not None and self.link is not None:
                self._network.detach(self.link)
            self.link = None

    def describe(self) -> dict[str, object]:
        """The network path, for the platform's describe()."""
        if self.link is None:
            return {
                "path": f"loopback only: own network namespace ({self.unavailable or 'no link'})"
            }
        return {
            **self.link.describe(),
            "host_side": "servers run on the host in the peer netns (nsenter), chrooted into "
            "an overlay of the image (the same binaries)",
        }
