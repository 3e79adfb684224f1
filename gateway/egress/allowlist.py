"""Which destinations a ``restricted`` task may reach: its allow-list and the operator's
address rules.

``AllowList.parse(entries) -> AllowList`` takes the decision's ``allowed_hosts``:

- ``name``: exactly that DNS name;
- ``*.suffix``: any name below ``suffix`` (``a.suffix``, ``a.b.suffix``; not ``suffix``);
- an IP literal (``192.0.2.7``, ``[2001:db8::7]``): only an address the operator also
  allows (``Destinations``), so policy alone never opens one;
- each optionally with ``:port``. Without a port an entry allows 80 and 443, the ports of
  ``http://`` and ``https://``; any other port is named.

Names are compared lower-case without a trailing dot. A malformed entry raises
``ValueError`` naming it: the gateway then refuses the task (5003), never a looser list.

``Destinations`` is the operator's side (``egress`` settings), applied to every address the
proxy would connect to, whatever the allow-list says: only globally routable addresses
(``ipaddress``'s ``is_global``: not loopback, private, link-local such as the
169.254.169.254 metadata address, shared, reserved or multicast; an IPv4-mapped IPv6
address is judged as its IPv4 address), unless the address is in ``allow_networks``; and
never one of the gateway's own ports on an address of this host.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["DEFAULT_PORTS", "AllowList", "Destinations", "Rule", "normalize_host"]

DEFAULT_PORTS = frozenset({80, 443})
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def normalize_host(host: str) -> str:
    """``host`` lower-cased, without a trailing dot or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host[:-1] if host.endswith(".") else host


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells (normalized first), or None for a name."""
    try:
        return ipaddress.ip_address(normalize_host(host))
    except ValueError:
        return None


def _is_dns_name(name: str) -> bool:
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


@dataclass(frozen=True)
class Rule:
    """One allow-list entry: ``text`` as policy wrote it; ``host`` a name, a suffix
    (``suffix`` True: names below it) or an address; ``ports`` those it allows."""

    text: str
    host: str
    suffix: bool
    ports: frozenset[int]

    def matches(self, host: str, port: int) -> bool:
        """Whether this entry allows ``host`` (normalized) on ``port``."""
        if port not in self.ports:
            return False
        if self.suffix:
            return host.endswith("." + self.host)
        return host == self.host


class AllowList:
    """A task's allow-list (see the module docstring); empty allows nothing."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Parse the decision's ``allowed_hosts``. Raises ValueError naming a bad entry."""
        return cls(_parse_entry(entry) for entry in entries)

    def match(self, host: str, port: int) -> Rule | None:
        """The first entry allowing ``host``:``port``, or None."""
        host = normalize_host(host)
        return next((rule for rule in self.rules if rule.matches(host, port)), None)

    def __str__(self) -> str:
        return ", ".join(rule.text for rule in self.rules) or "(empty)"


def _parse_entry(entry: str) -> Rule:
    text = entry.strip()
    host, ports = text, DEFAULT_PORTS
    match = re.fullmatch(r"(.*):(\d{1,5})", text)
    if match and (not match.group(1).count(":") or match.group(1).endswith("]")):
        host, port = match.group(1), int(match.group(2))
        if not 0 < port < 65536:
            raise ValueError(f"allowed_hosts entry {entry!r}: port {port} is out of range")
        ports = frozenset({port})
    suffix = host.startswith("*.")
    name = normalize_host(host[2:] if suffix else host)
    if not suffix and ip_literal(name) is not None:
        return Rule(text, str(ipaddress.ip_address(name)), False, ports)
    if not _is_dns_name(name):
        raise ValueError(f"allowed_hosts entry {entry!r} is not a host name, *.domain or IP address")
    if suffix and "." not in name:
        raise ValueError(f"allowed_hosts entry {entry!r}: a wildcard needs a domain of two labels or more")
    return Rule(text, name, suffix, ports)


class Destinations:
    """The operator's address rules (module docstring). ``allow_networks``: CIDRs that may
    be reached although not global; ``own_ports``: the gateway's listening ports."""

    def __init__(self, allow_networks: Iterable[str] = (), own_ports: Iterable[int] = ()) -> None:
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)
        self._own_ports = frozenset(own_ports)
        self._local: dict[IPAddress, bool] = {}

    def set_own_ports(self, ports: Iterable[int]) -> None:
        """The gateway's listening ports, once bound."""
        self._own_ports = frozenset(ports)

    def refusal(self, address: IPAddress, port: int) -> str | None:
        """Why ``address``:``port`` may not be reached (a reason code of
        ``mcp_egress_denied_total``), or None when it may."""
        if port in self._own_ports and self._is_local(address):
            return "gateway_port"
        if self.operator_allows(address):
            return None
        judged = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped else address
        return None if judged.is_global and not judged.is_multicast else "forbidden_address"

    def operator_allows(self, address: IPAddress) -> bool:
        """Whether ``allow_networks`` names ``address``."""
        return any(address.version == n.version and address in n for n in self._networks)

    def _is_local(self, address: IPAddress) -> bool:
        """Whether ``address`` belongs to this host (binding to it succeeds), cached."""
        if address.is_loopback or address.is_unspecified:
            return True
        known = self._local.get(address)
        if known is None:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((str(address), 0))
                    known = True
                except OSError:
                    known = False
            self._local[address] = known
        return known
