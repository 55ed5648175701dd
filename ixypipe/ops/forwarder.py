"""ixy-fwd in one process: forward between two ports, both directions, on one core.

Owns the single-process forwarder.  It receives a batch from one port,
increments byte 1 of every packet (``touch``, as ixy-fwd does, so the sink
can tell a forwarded packet from a reflected one), transmits it on the other
port and frees what TX did not take; then the same the other way.  Once a
second it prints ixy-style per-port lines from the devices' own counters
(``[p0] RX: 9876.54 Mbit/s 14.70 Mpps``; Mbit/s counts 20 bytes of preamble
and inter-frame gap per packet).  It uses only the Device interface, so it
forwards between any two ports (ixgbe, software 82599, af_packet).  Buffers
TX refused go to the TX port's ``tx_done`` (which sends buffers home to their
mempool) unless a ``drop`` callable is given.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ixypipe.nic.device import Device, DeviceError, DeviceStats, TxDone
from ixypipe.sim.payload import SIM_TOUCH_OFF

WIRE_OVERHEAD = 20          # bytes per packet on the wire besides the frame: preamble 8 + gap 12
CLOCK_CHECK_LOOPS = 64      # look at the clock every this many loops (ixy: every 0xFFF)
QUIET_LOOPS = 64            # loops without traffic that end a drain


def mbit_per_s(packets: int, nbytes: int, seconds: float) -> float:
    return (nbytes + WIRE_OVERHEAD * packets) * 8 / 1e6 / seconds if seconds > 0 else 0.0


def mpps(packets: int, seconds: float) -> float:
    return packets / 1e6 / seconds if seconds > 0 else 0.0


def stats_lines(name: str, delta: DeviceStats, seconds: float) -> list[str]:
    """ixy-fwd's two lines for one port over one interval."""
    return [f"[{name}] RX: {mbit_per_s(delta.rx_packets, delta.rx_bytes, seconds):.2f} Mbit/s "
            f"{mpps(delta.rx_packets, seconds):.2f} Mpps",
            f"[{name}] TX: {mbit_per_s(delta.tx_packets, delta.tx_bytes, seconds):.2f} Mbit/s "
            f"{mpps(delta.tx_packets, seconds):.2f} Mpps"]


@dataclass
class ForwardResult:
    """What one run did: per port, packets taken from its RX and posted to / refused by its TX."""
    ports: list[str]
    received: list[int]
    transmitted: list[int]
    dropped: list[int]              # TX of that port had no room: freed
    seconds: float
    stop_reason: str

    @property
    def forwarded(self) -> int:
        return sum(self.transmitted)

    @property
    def mpps(self) -> float:
        return mpps(self.forwarded, self.seconds)

    def summary(self) -> list[str]:
        lines = [f"forwarded {self.forwarded} packets in {self.seconds:.2f} s ({self.mpps:.3f} Mpps), "
                 f"stopped by {self.stop_reason}"]
        for i, name in enumerate(self.ports):
            lines.append(f"[{name}] received {self.received[i]}, transmitted {self.transmitted[i]}, "
                         f"dropped at TX {self.dropped[i]}")
        return lines


class Forwarder:
    """Forward between ``dev_a`` and ``dev_b`` (queue 0 of each), ``batch`` packets at a time.

    ``bufs``: the PacketBuffers the ports receive into (default ``dev_a.bufs``),
    needed to touch packets.  ``step``: called once per loop (an in-process
    software 82599's ``world.step``); ``drop``: where refused buffers go.
    """

    def __init__(self, dev_a: Device, dev_b: Device, batch: int = 32, touch: bool = True, bufs=None,
                 drop: TxDone | None = None, step: Callable[[], object] | None = None):
        if batch < 1:
            raise DeviceError(f"forwarder batch must be at least 1, got {batch}")
        if dev_a is dev_b:
            raise DeviceError("the forwarder needs two different ports")
        self.devs = (dev_a, dev_b)
        self.names = [dev_a.name, dev_b.name]
        self.batch = batch
        self.touch = touch
        self.bufs = bufs if bufs is not None else getattr(dev_a, "bufs", None)
        if touch and self.bufs is None:
            raise DeviceError(f"port {dev_a.name} exposes no packet buffers (bufs); pass bufs= or touch=False")
        self._drop = [drop or self._tx_done_of(dev_b), drop or self._tx_done_of(dev_a)]
        self.step = step
        self._out = [np.empty(batch, np.uint32), np.empty(batch, np.uint32)]
        self.received = [0, 0]
        self.transmitted = [0, 0]
        self.dropped = [0, 0]

    @staticmethod
    def _tx_done_of(dev: Device) -> TxDone:
        done = dev.tx_done
        if done is None:
            raise DeviceError(f"port {dev.name} has no tx_done to free refused buffers with; pass drop=")
        return done

    # ---- the hot loop ------------------------------------------------------------------------
    def forward_once(self, src: int) -> int:
        """One batch from port ``src`` to the other one; returns packets received."""
        dst = 1 - src
        out = self._out[src]
        n = self.devs[src].rx_batch(0, out)
        if n:
            idx = out[:n]
            if self.touch:
                self.bufs.data[idx, SIM_TOUCH_OFF] += np.uint8(1)
            sent = self.devs[dst].tx_batch(0, idx)
            self.received[src] += n
            self.transmitted[dst] += sent
            if sent < n:
                self.dropped[dst] += n - sent
                self._drop[src](idx[sent:].copy())
        return n

    def run(self, duration: float | None = None, packets: int | None = None, stats_every: float = 1.0,
            out: Callable[[str], object] | None = print,
            figures: Callable[[dict[str, DeviceStats], float, float], object] | None = None) -> ForwardResult:
        """Forward until ``duration`` seconds passed, ``packets`` were received, or Ctrl-C.

        Ctrl-C (SIGINT) only sets a flag that the loop sees at its next clock
        check, so it never lands in the middle of a batch and no buffer is
        lost; the summary is printed (to ``out``) either way.  ``figures``: called
        every ``stats_every`` seconds with each port's DeviceStats of the
        interval, its length and the seconds since the start, in place of
        printing ixy-fwd's lines (``ixypipe fwd --json``).
        """
        step, forward = self.step, self.forward_once
        start = last = time.monotonic()
        printing = (out is not None or figures is not None) and bool(stats_every)
        before = {d.name: d.read_stats() for d in self.devs} if printing else {}
        reason = "ctrl-c"
        loops = 0
        interrupted: list[int] = []
        with _sigint_sets_flag(interrupted):
            while not interrupted:
                if step is not None:
                    step()
                forward(0)
                forward(1)
                loops += 1
                if loops % CLOCK_CHECK_LOOPS:
                    continue
                if packets is not None and self.received[0] + self.received[1] >= packets:
                    reason = f"{packets} packets"
                    break
                now = time.monotonic()
                if printing and now - last >= stats_every:
                    deltas = {}
                    for d in self.devs:
                        stats = d.read_stats()
                        deltas[d.name] = stats - before[d.name]
                        before[d.name] = stats
                    if figures is not None:
                        figures(deltas, now - last, now - start)
                    else:
                        for name, delta in deltas.items():
                            for line in stats_lines(name, delta, now - last):
                                out(line)
                    last = now
                if duration is not None and now - start >= duration:
                    reason = f"duration {duration:g} s"
                    break
        seconds = time.monotonic() - start
        result = ForwardResult(list(self.names), list(self.received), list(self.transmitted), list(self.dropped),
                               seconds, reason)
        if out is not None:
            for line in result.summary():
                out(line)
        return result

    def drain(self, quiet_loops: int = QUIET_LOOPS, timeout: float = 2.0) -> None:
        """Forward what is still in the RX rings until nothing arrives, then finish every TX."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < quiet_loops and time.monotonic() < deadline:
            if self.step is not None:
                self.step()
            quiet = 0 if self.forward_once(0) + self.forward_once(1) else quiet + 1
        for d in self.devs:
            if self.step is not None:
                self.step()
            d.tx_drain(0, max(0.0, deadline - time.monotonic()))


@contextlib.contextmanager
def _sigint_sets_flag(flag: list):
    """While inside, SIGINT appends to ``flag`` instead of raising KeyboardInterrupt (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, lambda signum, frame: flag.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


__all__ = ["Forwarder", "ForwardResult", "stats_lines", "mbit_per_s"]
