"""The fault lab's network: one namespace per node on a bridge, and partitions in nftables.

Why this shape (measured, see /work/shared/faultlab-notes.md): loopback addresses
cannot be partitioned, because pysyncobj and gRPC never bind a source address, so
every node gets its own network namespace with one veth into a Linux bridge in the
root namespace, where the test's clients stay. The namespaces have no default route,
and a blackhole route for the subnet (metric 4242) in the root namespace makes lab
traffic fail locally instead of leaving the machine if the bridge ever goes.

Partitions are one nft table of the ``bridge`` family in the root namespace: rules in
its forward chain drop frames between node pairs, so client <-> node traffic (which
enters and leaves the bridge through its own port, never "forwarded") is untouched.
A whole grudge is applied as one ``nft -f`` transaction, and healing flushes the chain.

Teardown is ``scripts/fault-teardown.sh`` (one implementation, also the worst-case
cleanup by hand); it runs before set-up too, since a SIGKILLed run leaves everything.
A lock file keeps two labs on one machine (two test runs) from tearing each other down.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

PREFIX = "rmqlab"
"""Every namespace, link and table the lab makes starts with this; teardown keys on it."""
DEFAULT_SUBNET = "10.77.0.0/24"
SAFETY_METRIC = 4242
FIRST_NODE_HOST = 10
"""Node ``n<i>`` gets host number 10 + i of the subnet: n1 is 10.77.0.11."""
TEARDOWN_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fault-teardown.sh"
LOCK_FILE = Path("/run/lock") / f"{PREFIX}.lock"
LOCK_TIMEOUT = 60.0
"""How long a second lab waits for the first to finish before failing."""
COMMAND_TIMEOUT = 30.0
NODE_IFACE = "eth0"
"""The veth's name inside each namespace."""


class LabError(Exception):
    """A lab command failed; the message has the command and its stderr."""


def run(argv: list[str], stdin: str | None = None) -> str:
    """Run one set-up or fault command; its stdout, or LabError naming it."""
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)}: no answer in {COMMAND_TIMEOUT} s") from exc
    if done.returncode != 0:
        shown = " ".join(argv) + (f" <<<{stdin!r}" if stdin else "")
        raise LabError(f"{shown}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def unavailable_reason() -> str | None:
    """None when a lab can be built here, else why not (for a pytest skip)."""
    if os.geteuid() != 0:
        return "the fault lab needs root (network namespaces, a bridge, nftables)"
    for tool in ("ip", "nft", "ss", "bash"):
        if shutil.which(tool) is None:
            return f"the fault lab needs {tool!r} on PATH"
    probes = (["ip", "netns", "list"], ["nft", "list", "tables"])
    for probe in probes:
        try:
            run(probe)
        except LabError as exc:
            return f"the fault lab cannot run here: {exc}"
    if not TEARDOWN_SCRIPT.is_file():
        return f"the fault lab's teardown script is missing: {TEARDOWN_SCRIPT}"
    return None


def teardown(prefix: str = PREFIX, subnet: str = DEFAULT_SUBNET) -> None:
    """Remove every trace of a lab named ``prefix``; safe when there is none."""
    run(["bash", str(TEARDOWN_SCRIPT), prefix, subnet])


class LabNetwork:
    """The namespaces, veths, bridge, safety route and partition table of one lab."""

    def __init__(
        self, node_ids: Iterable[str], subnet: str = DEFAULT_SUBNET, prefix: str = PREFIX
    ) -> None:
        self.prefix = prefix
        self.subnet = ipaddress.ip_network(subnet)
        self.node_ids = list(node_ids)
        hosts = self.subnet.num_addresses - 2
        if FIRST_NODE_HOST + len(self.node_ids) > hosts:
            raise LabError(f"subnet {subnet} is too small for {len(self.node_ids)} nodes")
        self.bridge = f"{prefix}-br"
        self.bridge_address = str(self.subnet[1])
        self.table = prefix
        self._addresses = {
            node_id: str(self.subnet[FIRST_NODE_HOST + i])
            for i, node_id in enumerate(self.node_ids, start=1)
        }
        self._lock: IO[str] | None = None

    def namespace(self, node_id: str) -> str:
        return f"{self.prefix}-{node_id}"

    def veth(self, node_id: str) -> str:
        """The root-side end of the node's veth (at most 15 characters, as links must be)."""
        return f"{self.prefix}-{node_id}"

    def address(self, node_id: str) -> str:
        return self._addresses[node_id]

    def in_namespace(self, node_id: str, argv: list[str]) -> list[str]:
        """``argv`` run inside the node's namespace (``ip netns exec`` execs, so a Popen's
        pid is the command's own)."""
        return ["ip", "netns", "exec", self.namespace(node_id), *argv]

    # -- life cycle ----------------------------------------------------------------------

    def up(self) -> None:
        """Take the machine's lab lock, clear leftovers, and build the network."""
        self._take_lock()
        try:
            teardown(self.prefix, str(self.subnet))
            self._build()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Tear everything down (idempotent) and release the lock.

        Without the lock nothing is torn down: what exists then is another lab's.
        """
        if self._lock is None:
            return
        try:
            teardown(self.prefix, str(self.subnet))
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def _take_lock(self) -> None:
        if self._lock is not None:
            return
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        lock = LOCK_FILE.open("a+")
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.seek(0)
                    holder = lock.read().strip() or "unknown"
                    lock.close()
                    raise LabError(
                        f"another fault lab has held {LOCK_FILE} for over {LOCK_TIMEOUT} s "
                        f"(pid {holder})"
                    ) from None
                time.sleep(0.2)
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock

    def _build(self) -> None:
        prefix_len = self.subnet.prefixlen
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        run(["ip", "addr", "add", f"{self.bridge_address}/{prefix_len}", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        safety = ["blackhole", str(self.subnet), "metric", str(SAFETY_METRIC)]
        run(["ip", "route", "add", *safety])
        for node_id in self.node_ids:
            namespace, veth = self.namespace(node_id), self.veth(node_id)
            run(["ip", "netns", "add", namespace])
            peer = ["peer", "name", NODE_IFACE, "netns", namespace]
            run(["ip", "link", "add", veth, "type", "veth", *peer])
            run(["ip", "link", "set", veth, "master", self.bridge, "up"])
            inside = ["ip", "-n", namespace]
            address = f"{self.address(node_id)}/{prefix_len}"
            run([*inside, "addr", "add", address, "dev", NODE_IFACE])
            run([*inside, "link", "set", NODE_IFACE, "up"])
            run([*inside, "link", "set", "lo", "up"])
        run(
            ["nft", "-f", "-"],
            f"table bridge {self.table} {{\n"
            "  chain forward { type filter hook forward priority 0; policy accept; }\n"
            "}\n",
        )

    # -- partitions ----------------------------------------------------------------------

    def partition(self, grudge: Mapping[str, Iterable[str]]) -> None:
        """Replace the partition with ``grudge``: node -> the nodes it drops traffic from.

        One nft transaction: the old rules go and the new ones arrive at the same
        instant, so no frame sees half a grudge.
        """
        lines = [f"flush chain bridge {self.table} forward"]
        for node_id, sources in sorted(grudge.items()):
            self._check_node(node_id, grudge)
            for source in sorted(sources):
                self._check_node(source, grudge)
                if source == node_id:
                    raise LabError(f"grudge {dict(grudge)}: node {node_id!r} drops from itself")
                lines.append(
                    f"add rule bridge {self.table} forward ip saddr {self.address(source)} "
                    f"ip daddr {self.address(node_id)} counter drop"
                    f' comment "{node_id} drops from {source}"'
                )
        run(["nft", "-f", "-"], "\n".join(lines) + "\n")

    def heal(self) -> None:
        run(["nft", "flush", "chain", "bridge", self.table, "forward"])

    def rules(self) -> str:
        """The partition chain as nft lists it, counters included."""
        return run(["nft", "list", "chain", "bridge", self.table, "forward"])

    def _check_node(self, node_id: str, grudge: Mapping[str, Iterable[str]]) -> None:
        if node_id not in self._addresses:
            raise LabError(
                f"grudge {dict(grudge)} names {node_id!r}, not a lab node "
                f"({', '.join(self.node_ids)})"
            )


def leftovers(prefix: str = PREFIX, subnet: str = DEFAULT_SUBNET) -> list[str]:
    """What of a lab still exists: namespaces, links, the nft table, routes to the subnet."""
    found = [
        f"namespace {line.split()[0]}"
        for line in run(["ip", "netns", "list"]).splitlines()
        if line.startswith(f"{prefix}-")
    ]
    for line in run(["ip", "-o", "link", "show"]).splitlines():
        name = line.split(": ")[1].split("@")[0]
        if name.startswith(f"{prefix}-"):
            found.append(f"link {name}")
    tables = run(["nft", "list", "tables"]).split("\n")
    found += [table for table in tables if table.strip() == f"table bridge {prefix}"]
    found += [f"route {r}" for r in run(["ip", "route"]).splitlines() if subnet in r.split()]
    return found
