"""Classic pcap files: a reader and a batched writer that tcpdump, tshark and Wireshark read.

The format is libpcap's: a 24-byte global header whose magic gives the byte
order and the timestamp unit (microseconds, 0xa1b2c3d4, or nanoseconds,
0xa1b23c4d), then one 16-byte record header (seconds, fraction, captured
length, length on the wire) before each packet.  ``read_pcap`` loads a whole
file into one array and indexes its records (either byte order, either
unit; a pcapng file gets a clear error).  ``PcapWriter`` writes little-endian
files and builds a whole batch - record headers and packet bytes - with
numpy scatters into one buffer and one write; it can append to a file a
previous writer started, so one process may create the file and another
fill it.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PCAP_MAGIC_USEC = 0xA1B2C3D4
PCAP_MAGIC_NSEC = 0xA1B23C4D
PCAP_VERSION = (2, 4)
PCAP_DEFAULT_SNAPLEN = 262144
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
_GLOBAL = PCAP_GLOBAL_HEADER_DTYPE.itemsize
_RECORD = PCAP_RECORD_DTYPE.itemsize


class PcapError(ValueError):
    """A file that is not a readable classic pcap, or a bad batch to write; the message says which."""


@dataclass
class PcapFile:
    """A loaded pcap: all bytes in ``raw``; packet i is raw[offsets[i] : offsets[i] + caplen[i]]."""
    path: Path
    nanosecond: bool
    snaplen: int
    linktype: int
    raw: np.ndarray          # uint8, the whole file
    offsets: np.ndarray      # int64, start of each packet's data in raw
    caplen: np.ndarray       # uint32, bytes captured
    origlen: np.ndarray      # uint32, bytes on the wire
    ts_ns: np.ndarray        # int64, nanoseconds since the epoch

    def __len__(self) -> int:
        return len(self.offsets)

    def packet(self, i: int) -> bytes:
        start = int(self.offsets[i])
        return self.raw[start:start + int(self.caplen[i])].tobytes()

    def packets(self) -> list[bytes]:
        return [self.packet(i) for i in range(len(self))]


def _header_format(path: Path, magic_bytes: bytes) -> tuple[str, bool]:
    """(byte order, nanosecond) from the first four bytes of the file."""
    for order in ("<", ">"):
        (magic,) = struct.unpack(order + "I", magic_bytes)
        if magic == PCAP_MAGIC_USEC:
            return order, False
        if magic == PCAP_MAGIC_NSEC:
            return order, True
    if struct.unpack("<I", magic_bytes)[0] == PCAPNG_MAGIC:
        raise PcapError(f"{path} is a pcapng file; ixypipe reads classic pcap: convert it with "
                        f"`editcap -F pcap {path} out.pcap`")
    raise PcapError(f"{path} is not a pcap file (magic {magic_bytes.hex()})")


def read_header(path: str | os.PathLike) -> tuple[str, bool, int, int]:
    """(byte order, nanosecond, snaplen, linktype) of a pcap file's global header."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(_GLOBAL)
    except FileNotFoundError:
        raise PcapError(f"no pcap file {path}") from None
    except IsADirectoryError:
        raise PcapError(f"{path} is a directory, not a pcap file") from None
    if len(head) < _GLOBAL:
        raise PcapError(f"{path} is too short ({len(head)} bytes) to be a pcap file")
    order, nano = _header_format(path, head[:4])
    hdr = np.frombuffer(head, PCAP_GLOBAL_HEADER_DTYPE.newbyteorder(order))[0]
    return order, nano, int(hdr["snaplen"]), int(hdr["network"])


def read_pcap(path: str | os.PathLike) -> PcapFile:
    """Load a classic pcap file and index its records."""
    path = Path(path)
    order, nano, snaplen, linktype = read_header(path)
    raw = np.fromfile(path, np.uint8)
    data = raw.tobytes()
    rec = struct.Struct(order + "IIII")
    offsets, caplen, origlen, sec, frac = [], [], [], [], []
    pos, end = _GLOBAL, len(data)
    while pos < end:
        if pos + _RECORD > end:
            raise PcapError(f"{path}: record {len(offsets)} at byte {pos} is cut short "
                            f"(the file ends inside its header)")
        s, f, incl, orig = rec.unpack_from(data, pos)
        pos += _RECORD
        if pos + incl > end:
            raise PcapError(f"{path}: record {len(offsets)} at byte {pos - _RECORD} claims {incl} bytes but "
                            f"the file ends after {end - pos}")
        offsets.append(pos)
        caplen.append(incl)
        origlen.append(orig)
        sec.append(s)
        frac.append(f)
        pos += incl
    unit = 1 if nano else NS_PER_USEC
    ts = np.asarray(sec, np.int64) * NS_PER_SEC + np.asarray(frac, np.int64) * unit
    return PcapFile(path, nano, snaplen, linktype, raw, np.asarray(offsets, np.int64),
                    np.asarray(caplen, np.uint32), np.asarray(origlen, np.uint32), ts)


class PcapWriter:
    """Writes packets to a classic pcap file, a batch per call.

    ``PcapWriter(path)`` creates (or truncates) the file and writes the global
    header; ``PcapWriter(path, append=True)`` continues a file some writer
    created and keeps its timestamp unit, snaplen and link type.
    """

    def __init__(self, path: str | os.PathLike, nanosecond: bool = True, snaplen: int = PCAP_DEFAULT_SNAPLEN,
                 linktype: int = LINKTYPE_ETHERNET, append: bool = False):
        self.path = Path(path)
        self.packets = 0
        if append:
            order, self.nanosecond, self.snaplen, self.linktype = read_header(self.path)
            if order != "<":
                raise PcapError(f"{self.path} is big-endian; only little-endian files are appended to")
            self._file = open(self.path, "ab", buffering=WRITE_BUFFER)   # noqa: SIM115 - closed in close()
            return
        if not 0 < snaplen <= 0xFFFFFFFF:
            raise PcapError(f"snaplen must be 1..{0xFFFFFFFF}, got {snaplen}")
        self.nanosecond, self.snaplen, self.linktype = nanosecond, snaplen, linktype
        try:
            self._file = open(self.path, "wb", buffering=WRITE_BUFFER)   # noqa: SIM115
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
        self._file.write(out.data)
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
