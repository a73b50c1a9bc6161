"""Network namespaces on a bridge, and partitions with nftables.

Layout for a run with prefix P (e.g. ``rmj4242a``) and nodes n1..nk:

    root namespace:  bridge  P-br  10.213.X.254/24   (the harness's client side)
                     veth    Pv1 .. Pvk              (bridge ports)
    namespace Pn1:   eth0    10.213.X.1/24           (peer of Pv1), lo
    ...

The /24 is chosen so that no address or route of the machine uses it, and it is
only ever assigned inside these namespaces and to the run's own bridge: nothing
outside loopback and the run's namespaces is addressed.

Partitions are *grudges* as in Jepsen: ``grudge[a]`` is the set of nodes whose
packets node ``a`` drops on input (an nftables table ``inet rmj`` inside a's
namespace). The harness's own address (the bridge) is never cut: clients keep
talking to every node, as Jepsen's control node does.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping

from jepsen_like.resources import CommandError, Teardown, run_command

log = logging.getLogger(__name__)

SUBNET_BASE = ipaddress.ip_network("10.213.0.0/16")
BRIDGE_HOST = 254
IFNAME_CHARS_MAX = 15
NFT_TABLE = "rmj"
NETNS_DIR = "/run/netns"


def _used_networks() -> list[ipaddress.IPv4Network]:
    used: list[ipaddress.IPv4Network] = []
    for line in run_command(["ip", "-4", "-o", "addr", "show"]).splitlines():
        parts = line.split()
        if "inet" in parts:
            used.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    for line in run_command(["ip", "-4", "route", "show", "table", "all"]).splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("default", "local", "broadcast", "unreachable", "blackhole", "prohibit"):
            word = line.split()[1] if len(line.split()) > 1 else ""
        try:
            used.append(ipaddress.ip_network(word, strict=False))  # type: ignore[arg-type]
        except ValueError:
            continue
    return used


def choose_subnet(hint: int) -> ipaddress.IPv4Network:
    """A free /24 of 10.213.0.0/16, starting the search at ``hint``."""
    used = _used_networks()
    for step in range(250):
        third = (hint + step) % 250 + 1
        candidate = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(candidate.overlaps(net) for net in used if net.prefixlen > 0):
            return candidate
    raise CommandError("no free /24 in 10.213.0.0/16 for the harness's bridge")


class Network:
    """The bridge, one namespace per node, and the cuts between them."""

    def __init__(self, prefix: str, node_ids: Iterable[str], teardown: Teardown, subnet_hint: int = 0) -> None:
        self.prefix = prefix
        self.node_ids = list(node_ids)
        self.teardown = teardown
        self.subnet_hint = subnet_hint
        self.bridge = f"{prefix}br"
        self.namespaces = {n: f"{prefix}n{i + 1}" for i, n in enumerate(self.node_ids)}
        self.veths = {n: f"{prefix}v{i + 1}" for i, n in enumerate(self.node_ids)}
        self.peers = {n: f"{prefix}p{i + 1}" for i, n in enumerate(self.node_ids)}
        for name in [self.bridge, *self.veths.values(), *self.peers.values()]:
            if len(name) > IFNAME_CHARS_MAX:
                raise ValueError(f"interface name {name!r} is longer than {IFNAME_CHARS_MAX} chars")
        self.subnet: ipaddress.IPv4Network | None = None
        self.addresses: dict[str, str] = {}
        self.bridge_address = ""
        self.grudges: dict[str, frozenset[str]] = {n: frozenset() for n in self.node_ids}

    # -- setup -------------------------------------------------------------------
    def create(self) -> None:
        self.subnet = choose_subnet(self.subnet_hint)
        hosts = list(self.subnet.hosts())
        self.bridge_address = str(self.subnet.network_address + BRIDGE_HOST)
        self.addresses = {n: str(hosts[i]) for i, n in enumerate(self.node_ids)}
        run_command(["ip", "link", "add", self.bridge, "type", "bridge"])
        self.teardown.push(f"delete bridge {self.bridge}", lambda: _delete_link(self.bridge))
        run_command(["ip", "addr", "add", f"{self.bridge_address}/24", "dev", self.bridge])
        run_command(["ip", "link", "set", self.bridge, "up"])
        for node in self.node_ids:
            ns, veth, peer = self.namespaces[node], self.veths[node], self.peers[node]
            run_command(["ip", "netns", "add", ns])
            self.teardown.push(f"delete namespace {ns}", lambda ns=ns: _delete_netns(ns))
            run_command(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer])
            self.teardown.push(f"delete link {veth}", lambda veth=veth: _delete_link(veth))
            run_command(["ip", "link", "set", peer, "netns", ns])
            run_command(["ip", "link", "set", veth, "master", self.bridge, "up"])
            run_command(["ip", "-n", ns, "link", "set", peer, "name", "eth0"])
            run_command(["ip", "-n", ns, "addr", "add", f"{self.addresses[node]}/24", "dev", "eth0"])
            run_command(["ip", "-n", ns, "link", "set", "eth0", "up"])
            run_command(["ip", "-n", ns, "link", "set", "lo", "up"])
            self._nft(node, f"add table inet {NFT_TABLE}\n"
                            f"add chain inet {NFT_TABLE} input {{ type filter hook input priority 0 ; policy accept ; }}\n")

    def netns_path(self, node: str) -> str:
        return os.path.join(NETNS_DIR, self.namespaces[node])

    # -- cuts ----------------------------------------------------------------------
    def _nft(self, node: str, script: str) -> None:
        run_command(["ip", "netns", "exec", self.namespaces[node], "nft", "-f", "-"], input_text=script)

    def apply_grudges(self, grudges: Mapping[str, Iterable[str]]) -> None:
        """Replace every node's cuts: ``grudges[a]`` lists the nodes a stops hearing."""
        for node in self.node_ids:
            drop = frozenset(grudges.get(node, ())) - {node}
            script = f"flush chain inet {NFT_TABLE} input\n"
            if drop:
                ips = ", ".join(self.addresses[d] for d in sorted(drop))
                script += f"add rule inet {NFT_TABLE} input ip saddr {{ {ips} }} drop\n"
            if drop != self.grudges[node] or drop:
                self._nft(node, script)
            self.grudges[node] = drop

    def heal(self) -> None:
        self.apply_grudges({})

    def cut_count(self) -> int:
        return sum(len(g) for g in self.grudges.values())

    # -- inspection ----------------------------------------------------------------
    def exists(self) -> dict[str, bool]:
        return {name: os.path.exists(os.path.join(NETNS_DIR, name)) for name in self.namespaces.values()}


def _delete_netns(name: str) -> None:
    if os.path.exists(os.path.join(NETNS_DIR, name)):
        run_command(["ip", "netns", "del", name])


def _delete_link(name: str) -> None:
    if not os.path.exists(f"/sys/class/net/{name}"):
        return
    try:
        run_command(["ip", "link", "del", name])
    except CommandError:
        # Deleting a namespace tears its veth pairs down asynchronously: the
        # peer may vanish between the check and the delete. Gone is what we want.
        if os.path.exists(f"/sys/class/net/{name}"):
            raise


# -- partition shapes (grudges), after Jepsen's nemesis ------------------------------
def isolate(nodes: list[str], victim: str) -> dict[str, set[str]]:
    """``victim`` alone on one side."""
    others = [n for n in nodes if n != victim]
    grudges = {n: {victim} for n in others}
    grudges[victim] = set(others)
    return grudges


def halves(nodes: list[str], first: list[str]) -> dict[str, set[str]]:
    """Two sides: ``first`` and the rest; no traffic across."""
    second = [n for n in nodes if n not in first]
    grudges: dict[str, set[str]] = {n: set(second) for n in first}
    grudges.update({n: set(first) for n in second})
    return grudges


def majority_ring(nodes: list[str]) -> dict[str, set[str]]:
    """Every node sees a majority (itself and its neighbours on a ring), but no
    two nodes see the same majority. For 3 nodes each node hears one peer."""
    n = len(nodes)
    majority = n // 2 + 1
    grudges: dict[str, set[str]] = {}
    for i, node in enumerate(nodes):
        # The nodes this one hears: a window of `majority` around it on the ring.
        half = (majority - 1) // 2
        window = {nodes[(i + d) % n] for d in range(-half, majority - half)}
        if len(window) < majority:  # even windows lean forward
            window.add(nodes[(i + majority - half) % n])
        grudges[node] = set(nodes) - window
    return grudges


def bridge(nodes: list[str], middle: str) -> dict[str, set[str]]:
    """Two sides that cannot talk, and ``middle`` talking to both."""
    rest = [n for n in nodes if n != middle]
    left, right = rest[: len(rest) // 2], rest[len(rest) // 2 :]
    grudges: dict[str, set[str]] = {n: set(right) for n in left}
    grudges.update({n: set(left) for n in right})
    return grudges


def list_leftovers(prefix: str = "rmj") -> dict[str, list[str]]:
    """Namespaces and links whose names start with ``prefix`` (for ``cleanup``)."""
    namespaces = sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix)) if os.path.isdir(NETNS_DIR) else []
    links = sorted(n for n in os.listdir("/sys/class/net") if n.startswith(prefix))
    return {"namespaces": namespaces, "links": links}


def delete_leftovers(namespaces: Iterable[str], links: Iterable[str]) -> list[str]:
    """Delete exactly the named namespaces and links; returns what failed."""
    failed = []
    for ns in namespaces:
        try:
            _delete_netns(ns)
        except CommandError as exc:
            failed.append(f"namespace {ns}: {exc}")
    for link in links:
        try:
            _delete_link(link)
        except CommandError as exc:
            failed.append(f"link {link}: {exc}")
    return failed
