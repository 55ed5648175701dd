"""DMA for the software 82599: device addresses to arena bytes, with IOMMU-style checks.

The model may touch only memory registered with it: the arenas it was
given.  Each arena says which DMA address its pages have (``dma_table``:
physical 2 MiB pages on hugetlbfs, simulated I/O addresses on the /dev/shm
fallback); consecutive pages that are contiguous both physically and in the
arena are merged into runs.  A whole batch of (address, length) ranges is
resolved at once with ``np.searchsorted``; a range that is not entirely
inside one run is a fault, reported to the caller, and nothing is read or
written for it.  Reads and writes are vectorized gathers and scatters.
"""

from __future__ import annotations

import numpy as np

from ixypipe.layout import DEFAULT_BUF_SIZE
from ixypipe.memory.arena import Arena
from ixypipe.sim.traffic import PacketBatch

FAST_ROW = DEFAULT_BUF_SIZE     # frames at one offset within same-size rows move as whole rows


class DmaSetupError(Exception):
    """The registered memory cannot be mapped unambiguously."""


class DmaSpace:
    outside = "outside registered memory"       # how a fault names an address that does not resolve

    def __init__(self, arenas: list[Arena]):
        self.arenas = list(arenas)
        bases, sizes, owner, offsets = [], [], [], []
        for a, arena in enumerate(self.arenas):
            page_bases, page_offsets, page_size = arena.dma_table()
            if not len(page_bases):         # an arena without physical addresses (VFIO only): nothing here
                continue
            order = np.argsort(page_bases, kind="stable")
            pb, po = page_bases[order].astype(np.int64), page_offsets[order].astype(np.int64)
            # a new run starts where either the address or the arena offset is not contiguous
            starts = np.r_[True, (pb[1:] != pb[:-1] + page_size) | (po[1:] != po[:-1] + page_size)]
            idx = np.flatnonzero(starts)
            counts = np.diff(np.r_[idx, len(pb)])
            bases.append(pb[idx])
            offsets.append(po[idx])
            sizes.append(counts * page_size)
            owner.append(np.full(len(idx), a, np.int64))
        self.base = np.concatenate(bases) if bases else np.zeros(0, np.int64)
        self.size = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
        self.owner = np.concatenate(owner) if owner else np.zeros(0, np.int64)
        self.offset = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        order = np.argsort(self.base, kind="stable")
        self.base, self.size = self.base[order], self.size[order]
        self.owner, self.offset = self.owner[order], self.offset[order]
        overlap = np.flatnonzero(self.base[1:] < self.base[:-1] + self.size[:-1])
        if len(overlap):
            i = int(overlap[0])
            raise DmaSetupError(
                f"DMA regions overlap at address {int(self.base[i + 1]):#x} (arenas "
                f"{self.arenas[self.owner[i]].name} and {self.arenas[self.owner[i + 1]].name}): "
                "two fallback arenas share simulated I/O addresses")
        self.bufs = [arena.buf for arena in self.arenas]
        self._kernel_tables = None

    def refresh(self) -> bool:
        """Re-read the registered memory after a miss; True when the table changed (never, here:
        the arenas are fixed; ``ForeignDma`` follows a driver's memory)."""
        return False

    def after_miss(self) -> bool:
        """What a compiled walk calls when an address did not resolve: True to retry with a new table.
        (``ForeignDma`` raises DriverLeft here when no driver is left, as its ``resolve`` does.)"""
        return self.refresh()

    def kernel_tables(self) -> tuple:
        """(base, size, owner, offset, buffers) for the compiled walks (``sim/kernels.py``), built
        once per table."""
        if self._kernel_tables is None:
            from ixypipe.sim.kernels import typed_buffers
            self._kernel_tables = (self.base, self.size, self.owner, self.offset, typed_buffers(self.bufs))
        return self._kernel_tables

    def resolve(self, addr, length) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ok mask, arena index, arena offset) for each range ``[addr, addr + length)``."""
        addr = np.asarray(addr, dtype=np.uint64).astype(np.int64)   # DMA addresses stay below 2**63
        length = np.broadcast_to(np.asarray(length, dtype=np.int64), addr.shape)
        if len(self.base) == 0:         # nothing registered (a driver died mid set-up): every range faults
            zero = np.zeros(addr.shape, np.int64)
            return np.zeros(addr.shape, bool), zero, zero
        run = np.searchsorted(self.base, addr, side="right") - 1
        run_c = np.maximum(run, 0)
        ok = (run >= 0) & (length > 0) & (addr + length <= self.base[run_c] + self.size[run_c])
        return ok, self.owner[run_c], self.offset[run_c] + addr - self.base[run_c]

    def ring(self, addr: int, n_bytes: int, dtype) -> np.ndarray | None:
        """A live view of a descriptor ring, or None when it is not inside registered memory."""
        ok, arena, offset = self.resolve([addr], [n_bytes])
        if not ok[0]:
            return None
        off = int(offset[0])
        return self.bufs[int(arena[0])][off:off + n_bytes].view(dtype)

    def _groups(self, arena: np.ndarray):
        """(arena index, rows) per arena present (one group without a search when one arena is registered)."""
        if len(self.bufs) == 1:
            return [(0, slice(None))]
        return [(int(a), np.flatnonzero(arena == a)) for a in np.unique(arena)]

    def _rows_view(self, a: int, offset: np.ndarray, width: int):
        """(2-D view, row numbers, column) when every offset has the same remainder modulo a row
        size that holds ``width`` bytes from it: then one row-indexed copy moves each frame."""
        if len(offset) == 0:
            return None
        col = int(offset[0]) % FAST_ROW
        if col + width > FAST_ROW or ((offset % FAST_ROW) != col).any():
            return None
        buf = self.bufs[a]
        return buf[:len(buf) - len(buf) % FAST_ROW].reshape(-1, FAST_ROW), offset // FAST_ROW, col

    def write(self, arena: np.ndarray, offset: np.ndarray, batch: PacketBatch) -> None:
        """Scatter frame i to ``offset[i]`` of ``arena[i]`` (ranges already resolved as ok)."""
        for a, rows in self._groups(arena):
            buf = self.bufs[a]
            lengths, off = batch.lengths[rows], offset[rows]
            if len(off) == 0:
                continue
            first = int(lengths[0])
            if (lengths == first).all():
                fast = self._rows_view(a, off, first)
                if fast is not None:
                    view, row, col = fast
                    view[row, col:col + first] = batch.data[rows, :first]
                else:
                    buf[off[:, None] + np.arange(first)] = batch.data[rows, :first]
                continue
            cols = np.arange(batch.data.shape[1])
            mask = cols < lengths[:, None]
            buf[(off[:, None] + cols)[mask]] = batch.data[rows][mask]

    def read(self, arena: np.ndarray, offset: np.ndarray, lengths: np.ndarray) -> PacketBatch:
        """Gather frames of ``lengths`` bytes from resolved ranges (lengths >= 1)."""
        n = len(offset)
        lengths = np.asarray(lengths, np.int64)
        width = int(lengths.max()) if n else 0
        data = np.empty((n, width), np.uint8)
        cols = np.arange(width)
        for a, rows in self._groups(arena):
            off, lens = offset[rows], lengths[rows]
            if len(off) == 0:
                continue
            fast = self._rows_view(a, off, width)
            if fast is not None:        # reads up to ``width`` bytes of each row: inside the arena, harmless
                view, row, col = fast
                data[rows] = view[row, col:col + width]
                continue
            uniform = (lens == width).all()
            pos = off[:, None] + (cols if uniform else np.minimum(cols, lens[:, None] - 1))
            data[rows] = self.bufs[a][pos]
        return PacketBatch(data, lengths)
