"""Count packets and bytes per IPv4 source address with keyed counters (batch.count_by).

    [workers]
    function = "examples/source_counter.py:count_sources"
    processes = 2                 # each worker counts what it sees; the summary sums them per address

The tables are compiled hash tables in the workers' shared memory: no name
limit, no Python per packet.  The run's summary (and ``--json``'s
"keyed_counters", and ``--metrics-port``'s ixypipe_keyed_* series) shows each
table's distinct keys, totals, overflow and its top 10 addresses summed over
the workers; a key is the address as an integer (ipaddress.ip_address(k)).
"""


def count_sources(batch):
    v4 = batch.ipv4
    src = v4.src[v4.valid]
    batch.count_by("src_packets", src)                          # 1 per packet
    batch.count_by("src_bytes", src, batch.lengths[v4.valid])   # its length per packet
