"""Soak: 10^7 packets through the pipeline with exact accounting and flat resident memory."""

from __future__ import annotations

import pytest

from tests.support.runs import intervals_of, run, summary_of, variant

PACKETS = 10_000_000
RSS_GROWTH_KIB = 4096      # allowed growth of any stage between the 1st and the last million


@pytest.mark.slow
def test_ten_million_packets_exact_accounting_and_flat_memory(tmp_path):
    pipeline = variant(tmp_path, rate_mpps="0.0")     # generators fill whatever descriptors are free
    res = run([str(pipeline), "--packets", str(PACKETS), "--json"], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    s = summary_of(res.stdout)
    assert s["ok"] and s["in_flight"] == 0
    assert s["received"] >= PACKETS
    assert s["received"] == s["transmitted"] + sum(s["drops"].values())
    assert sum(s["drops"].values()) == 0
    for port in ("p0", "p1"):
        sim = s["sim"][port]
        assert sim["sink_received"] == s["ports"][port]["tx_packets"]
        assert sim["sink_corrupt"] == sim["sink_reordered"] == sim["sink_untouched"] == 0
    intervals = intervals_of(res.stdout)
    received = [sum(p["rx_packets"] for p in d["ports"].values()) for d in intervals]
    first = next(i for i, r in enumerate(received) if r >= 1_000_000)
    early, late = intervals[first]["stages"], intervals[-1]["stages"]
    for name, stage in late.items():
        grew = stage["rss_kib"] - early[name]["rss_kib"]
        assert grew < RSS_GROWTH_KIB, f"{name} grew by {grew} KiB from the first to the last million"
