"""Files mapped side by side in one reserved range of address space, each piece with its own protection.

Python's ``mmap`` maps one file where the kernel likes; an arena made of two
files (packet buffers on hugepages, control structures on /dev/shm, see
memory/arena.py) must look like one contiguous buffer so that one offset
names one byte in every process.  :class:`Mapping` reserves the range
(anonymous, PROT_NONE), then maps file pieces over it with MAP_FIXED, read-only
or read-write, and unmaps the whole range once nothing refers to it.

Why read-only pieces stay read-only: they are mapped from a file descriptor
opened O_RDONLY, and the kernel refuses mprotect(PROT_WRITE) on a shared
mapping of such a descriptor (EACCES), so code in the process cannot simply
lift the protection; writing through any route (numpy, ctypes, a memoryview)
faults with SIGSEGV.
"""

from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np

PROT_NONE = 0
MAP_FIXED = 0x10            # Linux, every architecture ixypipe runs on
MAP_NORESERVE = 0x4000
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)


class MappingError(OSError):
    """A piece could not be mapped where it belongs."""


def _mmap(addr: int | None, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    got = _libc.mmap(addr, length, prot, flags, fd, offset)
    if got is None or got == _MAP_FAILED:
        err = ctypes.get_errno()
        raise MappingError(err, f"mmap of {length} bytes at file offset {offset}: {os.strerror(err)}")
    return got


class Mapping:
    """``size`` bytes of address space starting at a multiple of ``align``; fill it with :meth:`map`."""

    def __init__(self, size: int, align: int):
        self.size = size
        reserved = size + align
        raw = _mmap(None, reserved, PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        self.addr = (raw + align - 1) // align * align
        # give back the slack on either side: only [addr, addr + size) stays reserved
        if self.addr > raw:
            _libc.munmap(raw, self.addr - raw)
        tail = raw + reserved - (self.addr + size)
        if tail:
            _libc.munmap(self.addr + size, tail)

    def map(self, at: int, length: int, fd: int, file_offset: int, writable: bool, populate: bool = False) -> None:
        """Map ``length`` bytes of ``fd`` from ``file_offset`` at offset ``at`` of the range (replacing what was there)."""
        if at < 0 or at + length > self.size:
            raise MappingError(0, f"piece [{at}, {at + length}) outside a {self.size}-byte mapping")
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        flags = mmap.MAP_SHARED | MAP_FIXED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
        _mmap(self.addr + at, length, prot, flags, fd, file_offset)

    def mlock(self, at: int, length: int) -> bool:
        return _libc.mlock(self.addr + at, length) == 0

    def array(self, at: int = 0, length: int | None = None) -> np.ndarray:
        """A uint8 array over ``[at, at + length)`` that keeps the mapping alive as long as it lives."""
        length = self.size - at if length is None else length
        holder = (ctypes.c_ubyte * length).from_address(self.addr + at)
        holder._mapping = self          # the array's base holds the holder, the holder the mapping
        return np.frombuffer(holder, np.uint8)

    def __del__(self) -> None:
        if self.addr:
            _libc.munmap(self.addr, self.size)
            self.addr = 0
