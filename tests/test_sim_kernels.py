"""The software 82599's compiled hot paths (sim/kernels.py) against the numpy reference.

One random stream of driver actions (refills with good and bad buffer
addresses, generator bursts, frames from a cable, TX posts with good and bad
descriptors, queue restarts) runs twice on the same arena, once per path;
afterwards the memory (rings and buffers), the registers, the counters, the
sink's verdicts and the faults must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ixypipe.memory.arena import Arena
from ixypipe.nic import registers as R
from ixypipe.pcapfile import PcapWriter
from ixypipe.sim import kernels
from ixypipe.sim.shape import FlowShape
from ixypipe.sim.world import GeneratorConfig, SimPortConfig, SimWorld, SinkConfig

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="needs numba: pip install numba (the fast extra)")

RING = 64
BUF = 2048
HEADROOM = 64
MAX_QUEUES = 4
N_BUFS = (MAX_QUEUES + 1) * RING
OUTSIDE = 0x10                              # a DMA address no arena page has


@pytest.fixture(scope="module")
def memory():
    """One arena with every queue's RX ring, a TX ring and the buffers, shared by all examples."""
    a = Arena.create(8 << 20, tag="kernels")
    rx = [a.alloc(f"rx{q}", RING * R.DESC_SIZE, within_page=True) for q in range(MAX_QUEUES)]
    tx = a.alloc("tx", RING * R.DESC_SIZE, within_page=True)
    bufs = a.alloc("bufs", N_BUFS * BUF, align=BUF)
    yield a, rx, tx, bufs
    a.destroy()


class Driver:
    """A hand-written driver for one port: rings and buffers in the arena, registers by hand."""

    def __init__(self, memory, world: SimWorld, queues: int, flows_rss: bool, small_buf_queue: int | None):
        self.arena, self.rx, self.tx, self.bufs = memory
        self.world, self.queues = world, queues
        self.gen_size = world.generators["p0"].packet_size
        self.p = p = world.ports["p0"]
        self.tail = [0] * MAX_QUEUES
        self.tx_tail = 0
        p.config[R.PCI_CFG_COMMAND] |= R.PCI_COMMAND_BUS_MASTER
        for q in range(queues):
            self.ring_regs(R.RDBAL(q), R.RDBAH(q), R.RDLEN(q), self.rx[q])
            size = 1 if q == small_buf_queue else 0          # 1 KB buffers: a 1514-byte frame faults
            p.set_reg(R.SRRCTL(q), R.SRRCTL_DESCTYPE_ADV_ONEBUF | R.SRRCTL_DROP_EN * (q % 2) | size)
            p.set_reg(R.RXDCTL(q), R.RXDCTL_ENABLE)
        self.ring_regs(R.TDBAL(0), R.TDBAH(0), R.TDLEN(0), self.tx)
        p.set_reg(R.TXDCTL(0), R.TXDCTL_ENABLE)
        if queues > 1 or flows_rss:
            for i in range(10):
                p.set_reg(R.RSSRK(i), int.from_bytes(R.RSS_DEFAULT_KEY[4 * i:4 * i + 4], "little"))
            for i in range(R.RETA_ENTRIES // 4):
                p.set_reg(R.RETA(i), int.from_bytes(bytes((4 * i + k) % queues for k in range(4)), "little"))
            p.set_reg(R.MRQC, R.MRQC_RSSEN | R.RSS_FIELDS_IPV4)
        p.set_reg(R.RXCTRL, R.RXCTRL_RXEN)
        p.set_reg(R.DMATXCTL, R.DMATXCTL_TE)
        world.step()

    def ring_regs(self, bal, bah, length, region):
        base = int(self.arena.phys(region.offset))
        self.p.set_reg(bal, base & 0xFFFFFFFF)
        self.p.set_reg(bah, base >> 32)
        self.p.set_reg(length, RING * R.DESC_SIZE)

    def addr(self, i: int) -> int:
        return int(self.arena.phys(self.bufs.offset + (i % N_BUFS) * BUF + HEADROOM))

    def refill(self, q: int, k: int, bad: int | None) -> None:
        q %= self.queues
        room = (self.p.reg(R.RDH(q)) - 1 - self.tail[q]) % RING
        d = self.arena.view(self.rx[q], R.RX_DESC_READ_DTYPE)
        for j in range(min(k, room)):
            slot = (self.tail[q] + j) % RING
            d["pkt_addr"][slot] = OUTSIDE if j == bad else self.addr(q * RING + slot)
            d["hdr_addr"][slot] = 0
        self.tail[q] = (self.tail[q] + min(k, room)) % RING
        self.p.set_reg(R.RDT(q), self.tail[q])

    def post_tx(self, k: int, lengths: list[int], rs_every: int, bad: int | None, bad_kind: int) -> None:
        d = self.arena.view(self.tx, R.TX_DESC_READ_DTYPE)
        room = (self.p.reg(R.TDH(0)) - 1 - self.tx_tail) % RING
        for j in range(min(k, room)):
            slot = (self.tx_tail + j) % RING
            length = lengths[j % len(lengths)] or self.rx_length(slot)
            cmd = R.TXD_CMD_DATA & ~(R.TXD_CMD_RS if (j + 1) % rs_every else 0) | length
            addr = self.addr(slot)                       # queue 0's RX buffers: generator frames or cable bytes
            if j == bad:
                addr, cmd = ((OUTSIDE, cmd), (addr, cmd & ~R.TXD_CMD_EOP), (addr, cmd & ~R.TXD_CMD_DEXT),
                             (addr, cmd & ~R.TXD_DTALEN_MASK))[bad_kind]
            d["buffer_addr"][slot] = addr
            d["cmd_type_len"][slot] = cmd
            d["olinfo_status"][slot] = length << R.TXD_PAYLEN_SHIFT
        self.tx_tail = (self.tx_tail + min(k, room)) % RING
        self.p.set_reg(R.TDT(0), self.tx_tail)

    def rx_length(self, slot: int) -> int:
        """The length queue 0's descriptor ``slot`` was written back with (the frame the generator put in that
        buffer: IMIX flows differ), or the generator's widest frame when it holds no written-back frame."""
        wb = self.arena.view(self.rx[0], R.RX_DESC_WB_DTYPE)[slot]
        return int(wb["length"]) if wb["status_error"] & R.RXD_STAT_DD and wb["length"] else self.gen_size

    def restart(self, q: int) -> None:
        """Disable and re-enable an RX queue (how a driver recovers a faulted queue)."""
        q %= self.queues
        self.p.set_reg(R.RXDCTL(q), 0)
        self.world.step()
        self.p.set_reg(R.RDH(q), 0)
        self.p.set_reg(R.RDT(q), 0)
        self.tail[q] = 0
        self.p.set_reg(R.RXDCTL(q), R.RXDCTL_ENABLE)
        self.world.step()


def cable_frames(seed: int, n: int, sizes: list[int]):
    from ixypipe.sim.traffic import PacketBatch
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        f = bytearray(rng.integers(0, 256, sizes[i % len(sizes)], dtype=np.uint8).tobytes())
        if len(f) >= 38 and i % 2:                    # half of them IPv4/UDP, so RSS hashes them
            f[12:14], f[14], f[23] = b"\x08\x00", 0x45, 17
        frames.append(bytes(f))
    return PacketBatch.from_frames(frames)


def run(memory, hot_path: str, setup: dict, ops: list) -> dict:
    arena, rx, tx, bufs = memory
    regions = [*rx, tx, bufs]
    for r in regions:
        arena.view(r)[:] = 0
    profile, vlan = setup.get("profile", ("udp", None))
    gen = GeneratorConfig(packet_size=setup["size"], flows=setup["flows"], profile=profile, vlan=vlan,
                          shape=setup.get("shape"), template=setup.get("template"))
    world = SimWorld([SimPortConfig("p0", generator=gen, sink=SinkConfig())], arena, hot_path=hot_path,
                     clock=lambda: 0)          # stats latch only at the end, when asked
    try:
        drv = Driver(memory, world, setup["queues"], setup["rss"], setup["small_buf_queue"])
        if setup.get("mfs"):            # a max frame size: longer frames (and always runts) are dropped at the MAC
            drv.p.set_reg(R.HLREG0, R.HLREG0_JUMBOEN)
            drv.p.set_reg(R.MAXFRS, setup["mfs"] << R.MAXFRS_MFS_SHIFT)
        world.start_traffic()
        for op in ops:
            kind = op[0]
            if kind == "refill":
                drv.refill(*op[1:])
            elif kind == "gen":
                world.step()
            elif kind == "burst":                       # every queue refilled, then the generator fills them
                for q in range(drv.queues):
                    drv.refill(q, RING, None)
                world.step()
            elif kind == "cable":
                drv.p.receive(cable_frames(*op[1:]))
            elif kind == "tx":
                drv.post_tx(*op[1:])
                world.step()
            elif kind == "restart":
                drv.restart(op[1])
        drv.p.latch_stats()
        return {"memory": [bytes(arena.view(r)) for r in regions], "bar": drv.p.bar.copy(),
                "counters": world.counters()["p0"], "sink": world.sinks["p0"].result,
                "faults": [str(f) for f in world.faults]}
    finally:
        world.close()


op = st.one_of(
    st.tuples(st.just("refill"), st.integers(0, 3), st.integers(1, 80), st.one_of(st.none(), st.integers(0, 70))),
    st.tuples(st.just("gen")),
    st.tuples(st.just("burst")),
    st.tuples(st.just("cable"), st.integers(0, 2**16), st.integers(1, 90),
              st.lists(st.sampled_from([14, 42, 60, 61, 128, 1000, 1514]), min_size=1, max_size=4)),
    st.tuples(st.just("tx"), st.integers(1, 80), st.lists(st.sampled_from([0, 0, 60, 200, 1514]), min_size=1,
                                                          max_size=3),            # 0: the generator's size
              st.integers(1, 4), st.one_of(st.none(), st.integers(0, 70)), st.integers(0, 3)),
    st.tuples(st.just("restart"), st.integers(0, 3)),
)
setups = st.fixed_dictionaries({
    "queues": st.sampled_from([1, 2, 4]), "rss": st.booleans(), "flows": st.integers(1, 20),
    "size": st.sampled_from([60, 61, 300, 1514]), "small_buf_queue": st.one_of(st.none(), st.integers(0, 3)),
    "mfs": st.sampled_from([None, 304, 1004]),
})
# every generator profile: (profile, VID) with sizes its layout allows; IMIX needs flows in twelves
PROFILE_SIZES = {("udp", None): [60, 1514], ("imix", None): [60], ("imix", 4094): [60], ("vlan", 7): [64, 65, 1514],
                 ("ipv6", None): [80, 81, 700], ("ipv6", 1): [84, 1514], ("tcp-syn", None): [72, 73, 1000],
                 ("runt", None): [14, 42, 59]}
profile_setups = st.sampled_from(sorted(PROFILE_SIZES, key=str)).flatmap(lambda prof: st.fixed_dictionaries({
    "profile": st.just(prof), "queues": st.sampled_from([1, 2, 4]), "rss": st.booleans(),
    "flows": st.sampled_from([12, 24]) if prof[0] == "imix" else st.integers(1, 20),
    "size": st.sampled_from(PROFILE_SIZES[prof]), "small_buf_queue": st.one_of(st.none(), st.integers(0, 3)),
    "mfs": st.sampled_from([None, 304, 1004]),
}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(setup=setups, ops=st.lists(op, min_size=1, max_size=40))
def test_compiled_and_numpy_paths_agree_byte_for_byte(memory, setup, ops):
    ref = run(memory, "numpy", setup, ops)
    fast = run(memory, "numba", setup, ops)
    c = ref["counters"]
    event(f"faults: {min(len(ref['faults']), 2)}")
    event(f"missed: {c.rx_missed > 0}, generated: {c.generated > 0}, tx: {c.tx_sent > 0}, "
          f"verified: {ref['sink'].received - ref['sink'].corrupt > 0}")
    event(f"wrapped: {c.rx_delivered > RING}")
    event(f"dropped at the MAC: runts {c.rx_undersize > 0}, too long {c.rx_oversize > 0}")
    assert fast["faults"] == ref["faults"]
    assert fast["counters"] == ref["counters"]
    assert fast["sink"] == ref["sink"]
    differ = np.flatnonzero(fast["bar"] != ref["bar"])
    assert not len(differ), [(hex(int(i) * 4), int(fast["bar"][i]), int(ref["bar"][i])) for i in differ]
    for got, want in zip(fast["memory"], ref["memory"], strict=True):
        assert got == want


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(setup=profile_setups, ops=st.lists(op, min_size=1, max_size=30))
def test_every_generator_profile_is_the_same_frames_on_both_paths(memory, setup, ops):
    """IMIX, VLAN, IPv6, TCP SYN and runt generators: the compiled walk stamps the same bytes as the numpy
    reference, and both sinks (compiled and numpy) give the same verdicts."""
    ref = run(memory, "numpy", setup, ops)
    fast = run(memory, "numba", setup, ops)
    event(f"profile {setup['profile'][0]}, verified: {ref['sink'].received - ref['sink'].corrupt > 0}")
    assert fast["faults"] == ref["faults"]
    assert fast["counters"] == ref["counters"]
    assert fast["sink"] == ref["sink"]
    assert (fast["bar"] == ref["bar"]).all()
    for got, want in zip(fast["memory"], ref["memory"], strict=True):
        assert got == want


@pytest.mark.parametrize("hot_path", ["numpy", "numba"])
def test_an_empty_dma_table_is_a_reported_fault_not_a_crash(memory, hot_path):
    """A driver that died leaves the model with no registered memory: lookups fault, the queue stops."""
    from ixypipe.sim.dma import DmaSpace
    ops = [("refill", 0, 10, None)]
    arena = memory[0]
    world = SimWorld([SimPortConfig("p0", generator=GeneratorConfig(), sink=SinkConfig())], arena,
                     hot_path=hot_path, clock=lambda: 0)
    try:
        drv = Driver(memory, world, 1, False, None)
        drv.refill(*ops[0][1:])
        drv.p.dma = DmaSpace([])
        world.start_traffic()
        world.step()
        drv.post_tx(3, [0], 1, None, 0)
        world.step()
        assert [f.reason for f in world.faults] == [
            f"RX buffer [{drv.addr(0):#x}, +60) is outside registered memory",
            f"TX buffer [{drv.addr(0):#x}, +60) is outside registered memory"]
        c = world.counters()["p0"]
        assert (c.rx_delivered, c.tx_sent, c.dma_faults) == (0, 0, 2)
    finally:
        world.close()


@pytest.mark.parametrize("prof", sorted(PROFILE_SIZES, key=str))
def test_each_profile_forwarded_as_generated_verifies_clean_on_both_paths(memory, prof):
    """Generated frames sent back out unchanged (each with its own length): both sinks verify every one,
    and both paths agree byte for byte.  Runts never reach a buffer: the MAC drops and counts them (RUC),
    so what goes out is whatever the buffers held, and the sinks find none of it intact."""
    size = PROFILE_SIZES[prof][-1]
    setup = {"profile": prof, "queues": 1, "rss": False, "flows": 24 if prof[0] == "imix" else 5, "size": size,
             "small_buf_queue": None}
    ops = [("burst",), ("tx", RING - 1, [0], 1, None, 0), ("refill", 0, RING, None), ("gen",),
           ("tx", RING - 1, [0], 3, None, 0)]
    ref = run(memory, "numpy", setup, ops)
    fast = run(memory, "numba", setup, ops)
    assert fast["sink"] == ref["sink"] and fast["counters"] == ref["counters"]
    assert fast["memory"] == ref["memory"]
    sink = ref["sink"]
    assert sink.received > RING
    if prof[0] == "runt":
        c = ref["counters"]
        assert c.generated > 0 and (c.rx_undersize, c.rx_delivered, c.rx_missed) == (c.generated, 0, 0)
        assert sink.corrupt == sink.received
    else:
        assert sink.corrupt == 0 and sink.reordered == 0


SHAPED = FlowShape.parse(src="10.0.0.0/8,2001:db8:1::/48", dst="192.168.1.0/24,2001:db8::/64", sport="1024-65535",
                         dport="53,80,443", mix="udp=0.5,tcp=0.3,icmp=0.2", seed=7)


@pytest.mark.parametrize("kind", ["shaped", "template"])
def test_shaped_and_replayed_flows_are_the_same_frames_on_both_paths(memory, kind, tmp_path):
    """Flows of mixed IP versions and protocols (records at different offsets per flow) and a replayed capture
    (records as trailers, frames of different lengths): the compiled walk stamps what the numpy reference
    does, and both sinks verify every frame sent back out."""
    setup = {"profile": ("udp", None), "queues": 2, "rss": True, "flows": 10, "size": 128, "shape": SHAPED,
             "small_buf_queue": None}
    if kind == "template":
        frames = [bytes(14) + bytes((0x45,)) + bytes(45), bytes(range(200)), bytes(30)]   # IPv4, junk, short
        path = tmp_path / "t.pcap"
        with PcapWriter(path) as w:
            for f in frames:
                w.write(f)
        setup.update(template=str(path), shape=FlowShape.parse(src="198.51.100.0/24", sport="7-9"), size=60)
    ops = [("burst",), ("tx", RING - 1, [0], 1, None, 0), ("burst",), ("tx", RING - 1, [0], 1, None, 1)]
    ref = run(memory, "numpy", setup, ops)
    fast = run(memory, "numba", setup, ops)
    assert fast["sink"] == ref["sink"] and fast["counters"] == ref["counters"]
    assert fast["memory"] == ref["memory"]
    sink = ref["sink"]
    assert sink.received >= RING and sink.corrupt == sink.reordered == sink.lost == 0
