"""Arena sizing: each building block says which regions it carves; Arena.size_for adds worst-case padding."""

from __future__ import annotations

import pytest

from ixypipe.layout import ARENA_DATA_OFFSET, HUGEPAGE_SIZE
from ixypipe.memory.arena import Arena, ArenaError, RegionSize
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic.device import PortSpec
from ixypipe.nic.ixgbe import IxgbeDevice
from ixypipe.nic.pcap import PcapDevice
from ixypipe.pipeline.config import load_pipeline
from ixypipe.pipeline.plan import RING_FORWARD, RING_RETURN, plan_from_config
from ixypipe.pipeline.supervisor import device_arena_regions, packet_arena_regions
from ixypipe.sim.launch import start_sim
from ixypipe.sim.server import SimPortConfig
from tests.support.runs import FWD

MIXED = [RegionSize(1), RegionSize(4096, align=4096), RegionSize(100), RegionSize(3000, align=128, within_page=True),
         RegionSize(16), RegionSize(2048 * 10, align=2048)]


def test_worst_case_counts_alignment_and_a_move_to_the_next_page():
    assert RegionSize(100, align=256).worst_case() == 100 + 255
    assert RegionSize(100, align=8).worst_case() == 100 + 127          # nothing is aligned below 128
    assert RegionSize(1000, align=128, within_page=True).worst_case() == 1000 + 127 + 999
    assert Arena.size_for(MIXED) == sum(r.worst_case() for r in MIXED)


@pytest.mark.parametrize("regions", [MIXED, *([r] for r in MIXED)], ids=["mixed", *(f"r{i}" for i in range(6))])
@pytest.mark.parametrize("first", [ARENA_DATA_OFFSET + k for k in (0, 1, 127, 129, 4095)]
                         + [HUGEPAGE_SIZE - 2000, HUGEPAGE_SIZE - 1024])     # offsets from the arena's start
def test_regions_fit_in_size_for_wherever_carving_starts(make_arena, first, regions):
    arena = make_arena(8 << 20, "never")
    arena.header["next_free"] = first
    arena.header["size"] = first + Arena.size_for(regions)      # the arena ends exactly there
    for i, r in enumerate(regions):
        got = arena.alloc(f"r{i}", r.size, align=r.align, within_page=r.within_page)
        if r.within_page:
            assert got.offset // HUGEPAGE_SIZE == (got.offset + got.size - 1) // HUGEPAGE_SIZE
    with pytest.raises(ArenaError, match="is full"):
        arena.alloc("more", arena.size - int(arena.header["next_free"][0]) + 1, align=1)


def test_too_many_regions_are_refused_before_anything_is_made():
    with pytest.raises(ArenaError, match="256 regions asked for; an arena holds at most 255"):
        Arena.size_for([RegionSize(8)] * 256)


def carved(arena, before):
    return [r.size for r in arena.regions() if r.name not in before]


def test_a_pcap_port_carves_what_it_says(make_arena, tmp_path):
    arena = make_arena(1 << 20, "never")
    spec = PortSpec("w", "pcap", str(tmp_path / "out.pcap"), options={"mode": "write"})
    before = {r.name for r in arena.regions()}
    dev = PcapDevice.open(spec, arena, None, [])
    try:
        assert carved(arena, before) == [r.size for r in PcapDevice.arena_regions(spec)]
    finally:
        dev.close()


def test_start_sim_fills_in_the_address_and_an_ixgbe_port_carves_what_it_says():
    spec = PortSpec("p0", "sim", rx_queues=2, tx_queues=1, rx_ring_size=256, tx_ring_size=64)
    other = PortSpec("p1", "pcap", "/x.pcap")
    regions = [*PacketBuffers.arena_regions(1024), *Mempool.arena_regions(512), *Mempool.arena_regions(512),
               *IxgbeDevice.arena_regions(spec)]
    assert len(IxgbeDevice.arena_regions(spec)) == 9          # per queue: descriptors, buffer slots, state
    with Arena.create(Arena.size_for(regions), hugepages_mode="never", tag="test") as arena:
        bufs = PacketBuffers.create(arena, 1024)
        pools = [Mempool.create(arena, bufs, f"pool{q}", 512 * q, 512, q) for q in range(2)]
        sim = start_sim([SimPortConfig("p0")], [spec, other], [arena.path])
        try:
            assert spec.address == sim.addresses["p0"] == "0000:5e:00.0" and other.address == "/x.pcap"
            assert sim.sysfs_roots == {"p0": str(sim.server.sysfs_root)}
            before = {r.name for r in arena.regions()}
            dev = IxgbeDevice.open(spec, arena, bufs, pools, sysfs_root=sim.sysfs_roots["p0"], link_timeout=30)
            try:
                assert carved(arena, before) == [r.size for r in IxgbeDevice.arena_regions(spec)]
            finally:
                dev.close()
        finally:
            sim.server.stop()


def test_the_plan_lists_its_rings_with_kind_and_capacity_and_the_supervisor_sizes_from_it():
    cfg = load_pipeline(FWD)
    plan = plan_from_config(cfg)
    forward = [r for r in plan.rings if r.kind == RING_FORWARD]
    back = [r for r in plan.rings if r.kind == RING_RETURN]
    assert [r.name for r in forward] == plan.forward_rings() == ["rx-p0-q0>w0", "rx-p1-q0>w0", "w0>tx-p0-q0",
                                                                 "w0>tx-p1-q0"]
    assert {r.capacity for r in forward} == {cfg.ring_size}
    assert sorted(r.name for r in back) == ["tx-p0-q0>pool0", "tx-p0-q0>pool1", "tx-p1-q0>pool0", "tx-p1-q0>pool1",
                                            "w0>pool0", "w0>pool1"]
    assert {r.capacity for r in back} == {1 << (cfg.buffers_per_queue - 1).bit_length()}
    packet = packet_arena_regions(plan, cfg.buffer_size)
    # buffer record + buffers, one free stack per pool, every ring, the stage table and counter blocks,
    # the workers' keyed-counter blocks, the wake lines, the RX/TX stages' mirror rings (ixypipe capture),
    # plan.json and the ports' drops for observers
    assert len(packet) == 2 + len(plan.pools) + len(plan.rings) + 2 + 1 + 1 + 1 + 2
    assert len(device_arena_regions(plan)) == sum(3 * (s.rx_queues + s.tx_queues) for s in plan.ports)
