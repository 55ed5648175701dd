"""Bad packets through a whole pipeline: empty and oversized frames are dropped and counted, the rest pass intact."""

from __future__ import annotations

import numpy as np

from ixypipe.pcapfile import PcapWriter, read_pcap
from tests.support.runs import run, summary_of

GOOD = 50
GOOD_SIZE = 60
OVERSIZE = 3000        # larger than a 2048-byte buffer's 1984 data bytes


def test_empty_and_oversized_frames_are_dropped_with_a_reason_and_the_rest_arrive_byte_exact(tmp_path):
    rng = np.random.default_rng(7)
    good = [rng.integers(0, 256, GOOD_SIZE, dtype=np.uint8).tobytes() for _ in range(GOOD)]
    frames = good[:10] + [b""] + good[10:] + [bytes(OVERSIZE)]
    with PcapWriter(tmp_path / "in.pcap") as w:
        w.write_batch(frames)
    out = tmp_path / "out.pcap"
    (tmp_path / "p.toml").write_text(f'''
[pipeline]
name = "badpackets"
[[ports]]
name = "in"
driver = "pcap"
path = "in.pcap"
loop = 1
forward_to = "out"
[[ports]]
name = "out"
driver = "pcap"
path = "{out}"
mode = "write"
forward_to = "in"
[workers]
function = "forward"
''')
    res = run([str(tmp_path / "p.toml"), "--duration", "3", "--json"])
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["ok"] and s["in_flight"] == 0
    # the empty frame reached the RX stage and was dropped there; the oversized one never fit a buffer
    assert s["drops"]["bad_packet"] == 1
    assert s["received"] == GOOD + 1 and s["transmitted"] == GOOD
    assert s["port_drops"]["in"] == {"rx_missed": 0, "rx_too_long": 1, "rx_undersize": 0}   # at the port, named
    got = read_pcap(out)
    assert [bytes(got.raw[o:o + n]) for o, n in zip(got.offsets, got.caplen, strict=True)] == good
