"""pcap ports: replaying a file into mempool buffers, recording transmitted buffers to a file."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic.device import DeviceError, PortSpec
from ixypipe.nic.pcap import PcapDevice, PcapPortError
from ixypipe.pcapfile import PcapWriter, read_pcap

POOL = 256


@pytest.fixture
def env(make_arena):
    """(arena, bufs, pool, freed): a packet arena with one 256-buffer pool; ``freed`` collects tx_done."""
    arena = make_arena(8 << 20)
    bufs = PacketBuffers.create(arena, POOL)
    pool = Mempool.create(arena, bufs, "pool0", 0, POOL, 0)
    freed: list[int] = []

    def tx_done(idx):
        freed.extend(int(i) for i in idx)
        pool.free(idx)

    return arena, bufs, pool, freed, tx_done


def sample(path, n=40, seed=3, sizes=None) -> list[bytes]:
    rng = np.random.default_rng(seed)
    sizes = sizes or [int(s) for s in rng.integers(60, 1515, n)]
    pkts = [rng.integers(0, 256, s, dtype=np.uint8).tobytes() for s in sizes]
    with PcapWriter(path) as w:
        w.write_batch(pkts)
    return pkts


def spec(path, **options) -> PortSpec:
    return PortSpec("cap", "pcap", str(path), options=options)


def drain(dev, pool, limit=10_000) -> list[bytes]:
    """Everything the port replays, freeing each buffer after reading it."""
    got, out = [], np.empty(32, np.uint32)
    for _ in range(limit):
        n = dev.rx_batch(0, out)
        if n == 0 and dev.finished:
            break
        got += [dev.bufs.packet(int(i)).tobytes() for i in out[:n]]
        pool.free(out[:n].copy())
    return got


def test_replays_every_packet_in_order_then_stops(env, tmp_path):
    arena, bufs, pool, _, _ = env
    pkts = sample(tmp_path / "in.pcap")
    dev = PcapDevice.open(spec(tmp_path / "in.pcap"), arena, bufs, [pool])
    assert drain(dev, pool) == pkts
    out = np.empty(32, np.uint32)
    assert dev.rx_batch(0, out) == 0
    s = dev.read_stats()
    assert s.rx_packets == 40 and s.rx_bytes == sum(map(len, pkts)) and s.rx_dropped == 0
    assert pool.available() == POOL
    dev.close()


def test_loops_n_times_and_counts_passes(env, tmp_path):
    arena, bufs, pool, _, _ = env
    pkts = sample(tmp_path / "in.pcap", n=7)
    dev = PcapDevice.open(spec(tmp_path / "in.pcap", loop=3), arena, bufs, [pool])
    assert drain(dev, pool) == pkts * 3
    assert int(dev.counters.header["replays_done"][0]) == 3
    assert dev.read_stats().rx_packets == 21
    dev.close()


def receive(dev, pool, polls: int) -> int:
    """Poll RX queue 0 ``polls`` times, freeing what arrives; how many packets came."""
    out = np.empty(64, np.uint32)
    total = 0
    for _ in range(polls):
        n = dev.rx_batch(0, out)
        total += n
        pool.free(out[:n].copy())
    return total
def test_loop_zero_replays_forever(env, tmp_path):
    arena, bufs, pool, _, _ = env
    sample(tmp_path / "in.pcap", n=5)
    dev = PcapDevice.open(spec(tmp_path / "in.pcap", loop=0), arena, bufs, [pool])
    assert receive(dev, pool, polls=20) == 100 and not dev.finished
    dev.close()


def test_an_endless_replay_paused_by_the_supervisor_sends_no_more(env, tmp_path):
    arena, bufs, pool, _, _ = env
    sample(tmp_path / "in.pcap", n=5)
    sup = PcapDevice.open(spec(tmp_path / "in.pcap", loop=0), arena, bufs, [pool])
    rx = PcapDevice.attach(spec(tmp_path / "in.pcap", loop=0), arena, bufs, {0: pool})
    assert receive(rx, pool, polls=3) == 15
    sup.pause_source()
    out = np.empty(64, np.uint32)                      # the pipeline stops: the RX stage's replay ends where it is
    assert rx.rx_batch(0, out) == 0 and rx.rx_batch(0, out) == 0
    assert sup.read_stats().rx_packets == 15 and not sup.source_finished()     # paused, not finished
    rx.close()
    sup.close()


def test_rate_paces_the_replay(env, tmp_path):
    arena, bufs, pool, _, _ = env
    sample(tmp_path / "in.pcap", n=50, sizes=[60] * 50)
    dev = PcapDevice.open(spec(tmp_path / "in.pcap", loop=0, rate_mpps=0.005), arena, bufs, [pool])
    out = np.empty(64, np.uint32)
    total = 0
    start = time.monotonic()
    while time.monotonic() - start < 0.4:
        n = dev.rx_batch(0, out)
        total += n
        pool.free(out[:n].copy())
        time.sleep(0.001)
    elapsed = time.monotonic() - start
    # 5000 packets per second: never ahead of the clock by more than one packet
    assert total <= elapsed * 5000 + 1
    assert total >= 0.5 * 0.4 * 5000
    dev.close()


def test_records_larger_than_a_buffer_are_skipped_and_counted(env, tmp_path):
    arena, bufs, pool, _, _ = env
    pkts = sample(tmp_path / "in.pcap", sizes=[60, 3000, 100, bufs.max_data, bufs.max_data + 1])
    dev = PcapDevice.open(spec(tmp_path / "in.pcap"), arena, bufs, [pool])
    assert drain(dev, pool) == [pkts[0], pkts[2], pkts[3]]
    stats = dev.read_stats()
    assert (stats.rx_too_long, stats.rx_dropped) == (2, 0)      # too long for a buffer, not a miss
    dev.close()


def test_an_empty_pool_holds_the_replay_back(env, tmp_path):
    arena, bufs, pool, _, _ = env
    sample(tmp_path / "in.pcap", n=20, sizes=[64] * 20)
    dev = PcapDevice.open(spec(tmp_path / "in.pcap"), arena, bufs, [pool])
    held = pool.alloc(POOL - 3)
    out = np.empty(32, np.uint32)
    assert dev.rx_batch(0, out) == 3
    assert dev.rx_batch(0, out) == 0
    pool.free(out[:3].copy())
    pool.free(held)
    assert dev.rx_batch(0, out) == 17
    dev.close()


def test_write_mode_records_transmitted_buffers(env, tmp_path):
    arena, bufs, pool, freed, tx_done = env
    pkts = sample(tmp_path / "src.pcap", n=30)
    out_path = tmp_path / "out.pcap"
    sup = PcapDevice.open(spec(out_path, mode="write"), arena, bufs, [pool], tx_done=tx_done)
    assert len(read_pcap(out_path)) == 0          # the header alone, written by open
    tx = PcapDevice.attach(spec(out_path, mode="write"), arena, bufs, None, tx_done=tx_done)
    idx = pool.alloc(30)
    for i, p in zip(idx, pkts, strict=True):
        bufs.write_packet(int(i), p)
    assert tx.tx_batch(0, idx[:10]) == 10
    assert tx.tx_batch(0, idx[10:]) == 20
    assert freed == [int(i) for i in idx] and pool.available() == POOL
    out = np.empty(8, np.uint32)
    assert tx.rx_batch(0, out) == 0
    tx.close()
    assert read_pcap(out_path).packets() == pkts
    s = sup.read_stats()                           # the supervisor sees what the TX stage counted
    assert (s.tx_packets, s.tx_bytes, s.rx_packets) == (30, sum(map(len, pkts)), 0)
    if shutil.which("tshark"):
        res = subprocess.run(["tshark", "-r", str(out_path)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and len(res.stdout.splitlines()) == 30
    sup.close()


def test_attached_reader_counts_where_the_supervisor_sees_it(env, tmp_path):
    arena, bufs, pool, _, _ = env
    sample(tmp_path / "in.pcap", n=12)
    sup = PcapDevice.open(spec(tmp_path / "in.pcap"), arena, bufs, [pool])
    rx = PcapDevice.attach(spec(tmp_path / "in.pcap"), arena, bufs, {0: pool})
    assert len(drain(rx, pool)) == 12
    assert sup.read_stats().rx_packets == 12
    sup.reset_stats()
    assert sup.read_stats().rx_packets == 0
    rx.close()
    sup.close()


def test_transmitting_to_a_reading_port_discards_and_counts(env, tmp_path):
    arena, bufs, pool, freed, tx_done = env
    sample(tmp_path / "in.pcap", n=3)
    dev = PcapDevice.open(spec(tmp_path / "in.pcap"), arena, bufs, [pool], tx_done=tx_done)
    idx = pool.alloc(5)
    bufs.length[idx] = 60
    assert dev.tx_batch(0, idx) == 5
    assert dev.read_stats().tx_dropped == 5 and dev.read_stats().tx_packets == 0
    assert freed == [int(i) for i in idx]
    dev.close()


@pytest.mark.parametrize("opts, address, message", [
    ({"mode": "rw"}, "x.pcap", r"pcap mode must be one of read, write, got 'rw'"),
    ({"loop": -1}, "x.pcap", r"pcap loop must be a whole number >= 0"),
    ({"rate_mpps": "fast"}, "x.pcap", r"rate_mpps must be >= 0"),
    ({"speed": 1}, "x.pcap", r"unknown pcap option\(s\) speed"),
    ({}, "missing.pcap", r"port cap: no pcap file .*missing.pcap"),
    ({"mode": "write"}, "nodir/out.pcap", r"directory .*nodir for pcap file .* does not exist"),
    ({}, "", r"a pcap port needs a file path"),
])
def test_bad_options_and_files_are_named(env, tmp_path, opts, address, message):
    arena, bufs, pool, _, _ = env
    sample(tmp_path / "x.pcap", n=1)
    with pytest.raises(PcapPortError, match=message):
        PcapDevice.open(spec(tmp_path / address if address else "", **opts), arena, bufs, [pool])


def test_queues_and_unopened_ports_are_refused(env, tmp_path):
    arena, bufs, pool, _, _ = env
    sample(tmp_path / "x.pcap", n=1)
    two = PortSpec("cap", "pcap", str(tmp_path / "x.pcap"), rx_queues=2)
    with pytest.raises(PcapPortError, match="exactly one RX and one TX queue, got 2 RX / 1 TX"):
        PcapDevice.open(two, arena, bufs, [pool])
    with pytest.raises(DeviceError, match=r"port cap was not opened .*no region 'pcap.cap'"):
        PcapDevice.attach(spec(tmp_path / "x.pcap"), arena, bufs, {0: pool})


def test_pipeline_replays_a_file_into_a_pcap_sink(tmp_path):
    """`ixypipe run` with a pcap source (looped 3 times) forwarding into a pcap sink."""
    pytest.importorskip("ixypipe.workers.loader", reason="the worker loader is not built yet")
    pkts = sample(tmp_path / "in.pcap", n=50)
    (tmp_path / "p.toml").write_text(
        '[pipeline]\nname = "replay"\nbatch_size = 32\n\n'
        '[[ports]]\nname = "in"\ndriver = "pcap"\npath = "in.pcap"\nloop = 3\nforward_to = "out"\n\n'
        '[[ports]]\nname = "out"\ndriver = "pcap"\npath = "out.pcap"\nmode = "write"\nforward_to = "in"\n\n'
        '[workers]\nfunction = "forward"\n')
    res = subprocess.run([sys.executable, "-m", "ixypipe", "run", str(tmp_path / "p.toml"), "--packets", "150",
                          "--json"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")][-1]
    assert summary["ok"] is True
    assert summary["ports"]["out"]["tx_packets"] == 150
    assert read_pcap(tmp_path / "out.pcap").packets() == pkts * 3


def test_a_failing_write_is_counted_and_logged_once_and_the_port_goes_on(env, tmp_path, caplog):
    arena, bufs, pool, freed, tx_done = env
    out_path = tmp_path / "out.pcap"
    sup = PcapDevice.open(spec(out_path, mode="write"), arena, bufs, [pool], tx_done=tx_done)
    tx = PcapDevice.attach(spec(out_path, mode="write"), arena, bufs, None, tx_done=tx_done)
    idx = pool.alloc(12)
    bufs.length[idx] = 60
    assert tx.tx_batch(0, idx[:4]) == 4
    tx._open_writer()._file = open("/dev/full", "wb", buffering=0)     # noqa: SIM115 - the disk is full now
    assert tx.tx_batch(0, idx[4:8]) == 4
    assert tx.tx_batch(0, idx[8:]) == 4
    assert [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()] == [
        f"port cap: cannot write to {out_path}: No space left on device; frames sent to it are counted as dropped"]
    s = sup.read_stats()
    assert (s.tx_packets, s.tx_dropped) == (4, 8)
    assert freed == [int(i) for i in idx]          # every buffer went home
    tx.close()
    sup.close()
    assert len(read_pcap(out_path)) == 4


def test_a_pcapng_with_a_later_interface_of_another_link_type_is_refused_at_open(env, tmp_path):
    arena, bufs, pool, _, _ = env

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(shb + block(1, struct.pack("<HHI", 1, 0, 0))
                     + block(6, struct.pack("<IIIII", 0, 0, 0, 60, 60) + b"e" * 60)
                     + shb + block(1, struct.pack("<HHI", 276, 0, 0)))      # a second section: LINUX_SLL2
    with pytest.raises(PcapPortError, match=r"port cap: .*mixed.pcapng: link type 276 \(LINUX_SLL2\) is not Ethernet"):
        PcapDevice.open(spec(path), arena, bufs, [pool])
