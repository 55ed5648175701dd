"""Compiled workers: a numba function over the batch's arrays, called by the worker stage's compiled loop.

A Python worker costs the interpreter once per batch (a Batch, its
verdicts, routing): at ixy's batch of 32 that is most of a worker's CPU.
A function marked with :func:`compiled_worker` is compiled with numba and
called from the worker stage's compiled passes (pipeline/breathe_jit.py
``worker_run``), which pull, call it, route by verdict and push without
returning to Python per batch::

    from ixypipe.workers.compiled import DROP, compiled_worker

    @compiled_worker
    def touch(data, lengths, idx, n, out, h, counts):
        for i in range(n):
            data[idx[i], 1] += 1          # ixy-fwd's work on every packet

The contract (every argument is an array the loop owns; nothing is
allocated per batch):

* ``data``: the packet buffers' data, (buffers, bytes) uint8, written in
  place; packet ``b`` is ``data[b, :lengths[b]]``.
* ``lengths``: every buffer's length (uint32), indexed by buffer.
* ``idx``: the batch's buffer indices (uint32), ``idx[:n]``; a copy: an
  index the function changes is not routed, its packet is dropped as
  ``worker_error``.
* ``n``: the packets in the batch.
* ``out``: one verdict per packet (int16), ``out[:n]``, each starting at the
  ``forward_to`` port of the input port: set a port index or ``DROP``.  A
  value that is no port is dropped as ``no_route``.
* ``h``: the parsed headers of the batch when the decorator asks for
  ``headers=True`` (else empty): :class:`Headers`, matrices with one column
  per packet and one row per field (the rows below: ``h.bools[UDP, i]``,
  ``h.u16[DPORT, i]``), the fields of ixypipe.workers.headers (VLAN tags,
  IPv4 options and IPv6 extension headers walked; later fragments carry no
  ports).
* ``counts``: int64, one per name in ``counters=(...)``: add to them; they
  are published as the worker's named counters like ``batch.count``'s.

The return value is ignored.  An exception (``raise``, or an index out of
bounds: the function is compiled with bounds checks) drops the batch as
``worker_error``, logged once, as a Python worker's.  The same object is a
Python worker too (``fn(batch)``): the stage's Python loop (the drain,
back-pressure), ``ixypipe try`` and tests call it on a Batch; without
numba the function runs as Python.  A module's ``setup(ctx)`` and
``teardown(ctx)`` work as for any worker.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from ixypipe import jitcache
from ixypipe.layout import PKTBUF_HEADROOM
from ixypipe.workers import headers_jit

numba = jitcache.load_numba()

DROP = -1
# rows of the header matrices (headers_jit.py's names)
(ETH_VALID, V4_VALID, V4_MF, V4_CSUM_OK, V6_VALID, V6_EXT_OK, V6_FRAG, V6_MF, FIRST, TCP, UDP, SCTP,
 ICMP) = (headers_jit.B[name] for name in headers_jit.BOOLS)
VLANS, V4_TTL, V4_PROTO, V6_HOP, V6_NH, L4_PROTO, ICMP_TYPE, ICMP_CODE = (headers_jit.U8[name]
                                                                        for name in headers_jit.U8S)
(TCI0, TCI1, ETHERTYPE, V4_TOTAL_LEN, V4_FRAG_OFF, V6_PAYLOAD_LEN, V6_FRAG_OFF, SPORT, DPORT,
 TCP_FLAGS) = (headers_jit.U16[name] for name in headers_jit.U16S)
V4_SRC, V4_DST = (headers_jit.U32[name] for name in headers_jit.U32S)
L3_OFF, V4_HEADER_LEN, V6_L4_OFF, L4_OFF = (headers_jit.I64[name] for name in headers_jit.I64S)


class Headers(NamedTuple):
    """The parsed headers of a batch: one column per packet, one row per field (the constants above)."""

    bools: np.ndarray       # (13, n) bool
    u8: np.ndarray          # (8, n) uint8
    u16: np.ndarray         # (10, n) uint16
    u32: np.ndarray         # (2, n) uint32
    i64: np.ndarray         # (4, n) int64
    addr: np.ndarray        # (2, n, 16) uint8: IPv6 source and destination


def empty_headers(n: int) -> Headers:
    """Header matrices for ``n`` packets (n = 0: the empty ones a worker without headers gets)."""
    return Headers(*headers_jit.matrices(n))


class CompiledWorker:
    """A worker function marked by :func:`compiled_worker`: the compiled ``kernel``, what it asks for, and a
    Python worker (``__call__(batch)``) that runs the same kernel on a Batch."""

    def __init__(self, fn, counters: tuple[str, ...] = (), headers: bool = False, kernel=None):
        self.py_func = fn
        self.counters = tuple(counters)
        self.headers = bool(headers)
        self.cached = kernel is not None          # ixypipe's own kernels (numba's cache may keep what calls them)
        if kernel is None:
            kernel = numba.njit(nogil=True, boundscheck=True)(fn) if numba is not None else fn
        self.kernel = kernel
        functools.update_wrapper(self, fn)

    def __call__(self, batch) -> None:
        """Run the kernel on ``batch`` (a Python worker's call): verdicts into batch.out, counts counted."""
        n = batch.n
        out = batch.out
        h = parse(batch.bufs, batch.idx) if self.headers else empty_headers(0)
        counts = np.zeros(len(self.counters), np.int64)
        self.kernel(batch.data, batch.bufs.length, np.array(batch.idx, np.uint32), n, out, h, counts)
        for name, value in zip(self.counters, counts.tolist(), strict=True):
            batch.count(name, value)


def compiled_worker(fn=None, *, counters=(), headers: bool = False):
    """Mark ``fn(data, lengths, idx, n, out, h, counts)`` as a compiled worker (the module docstring has the
    contract).  ``counters``: the names of ``counts``' entries; ``headers``: parse the batch's headers into
    ``h`` before each call."""
    names = (counters,) if isinstance(counters, str) else tuple(counters)
    for name in names:
        if not isinstance(name, str) or not name or not name.isprintable():
            raise ValueError(f"compiled_worker: a counter name is a non-empty printable string, got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"compiled_worker: counter names repeat: {names}")
    if fn is None:
        return lambda f: CompiledWorker(f, names, headers)
    return CompiledWorker(fn, names, headers)


def parse(bufs, idx: np.ndarray) -> Headers:
    """The headers of packets ``idx``, as a compiled worker gets them."""
    _, _, *m = headers_jit.parse_buffers(bufs.flat, idx, bufs.length, bufs.buf_size, PKTBUF_HEADROOM, bufs.max_data)
    return Headers(*m)
