"""Issue #27, clear defaults and hints: no [workers] means forward; a verifying sink that fails a worker that
rewrites packets by design names the key to change; "lost" beside "accounting OK" says what it is."""

from __future__ import annotations

import re

from ixypipe.protocols import ETH_HEADER_LEN, IP4_TTL
from ixypipe.sim.payload import SIM_SEQ_OFF
from tests.support.runs import FWD, run, summary_of, variant

PACKETS = "20000"


def worker_file(tmp_path, body: str) -> None:
    (tmp_path / "w.py").write_text(body)


def test_a_ttl_rewriting_worker_is_told_to_use_a_count_sink(tmp_path):
    worker_file(tmp_path, f"def ttl(batch):\n    batch.data[batch.idx, {ETH_HEADER_LEN + IP4_TTL}] -= 1\n")
    path = variant(tmp_path, function='"w.py:ttl"', expect_touch="false")
    r = run([str(path), "--packets", PACKETS], timeout=180)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    sims = re.findall(r"^sim (p\d): .*sink received ([\d,]+), .*corrupt ([\d,]+),", out, re.M)
    assert len(sims) == 2 and all(got == bad != "0" for _, got, bad in sims), out     # every frame changed
    hints = [line for line in out.splitlines() if line.startswith("hint: ")]
    assert len(hints) == 1, out                                                       # said once, for both ports
    assert ("the worker (w.py:ttl) rewrites packets (frames with the generator's record but other bytes changed: "
            f"p0 {sims[0][1]}, p1 {sims[1][1]}): use mode = \"count\" in [ports.sink] of p0, p1") in hints[0]
    assert out.rstrip().endswith("accounting BROKEN")


def test_macswap_against_touch_checking_sinks_is_told_to_drop_expect_touch(tmp_path):
    path = variant(tmp_path, function='"macswap"')
    r = run([str(path), "--packets", PACKETS, "--json"], timeout=180)
    assert r.returncode == 1, r.stdout + r.stderr
    s = summary_of(r.stdout)
    for port in ("p0", "p1"):        # MACs are outside the checksum: not corrupt, only untouched
        sim = s["sim"][port]
        assert (sim["sink_corrupt"], sim["sink_rewritten"]) == (0, 0)
        assert sim["sink_untouched"] == sim["sink_received"] > 0
    assert s["hints"] == ["expect_touch = true checks for the touch worker's data[1]++, which macswap does not do: "
                          "set expect_touch = false in [ports.sink] of p0, p1 (MAC rewrites pass a verifying sink), "
                          "or mode = \"count\" if the worker rewrites more"]


def test_no_workers_table_means_forward(tmp_path):
    text = FWD.read_text()
    without = re.sub(r"^\[workers\]\n(?:(?!\[).*\n)*", "", text, flags=re.M)
    assert "[workers]" not in without and "function" not in without
    path = tmp_path / "pipeline.toml"
    path.write_text(without)
    r = run([str(path), "--packets", PACKETS, "--json"], timeout=180)
    s = summary_of(r.stdout)
    for port in ("p0", "p1"):        # forward leaves byte 1 alone, as touch would not: every frame untouched
        sim = s["sim"][port]
        assert sim["sink_corrupt"] == 0
        assert sim["sink_untouched"] == sim["sink_received"] > 0
    assert s["hints"] == ["expect_touch = true checks for the touch worker's data[1]++, which forward does not do: "
                          "set expect_touch = false in [ports.sink] of p0, p1 (MAC rewrites pass a verifying sink), "
                          "or mode = \"count\" if the worker rewrites more"]
    assert r.returncode == 1


def test_lost_beside_accounting_ok_is_explained_on_its_line(tmp_path):
    # drops every frame with an odd sequence number: the sinks see gaps (lost), the pipeline counts the drops
    worker_file(tmp_path, f"def odd(batch):\n    batch.drop(batch.data[batch.idx, {SIM_SEQ_OFF}] & 1 == 1)\n")
    path = variant(tmp_path, function='"w.py:odd"', expect_touch="false")
    r = run([str(path), "--packets", PACKETS], timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    lost = sum(int(n.replace(",", "")) for n in re.findall(r"^sim p\d: .*, lost ([\d,]+),", r.stdout, re.M))
    assert lost > 0
    assert re.search(r"^dropped +[\d,]+ +\(worker [\d]+", r.stdout, re.M), r.stdout
    last = r.stdout.rstrip().splitlines()[-1]
    assert last == (f"accounting OK (the sinks' {lost:,} lost are frames missed at RX or dropped on the way, "
                    "each counted above)")
    assert "hint: " not in r.stdout
