"""The worker API: what a user's function receives and how it says where each packet goes.

A worker function takes a :class:`Batch` and sets a verdict per packet in
``batch.out``: the index of the port to send it out of, or ``DROP``.  Every
packet starts with the pipeline file's ``forward_to`` port of the port it
came in on, so a function that only touches packets sets nothing::

    def touch(batch):
        batch.data[batch.idx, 1] += 1        # ixy-fwd: increment byte 1 of every packet

The function may instead return a boolean mask (True keeps the verdict,
False drops).  ``batch.data`` is the arena's (buffers x bytes) array, so
fancy indexing with ``batch.idx`` reads and writes packets in place, whole
batches at a time.  :func:`per_packet` wraps a ``handle(pkt) -> bool``
function for simple cases; it loops in Python and is the slow path.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.protocols import ETH_ADDR_LEN, ETH_DST_OFF, ETH_SRC_OFF, ETH_TYPE_OFF

DROP = -1
PER_PACKET_ATTR = "__ixypipe_per_packet__"


class WorkerResultError(ValueError):
    """A worker returned or set something that is not a verdict."""


class Batch:
    """One batch of packets in a worker.  Indices are global buffer indices."""

    def __init__(self, bufs: PacketBuffers, idx: np.ndarray, in_port: int, default_out: int,
                 port_names: list[str], counters: dict[str, int]):
        self.bufs = bufs
        self.idx = idx
        self.n = len(idx)
        self.in_port = in_port
        self.port_names = port_names
        self.counters = counters
        self.data = bufs.data
        self.out = np.full(self.n, default_out, np.int16)
        self._lengths: np.ndarray | None = None

    # ---- lengths -------------------------------------------------------------------
    @property
    def lengths(self) -> np.ndarray:
        """Packet lengths in bytes (a copy; change them with set_lengths)."""
        if self._lengths is None:
            self._lengths = self.bufs.length[self.idx]
        return self._lengths

    def set_lengths(self, values) -> None:
        values = np.broadcast_to(np.asarray(values, dtype=np.int64), (self.n,))
        bad = (values <= 0) | (values > self.bufs.max_data)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"packet {i} of the batch: length {int(values[i])} is outside 1..{self.bufs.max_data}"
                             " (the data a buffer holds)")
        self.bufs.length[self.idx] = values
        self._lengths = None

    # ---- bytes at fixed offsets -----------------------------------------------------
    def _check_span(self, offset: int, size: int) -> None:
        if offset < 0 or size <= 0 or offset + size > self.bufs.max_data:
            raise ValueError(f"bytes {offset}..{offset + size - 1} are outside a packet buffer's "
                             f"{self.bufs.max_data} data bytes")

    def field(self, offset: int, size: int) -> np.ndarray:
        """Bytes offset..offset+size-1 of every packet, as an (n, size) uint8 copy."""
        self._check_span(offset, size)
        return self.data[self.idx, offset:offset + size]      # a slice, not an index array: faster

    def set_field(self, offset: int, values) -> None:
        """Write (n, size) or (size,) bytes at ``offset`` of every packet."""
        values = np.asarray(values, dtype=np.uint8)
        size = values.shape[-1]
        self._check_span(offset, size)
        self.data[self.idx, offset:offset + size] = values

    # ---- Ethernet --------------------------------------------------------------------
    def dst_mac(self) -> np.ndarray:
        return self.field(ETH_DST_OFF, ETH_ADDR_LEN)

    def src_mac(self) -> np.ndarray:
        return self.field(ETH_SRC_OFF, ETH_ADDR_LEN)

    def set_dst_mac(self, mac) -> None:
        self.set_field(ETH_DST_OFF, _mac_bytes(mac))

    def set_src_mac(self, mac) -> None:
        self.set_field(ETH_SRC_OFF, _mac_bytes(mac))

    def ethertype(self) -> np.ndarray:
        """EtherType of every packet (big-endian on the wire), as uint16."""
        b = self.field(ETH_TYPE_OFF, 2).astype(np.uint16)
        return (b[:, 0] << np.uint16(8)) | b[:, 1]

    # ---- verdicts ---------------------------------------------------------------------
    def drop(self, mask=None) -> None:
        """Drop every packet, or those where ``mask`` is True."""
        if mask is None:
            self.out[:] = DROP
        else:
            self.out[np.asarray(mask, dtype=bool)] = DROP

    def send(self, port: int | str, mask=None) -> None:
        """Send every packet (or those where ``mask`` is True) out of ``port`` (index or name)."""
        if isinstance(port, str):
            if port not in self.port_names:
                raise WorkerResultError(f"no port named {port!r}; ports: {', '.join(self.port_names)}")
            port = self.port_names.index(port)
        if not 0 <= port < len(self.port_names):
            raise WorkerResultError(f"no port {port}; ports are 0..{len(self.port_names) - 1}")
        if mask is None:
            self.out[:] = port
        else:
            self.out[np.asarray(mask, dtype=bool)] = port

    # ---- single packets and counters ----------------------------------------------------
    def packet(self, i: int) -> np.ndarray:
        """Packet i's bytes, a view into its buffer (writes go to the packet)."""
        return self.data[self.idx[i], :int(self.bufs.length[self.idx[i]])]

    def count(self, name: str, value: int = 1) -> None:
        """Add to a named counter; the stage shows it in the stats and the final summary."""
        self.counters[name] = self.counters.get(name, 0) + int(value)


def _mac_bytes(mac) -> np.ndarray:
    if isinstance(mac, str):
        try:
            mac = bytes(int(part, 16) for part in mac.split(":"))
        except ValueError:
            raise ValueError(f"{mac!r} is not a MAC address (six hex bytes such as '02:00:00:00:00:01')") from None
    arr = np.frombuffer(bytes(mac), np.uint8) if isinstance(mac, bytes | bytearray) else np.asarray(mac, np.uint8)
    if arr.shape[-1] != ETH_ADDR_LEN:
        raise ValueError(f"a MAC address has {ETH_ADDR_LEN} bytes, got {arr.shape[-1]}")
    return arr


def per_packet(handle: Callable[[np.ndarray], bool]) -> Callable[[Batch], np.ndarray]:
    """Turn ``handle(pkt) -> bool`` (True = forward) into a batch function.  Slow: a Python loop."""
    if getattr(handle, PER_PACKET_ATTR, False) and hasattr(handle, "__wrapped__"):
        return handle

    def batch_fn(batch: Batch) -> np.ndarray:
        keep = np.empty(batch.n, dtype=bool)
        for i in range(batch.n):
            keep[i] = bool(handle(batch.packet(i)))
        return keep

    batch_fn.__wrapped__ = handle
    batch_fn.__name__ = getattr(handle, "__name__", "per_packet")
    setattr(batch_fn, PER_PACKET_ATTR, True)
    return batch_fn
