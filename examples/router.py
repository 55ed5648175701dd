"""A small IPv4 router: longest-prefix match over a route table, TTL decrement, drop what expired.

    [workers]
    function = "examples/router.py:route"
    [workers.options]
    routes = [
        { prefix = "10.0.0.0/8",  port = "p1", mac = "02:00:00:00:01:01" },
        { prefix = "10.1.0.0/16", port = "p0", mac = "02:00:00:00:00:01" },
        { prefix = "0.0.0.0/0",   port = "p0", mac = "02:00:00:00:00:fe" },
    ]

Each route sends out of ``port`` with ``mac`` as the destination MAC (the
next hop).  The match is vectorized per prefix length, longest first: the
destinations shifted to that length are looked up with ``np.searchsorted``
in that length's sorted networks, so a table of thousands of routes costs at
most 33 lookups per batch.  Counters: ``routed``, ``no_route``,
``ttl_expired`` (TTL 0 or 1: dropped, as a router would, after counting),
``not_ipv4``.
"""

import ipaddress

import numpy as np


def setup(ctx):
    routes = ctx.options.get("routes", [])
    by_len: dict[int, list[tuple[int, int]]] = {}
    macs = []
    for k, r in enumerate(routes):
        net = ipaddress.IPv4Network(r["prefix"])
        if r["port"] not in ctx.port_names:
            raise ValueError(f"route {r['prefix']}: no port {r['port']!r}; ports: {', '.join(ctx.port_names)}")
        macs.append(bytes.fromhex(r["mac"].replace(":", "")))
        by_len.setdefault(net.prefixlen, []).append((int(net.network_address) >> (32 - net.prefixlen), k))
    table = []
    for length in sorted(by_len, reverse=True):
        nets = np.array(sorted(by_len[length]), np.int64)
        table.append((length, nets[:, 0], nets[:, 1]))
    ctx.state["table"] = table
    ctx.state["port"] = np.array([ctx.port_names.index(r["port"]) for r in routes], np.int16)
    ctx.state["mac"] = np.frombuffer(b"".join(macs), np.uint8).reshape(-1, 6)


def lookup(table, dst: np.ndarray) -> np.ndarray:
    """Route index per destination (-1: none), longest prefix first."""
    found = np.full(len(dst), -1, np.int64)
    for length, nets, route in table:
        key = dst.astype(np.int64) >> (32 - length)
        at = np.minimum(np.searchsorted(nets, key), len(nets) - 1)
        hit = (found < 0) & (nets[at] == key)
        found[hit] = route[at[hit]]
    return found


def route(batch):
    state, v4 = batch.ctx.state, batch.ipv4
    r = np.where(v4.valid, lookup(state["table"], v4.dst), -1)
    routed = r >= 0
    expired = batch.decrement_ttl(mask=routed)
    ok = routed & ~expired
    batch.out[ok] = state["port"][r[ok]]
    batch.set_dst_mac(state["mac"][np.maximum(r, 0)], mask=ok)
    batch.count("routed", int(ok.sum()))
    batch.count("ttl_expired", int(expired.sum()))
    batch.count("no_route", int((v4.valid & ~routed).sum()))
    batch.count("not_ipv4", int((~v4.valid).sum()))
    return ok
