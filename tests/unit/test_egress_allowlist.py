"""gateway.egress.allowlist: entry syntax, matching, and the operator's address rules."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from gateway.egress.allowlist import AllowList, Destinations


@pytest.mark.parametrize(("entries", "host", "port", "matched"), [
    (["pypi.org"], "pypi.org", 443, "pypi.org"),
    (["pypi.org"], "PyPI.org.", 80, "pypi.org"),  # case and a trailing dot do not matter
    (["pypi.org"], "pypi.org", 8443, None),  # no port named: 80 and 443 only
    (["pypi.org"], "evil-pypi.org", 443, None),
    (["pypi.org"], "pypi.org.evil.com", 443, None),
    (["*.pythonhosted.org"], "files.pythonhosted.org", 443, "*.pythonhosted.org"),
    (["*.pythonhosted.org"], "a.b.pythonhosted.org", 443, "*.pythonhosted.org"),
    (["*.pythonhosted.org"], "pythonhosted.org", 443, None),  # the domain itself is not below it
    (["*.pythonhosted.org"], "xpythonhosted.org", 443, None),
    (["registry.example.com:5000"], "registry.example.com", 5000, "registry.example.com:5000"),
    (["registry.example.com:5000"], "registry.example.com", 443, None),
    (["192.0.2.7"], "192.0.2.7", 80, "192.0.2.7"),
    (["[2001:db8::7]:8080"], "[2001:DB8::7]", 8080, "[2001:db8::7]:8080"),
    ([], "pypi.org", 443, None),
])
def test_matching(entries, host, port, matched):
    rule = AllowList.parse(entries).match(host, port)
    assert (rule.text if rule else None) == matched


@pytest.mark.parametrize("entry", ["", "*", "*.com", "exa mple.com", "-bad.example", "a..b", "host:0", "host:70000",
                                   "x" * 64 + ".example", "http://pypi.org", "pypi.org/simple"])
def test_malformed_entries_are_refused(entry):
    with pytest.raises(ValueError, match="allowed_hosts entry"):
        AllowList.parse([entry])


@pytest.mark.parametrize(("address", "reason"), [
    ("93.184.215.14", None),
    ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", None),
    ("127.0.0.1", "forbidden_address"),
    ("::1", "forbidden_address"),
    ("10.1.2.3", "forbidden_address"),
    ("172.16.0.1", "forbidden_address"),
    ("192.168.1.1", "forbidden_address"),
    ("169.254.169.254", "forbidden_address"),  # the cloud metadata address
    ("100.100.100.200", "forbidden_address"),  # shared address space (another metadata address)
    ("fd00:ec2::254", "forbidden_address"),
    ("fe80::1", "forbidden_address"),
    ("0.0.0.0", "forbidden_address"),
    ("224.0.0.1", "forbidden_address"),
    ("::ffff:169.254.169.254", "forbidden_address"),  # judged as the IPv4 address it maps
    ("::ffff:93.184.215.14", None),
])
def test_only_global_addresses_by_default(address, reason):
    assert Destinations().refusal(ipaddress.ip_address(address), 443) == reason


def test_the_operator_opens_a_network_but_never_the_gateway_ports():
    rules = Destinations(["10.0.0.0/8", "127.0.0.0/8"], own_ports=[8080])
    assert rules.refusal(ipaddress.ip_address("10.1.2.3"), 443) is None
    assert rules.refusal(ipaddress.ip_address("192.168.1.1"), 443) == "forbidden_address"
    assert rules.refusal(ipaddress.ip_address("127.0.0.1"), 443) is None
    assert rules.refusal(ipaddress.ip_address("127.0.0.1"), 8080) == "gateway_port"
    assert rules.refusal(ipaddress.ip_address("10.1.2.3"), 8080) is None  # not an address of this host
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this picks the host's own address
        except OSError:
            return  # no route at all: no address of this host besides loopback
        own = ipaddress.ip_address(probe.getsockname()[0])
    late = Destinations()
    late.set_own_ports([8080])  # as the gateway does once its ports are bound
    assert late.refusal(own, 8080) == "gateway_port"
    assert late.refusal(own, 8081) == "forbidden_address" or own.is_global
