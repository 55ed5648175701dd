"""An access list from a CSV file named in [workers.options]: first matching rule wins.

    [workers]
    function = "examples/acl.py:acl"
    [workers.options]
    acl = "acl.csv"          # relative to the pipeline file
    default = "allow"        # when no rule matches: "allow" or "deny"

acl.csv, one rule a line (a header line is allowed)::

    action,field,prefix,proto,ports
    deny,src,10.66.0.0/16,any,any
    allow,dst,192.168.1.0/24,tcp,22
    deny,dst,192.168.1.0/24,tcp,1-1023

``field`` is src or dst (the IPv4 address the prefix tests); ``proto`` any,
tcp, udp or sctp; ``ports`` any, a port or a range (the destination port).
Non-IPv4 packets get the default.  Rules are few: the loop is over rules,
each one a vector test over the whole batch.  Counters: ``acl_allowed``,
``acl_denied``.
"""

import csv
import ipaddress
from pathlib import Path

import numpy as np

PROTOS = {"any": None, "tcp": 6, "udp": 17, "sctp": 132}


def parse_rules(path: Path) -> list[tuple[bool, str, int, int, int | None, int, int]]:
    rules = []
    with path.open(newline="") as f:
        for line, row in enumerate(csv.reader(f), 1):
            if not row or row[0].strip().startswith("#") or row[0].strip() == "action":
                continue
            try:
                action, fld, prefix, proto, ports = (c.strip() for c in row)
                if action not in ("allow", "deny") or fld not in ("src", "dst") or proto not in PROTOS:
                    raise ValueError("action is allow/deny, field src/dst, proto any/tcp/udp/sctp")
                net = ipaddress.IPv4Network(prefix)
                lo, _, hi = ports.partition("-")
                lo, hi = (0, 65535) if ports == "any" else (int(lo), int(hi or lo))
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: {','.join(row)!r}: {exc}") from None
            rules.append((action == "allow", fld, int(net.network_address), int(net.netmask), PROTOS[proto], lo, hi))
    return rules


def setup(ctx):
    ctx.state["rules"] = parse_rules(Path(ctx.base_dir) / ctx.options["acl"])
    ctx.state["default"] = ctx.options.get("default", "allow") == "allow"


def acl(batch):
    v4, l4 = batch.ipv4, batch.l4
    allow = np.full(batch.n, batch.ctx.state["default"])
    undecided = v4.valid.copy()
    for allowed, fld, net, mask, proto, lo, hi in batch.ctx.state["rules"]:
        addr = v4.src if fld == "src" else v4.dst
        hit = undecided & ((addr & np.uint32(mask)) == net)
        if proto is not None:
            hit &= l4.proto == proto
        if (lo, hi) != (0, 65535):
            hit &= l4.ports & (l4.dport >= lo) & (l4.dport <= hi)
        allow[hit] = allowed
        undecided &= ~hit
    batch.count("acl_allowed", int(allow.sum()))
    batch.count("acl_denied", int(batch.n - allow.sum()))
    return allow
