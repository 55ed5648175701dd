"""The Device interface: every driver implements all of it, and tx_done means the same in each.

tx_done receives every buffer whose transmission is complete, exactly once
(after tx_drain at the latest); a port without tx_done refuses to transmit
and takes no buffer.  Each driver runs the same checks: ixgbe against an
in-process software 82599, virtio against an in-process software virtio-net
function, pcap writing a file, af_packet on a veth pair.
"""

from __future__ import annotations

import inspect
from collections import Counter

import numpy as np
import pytest

from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import ports
from ixypipe.nic.device import Device, DeviceError, PortSpec
from tests.support.system import needs_root

POOL = 512
SENT = 40


@pytest.mark.parametrize("driver", sorted(ports.DRIVERS))
def test_every_driver_implements_the_whole_interface(driver):
    cls = ports.device_class(driver)
    assert issubclass(cls, Device) and not inspect.isabstract(cls)
    for name in ("rx_batch", "rx_held", "tx_batch", "tx_drain", "read_stats", "reset_stats", "set_promisc",
                 "link_state"):
        assert getattr(cls, name) is not getattr(Device, name), f"{cls.__name__} does not implement {name}"
        assert getattr(Device, name).__doc__ or name in ("set_promisc", "link_state")
    for name in ("rx_held", "tx_drain"):
        assert name in Device.__abstractmethods__


class Ports:
    """Opens one port of a driver on a fresh packet arena with one pool (everything closed afterwards)."""

    def __init__(self, make_arena, request, tmp_path):
        self.arena = make_arena(16 << 20)
        self.bufs = PacketBuffers.create(self.arena, POOL)
        self.pool = Mempool.create(self.arena, self.bufs, "pool0", 0, POOL, 0)
        self.request = request
        self.tmp_path = tmp_path
        self.closers: list = []

    def open(self, driver: str, tx_done):
        if driver in ("sim", "virtio"):        # virtio: the virtio driver on a software virtio-net function
            from ixypipe.sim.world import SimPortConfig, SimWorld

            world = SimWorld([SimPortConfig("p0", device="virtio" if driver == "virtio" else "82599",
                                            queue_size=64)], self.arena)
            self.closers.append(world.close)
            spec = PortSpec("p0", "sim", world.addresses["p0"], rx_ring_size=64, tx_ring_size=64,
                            options={"device": "virtio"} if driver == "virtio" else {})
            dev = ports.spec_class(spec).open(spec, self.arena, self.bufs, [self.pool], tx_done=tx_done,
                                              sysfs_root=str(world.sysfs_root), sleep=lambda s: world.step())
        elif driver == "pcap":
            spec = PortSpec("p0", "pcap", str(self.tmp_path / "out.pcap"), options={"mode": "write"})
            dev = ports.open_port(spec, self.arena, self.bufs, [self.pool], tx_done=tx_done)
        else:
            testbed = self.request.getfixturevalue("testbed")
            dev = ports.open_port(PortSpec("p0", "af_packet", testbed.port_a), self.arena, self.bufs, [self.pool],
                                  tx_done=tx_done)
        self.closers.insert(0, dev.close)
        return dev

    def frames(self, n: int) -> np.ndarray:
        idx = self.pool.alloc_exact(n)
        for k, i in enumerate(idx):
            self.bufs.write_packet(int(i), b"\xff" * 6 + b"\x02" * 6 + b"\x88\xb5" + bytes([k]) * 60)
        return idx

    def close(self) -> None:
        for close in self.closers:
            close()


@pytest.fixture
def opened(make_arena, request, tmp_path):
    p = Ports(make_arena, request, tmp_path)
    yield p
    p.close()


DRIVERS = ["sim", "virtio", "pcap", pytest.param("af_packet", marks=needs_root)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_tx_done_gets_every_transmitted_buffer_exactly_once(opened, driver):
    seen: Counter = Counter()

    def tx_done(idx):
        seen.update(int(i) for i in idx)
        opened.pool.free(idx)

    dev = opened.open(driver, tx_done)
    idx = opened.frames(SENT)
    sent = 0
    for _ in range(100):                        # a ring may take a batch in parts
        sent += dev.tx_batch(0, idx[sent:])
        if sent == SENT:
            break
    assert sent == SENT
    assert dev.tx_drain(0, 5.0) == 0
    assert seen == Counter(idx.tolist())        # each one, once
    held = dev.rx_held(0)
    assert held.dtype == np.uint32
    assert opened.pool.available() + len(held) == POOL     # every buffer is home or held for RX


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_port_without_tx_done_refuses_to_transmit_and_takes_nothing(opened, driver):
    dev = opened.open(driver, None)
    assert dev.tx_done is None
    idx = opened.frames(8)
    with pytest.raises(DeviceError, match="TX queue 0: the port was opened without tx_done, so it does not "
                                          "transmit; pass tx_done="):
        dev.tx_batch(0, idx)
    assert dev.tx_drain(0, 0.01) == 0           # nothing was posted
    assert dev.read_stats().tx_packets == 0
    opened.pool.free(idx)                       # still the caller's
    assert opened.pool.available() + len(dev.rx_held(0)) == POOL
