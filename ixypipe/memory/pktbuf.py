"""Packet buffers: fixed-size, 64-byte-header buffers carved from the arena.

All buffers of an arena live in one region and are named by a global uint32
index; that index is all the SPSC rings ever carry.  Each buffer starts with
ixy's pkt_buf header (physical address, owning pool id, index, data length)
and holds packet data at PKTBUF_HEADROOM, the address the NIC DMAs to.
Buffers are a power of two in size and the region is aligned to the buffer
size, so no buffer straddles a 2 MiB hugepage.  The header fields are also
exposed as strided numpy views so a whole batch is read or written at once.

What to trust: the headers sit in the pages a worker process writes (its
packets' data shares them), so a worker can overwrite any header field.
Only the length is the worker's to set, and every stage checks lengths
before use (memory/batchcheck.py).  The physical address is never read back
from a header: each process computes it from the arena's own table
(``Arena.phys``), so a restarted stage attaching after a worker wrote over
the headers still gets the right ones.  The pool id and index are written
for ixy's sake and for debugging; system code takes a buffer's pool from
the pools' index ranges (memory/homing.py), never from its header.
"""

from __future__ import annotations

import numpy as np

from ixypipe.layout import (
    DEFAULT_BUF_SIZE,
    HUGEPAGE_SIZE,
    MIN_BUF_SIZE,
    PKTBUF_HEADROOM,
    PKTBUF_INDEX_OFF,
    PKTBUF_LEN_OFF,
    PKTBUF_PHYS_OFF,
    PKTBUF_POOL_OFF,
)
from ixypipe.memory.arena import Arena, ArenaError, RegionSize

DEFAULT_NAME = "pktbufs"
_META_DTYPE = np.dtype([("count", "<u8"), ("buf_size", "<u8")])


class BufferError(ValueError):
    """A bad buffer size, index or packet length."""


def check_buf_size(buf_size: int) -> None:
    if buf_size < MIN_BUF_SIZE or buf_size > HUGEPAGE_SIZE or buf_size & (buf_size - 1):
        raise BufferError(f"buffer size must be a power of two from {MIN_BUF_SIZE} to {HUGEPAGE_SIZE} "
                          f"bytes (so none straddles a 2 MiB page), got {buf_size}")


class PacketBuffers:
    """The arena's packet buffers, addressed by global index."""

    def __init__(self, arena: Arena, name: str):
        self.arena = arena
        self.name = name
        meta = arena.view(arena.region(name + ".meta"), _META_DTYPE)[0]
        self.count = int(meta["count"])
        self.buf_size = int(meta["buf_size"])
        region = arena.region(name)
        self.offset = region.offset
        self.max_data = self.buf_size - PKTBUF_HEADROOM
        # from view(): writable in a worker that was granted the buffers, not a way into the rest of the arena
        self.raw = arena.view(region)[:self.count * self.buf_size].reshape(self.count, self.buf_size)
        # the data area of every buffer, as a (count, max_data) array
        self.data = self.raw[:, PKTBUF_HEADROOM:]
        self.flat = self.raw.reshape(-1)     # every buffer in one row: header parsing addresses packets by offset
        self.length = self._field(PKTBUF_LEN_OFF, np.uint32)
        self.pool_id = self._field(PKTBUF_POOL_OFF, np.uint32)
        self.index = self._field(PKTBUF_INDEX_OFF, np.uint32)
        # the DMA address of every buffer, precomputed once from the arena's table, never from the headers
        self.phys = arena.phys(self.offset + np.arange(self.count, dtype=np.uint64) * np.uint64(self.buf_size))
        self.data_phys = self.phys + np.uint64(PKTBUF_HEADROOM)

    def _field(self, offset: int, dtype) -> np.ndarray:
        """One header field of every buffer as a strided view (writes go to the arena)."""
        return np.ndarray((self.count,), dtype=dtype, buffer=self.raw, offset=offset, strides=(self.buf_size,))

    @classmethod
    def create(cls, arena: Arena, count: int, buf_size: int = DEFAULT_BUF_SIZE,
               name: str = DEFAULT_NAME) -> PacketBuffers:
        check_buf_size(buf_size)
        if count <= 0 or count > 0xFFFFFFFF:
            raise BufferError(f"buffer count must be 1..{0xFFFFFFFF}, got {count}")
        meta = arena.alloc(name + ".meta", _META_DTYPE.itemsize)
        arena.view(meta, _META_DTYPE)[0] = (count, buf_size)
        arena.alloc(name, count * buf_size, align=buf_size, dma=True)
        self = cls(arena, name)
        headers = self.raw[:, :PKTBUF_HEADROOM]
        headers[:] = 0
        self._field(PKTBUF_PHYS_OFF, np.uint64)[:] = self.phys     # ixy's pkt_buf has it; nothing reads it back
        self.index[:] = np.arange(count, dtype=np.uint32)
        return self

    @classmethod
    def private(cls, count: int, buf_size: int = DEFAULT_BUF_SIZE) -> PacketBuffers:
        """``count`` buffers in an arena of this process's own (Arena.private): nothing to clean up."""
        check_buf_size(buf_size)
        return cls.create(Arena.private(cls.bytes_needed(count, buf_size)), count, buf_size)

    @classmethod
    def attach(cls, arena: Arena, name: str = DEFAULT_NAME) -> PacketBuffers:
        try:
            return cls(arena, name)
        except ArenaError as exc:
            raise ArenaError(f"arena {arena.name} has no packet buffers named {name!r}: {exc}") from None

    @staticmethod
    def arena_regions(count: int, buf_size: int = DEFAULT_BUF_SIZE) -> list[RegionSize]:
        """The regions :meth:`create` carves: the count/size record, then the buffers aligned to their size."""
        return [RegionSize(_META_DTYPE.itemsize), RegionSize(count * buf_size, align=buf_size, dma=True)]

    @staticmethod
    def bytes_needed(count: int, buf_size: int = DEFAULT_BUF_SIZE) -> int:
        """Arena bytes for ``count`` buffers, with room for the alignment."""
        return Arena.size_for(PacketBuffers.arena_regions(count, buf_size))

    # ---- single packets (tests, slow paths) -------------------------------
    def packet(self, idx: int) -> np.ndarray:
        """The packet bytes of buffer ``idx`` (a view of its first ``length`` data bytes)."""
        self._check_index(idx)
        n = int(self.length[idx])
        if n > self.max_data:
            raise BufferError(f"buffer {idx} claims {n} bytes of data, more than its {self.max_data}")
        return self.data[idx, :n]

    def write_packet(self, idx: int, payload: bytes | np.ndarray) -> None:
        """Copy ``payload`` into buffer ``idx`` and set its length."""
        self._check_index(idx)
        n = len(payload)
        if n > self.max_data:
            raise BufferError(f"packet of {n} bytes does not fit a {self.buf_size}-byte buffer "
                              f"({self.max_data} bytes of data)")
        self.data[idx, :n] = np.frombuffer(bytes(payload), np.uint8) if not isinstance(
            payload, np.ndarray) else payload
        self.length[idx] = n

    def _check_index(self, idx: int) -> None:
        if not 0 <= idx < self.count:
            raise BufferError(f"buffer index {idx} is out of range (the arena has {self.count} buffers)")

    def check_indices(self, idx: np.ndarray) -> None:
        if len(idx) and int(idx.max()) >= self.count:
            raise BufferError(f"buffer index {int(idx.max())} is out of range (the arena has {self.count})")
