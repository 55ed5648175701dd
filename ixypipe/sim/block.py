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
    ("pad", "u1", (24,)),
])
SIM_COUNTER_FIELDS = ("generated", "gen_bytes", "rx_delivered", "rx_missed", "tx_sent", "tx_bytes",
                      "sink_received", "sink_lost", "sink_reordered", "sink_corrupt", "sink_untouched",
                      "dma_faults")
SIM_COUNTERS_DTYPE = np.dtype([(name, "<i8") for name in SIM_COUNTER_FIELDS])
