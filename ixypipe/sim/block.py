"""Layout of the simulator's shared block: the control row its owner writes and the per-port counters."""

import numpy as np

# The simulator's shared block (file "<sim root>/counters"): a control row the
# server writes (command, traffic) and the model process answers (pid,
# heartbeat), then one row of int64 counters per simulated port.
SIM_CMD_RUN = 0
SIM_CMD_STOP = 1
SIM_CONTROL_DTYPE = np.dtype([
    ("command", "<i8"),
    ("traffic", "<i8"),          # 1 = generators send, 0 = paused
    ("pid", "<i8"),
    ("heartbeat_ns", "<i8"),
    ("steps", "<i8"),
    ("traffic_applied", "<i8"),  # the model's answer: the traffic state its generators are in now
    ("pad", "u1", (16,)),
])
# a count sink's size histogram, in the order of traffic.SIZE_BUCKET_NAMES (RFC 2819 buckets, FCS included)
SIM_SIZE_FIELDS = ("sink_size_lt64", "sink_size_64", "sink_size_65_127", "sink_size_128_255", "sink_size_256_511",
                   "sink_size_512_1023", "sink_size_1024_1518", "sink_size_gt1518")
# a verifying sink's one-way latency from the generator (sim/latency.py): samples, then nanoseconds
SIM_LATENCY_FIELDS = ("sink_latency_samples", "sink_latency_p50_ns", "sink_latency_p90_ns", "sink_latency_p99_ns",
                      "sink_latency_max_ns")
SIM_COUNTER_FIELDS = ("generated", "gen_bytes", "rx_delivered", "rx_missed", "rx_undersize", "rx_oversize",
                      "tx_sent", "tx_bytes", "sink_received", "sink_lost", "sink_reordered", "sink_corrupt", "sink_untouched",
                      "dma_faults", "sink_bytes", "sink_pcap_failed", "sink_rewritten") + SIM_LATENCY_FIELDS + SIM_SIZE_FIELDS
SIM_COUNTERS_DTYPE = np.dtype([(name, "<i8") for name in SIM_COUNTER_FIELDS])
