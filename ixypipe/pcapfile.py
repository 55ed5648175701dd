"""Capture files: a pcap and pcapng reader, and a batched classic pcap writer that tcpdump and tshark read.

Classic pcap is libpcap's: a 24-byte global header whose magic gives the byte
order and the timestamp unit (microseconds, 0xa1b2c3d4, or nanoseconds,
0xa1b23c4d), then one 16-byte record header (seconds, fraction, captured
length, length on the wire) before each packet.  pcapng is a sequence of
blocks (type, length, body, length again); the reader takes the section
header (byte order), interface descriptions (link type, snaplen, timestamp
resolution), enhanced and simple packet blocks, and skips every other block
type.  ``read_pcap`` loads a whole file into one array and indexes its
packets; a file that ends inside a record is an error, or with
``allow_cut`` the packets before it.  A field that cannot be right - a
captured length past the snap length (or PCAP_MAX_CAPLEN) or past the
length on the wire, a sub-second timestamp of a second or more, a pcapng
timestamp beyond int64 nanoseconds, a block whose trailing length differs
from its leading one - is a PcapError naming the field and its byte
offset, never taken for a cut file.  ``probe`` / ``check_input`` /
``check_output`` check a file before a run (format, link type, writable)
without reading it all.  ``PcapWriter`` writes little-endian classic files
and builds a whole batch - record headers and packet bytes - with numpy
scatters into one buffer and one write; it can append to a file a previous
writer started, so one process may create the file and another fill it.
With ``live=True`` each batch reaches the file at once (one write(2), no
user-space buffer), so a reader of a running capture sees every batch.
"""

from __future__ import annotations

import os
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from ixypipe.datafile import file_kind, kernel_filesystem

PCAP_MAGIC_USEC = 0xA1B2C3D4
PCAP_MAGIC_NSEC = 0xA1B23C4D
PCAP_VERSION = (2, 4)
PCAP_DEFAULT_SNAPLEN = 262144
PCAP_MAX_CAPLEN = 262144                # libpcap's MAXIMUM_SNAPLEN: no record is read longer than this
INT64_MAX = (1 << 63) - 1
LINKTYPE_ETHERNET = 1
PCAP_GLOBAL_HEADER_DTYPE = np.dtype([
    ("magic", "u4"), ("version_major", "u2"), ("version_minor", "u2"),
    ("thiszone", "i4"), ("sigfigs", "u4"), ("snaplen", "u4"), ("network", "u4"),
])                                       # 24 bytes; byte order given by how the magic reads
PCAP_RECORD_DTYPE = np.dtype([("ts_sec", "u4"), ("ts_frac", "u4"), ("incl_len", "u4"), ("orig_len", "u4")])
PCAPNG_MAGIC = 0x0A0D0D0A
NS_PER_SEC = 1_000_000_000
NS_PER_USEC = 1_000
WRITE_BUFFER = 1 << 20
PROBE_BYTES = 1 << 16                   # how much of a file probe() reads
_GLOBAL = PCAP_GLOBAL_HEADER_DTYPE.itemsize
_RECORD = PCAP_RECORD_DTYPE.itemsize


class PcapError(ValueError):
    """A file that is not a readable pcap or pcapng, or a bad batch to write; the message says which."""


@dataclass
class PcapFile:
    """A loaded capture: all bytes in ``raw``; packet i is raw[offsets[i] : offsets[i] + caplen[i]]."""
    path: Path
    nanosecond: bool
    snaplen: int
    linktype: int
    raw: np.ndarray          # uint8, the whole file
    offsets: np.ndarray      # int64, start of each packet's data in raw
    caplen: np.ndarray       # uint32, bytes captured
    origlen: np.ndarray      # uint32, bytes on the wire
    ts_ns: np.ndarray        # int64, nanoseconds since the epoch
    format: str = "pcap"     # "pcap" or "pcapng"
    cut_at: int | None = None    # the file ends inside the record (or block) starting at this byte

    def __len__(self) -> int:
        return len(self.offsets)

    def packet(self, i: int) -> bytes:
        start = int(self.offsets[i])
        return self.raw[start:start + int(self.caplen[i])].tobytes()

    def packets(self) -> list[bytes]:
        return [self.packet(i) for i in range(len(self))]

    def cut_message(self) -> str:
        """What a truncated file still gives, for the one message a replay of it prints."""
        return (f"{self.path} is cut short: the file ends inside the {'block' if self.format == 'pcapng' else 'record'} "
                f"at byte {self.cut_at}; {len(self)} whole packets read before it")


@dataclass(frozen=True)
class CaptureInfo:
    """What ``probe`` finds at the start of a capture file without reading it all."""
    format: str              # "pcap" or "pcapng"
    linktype: int            # of the file (pcap) or of its first interface (pcapng)
    snaplen: int
    nanosecond: bool
    order: str               # "<" or ">"


# link types a capture of something other than Ethernet frames commonly has (tcpdump.org/linktypes.html)
LINKTYPE_NAMES = {0: "NULL (BSD loopback)", 1: "ETHERNET", 101: "RAW (IP)", 105: "IEEE802_11", 113: "LINUX_SLL",
                  127: "IEEE802_11_RADIOTAP", 228: "IPV4", 229: "IPV6", 276: "LINUX_SLL2"}


def linktype_name(linktype: int) -> str:
    return LINKTYPE_NAMES.get(linktype, "unknown")


def require_ethernet(path, linktype: int) -> None:
    if linktype != LINKTYPE_ETHERNET:
        raise PcapError(f"{path}: link type {linktype} ({linktype_name(linktype)}) is not Ethernet: ixypipe "
                        f"ports carry Ethernet frames (link type {LINKTYPE_ETHERNET}); a capture of an "
                        "interface with link-layer headers (tcpdump -i eth0, not -i any) has them")


def _header_format(path: Path, magic_bytes: bytes) -> tuple[str, bool]:
    """(byte order, nanosecond) of a classic pcap from the first four bytes of the file."""
    for order in ("<", ">"):
        (magic,) = struct.unpack(order + "I", magic_bytes)
        if magic == PCAP_MAGIC_USEC:
            return order, False
        if magic == PCAP_MAGIC_NSEC:
            return order, True
    raise PcapError(f"{path} is neither a pcap nor a pcapng file (magic {magic_bytes.hex()})")


def _open(path: Path):
    try:
        return open(path, "rb")      # noqa: SIM115 - the callers close it
    except FileNotFoundError:
        raise PcapError(f"no pcap file {path}") from None
    except IsADirectoryError:
        raise PcapError(f"{path} is a directory, not a pcap file") from None
    except PermissionError:
        raise PcapError(f"cannot read pcap file {path}: permission denied") from None
    except OSError as exc:
        raise PcapError(f"cannot read pcap file {path}: {exc.strerror or exc}") from None


def _regular(path: Path) -> None:
    """A capture to read is a regular file (a FIFO or a device would block or never end)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PcapError(f"no pcap file {path}") from None
    except OSError as exc:
        raise PcapError(f"cannot read pcap file {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise PcapError(f"{path} is a directory, not a pcap file")
    if not stat.S_ISREG(mode):
        raise PcapError(f"{path} is not a regular file (a FIFO or device cannot be replayed)")
    _not_kernel(path)


def _not_kernel(path: Path) -> None:
    """A capture is never a file of procfs or sysfs (/proc/version passes for a regular file)."""
    fs = kernel_filesystem(path)
    if fs is not None:
        raise PcapError(f"{str(path)!r} is on {fs} (a kernel interface, not a data file); a capture must be a "
                        "regular file")


def read_header(path: str | os.PathLike) -> tuple[str, bool, int, int]:
    """(byte order, nanosecond, snaplen, linktype) of a classic pcap file's global header."""
    info = probe(path)
    if info.format != "pcap":
        raise PcapError(f"{path} is a pcapng file; only classic pcap files are appended to")
    return info.order, info.nanosecond, info.snaplen, info.linktype


def probe(path: str | os.PathLike) -> CaptureInfo:
    """Format and link type of a capture from its first blocks: exists, readable, pcap or pcapng."""
    path = Path(path)
    _regular(path)
    with _open(path) as f:
        head = f.read(PROBE_BYTES)
    if len(head) >= 4 and struct.unpack("<I", head[:4])[0] == PCAPNG_MAGIC:
        return _probe_pcapng(path, head)
    if len(head) < _GLOBAL:
        raise PcapError(f"{path} is too short ({len(head)} bytes) to be a pcap file")
    order, nano = _header_format(path, head[:4])
    hdr = np.frombuffer(head[:_GLOBAL], PCAP_GLOBAL_HEADER_DTYPE.newbyteorder(order))[0]
    return CaptureInfo("pcap", int(hdr["network"]), int(hdr["snaplen"]), nano, order)


def check_input(path: str | os.PathLike) -> CaptureInfo:
    """A capture a pcap port can replay: readable pcap or pcapng of Ethernet frames."""
    info = probe(path)
    require_ethernet(path, info.linktype)
    return info


def check_output(path: str | os.PathLike) -> None:
    """A path a capture can be written to: a regular file (or none yet) in an existing, writable directory.

    Checked without writing: a directory, a device such as /dev/full or a FIFO is refused by its type."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        parent = path.parent
        if not parent.is_dir():
            raise PcapError(f"directory {parent} for pcap file {path} does not exist") from None
        _not_kernel(path)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PcapError(f"cannot create pcap file {path}: directory {parent} is not writable") from None
        return
    except OSError as exc:
        raise PcapError(f"cannot write pcap file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PcapError(f"{str(path)!r} is {file_kind(st.st_mode)}; an output must be a regular file "
                        "(it is created or replaced)")
    _not_kernel(path)
    if not os.access(path, os.W_OK):
        raise PcapError(f"cannot write pcap file {path}: permission denied")


def read_pcap(path: str | os.PathLike, allow_cut: bool = False) -> PcapFile:
    """Load a pcap or pcapng file (no larger than the free memory) and index its packets.

    A file that ends inside a record is an error, or with ``allow_cut`` the
    packets before it with ``cut_at`` set (a capture still being written, or
    cut by a full disk)."""
    path = Path(path)
    info = probe(path)
    size, free = path.stat().st_size, psutil.virtual_memory().available
    if size > free:
        raise PcapError(f"{path} is {size} bytes, more than this machine's free memory ({free} bytes): a capture "
                        "is loaded whole")
    try:
        raw = np.fromfile(path, np.uint8)
    except MemoryError:
        raise PcapError(f"{path} is {size} bytes, more than this machine can load") from None
    if info.format == "pcapng":
        loaded = _read_pcapng(path, raw)
    else:
        loaded = _read_classic(path, raw, info)
    if loaded.cut_at is not None and not allow_cut:
        raise PcapError(loaded.cut_detail)
    return loaded.file


@dataclass
class _Loaded:
    file: PcapFile
    cut_detail: str = ""

    @property
    def cut_at(self) -> int | None:
        return self.file.cut_at


def caplen_limit(snaplen: int) -> int:
    """The longest record a file of this snap length may hold (0 = none given: PCAP_MAX_CAPLEN)."""
    return min(snaplen, PCAP_MAX_CAPLEN) if snaplen else PCAP_MAX_CAPLEN


def limit_text(snaplen: int) -> str:
    if snaplen and snaplen <= PCAP_MAX_CAPLEN:
        return f"the snap length {snaplen}"
    return f"the largest record read ({PCAP_MAX_CAPLEN} bytes)"


def _read_classic(path: Path, raw: np.ndarray, info: CaptureInfo) -> _Loaded:
    data = raw.tobytes()
    rec = struct.Struct(info.order + "IIII")
    offsets, caplen, origlen, sec, frac = [], [], [], [], []
    pos, end = _GLOBAL, len(data)
    cut, detail = None, ""
    limit = caplen_limit(info.snaplen)
    frac_field, frac_end = ("ts_nsec", NS_PER_SEC) if info.nanosecond else ("ts_usec", NS_PER_SEC // NS_PER_USEC)
    while pos < end:
        if pos + _RECORD > end:
            cut, detail = pos, (f"{path}: record {len(offsets)} at byte {pos} is cut short "
                                f"(the file ends inside its header)")
            break
        s, f, incl, orig = rec.unpack_from(data, pos)
        where = f"{path}: record {len(offsets)} at byte {pos}"
        if incl > limit:
            raise PcapError(f"{where}: incl_len (byte {pos + 8}) is {incl}, beyond {limit_text(info.snaplen)}: a "
                            f"corrupt field, not a cut file ({len(offsets)} packets before it)")
        if incl > orig:
            raise PcapError(f"{where}: incl_len (byte {pos + 8}) is {incl}, more than orig_len {orig} (the packet's "
                            f"length on the wire): a corrupt field, not a cut file ({len(offsets)} packets before it)")
        if f >= frac_end:
            raise PcapError(f"{where}: {frac_field} (byte {pos + 4}) is {f}, out of range 0..{frac_end - 1}: a "
                            f"corrupt field ({len(offsets)} packets before it)")
        if pos + _RECORD + incl > end:
            cut, detail = pos, (f"{path}: record {len(offsets)} at byte {pos} claims {incl} bytes but "
                                f"the file ends after {end - pos - _RECORD}")
            break
        pos += _RECORD
        offsets.append(pos)
        caplen.append(incl)
        origlen.append(orig)
        sec.append(s)
        frac.append(f)
        pos += incl
    unit = 1 if info.nanosecond else NS_PER_USEC
    ts = np.asarray(sec, np.int64) * NS_PER_SEC + np.asarray(frac, np.int64) * unit
    return _Loaded(PcapFile(path, info.nanosecond, info.snaplen, info.linktype, raw, np.asarray(offsets, np.int64),
                            np.asarray(caplen, np.uint32), np.asarray(origlen, np.uint32), ts, "pcap", cut), detail)


# ---- pcapng (the IETF draft "PCAP Now Generic", opsawg-pcapng) -------------------------------
# Every block: type (u32), total length (u32, a multiple of 4, repeated at its end), body.  The
# section header block's byte-order magic gives the endianness of every block in its section.
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAPNG_SHB = PCAPNG_MAGIC
PCAPNG_IDB = 1                           # interface: link type (u16), reserved (u16), snaplen (u32), options
PCAPNG_SPB = 3                           # simple packet: original length (u32), data (cut to the snaplen)
PCAPNG_EPB = 6                           # enhanced packet: interface, ts high, ts low, caplen, origlen, data
PCAPNG_OPT_END = 0
PCAPNG_OPT_IF_TSRESOL = 9                # one byte: 10^-v seconds, or 2^-(v & 0x7f) with the top bit set
PCAPNG_DEFAULT_TSRESOL = 6               # microseconds
_BLOCK_HEAD = 8
_SHB_MIN = 28
_IDB_FIXED = 8
_EPB_FIXED = 20
_SPB_FIXED = 4


def _ng_order(path: Path, data: bytes, pos: int) -> str:
    if pos + 12 > len(data):
        raise PcapError(f"{path}: pcapng section header at byte {pos} is cut short")
    for order in ("<", ">"):
        if struct.unpack_from(order + "I", data, pos + 8)[0] == PCAPNG_BYTE_ORDER_MAGIC:
            return order
    raise PcapError(f"{path}: pcapng section header at byte {pos} has no byte-order magic "
                    f"({data[pos + 8:pos + 12].hex()})")


def _tsresol(order: str, data: bytes, start: int, end: int) -> int:
    """Ticks per second of an interface from its options (TLVs padded to 4 bytes)."""
    pos = start
    while pos + 4 <= end:
        code, length = struct.unpack_from(order + "HH", data, pos)
        if code == PCAPNG_OPT_END:
            break
        if code == PCAPNG_OPT_IF_TSRESOL and length >= 1 and pos + 5 <= end:
            v = data[pos + 4]
            return 2 ** (v & 0x7F) if v & 0x80 else 10 ** v
        pos += 4 + (length + 3) // 4 * 4
    return 10 ** PCAPNG_DEFAULT_TSRESOL


def _probe_pcapng(path: Path, head: bytes) -> CaptureInfo:
    """The first interface's link type (from the first PROBE_BYTES of the file)."""
    order = _ng_order(path, head, 0)
    pos = 0
    while pos + _BLOCK_HEAD <= len(head):
        btype, blen = struct.unpack_from(order + "II", head, pos)
        if blen < 12 or blen % 4:
            raise PcapError(f"{path}: pcapng block at byte {pos} has a bad length {blen}")
        if btype == PCAPNG_IDB and pos + _BLOCK_HEAD + _IDB_FIXED <= len(head):
            linktype, _, snaplen = struct.unpack_from(order + "HHI", head, pos + _BLOCK_HEAD)
            resol = _tsresol(order, head, pos + _BLOCK_HEAD + _IDB_FIXED, min(pos + blen - 4, len(head)))
            return CaptureInfo("pcapng", linktype, snaplen, resol > 10 ** PCAPNG_DEFAULT_TSRESOL, order)
        if btype in (PCAPNG_EPB, PCAPNG_SPB):
            raise PcapError(f"{path}: pcapng packet block at byte {pos} before any interface description")
        pos += blen
    raise PcapError(f"{path}: pcapng file without an interface description block in its first "
                    f"{len(head)} bytes")


def _read_pcapng(path: Path, raw: np.ndarray) -> _Loaded:
    """Every packet of every section (EPB and SPB); other block types are skipped."""
    data = raw.tobytes()
    end = len(data)
    offsets, caplen, origlen, ts = [], [], [], []
    order, interfaces = "<", []        # per interface of the section: (link type, snaplen, ticks per second)
    linktype, snaplen, nano = None, 0, False
    pos, cut, detail = 0, None, ""
    while pos < end:
        if pos + _BLOCK_HEAD > end:
            cut, detail = pos, f"{path}: pcapng block at byte {pos} is cut short (the file ends inside its header)"
            break
        if struct.unpack_from("<I", data, pos)[0] == PCAPNG_SHB:
            order, interfaces = _ng_order(path, data, pos), []
        btype, blen = struct.unpack_from(order + "II", data, pos)
        if blen < 12 or blen % 4:
            raise PcapError(f"{path}: pcapng block at byte {pos} has a bad length {blen}")
        if pos + blen > end:
            cut, detail = pos, (f"{path}: pcapng block {btype} at byte {pos} claims {blen} bytes but the file "
                                f"ends after {end - pos}")
            break
        (trailer,) = struct.unpack_from(order + "I", data, pos + blen - 4)
        if trailer != blen:
            raise PcapError(f"{path}: pcapng block {btype} at byte {pos}: its trailing length (byte "
                            f"{pos + blen - 4}) is {trailer}, its leading length {blen}: a corrupt block")
        body, body_end = pos + _BLOCK_HEAD, pos + blen - 4
        if btype == PCAPNG_SHB and blen < _SHB_MIN:
            raise PcapError(f"{path}: pcapng section header at byte {pos} is too short ({blen} bytes)")
        if btype == PCAPNG_IDB:
            if body + _IDB_FIXED > body_end:
                raise PcapError(f"{path}: pcapng interface block at byte {pos} is too short ({blen} bytes)")
            lt, _, snap = struct.unpack_from(order + "HHI", data, body)
            resol = _tsresol(order, data, body + _IDB_FIXED, body_end)
            interfaces.append((lt, snap, resol))
            if linktype is None or (linktype == LINKTYPE_ETHERNET and lt != LINKTYPE_ETHERNET):
                linktype, snaplen, nano = lt, snap, resol > 10 ** PCAPNG_DEFAULT_TSRESOL   # the first odd one
        elif btype in (PCAPNG_EPB, PCAPNG_SPB):
            if btype == PCAPNG_EPB:
                if body + _EPB_FIXED > body_end:
                    raise PcapError(f"{path}: pcapng packet block at byte {pos} is too short ({blen} bytes)")
                iface, hi, lo, incl, orig = struct.unpack_from(order + "IIIII", data, body)
                start = body + _EPB_FIXED
            else:
                iface, hi, lo = 0, 0, 0
                (orig,) = struct.unpack_from(order + "I", data, body)
                start = body + _SPB_FIXED
                incl = orig
            if iface >= len(interfaces):
                raise PcapError(f"{path}: pcapng packet block at byte {pos} names interface {iface}, but the "
                                f"section describes {len(interfaces)}")
            lt, snap, resol = interfaces[iface]
            if btype == PCAPNG_SPB and snap:
                incl = min(orig, snap)
            if start + incl > body_end:
                raise PcapError(f"{path}: pcapng packet block at byte {pos} claims {incl} bytes of data in a "
                                f"block of {blen}")
            if incl > caplen_limit(snap):
                raise PcapError(f"{path}: pcapng packet block at byte {pos}: captured length (byte {body + 12}) "
                                f"is {incl}, beyond {limit_text(snap)} of interface {iface}: a corrupt field")
            ticks = hi << 32 | lo
            ns = ticks * NS_PER_SEC // resol
            if ns > INT64_MAX:
                raise PcapError(f"{path}: pcapng packet block at byte {pos}: timestamp (byte {body + 4}) is "
                                f"{ticks} ticks of 1/{resol} s, beyond the year 2262 (int64 nanoseconds): a "
                                "corrupt field")
            offsets.append(start)
            caplen.append(incl)
            origlen.append(orig)
            ts.append(ns)
        pos += blen
    return _Loaded(PcapFile(path, nano, snaplen, LINKTYPE_ETHERNET if linktype is None else linktype, raw,
                            np.asarray(offsets, np.int64), np.asarray(caplen, np.uint32),
                            np.asarray(origlen, np.uint32), np.asarray(ts, np.int64), "pcapng", cut), detail)


class PcapWriter:
    """Writes packets to a classic pcap file, a batch per call.

    ``PcapWriter(path)`` creates (or truncates) the file and writes the global
    header; ``PcapWriter(path, append=True)`` continues a file some writer
    created and keeps its timestamp unit, snaplen and link type.
    """

    def __init__(self, path: str | os.PathLike, nanosecond: bool = True, snaplen: int = PCAP_DEFAULT_SNAPLEN,
                 linktype: int = LINKTYPE_ETHERNET, append: bool = False, live: bool = False):
        self.path = Path(path)
        self.packets = 0
        buffering = 0 if live else WRITE_BUFFER
        if append:
            order, self.nanosecond, self.snaplen, self.linktype = read_header(self.path)
            if order != "<":
                raise PcapError(f"{self.path} is big-endian; only little-endian files are appended to")
            try:
                self._file = open(self.path, "ab", buffering=buffering)   # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise PcapError(f"cannot write pcap file {self.path}: {exc.strerror}") from exc
            return
        if not 0 < snaplen <= 0xFFFFFFFF:
            raise PcapError(f"snaplen must be 1..{0xFFFFFFFF}, got {snaplen}")
        self.nanosecond, self.snaplen, self.linktype = nanosecond, snaplen, linktype
        try:
            self._file = open(self.path, "wb", buffering=buffering)   # noqa: SIM115
        except OSError as exc:
            raise PcapError(f"cannot create pcap file {self.path}: {exc.strerror}") from exc
        head = np.zeros(1, PCAP_GLOBAL_HEADER_DTYPE.newbyteorder("<"))
        head[0] = (PCAP_MAGIC_NSEC if nanosecond else PCAP_MAGIC_USEC, *PCAP_VERSION, 0, 0, snaplen, linktype)
        self._file.write(head.tobytes())

    def write_batch(self, data, lengths=None, ts_ns=None) -> int:
        """Append packets; returns how many.

        ``data`` is a 2-D uint8 array (one packet per row, ``lengths[i]``
        bytes of row i are the packet) or a list of bytes-like packets
        (``lengths`` then defaults to their sizes).  ``ts_ns`` is one
        timestamp for all, an array of one per packet, or None for now.
        Packets longer than the snaplen are cut to it; the record keeps the
        real length.
        """
        if self._file is None:
            raise PcapError(f"pcap writer of {self.path} is closed")
        if isinstance(data, np.ndarray) and data.ndim == 2:
            rows = data
            if lengths is None:
                lengths = np.full(len(rows), rows.shape[1], np.int64)
        else:
            packets = [np.frombuffer(bytes(p), np.uint8) for p in data]
            if lengths is None:
                lengths = [len(p) for p in packets]
            width = max((len(p) for p in packets), default=0)
            rows = np.zeros((len(packets), width), np.uint8)
            for i, p in enumerate(packets):
                rows[i, :len(p)] = p
        lengths = np.asarray(lengths, np.int64)
        n = len(lengths)
        if n != len(rows):
            raise PcapError(f"write_batch got {len(rows)} packets but {n} lengths")
        if n == 0:
            return 0
        if (lengths < 0).any() or int(lengths.max()) > rows.shape[1]:
            raise PcapError(f"packet lengths must be 0..{rows.shape[1]} (the data's width), "
                            f"got {int(lengths.min())}..{int(lengths.max())}")
        incl = np.minimum(lengths, self.snaplen)
        if ts_ns is None:
            ts_ns = time.time_ns()
        ts = np.broadcast_to(np.asarray(ts_ns, np.int64), (n,))
        rec = np.empty(n, PCAP_RECORD_DTYPE.newbyteorder("<"))
        rec["ts_sec"] = ts // NS_PER_SEC
        rec["ts_frac"] = ts % NS_PER_SEC // (1 if self.nanosecond else NS_PER_USEC)
        rec["incl_len"] = incl
        rec["orig_len"] = lengths
        sizes = _RECORD + incl
        starts = np.zeros(n, np.int64)
        np.cumsum(sizes[:-1], out=starts[1:])
        out = np.empty(int(sizes.sum()), np.uint8)
        out[starts[:, None] + np.arange(_RECORD)] = rec.view(np.uint8).reshape(n, _RECORD)
        top = int(incl.max())
        if top:
            cols = np.arange(top)
            keep = cols < incl[:, None]
            out[(starts[:, None] + _RECORD + cols)[keep]] = rows[:, :top][keep]
        view = memoryview(out)
        while len(view):                 # an unbuffered (live) file may take a write in parts
            view = view[self._file.write(view):]
        self.packets += n
        return n

    def write(self, packet: bytes, ts_ns: int | None = None) -> None:
        self.write_batch([packet], ts_ns=ts_ns)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
