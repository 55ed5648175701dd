"""The device interface every port driver offers (ixy's ixy_device).

A port moves packet buffers, named by their global index in the arena's
PacketBuffers, between the wire and the pipeline:

* ``rx_batch(queue, out)`` fills ``out`` with indices of received buffers
  (their lengths are in the buffer headers) and returns how many; the RX
  queue refills itself from that queue's mempool.
* ``rx_held(queue)`` names the buffers the driver holds for RX (sitting in
  descriptors or rings), so the accounting can count them; a driver that
  copies into buffers only at receive time holds none.
* ``tx_batch(queue, bufs)`` posts as many of ``bufs`` as fit and returns how
  many it took; the caller still owns the rest.
* ``tx_drain(queue, timeout)`` waits until every buffer posted on the queue
  has been handed to ``tx_done`` and returns how many are still pending when
  ``timeout`` seconds ran out (0: drained).

``tx_done`` - one meaning in every driver: it is the callable (taking an
index array) that receives every buffer whose transmission is complete, and
it must send them home (``ixypipe.memory.homing.Homing`` does: to the
owning mempools, or to the return rings that lead there).  A driver calls
it once the buffer's data is no longer needed - at once for drivers that
copy (af_packet, pcap), after the NIC wrote the descriptor back for ixgbe -
and never frees a buffer any other way.  A port opened or attached with
``tx_done=None`` does not transmit: ``tx_batch`` refuses with a DeviceError
before taking any buffer (receive-only stages, the supervisor's RX-only use).

A port is opened once, with full initialisation, by the supervisor
(``open``), and attached without re-initialisation by the stage processes
that use its queues (``attach``); all per-queue state a stage needs lives in
the arena so it survives that hand-over.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ixypipe.memory.arena import RegionSize

TxDone = Callable[[np.ndarray], None]


class DeviceError(Exception):
    """A port cannot be opened or used; the message says which and why."""


# a port's ``hot_path`` option (ixgbe and sim ports): "auto" = the numba kernels when installed
HOT_PATHS = ("auto", "numpy", "numba")


@dataclass
class PortSpec:
    """What the pipeline file says about one port (validated before use)."""
    name: str
    driver: str                      # "ixgbe", "sim", "af_packet", "pcap"
    address: str = ""                # PCI address, interface name or file path
    rx_queues: int = 1
    tx_queues: int = 1
    rx_ring_size: int = 512
    tx_ring_size: int = 512
    promiscuous: bool = True
    options: dict = field(default_factory=dict)   # driver-specific keys


@dataclass
class DeviceStats:
    """Counters since the port was opened (or since reset_stats)."""
    rx_packets: int = 0
    tx_packets: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_dropped: int = 0      # missed by the device: no free descriptor or buffer (kernel: ring full)
    tx_dropped: int = 0
    rx_too_long: int = 0     # frames longer than a packet buffer holds: dropped at the port
    rx_undersize: int = 0    # runts (shorter than 64 bytes with FCS): an 82599 drops them, counting them in RUC

    def __sub__(self, other: DeviceStats) -> DeviceStats:
        return DeviceStats(*(getattr(self, k) - getattr(other, k) for k in self.__dataclass_fields__))

    def __add__(self, other: DeviceStats) -> DeviceStats:
        return DeviceStats(*(getattr(self, k) + getattr(other, k) for k in self.__dataclass_fields__))


@dataclass(frozen=True)
class LinkState:
    up: bool
    speed_mbit: int = 0


class Device(ABC):
    driver_name: str = "?"
    min_rx_frame: int = 1            # a received frame shorter than this is a bad packet (a runt)

    def __init__(self, spec: PortSpec, tx_done: TxDone | None = None):
        self.spec = spec
        self.name = spec.name
        self.tx_done = tx_done          # see the module docstring: None means "does not transmit"

    @classmethod
    @abstractmethod
    def arena_regions(cls, spec: PortSpec) -> list[RegionSize]:
        """What opening a port for ``spec`` carves from the device arena (rings, queue state, counters)."""

    @property
    def num_rx_queues(self) -> int:
        return self.spec.rx_queues

    @property
    def num_tx_queues(self) -> int:
        return self.spec.tx_queues

    @abstractmethod
    def rx_batch(self, queue: int, out: np.ndarray) -> int:
        """Receive up to len(out) packets; their buffer indices go to out[:n]."""

    @abstractmethod
    def rx_held(self, queue: int) -> np.ndarray:
        """Indices of the buffers the driver holds for RX on ``queue`` (in descriptors or rings), a copy."""

    @abstractmethod
    def tx_batch(self, queue: int, bufs: np.ndarray) -> int:
        """Post bufs[:n] for transmission; returns n.  Completed buffers go to tx_done.

        Raises DeviceError when the port has no tx_done (see :meth:`check_tx_done`).
        """

    @abstractmethod
    def tx_drain(self, queue: int, timeout: float = 1.0) -> int:
        """Wait up to ``timeout`` s until every posted buffer went to tx_done; returns how many still pending."""

    def tx_pending(self, queue: int) -> int:
        """Buffers posted on ``queue`` whose transmission has not completed (still the device's)."""
        return 0

    def tx_posted(self, queue: int) -> int | None:
        """Buffers posted on ``queue`` since the port was opened, as the device's shared state counts them (None:
        the device keeps no such count).  What a TX stage that died had posted but not yet counted shows here."""
        return None

    def tx_sent_in_hand(self, queue: int) -> int:
        """Buffers sent (and counted as transmitted) that the process transmitting on ``queue`` held on their
        way home: if that process died, they are missing from the pools without being lost."""
        return 0

    def pause_source(self) -> None:  # noqa: B027 - only a port that makes its own frames has one to pause
        """The pipeline is stopping: a source of the port's own making (a file replay) sends no more, so the
        RX stages find the port idle and finish their drain at once.  A NIC or an interface has a wire
        instead, whose frames are drained (the software 82599's generators are paused by the supervisor)."""

    def rx_fd(self, queue: int) -> int | None:
        """A file descriptor that poll() reports readable when ``queue`` has received something, or None.

        An idle RX stage blocks on it instead of polling the ring (AF_PACKET's
        socket; an 82599 without interrupts has none, so its RX stage polls).
        """
        return None

    def compiled_rx(self, queue: int):
        """``(kernel, record)`` for the compiled stage loop (pipeline/breathe_jit.py): the numba function
        ``kernel(record, out)`` receives into ``out`` as rx_batch does (a negative return is the driver's error,
        which rx_batch raises); None when the port has no compiled receive (the Python loop serves)."""
        return None

    def compiled_tx(self, queue: int):
        """``(kernel, record, freed, handing, slot)``: ``kernel(record, bufs)`` cleans and posts as tx_batch
        does and returns (posted, cleaned) with the cleaned buffers in ``freed[:cleaned]`` (a negative posted is
        the driver's error); once they are home the loop stores 0 in ``handing[slot]`` (see tx_sent_in_hand).
        None when the port has no compiled transmit."""
        return None

    def rx_housekeeping(self, queue: int) -> None:  # noqa: B027 - most drivers do all of it in their kernel
        """What rx_batch does besides receiving (reading the kernel's drop counter, a warning), for the compiled
        stage loop to call between its runs."""

    @abstractmethod
    def read_stats(self) -> DeviceStats:
        """Cumulative counters (the driver accumulates clear-on-read registers)."""

    @abstractmethod
    def reset_stats(self) -> None:
        """Start the counters again from zero."""

    @abstractmethod
    def set_promisc(self, on: bool) -> None: ...

    @abstractmethod
    def link_state(self) -> LinkState: ...

    def reconnecting(self) -> bool:
        """True while the link is down and the driver is bringing it back by itself (a vhost-user backend that
        went away): traffic waits for it, which is no stall of the pipeline."""
        return False

    @property
    @abstractmethod
    def mac(self) -> bytes: ...

    def check_tx_done(self, queue: int) -> None:
        """A port without tx_done does not transmit: refuse before any buffer is taken."""
        if self.tx_done is None:
            raise DeviceError(f"{self.name} TX queue {queue}: the port was opened without tx_done, so it "
                              "does not transmit; pass tx_done= (e.g. a Homing) to send finished buffers home")

    def close(self) -> None:  # noqa: B027 - most drivers have nothing to release
        """Release the port's mappings and descriptors (buffers are the caller's)."""


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def check_rx_pools(spec: PortSpec, rx_pools, ring: str = "ring", advice: str = "") -> None:
    """One mempool per RX queue, each with a free buffer for every descriptor of its ``ring`` (named so in
    the message: "ring", "virtqueue"); ``advice`` ends the message."""
    if len(rx_pools) != spec.rx_queues:
        raise DeviceError(f"port {spec.name!r}: {spec.rx_queues} RX queues need {spec.rx_queues} mempools, "
                          f"got {len(rx_pools)}")
    for q, pool in enumerate(rx_pools):
        if pool.available() < spec.rx_ring_size:
            raise DeviceError(f"port {spec.name!r}: mempool {pool.name!r} of RX queue {q} has "
                              f"{pool.available()} free buffers, the {spec.rx_ring_size}-entry {ring} needs "
                              f"{spec.rx_ring_size}{advice}")


def choose_hot_path(spec: PortSpec, hot_path: str | None, compiled_available: bool) -> bool:
    """True for a driver's compiled (numba) RX/TX path: "auto" takes it when numba is installed."""
    choice = hot_path or spec.options.get("hot_path", "auto")
    if choice not in HOT_PATHS:
        raise DeviceError(f"port {spec.name!r}: hot_path must be one of {', '.join(HOT_PATHS)}, got {choice!r}")
    if choice == "numba" and not compiled_available:
        raise DeviceError(f"port {spec.name!r}: hot_path numba needs the numba package (pip install numba)")
    return choice == "numba" or (choice == "auto" and compiled_available)
