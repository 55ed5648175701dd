"""dns_guard.py's logic as a compiled worker: drop DNS (UDP port 53, either direction), count what was dropped.

Use it in a pipeline file as the Python one:

    [workers]
    function = "examples/dns_guard_compiled.py:dns_guard"

The worker stage calls it from its compiled loop, with the batch's headers
parsed (``headers=True``: VLAN tags, IPv4 options and IPv6 extension headers
walked; later fragments have ``UDP`` False).  ixypipe/workers/compiled.py
has the contract; ``out[i]`` starts at the port's ``forward_to``.
"""

from ixypipe.workers.compiled import DPORT, DROP, SPORT, UDP, compiled_worker


@compiled_worker(counters=("dns_dropped",), headers=True)
def dns_guard(data, lengths, idx, n, out, h, counts):
    for i in range(n):
        if h.bools[UDP, i] and (h.u16[DPORT, i] == 53 or h.u16[SPORT, i] == 53):
            out[i] = DROP
            counts[0] += 1
