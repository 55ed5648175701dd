"""Count packets and bytes per IPv4 source address with keyed counters (batch.count_by).

    [workers]
    function = "examples/source_counter.py:count_sources"
    processes = 2                 # each worker counts what it sees; the summary sums them per address

The tables are compiled hash tables in the workers' shared memory: no name
limit, no Python per packet.  The run's summary (and ``--json``'s
"keyed_counters", and ``--metrics-port``'s ixypipe_keyed_* series) shows each
table's distinct keys, totals, overflow and its top 10 addresses summed over
the workers (``kind="ipv4"``: shown as addresses; the JSON has the integer too).
"""


def count_sources(batch):
    v4 = batch.ipv4
    src = v4.src[v4.valid]
    batch.count_by("src_packets", src, kind="ipv4")                          # 1 per packet
    batch.count_by("src_bytes", src, batch.lengths[v4.valid], kind="ipv4")   # its length in bytes
