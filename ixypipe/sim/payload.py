"""The software 82599's own traffic format: what its generator writes and its verifying sink checks."""

from ixypipe.protocols import UDP_HEADER_LEN, UDP_OFF

# --- simulated traffic (software 82599 generator and sink) ------------------------
# Generated frames are Ethernet II / IPv4 (no options) / UDP; the UDP payload
# starts with a little-endian record the sink checks: magic, generator id,
# flow id, sequence number, checksum.  The smallest frame (60 bytes, no FCS)
# holds exactly the headers and this record.
SIM_PAYLOAD_OFF = UDP_OFF + UDP_HEADER_LEN          # 42
SIM_MAGIC = 0x1C5E
SIM_MAGIC_OFF = SIM_PAYLOAD_OFF                     # u16
SIM_GEN_OFF = SIM_PAYLOAD_OFF + 2                   # u16 generator id
SIM_FLOW_OFF = SIM_PAYLOAD_OFF + 4                  # u16 flow id
SIM_SEQ_OFF = SIM_PAYLOAD_OFF + 6                   # u64 sequence number within the flow
SIM_CSUM_OFF = SIM_PAYLOAD_OFF + 14                 # u32 checksum of bytes ETH_HEADER_LEN.. (this field excluded)
SIM_MIN_FRAME = SIM_PAYLOAD_OFF + 18                # 60
SIM_MAX_FRAME = 1514                                # without FCS
SIM_TOUCH_OFF = 1                                   # the byte ixy-fwd increments
