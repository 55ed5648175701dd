"""Drop DNS (UDP port 53, either direction) over IPv4 and IPv6, tagged or not; count what was dropped.

Use it in a pipeline file:

    [workers]
    function = "examples/dns_guard.py:dns_guard"

``batch.l4`` is the parsed L4 layer of the whole batch: VLAN tags, IPv4
options and IPv6 extension headers are already walked, fragments after the
first carry no ports (``udp`` is False for them).
"""


def dns_guard(batch):
    l4 = batch.l4
    dns = l4.udp & ((l4.dport == 53) | (l4.sport == 53))
    batch.count("dns_dropped", int(dns.sum()))
    return ~dns
