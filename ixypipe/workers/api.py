"""The worker API: what a user's function receives and how it says where each packet goes.

A worker function takes a :class:`Batch` and sets a verdict per packet in
``batch.out``: the index of the port to send it out of, or ``DROP``.  Every
packet starts with the pipeline file's ``forward_to`` port of the port it
came in on, so a function that only touches packets sets nothing::

    def touch(batch):
        batch.data[batch.idx, 1] += 1        # ixy-fwd: increment byte 1 of every packet

Parsed headers come with the batch, computed on first use and kept:
``batch.eth``, ``batch.ipv4``, ``batch.ipv6`` and ``batch.l4`` (see
ixypipe.workers.headers), each with a validity mask, so::

    def dns_guard(batch):
        return ~(batch.l4.udp & (batch.l4.dport == 53))

The function may instead return a boolean mask (True keeps the verdict,
False drops).  ``batch.data`` is the arena's (buffers x bytes) array, so
fancy indexing with ``batch.idx`` reads and writes packets in place, whole
batches at a time.  :func:`per_packet` wraps a ``handle(pkt) -> bool``
(or ``handle(pkt, f) -> bool``, ``f`` the packet's parsed fields) function
for simple cases; it loops in Python and is the slow path.

``batch.count_by("src", batch.ipv4.src[batch.ipv4.valid])`` counts per key
(workers/keyed.py: compiled hash tables of bounded size, summed per key over
the workers by the supervisor); ``teardown(ctx)`` may return a dict of a
worker's own state to merge the same way (:func:`merge_state`).

``Batch.from_frames(frames)`` and ``Batch.from_pcap(path)`` build a batch
outside a pipeline, over packet buffers of this process's own, so a worker
function can be tried in a Python shell or a test (``ixypipe try`` does).
"""

from __future__ import annotations

import inspect
import logging
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ixypipe.layout import (
    DEFAULT_BUF_SIZE,
    HUGEPAGE_SIZE,
    PKTBUF_HEADROOM,
    STAGE_COUNTER_NAME_MAX,
    STAGE_COUNTER_NAMES_SIZE,
    STAGE_COUNTERS_MAX,
)
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.protocols import ETH_ADDR_LEN, ETH_DST_OFF, ETH_SRC_OFF, ETH_TYPE_OFF
from ixypipe.workers import rewrite
from ixypipe.workers.fields import PacketFields, packet_fields
from ixypipe.workers.headers import L4, Eth, Headers, IPv4, IPv6
from ixypipe.workers.keyed import KeyedError, KeyedTables, private_block
from ixypipe.workers.prefix import L3

log = logging.getLogger(__name__)
DROP = -1
TRY_PORTS = ("in", "out")         # the ports of a batch built outside a pipeline, unless given
PER_PACKET_ATTR = "__ixypipe_per_packet__"


class WorkerResultError(ValueError):
    """A worker returned or set something that is not a verdict; ``about`` names which (for the error log)."""

    def __init__(self, message: str, about: str = "the return value"):
        super().__init__(message)
        self.about = about


class CounterLimitError(WorkerResultError):
    """A counter name or count that is not one (raised to the worker), or past what a worker's counter
    block holds (:class:`CounterSpaceError`: refused with one warning, never raised)."""


class CounterSpaceError(CounterLimitError):
    """A new counter name that does not fit the worker's counter block."""


_refused = [0]          # counter updates refused in this process because the block was full


@dataclass
class WorkerContext:
    """What ``setup(ctx)`` and ``teardown(ctx)`` get, and every batch as ``batch.ctx``.

    ``state`` is the worker's own (a dict to fill in setup); attributes may be added too.
    """

    worker: int                  # this worker's number, 0..workers-1
    workers: int                 # worker processes in the pipeline
    port_names: list[str]
    options: dict[str, Any] = field(default_factory=dict)     # the pipeline file's [workers.options]
    base_dir: str = "."          # the pipeline file's directory: resolve file names in options against it
    counters: dict[str, int] = field(default_factory=dict)    # the named counters (batch.count adds here)
    state: dict[str, Any] = field(default_factory=dict)
    keyed: KeyedTables | None = None     # the keyed tables (count_by): the worker's arena block in a pipeline

    def count(self, name: str, value: int = 1) -> None:
        """Add to a named counter (as batch.count; teardown may count too)."""
        add_count(self.counters, name, value)

    def count_by(self, table: str, keys, n=None, kind: str = "int") -> None:
        """Add to keyed table ``table`` per key (as batch.count_by; teardown may count too)."""
        self.keyed_tables().count_by(table, keys, n, kind)

    def keyed_tables(self) -> KeyedTables:
        """The keyed tables: the pipeline's, or private ones made on first use (outside a pipeline)."""
        if self.keyed is None:
            self.keyed = KeyedTables(private_block())
        return self.keyed


def merge_state(ctx: WorkerContext, state) -> None:
    """Merge what ``teardown(ctx)`` returned into what the supervisor sums over the workers: ``None`` is
    nothing; a dict maps a name to an integer (added to that named counter, as ctx.count) or to a dict of
    integer key -> amount (added to that keyed table, as ctx.count_by).  Anything else is a KeyedError
    naming the entry (the stage logs it; what was merged before it stays)."""
    if state is None:
        return
    if not isinstance(state, dict):
        raise KeyedError(f"teardown(ctx) returns None or a dict of name -> int or name -> {{key: amount}}, "
                         f"got {type(state).__name__}")
    for name, value in state.items():
        if isinstance(value, dict):
            ctx.count_by(name, np.fromiter((operator.index(k) & 0xFFFF_FFFF_FFFF_FFFF for k in value.keys()),
                                           np.uint64, len(value)),
                         np.fromiter((operator.index(v) for v in value.values()), np.int64, len(value)))
        elif isinstance(value, int | np.integer) and not isinstance(value, bool):
            ctx.count(name, int(value))
        else:
            raise KeyedError(f"teardown(ctx) returned {name!r}: {type(value).__name__}; an entry is an integer "
                             f"(a named counter) or a dict of integer key -> amount (a keyed table)")


def add_count(counters: dict[str, int], name: str, value: int) -> None:
    """Add ``value`` (any integer; the total is shown clamped to 0..2**63-1) to counter ``name``."""
    try:
        value = operator.index(value)
    except TypeError:
        raise CounterLimitError(f"counter {name!r}: a count is an integer, got {value!r} "
                                f"({type(value).__name__})") from None
    if name not in counters:
        try:
            name = check_new_counter(counters, name)
        except CounterSpaceError as exc:          # refused, once loudly: the packets are not the counter's
            _refused[0] += 1
            if _refused[0] == 1:
                log.warning("%s; this and every further new counter name is refused (counted at the end), "
                            "the packets go on", exc)
            return
    counters[name] += value


def refused_counts() -> int:
    """Counter updates refused in this process because the counter block was full."""
    return _refused[0]


def counter_name(name) -> str:
    """A valid counter name: printable, non-empty, at most STAGE_COUNTER_NAME_MAX bytes of UTF-8 (a longer
    one is cut at a character boundary, never inside one)."""
    if not isinstance(name, str) or not name or not name.isprintable():
        raise CounterLimitError(f"a counter name is a non-empty string of printable characters, got {name!r}")
    raw = name.encode()
    if len(raw) > STAGE_COUNTER_NAME_MAX:
        return raw[:STAGE_COUNTER_NAME_MAX].decode(errors="ignore")      # drops a character cut in two
    return name


def check_new_counter(counters: dict[str, int], name: str) -> str:
    """A new name must be valid and fit the stage's counter block: an error naming the limit, never a silent
    cut (but for a name longer than STAGE_COUNTER_NAME_MAX, cut to it).  Returns the name stored."""
    name = counter_name(name)
    if name in counters:
        return name
    if len(counters) >= STAGE_COUNTERS_MAX:
        raise CounterSpaceError(f"counter {name!r} would be number {len(counters) + 1}: a worker has at most "
                                f"{STAGE_COUNTERS_MAX} named counters (layout.STAGE_COUNTERS_MAX)")
    used = sum(len(n.encode()) + 1 for n in counters) + len(name.encode()) + 1
    if used > STAGE_COUNTER_NAMES_SIZE:
        raise CounterSpaceError(f"counter {name!r}: the names of a worker's counters take at most "
                                f"{STAGE_COUNTER_NAMES_SIZE} bytes (layout.STAGE_COUNTER_NAMES_SIZE), "
                                f"these would take {used}")
    counters[name] = 0
    return name


class Batch:
    """One batch of packets in a worker.  Indices are global buffer indices."""

    def __init__(self, bufs: PacketBuffers, idx: np.ndarray, in_port: int, default_out: int,
                 port_names: list[str], counters: dict[str, int], ctx: WorkerContext | None = None):
        self.bufs = bufs
        self.idx = idx
        self.n = len(idx)
        self.in_port = in_port
        self.port_names = port_names
        self.counters = counters
        self.data = bufs.data
        self.default_out = default_out
        self._out: np.ndarray | None = None
        self._lengths: np.ndarray | None = None
        self._headers: Headers | None = None
        self.ctx = ctx
        self._keyed: KeyedTables | None = None     # no ctx: private tables, made on first count_by

    # ---- batches outside a pipeline ---------------------------------------------------
    @classmethod
    def from_frames(cls, frames, in_port: int = 0, default_out: int | None = None,
                    port_names=TRY_PORTS, counters: dict | None = None, ctx: WorkerContext | None = None,
                    bufs: PacketBuffers | None = None, first: int = 0) -> Batch:
        """A batch of ``frames`` (bytes each) as a worker stage builds it, to run a worker function on.

        The frames are copied into packet buffers of this process's own (``bufs``: into those, from buffer
        ``first`` on); every verdict starts at ``default_out`` (the port after ``in_port`` unless given).
        Parsing, verdicts, rewrites and counters behave as in a pipeline; ``batch.counters`` has the counts.
        """
        frames = [bytes(f) for f in frames]
        port_names = list(port_names)
        if not 0 <= in_port < len(port_names):
            raise ValueError(f"in_port {in_port} is not one of the {len(port_names)} ports ({', '.join(port_names)})")
        if default_out is None:
            default_out = (in_port + 1) % len(port_names)
        if bufs is None:
            bufs = buffers_for(frames)
        idx = np.arange(first, first + len(frames), dtype=np.uint32)
        for i, f in zip(idx, frames, strict=True):
            bufs.write_packet(int(i), f)
        if ctx is not None and counters is None:
            counters = ctx.counters
        return cls(bufs, idx, in_port, default_out, port_names, {} if counters is None else counters, ctx)

    @classmethod
    def from_pcap(cls, path: str | os.PathLike, **kwargs) -> Batch:
        """A batch of every frame of a pcap or pcapng file (Ethernet link type); keywords as from_frames."""
        from ixypipe.pcapfile import read_pcap, require_ethernet

        capture = read_pcap(path)
        require_ethernet(path, capture.linktype)
        return cls.from_frames(capture.packets(), **kwargs)

    def frames(self) -> list[bytes]:
        """Every packet's bytes now (after the function's rewrites), as bytes."""
        return [self.packet(i).tobytes() for i in range(self.n)]

    # ---- verdict array ---------------------------------------------------------------
    @property
    def out(self) -> np.ndarray:
        """One verdict per packet (int16): a port index or DROP; every packet starts with ``default_out``.

        Made on first use: a function that leaves every verdict as it is (forward, count) costs no array,
        which a lone packet on an idle pipeline notices (a numpy call with cold caches costs 10-40 us).
        """
        if self._out is None:
            self._out = np.full(self.n, self.default_out, np.int16)
        return self._out

    @out.setter
    def out(self, value) -> None:
        self._out = value

    def verdicts_set(self) -> bool:
        """Whether anything asked for the verdict array (else every packet goes to ``default_out``)."""
        return self._out is not None

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

    def set_dst_mac(self, mac, mask=None) -> None:
        self._set_mac(ETH_DST_OFF, mac, mask)

    def set_src_mac(self, mac, mask=None) -> None:
        self._set_mac(ETH_SRC_OFF, mac, mask)

    def _set_mac(self, offset: int, mac, mask) -> None:
        mac = _mac_bytes(mac)
        if mask is None:
            self.set_field(offset, mac)
            return
        mask = np.asarray(mask, dtype=bool)
        self.data[self.idx[mask], offset:offset + ETH_ADDR_LEN] = mac[mask] if mac.ndim == 2 else mac

    def ethertype(self) -> np.ndarray:
        """EtherType of every packet (big-endian on the wire), as uint16."""
        b = self.field(ETH_TYPE_OFF, 2).astype(np.uint16)
        return (b[:, 0] << np.uint16(8)) | b[:, 1]

    # ---- parsed headers (parsed on first use, kept until a rewrite) --------------------
    @property
    def headers(self) -> Headers:
        if self._headers is None:
            bufs = self.bufs
            self._headers = Headers.of_buffers(bufs.flat, self.idx, bufs.length, bufs.buf_size, PKTBUF_HEADROOM,
                                               bufs.max_data)
        return self._headers

    @property
    def eth(self) -> Eth:
        """Ethernet and VLAN tags: valid, vlans, tci, vlan_id, type (inner EtherType), l3 (offset)."""
        return self.headers.eth

    @property
    def ipv4(self) -> IPv4:
        """valid, header_len, total_len, ttl, proto, src, dst (uint32), frag_offset, more_fragments, csum_ok."""
        return self.headers.ipv4

    @property
    def ipv6(self) -> IPv6:
        """valid, hop_limit, src, dst ((n, 16)), next_header (after extension headers), ext_ok, frag..."""
        return self.headers.ipv6

    @property
    def l3(self) -> L3:
        """IPv4 or IPv6: v4, v6 (masks), src_in(prefixes), dst_in(prefixes) - e.g. l3.src_in("10.0.0.0/8")."""
        return L3(self.headers.ipv4, self.headers.ipv6)

    def fields(self) -> list[PacketFields]:
        """Every packet's parsed headers as a record (eth_type, vlans, ip, src, dst, proto, sport, dport,
        offsets): for per-packet code and printing; a batch function uses the vectors."""
        return packet_fields(self.headers)

    @property
    def l4(self) -> L4:
        """proto, off, masks tcp/udp/sctp/icmp, sport, dport, tcp_flags, icmp_type, icmp_code."""
        return self.headers.l4

    def _rewrote(self, written: np.ndarray) -> np.ndarray:
        self._headers = None                                   # fields changed: parse again on next use
        return written

    def set_vlan_id(self, vid, tag: int = 0, mask=None) -> np.ndarray:
        """Set the VLAN id of the outer (tag 0) or inner (tag 1) tag where there is one."""
        return self._rewrote(rewrite.set_vlan_id(self.headers, vid, tag, mask))

    def decrement_ttl(self, mask=None) -> np.ndarray:
        """TTL / hop limit - 1 (IPv4 checksum updated); returns the expired packets (TTL was <= 1, unchanged)."""
        return self._rewrote(rewrite.decrement_ttl(self.headers, mask))

    def set_ipv4_src(self, addr, mask=None) -> np.ndarray:
        """Rewrite the IPv4 source address ('10.0.0.1', int or uint32 array); checksums follow."""
        return self._rewrote(rewrite.set_ipv4_address(self.headers, "src", addr, mask))

    def set_ipv4_dst(self, addr, mask=None) -> np.ndarray:
        return self._rewrote(rewrite.set_ipv4_address(self.headers, "dst", addr, mask))

    def set_sport(self, port, mask=None) -> np.ndarray:
        """Rewrite the TCP/UDP source port; the L4 checksum follows."""
        return self._rewrote(rewrite.set_port(self.headers, "src", port, mask))

    def set_dport(self, port, mask=None) -> np.ndarray:
        return self._rewrote(rewrite.set_port(self.headers, "dst", port, mask))

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
        """Add to a named counter; shown live in the stats and in the final summary.

        Any name (full, UTF-8); a new name past the stage's counter block (layout.STAGE_COUNTERS_MAX names,
        STAGE_COUNTER_NAMES_SIZE bytes of names) is refused: one warning names the limit, the batch goes on.
        """
        add_count(self.counters, name, value)

    def count_by(self, table: str, keys, n=None, kind: str = "int") -> None:
        """Add ``n`` (default 1; an integer, or one per key such as ``batch.lengths``) to each key's value in
        keyed table ``table``: a hash table per worker, summed per key over the workers in the summary,
        its JSON ("keyed_counters") and the metrics, with its top keys and totals.

        ``keys``: one integer per element (a 1-D integer array of any length, e.g.
        ``batch.ipv4.src[batch.ipv4.valid]``); ``kind`` says how the summary shows them: "int", "ipv4"
        (10.0.0.1), "mac" or "hex" (the first call's).  Amounts of 0 are not counted.  A table holds
        3/4 of workers.keyed_slots keys; an amount for a key that does not fit is counted as the
        table's overflow, never lost silently.  A worker has workers.keyed_tables tables: a call for
        one more is refused (one warning, counted), the batch goes on.
        """
        if self.ctx is not None:
            self.ctx.count_by(table, keys, n, kind)
            return
        if self._keyed is None:
            self._keyed = KeyedTables(private_block())
        self._keyed.count_by(table, keys, n, kind)

    def keyed_tables(self) -> KeyedTables | None:
        """The tables count_by counted into (None before the first call outside a pipeline)."""
        return self.ctx.keyed_tables() if self.ctx is not None else self._keyed


def buffers_for(frames: list[bytes]) -> PacketBuffers:
    """Private packet buffers (PacketBuffers.private) for ``frames``: one each, large enough for the longest."""
    longest = max([len(f) for f in frames] + [1])
    size = DEFAULT_BUF_SIZE
    while size - PKTBUF_HEADROOM < longest and size < HUGEPAGE_SIZE:
        size *= 2
    return PacketBuffers.private(max(len(frames), 1), size)


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


def wants_fields(handle: Callable) -> bool:
    """Whether ``handle`` takes a second positional argument (the packet's PacketFields)."""
    try:
        params = inspect.signature(handle).parameters.values()
    except (TypeError, ValueError):                   # a builtin without a signature: the one-argument form
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def per_packet(handle: Callable[..., bool]) -> Callable[[Batch], np.ndarray]:
    """Turn ``handle(pkt) -> bool`` (True = forward) into a batch function.  Slow: a Python loop.

    ``pkt`` is the packet's bytes (a uint8 view: writes go to the packet).  A ``handle(pkt, f)`` that takes a
    second argument also gets the packet's parsed headers ``f`` (fields.PacketFields: ``f.ip``, ``f.src``,
    ``f.dst``, ``f.proto``, ``f.sport``, ``f.dport``, ``f.vlans``, ``f.payload_off``...), VLAN tags and IPv6
    extension headers walked as for batch.l4.
    """
    if getattr(handle, PER_PACKET_ATTR, False) and hasattr(handle, "__wrapped__"):
        return handle
    with_fields = wants_fields(handle)

    def batch_fn(batch: Batch) -> np.ndarray:
        keep = np.empty(batch.n, dtype=bool)
        if with_fields:
            for i, f in enumerate(batch.fields()):
                keep[i] = bool(handle(batch.packet(i), f))
            return keep
        for i in range(batch.n):
            keep[i] = bool(handle(batch.packet(i)))
        return keep

    batch_fn.__wrapped__ = handle
    batch_fn.__name__ = getattr(handle, "__name__", "per_packet")
    setattr(batch_fn, PER_PACKET_ATTR, True)
    return batch_fn
