"""Keyed counting in a running pipeline (issue #27's target): 100,000 distinct IPv4 sources replayed from a
pcap through two workers that count_by per source forwards every packet, exits 0, and the summary's top
keys, merged over the workers, are what the input says; teardown's returned dict is merged too."""

from __future__ import annotations

import ipaddress
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from ixypipe.pcapfile import PcapWriter, read_pcap
from tests.support.runs import summary_of

IXYPIPE = [sys.executable, "-m", "ixypipe"]
REPO = Path(__file__).resolve().parent.parent
SOURCES = 100_000
HEAVY = 25                    # sources with extra packets: the top keys
CEILING = 300                 # seconds: a generous bound for a busy 2-CPU machine, never a rate

WORKER = '''
def count_sources(batch):
    v4 = batch.ipv4
    src = v4.src[v4.valid]
    batch.count_by("src", src, kind="ipv4")
    batch.count_by("src_bytes", src, batch.lengths[v4.valid], kind="ipv4")


def teardown(ctx):
    return {"teardowns": 1, "worker_ids": {ctx.worker + 100: ctx.worker + 1}}
'''


def frame(src: int, dst: int, sport: int, dport: int, size: int = 60) -> bytes:
    """An Ethernet + IPv4 + UDP frame of ``size`` bytes."""
    eth = bytes.fromhex("020000000002" "020000000001" "0800")
    ip = struct.pack(">BBHHHBBHII", 0x45, 0, size - 14, 0, 0, 64, 17, 0, src, dst)
    udp = struct.pack(">HHHH", sport, dport, size - 34, 0)
    return (eth + ip + udp).ljust(size, b"\0")


def frames_of(src: np.ndarray, sizes: np.ndarray, rng) -> list[bytes]:
    """One frame per source address, of the given size, to several destinations and ports (so one source's
    packets reach both workers: the flow hash takes addresses and ports)."""
    n = len(src)
    base = np.frombuffer(frame(0, 0, 0, 0), np.uint8)
    out = np.tile(base, (n, 1))
    out[:, 26:30] = src.astype(">u4").view(np.uint8).reshape(n, 4)
    out[:, 30:34] = (0x0B000000 + rng.integers(0, 64, n)).astype(">u4").view(np.uint8).reshape(n, 4)
    out[:, 34:36] = rng.integers(1024, 65535, n).astype(">u2").view(np.uint8).reshape(n, 2)
    out[:, 36:38] = np.full(n, 53, ">u2").view(np.uint8).reshape(n, 2)
    rows = [r.tobytes() for r in out]
    return [r + bytes(int(s) - len(r)) for r, s in zip(rows, sizes, strict=True)]


def expected_top(keys: np.ndarray, amounts: np.ndarray, n: int, ipv4: bool = True) -> list[dict]:
    """The top ``n`` keys by summed amount, largest first, a tie to the lower key: from the input alone."""
    totals: dict[int, int] = {}
    for k, a in zip(keys.tolist(), amounts.tolist(), strict=True):
        totals[k] = totals.get(k, 0) + a
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [{"key": k, "key_text": str(ipaddress.IPv4Address(k)) if ipv4 else str(k), "amount": a}
            for k, a in ranked]


def test_counting_100000_sources_forwards_every_packet_and_the_merged_top_is_exact(tmp_path):
    rng = np.random.default_rng(27)
    sources = (0x0A000000 + rng.choice(1 << 24, SOURCES, replace=False)).astype(np.uint32)
    heavy = rng.choice(SOURCES, HEAVY, replace=False)
    extra = np.repeat(sources[heavy], 20 + np.arange(HEAVY) * 3)           # distinct packet counts at the top
    src = np.concatenate((sources, extra))
    rng.shuffle(src)
    sizes = rng.integers(60, 200, len(src))
    with PcapWriter(tmp_path / "in.pcap") as w:
        w.write_batch(frames_of(src, sizes, rng))
    (tmp_path / "count.py").write_text(WORKER)
    (tmp_path / "p.toml").write_text(
        '[pipeline]\nname = "keyed"\nhugepages = "never"\n\n'
        '[[ports]]\nname = "in"\ndriver = "pcap"\npath = "in.pcap"\nforward_to = "out"\n\n'
        '[[ports]]\nname = "out"\ndriver = "pcap"\npath = "out.pcap"\nmode = "write"\nforward_to = "in"\n\n'
        '[workers]\nfunction = "count.py:count_sources"\nprocesses = 2\n')
    res = subprocess.run([*IXYPIPE, "run", str(tmp_path / "p.toml"), "--json"], capture_output=True, text=True,
                         timeout=CEILING, cwd=REPO)
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    total = len(src)
    assert s["received"] == s["transmitted"] == total, s
    assert sum(s["drops"].values()) == 0 and s["in_flight"] == 0
    assert len(read_pcap(tmp_path / "out.pcap").packets()) == total
    keyed = s["keyed_counters"]
    assert set(keyed) == {"src", "src_bytes", "worker_ids"}
    t = keyed["src"]
    assert t["type"] == "keyed_table"
    assert (t["keys"], t["updates"], t["total"]) == (SOURCES, total, total)
    assert t["overflow_updates"] == t["overflow_amount"] == 0
    assert t["top"] == expected_top(src, np.ones(total, np.int64), 10)
    assert t["top"][0]["amount"] == 1 + 20 + 3 * (HEAVY - 1)
    assert len(t["workers"]) == 2 and all(w["used"] < SOURCES for w in t["workers"].values())   # split, merged
    assert sum(w["updates"] for w in t["workers"].values()) == total
    b = keyed["src_bytes"]
    assert (b["keys"], b["total"]) == (SOURCES, int(sizes.sum()))
    assert b["top"] == expected_top(src, sizes, 10)
    assert s["counters"]["teardowns"] == 2                              # teardown(ctx)'s dict, merged
    assert keyed["worker_ids"]["top"] == [{"key": 101, "key_text": "101", "amount": 2},
                                          {"key": 100, "key_text": "100", "amount": 1}]
    assert t["kind"] == "ipv4" and keyed["worker_ids"]["kind"] == "int"


GUARDED = '''
import numpy as np
from ixypipe.layout import KEYED_REGION

calls = 0


def guarded(batch):
    global calls
    calls += 1
    batch.count_by("src", batch.ipv4.src, kind="ipv4")
    if batch.ctx.worker != 0:
        return
    if calls == 2:                          # its own block's header, garbage: the supervisor reads by the plan
        header = batch.ctx.keyed.block["header"]
        header["count"], header["tables"], header["slots"] = 10**9, -5, 3
    elif calls == 3:                        # the other worker's block: not writable here
        arena = batch.bufs.arena
        batch.count("tried", batch.n)
        arena.view(arena.region(KEYED_REGION), np.uint8)[-4096:] = 1
'''


def test_a_worker_cannot_write_another_workers_block_and_its_own_header_cannot_mislead_the_summary(tmp_path):
    rng = np.random.default_rng(4)
    src = (0x0A000000 + rng.integers(0, 500, 3000)).astype(np.uint32)
    with PcapWriter(tmp_path / "in.pcap") as w:
        w.write_batch(frames_of(src, np.full(len(src), 60), rng))
    (tmp_path / "guarded.py").write_text(GUARDED)
    (tmp_path / "p.toml").write_text(
        '[pipeline]\nname = "keyed"\nhugepages = "never"\n\n'
        '[[ports]]\nname = "in"\ndriver = "pcap"\npath = "in.pcap"\nforward_to = "out"\n\n'
        '[[ports]]\nname = "out"\ndriver = "pcap"\npath = "out.pcap"\nmode = "write"\nforward_to = "in"\n\n'
        '[workers]\nfunction = "guarded.py:guarded"\nprocesses = 2\nkeyed_tables = 2\nkeyed_slots = 4096\n')
    res = subprocess.run([*IXYPIPE, "run", str(tmp_path / "p.toml"), "--json"], capture_output=True, text=True,
                         timeout=CEILING, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "read-only" in res.stderr                       # numpy's words for the refused write, logged once
    s = summary_of(res.stdout)
    tried = s["worker_counters"]["worker-0"]["tried"]
    assert s["drops"]["worker_error"] == tried > 0
    assert s["received"] == len(src) and s["transmitted"] == len(src) - tried
    assert set(s["keyed_counters"]) == {"src"}             # not the tables its count said, only those made
    t = s["keyed_counters"]["src"]
    assert (t["keys"], t["updates"], t["capacity"]) == (len(np.unique(src)), len(src), 3072)
    assert t["top"] == expected_top(src, np.ones(len(src), np.int64), 10)


TRIED = '''
def by_source(batch):
    batch.count_by("src", batch.ipv4.src, batch.lengths, kind="ipv4")


def teardown(ctx):
    return {"done": 1, "ports": {53: 2}}
'''


def test_ixypipe_try_shows_keyed_tables_and_what_teardown_returned(tmp_path):
    import json

    frames = [frame(0x0A000001 + i % 2, 0x0B000001, 1000, 53, 60 + i) for i in range(5)]
    with PcapWriter(tmp_path / "five.pcap") as w:
        w.write_batch(frames)
    (tmp_path / "tried.py").write_text(TRIED)
    run = [*IXYPIPE, "try", "tried.py:by_source", "five.pcap", "--batch-size", "2"]
    text = subprocess.run(run, capture_output=True, text=True, timeout=CEILING, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    at = lines.index("counters: done=1")
    assert lines[at + 1:at + 5] == ["keyed src: 2 keys, 5 updates, total 310, overflow 0",
                                    "  top: 10.0.0.1 186, 10.0.0.2 124",
                                    "keyed ports: 1 keys, 1 updates, total 2, overflow 0", "  top: 53 2"]
    done = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=CEILING, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    got = json.loads(done.stdout)
    assert got["keyed_counters"]["src"]["top"] == [{"key": 0x0A000001, "key_text": "10.0.0.1", "amount": 186},
                                                   {"key": 0x0A000002, "key_text": "10.0.0.2", "amount": 124}]


def test_the_keyed_counters_page_examples_run_and_give_what_it_says(tmp_path):
    import re

    text = (REPO / "docs" / "keyed-counters.md").read_text()
    counting, merging = re.findall(r"```python\n(.*?)```", text, re.S)
    example = (REPO / "examples" / "source_counter.py").read_text()
    assert "def count_sources" + example.split("def count_sources", 1)[1] == counting     # the page shows it
    (tmp_path / "counting.py").write_text(counting)
    (tmp_path / "merging.py").write_text(merging)
    frames = [frame(0x0A000001 + i % 2, 0x0B000001, 1000, 53 + i % 2, 60 + i) for i in range(5)]
    with PcapWriter(tmp_path / "five.pcap") as w:
        w.write_batch(frames)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = {}
    for worker in ("counting.py:count_sources", "merging.py:worker"):
        done = subprocess.run([*IXYPIPE, "try", worker, "five.pcap"], capture_output=True, text=True,
                              timeout=CEILING, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        out[worker] = done.stdout.splitlines()
    assert out["counting.py:count_sources"][-6:-1] == [
        "counters: none", "keyed src_packets: 2 keys, 5 updates, total 5, overflow 0",
        "  top: 10.0.0.1 3, 10.0.0.2 2", "keyed src_bytes: 2 keys, 5 updates, total 310, overflow 0",
        "  top: 10.0.0.1 186, 10.0.0.2 124"]
    assert out["merging.py:worker"][-4:-1] == [
        "counters: ports_seen=2", "keyed udp_ports: 2 keys, 2 updates, total 5, overflow 0", "  top: 53 3, 54 2"]
