"""pcap files: what PcapWriter writes, read_pcap, tshark and tcpdump read back exactly."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ixypipe.pcapfile import (
    PCAP_MAGIC_NSEC,
    PCAP_MAGIC_USEC,
    CaptureInfo,
    PcapError,
    PcapWriter,
    check_input,
    check_output,
    probe,
    read_header,
    read_pcap,
)
from tests.support.system import needs_tool

needs_tshark = needs_tool("tshark")
needs_tcpdump = needs_tool("tcpdump")


def frames(n: int, width: int = 128, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, width), dtype=np.uint8)
    lengths = rng.integers(60, width + 1, n)
    return data, lengths


@pytest.mark.parametrize("nanosecond", [True, False])
def test_batch_round_trip_keeps_bytes_lengths_and_timestamps(tmp_path, nanosecond):
    data, lengths = frames(50)
    ts = 1_700_000_000_123_456_789 + np.arange(50, dtype=np.int64) * 1_001
    path = tmp_path / "x.pcap"
    with PcapWriter(path, nanosecond=nanosecond) as w:
        assert w.write_batch(data[:20], lengths[:20], ts[:20]) == 20
        assert w.write_batch(data[20:], lengths[20:], ts[20:]) == 30
        assert w.packets == 50
    p = read_pcap(path)
    assert p.nanosecond is nanosecond
    assert len(p) == 50
    assert p.linktype == 1
    for i in range(50):
        assert p.packet(i) == data[i, :lengths[i]].tobytes()
    assert (p.caplen == lengths).all() and (p.origlen == lengths).all()
    expect = ts if nanosecond else ts // 1000 * 1000
    assert (p.ts_ns == expect).all()
    magic = struct.unpack("<I", path.read_bytes()[:4])[0]
    assert magic == (PCAP_MAGIC_NSEC if nanosecond else PCAP_MAGIC_USEC)
    assert path.stat().st_size == 24 + 16 * 50 + int(lengths.sum())


def test_list_input_and_snaplen_cut(tmp_path):
    pkts = [b"\x01" * 60, b"\x02" * 100, b"\x03" * 61]
    path = tmp_path / "x.pcap"
    with PcapWriter(path, snaplen=64) as w:
        w.write_batch(pkts, ts_ns=5_000_000_007)
        w.write(b"\x04" * 70)
    p = read_pcap(path)
    assert p.snaplen == 64
    assert p.packets() == [b"\x01" * 60, b"\x02" * 64, b"\x03" * 61, b"\x04" * 64]
    assert list(p.origlen) == [60, 100, 61, 70]
    assert list(p.ts_ns[:3]) == [5_000_000_007] * 3


def test_append_continues_a_file_in_its_own_format(tmp_path):
    path = tmp_path / "x.pcap"
    PcapWriter(path, nanosecond=False, snaplen=1000).close()
    assert read_header(path) == ("<", False, 1000, 1)
    with PcapWriter(path, append=True) as w:
        assert not w.nanosecond and w.snaplen == 1000
        w.write_batch([b"a" * 60], ts_ns=1_000_000_999)
    with PcapWriter(path, append=True) as w:
        w.write_batch([b"b" * 61], ts_ns=2_000_000_000)
    p = read_pcap(path)
    assert p.packets() == [b"a" * 60, b"b" * 61]
    assert list(p.ts_ns) == [1_000_000_000, 2_000_000_000]


def test_big_endian_files_are_read(tmp_path):
    path = tmp_path / "be.pcap"
    body = struct.pack(">IHHiIII", PCAP_MAGIC_USEC, 2, 4, 0, 0, 65535, 1)
    body += struct.pack(">IIII", 10, 20, 3, 60) + b"xyz"
    path.write_bytes(body)
    p = read_pcap(path)
    assert p.packets() == [b"xyz"]
    assert list(p.origlen) == [60] and list(p.ts_ns) == [10 * 10**9 + 20_000]


def test_bad_files_get_clear_errors(tmp_path):
    ng = tmp_path / "a.pcapng"
    ng.write_bytes(struct.pack("<I", 0x0A0D0D0A) + b"\0" * 40)
    with pytest.raises(PcapError, match=r"pcapng section header at byte 0 has no byte-order magic"):
        read_pcap(ng)
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello world, this is not a pcap")
    with pytest.raises(PcapError, match="is neither a pcap nor a pcapng file"):
        read_pcap(junk)
    with pytest.raises(PcapError, match="no pcap file"):
        read_pcap(tmp_path / "missing.pcap")
    cut = tmp_path / "cut.pcap"
    with PcapWriter(cut) as w:
        w.write_batch([b"z" * 100])
    cut.write_bytes(cut.read_bytes()[:-10])
    with pytest.raises(PcapError, match=r"record 0 at byte 24 claims 100 bytes but the file ends after 90"):
        read_pcap(cut)


def test_bad_batches_are_refused(tmp_path):
    with PcapWriter(tmp_path / "x.pcap") as w:
        with pytest.raises(PcapError, match="got 2 packets but 3 lengths"):
            w.write_batch(np.zeros((2, 10), np.uint8), [1, 2, 3])
        with pytest.raises(PcapError, match=r"lengths must be 0\.\.10"):
            w.write_batch(np.zeros((2, 10), np.uint8), [1, 11])
    with pytest.raises(PcapError, match="is closed"):
        w.write_batch([b"x"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(min_size=0, max_size=300), max_size=40), st.booleans())
def test_any_packets_round_trip(tmp_path, pkts, nanosecond):
    path = tmp_path / "h.pcap"
    with PcapWriter(path, nanosecond=nanosecond) as w:
        w.write_batch(pkts, ts_ns=1_234_567_890_123)
    assert read_pcap(path).packets() == pkts


def _ethernet(i: int, size: int) -> bytes:
    eth = bytes.fromhex("02aabbccdd01") + bytes.fromhex("02aabbccdd02") + b"\x08\x00"
    udp_len = size - 14 - 20
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size - 14, i, 0, 64, 17, 0, bytes([10, 77, 0, 1]),
                     bytes([10, 77, 0, 2]))
    udp = struct.pack("!HHHH", 1000 + i, 2000, udp_len, 0)
    return eth + ip + udp + bytes(udp_len - 8)


@needs_tshark
@pytest.mark.parametrize("nanosecond", [True, False])
def test_tshark_reads_every_packet_with_its_length_and_time(tmp_path, nanosecond):
    path = tmp_path / "t.pcap"
    sizes = [60 + 7 * i for i in range(25)]
    ts = 1_700_000_000_000_000_000 + np.arange(25, dtype=np.int64) * 1_234_567
    with PcapWriter(path, nanosecond=nanosecond) as w:
        w.write_batch([_ethernet(i, s) for i, s in enumerate(sizes)], ts_ns=ts)
    res = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.len", "-e", "udp.srcport",
                          "-e", "frame.time_epoch"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == sizes
    assert [int(r[1]) for r in rows] == [1000 + i for i in range(25)]
    unit = 1 if nanosecond else 1000
    got = [round(float(r[2]) * 1e9 / unit) * unit for r in rows]
    assert all(abs(g - int(t)) < 1000 for g, t in zip(got, ts, strict=True))


@needs_tcpdump
def test_tcpdump_reads_every_packet(tmp_path):
    path = tmp_path / "t.pcap"
    with PcapWriter(path) as w:
        w.write_batch([_ethernet(i, 100) for i in range(17)])
    res = subprocess.run(["tcpdump", "-nn", "-r", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 17
    assert "10.77.0.1.1016 > 10.77.0.2.2000: UDP, length 58" in lines[16]


# ---- pcapng, link types, cut files, output checks ---------------------------------------------

def ng_block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    total = 12 + len(body)
    return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)


def ng_option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def ng_file(order: str, pkts: list[bytes], linktype: int = 1, tsresol: int | None = None, simple: bool = False,
            ts: list[int] | None = None) -> bytes:
    """A pcapng file written by hand in either byte order: SHB, an unknown block, IDB, packets, an ISB-like block."""
    shb = ng_block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = (ng_option(order, 9, bytes([tsresol])) + ng_option(order, 0, b"")) if tsresol is not None else b""
    idb = ng_block(order, 1, struct.pack(order + "HHI", linktype, 0, 65535) + opts)
    out = shb + ng_block(order, 0x0BAD, b"custom stuff") + idb
    for i, p in enumerate(pkts):
        if simple:
            out += ng_block(order, 3, struct.pack(order + "I", len(p)) + p)
        else:
            t = (ts or [0] * len(pkts))[i]
            out += ng_block(order, 6, struct.pack(order + "IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(p), len(p)) + p)
    return out + ng_block(order, 5, struct.pack(order + "III", 0, 0, 0))   # interface statistics: skipped


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("simple", [False, True])
def test_pcapng_in_either_byte_order_with_enhanced_or_simple_blocks(tmp_path, order, simple):
    pkts = [bytes([i]) * (60 + i) for i in range(7)]
    path = tmp_path / "x.pcapng"
    path.write_bytes(ng_file(order, pkts, simple=simple, tsresol=9, ts=[1_700_000_000_000_000_123 + i for i in range(7)]))
    p = read_pcap(path)
    assert p.format == "pcapng" and p.linktype == 1 and p.cut_at is None
    assert p.packets() == pkts
    assert list(p.origlen) == [len(x) for x in pkts]
    if not simple:
        assert list(p.ts_ns) == [1_700_000_000_000_000_123 + i for i in range(7)]
    assert probe(path) == CaptureInfo("pcapng", 1, 65535, True, order)


def test_pcapng_default_microsecond_timestamps(tmp_path):
    path = tmp_path / "us.pcapng"
    path.write_bytes(ng_file("<", [b"a" * 60], ts=[1_500_000_000_250_000]))
    p = read_pcap(path)
    assert list(p.ts_ns) == [1_500_000_000_250_000_000]
    assert not p.nanosecond


@pytest.mark.parametrize("make", ["pcap", "pcapng"])
def test_other_link_types_are_refused_naming_file_and_type(tmp_path, make):
    path = tmp_path / f"sll.{make}"
    if make == "pcap":
        PcapWriter(path, linktype=113).close()
    else:
        path.write_bytes(ng_file(">", [b"x" * 60], linktype=113))
    assert probe(path).linktype == 113
    with pytest.raises(PcapError, match=rf"{path}: link type 113 \(LINUX_SLL\) is not Ethernet"):
        check_input(path)


@pytest.mark.parametrize("make", ["pcap", "pcapng"])
def test_a_cut_file_gives_its_whole_packets_when_allowed(tmp_path, make):
    pkts = [bytes([i]) * 100 for i in range(5)]
    path = tmp_path / f"cut.{make}"
    if make == "pcap":
        with PcapWriter(path) as w:
            w.write_batch(pkts)
        cut_at = 24 + 3 * 116
    else:
        path.write_bytes(ng_file("<", pkts)[:-16 - 10])      # inside the last packet block: the ISB is 24 bytes
        cut_at = len(ng_file("<", pkts[:4])) - 24
    raw = path.read_bytes()
    if make == "pcap":
        path.write_bytes(raw[:cut_at + 40])
    with pytest.raises(PcapError, match=rf"at byte {cut_at} claims"):
        read_pcap(path)
    p = read_pcap(path, allow_cut=True)
    assert p.packets() == pkts[:len(p)] and len(p) == (3 if make == "pcap" else 4)
    assert p.cut_at == cut_at
    assert f"ends inside the {'record' if make == 'pcap' else 'block'} at byte {cut_at}; {len(p)} whole packets" \
        in p.cut_message()


def test_output_checks_refuse_directories_devices_and_missing_directories(tmp_path):
    check_output(tmp_path / "new.pcap")
    (tmp_path / "old.pcap").write_bytes(b"")
    check_output(tmp_path / "old.pcap")
    with pytest.raises(PcapError, match="is a directory"):
        check_output(tmp_path)
    with pytest.raises(PcapError, match="is a character device; an output must be a regular file"):
        check_output("/dev/full")
    with pytest.raises(PcapError, match=r"directory .*nodir for pcap file .* does not exist"):
        check_output(tmp_path / "nodir" / "x.pcap")


def test_inputs_must_be_regular_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(PcapError, match=r"is not a regular file \(a FIFO or device cannot be replayed\)"):
        probe(fifo)
    with pytest.raises(PcapError, match="is a directory"):
        probe(tmp_path)


@needs_tshark
def test_editcap_pcapng_reads_like_the_pcap_it_came_from(tmp_path):
    editcap = shutil.which("editcap")
    if editcap is None:
        pytest.skip("editcap not installed: apt-get install tshark")
    data, lengths = frames(30)
    src = tmp_path / "a.pcap"
    with PcapWriter(src) as w:
        w.write_batch(data, lengths, 1_700_000_000_000_000_000 + np.arange(30) * 1000)
    ng = tmp_path / "a.pcapng"
    subprocess.run([editcap, "-F", "pcapng", str(src), str(ng)], check=True, capture_output=True)
    a, b = read_pcap(src), read_pcap(ng)
    assert b.format == "pcapng"
    assert b.packets() == a.packets()
    assert list(b.ts_ns) == list(a.ts_ns)


# ---- corrupt fields: named with their byte offset, never taken for a cut file (#24) ------------------------
def hundred(path, nanosecond=False) -> int:
    """100 60-byte packets; returns the byte where record 60 starts."""
    with PcapWriter(path, nanosecond=nanosecond) as w:
        w.write_batch([bytes([i]) * 60 for i in range(100)])
    return 24 + 60 * (16 + 60)


def patch(path, offset: int, fmt: str, value: int) -> None:
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, value)
    path.write_bytes(raw)


@pytest.mark.parametrize("caplen, why", [(1 << 31, "beyond the snap length 262144"),
                                         (1 << 20, "beyond the snap length 262144"),
                                         (262145, "beyond the snap length 262144"),
                                         (60 ^ (1 << 17), "more than orig_len 60 (the packet's length on the wire)"),
                                         (61, "more than orig_len 60 (the packet's length on the wire)")])
def test_a_record_length_past_the_snap_length_is_a_corrupt_field_not_a_cut_file(tmp_path, caplen, why):
    path = tmp_path / "x.pcap"
    at = hundred(path)
    patch(path, at + 8, "<I", caplen)
    for allow_cut in (False, True):          # a replay (allow_cut) refuses it too: it is not a cut file
        with pytest.raises(PcapError) as err:
            read_pcap(path, allow_cut=allow_cut)
        assert str(err.value) == (f"{path}: record 60 at byte {at}: incl_len (byte {at + 8}) is {caplen}, {why}: "
                                  "a corrupt field, not a cut file (60 packets before it)")


def test_a_zero_record_length_mid_file_is_caught_at_the_next_header(tmp_path):
    """caplen 0 makes the reader take packet 60's bytes for record 61's header: its fields cannot be right."""
    path = tmp_path / "x.pcap"
    at = hundred(path)
    patch(path, at + 8, "<I", 0)
    with pytest.raises(PcapError, match=rf"record 61 at byte {at + 16}: incl_len \(byte {at + 24}\) is 1010580540, "
                                        r"beyond the snap length 262144: a corrupt field, not a cut file \(61 "
                                        r"packets before it\)"):
        read_pcap(path, allow_cut=True)


@pytest.mark.parametrize("nanosecond, field, top", [(False, "ts_usec", 999_999), (True, "ts_nsec", 999_999_999)])
def test_a_subsecond_timestamp_of_a_second_or_more_is_a_corrupt_field(tmp_path, nanosecond, field, top):
    path = tmp_path / "x.pcap"
    at = hundred(path, nanosecond)
    patch(path, at + 4, "<I", top)
    assert len(read_pcap(path)) == 100                       # the largest one is fine
    patch(path, at + 4, "<I", top + 1)
    with pytest.raises(PcapError, match=rf"record 60 at byte {at}: {field} \(byte {at + 4}\) is {top + 1}, out of "
                                        rf"range 0..{top}: a corrupt field"):
        read_pcap(path)


def test_a_small_snap_length_bounds_the_records(tmp_path):
    path = tmp_path / "x.pcap"
    with PcapWriter(path, snaplen=64) as w:
        w.write_batch([b"a" * 100])                            # cut to 64 by the writer: fine
    assert read_pcap(path).caplen.tolist() == [64]
    patch(path, 16, "<I", 63)                                   # the header's snaplen now says 63
    with pytest.raises(PcapError, match=r"record 0 at byte 24: incl_len \(byte 32\) is 64, beyond the snap "
                                        r"length 63: a corrupt field"):
        read_pcap(path)


def test_a_genuinely_cut_last_record_keeps_its_message(tmp_path):
    path = tmp_path / "x.pcap"
    at = hundred(path)
    path.write_bytes(path.read_bytes()[:at + 16 + 30])
    p = read_pcap(path, allow_cut=True)
    assert (len(p), p.cut_at) == (60, at)
    assert p.cut_message() == (f"{path} is cut short: the file ends inside the record at byte {at}; 60 whole "
                               "packets read before it")


def test_a_pcapng_timestamp_beyond_int64_nanoseconds_is_named(tmp_path):
    """A large high word used to raise OverflowError ("Python int too large to convert to C long")."""
    path = tmp_path / "x.pcapng"
    raw = ng_file("<", [b"a" * 60, b"b" * 60], ts=[5, 0xFFFF_FFFF << 32])
    path.write_bytes(raw)
    epb = len(ng_file("<", [b"a" * 60])) - 24                   # the second packet block (the ISB is 24 bytes)
    with pytest.raises(PcapError, match=rf"{path}: pcapng packet block at byte {epb}: timestamp \(byte "
                                        rf"{epb + 12}\) is {0xFFFF_FFFF << 32} ticks of 1/1000000 s, beyond the "
                                        r"year 2262 \(int64 nanoseconds\): a corrupt field"):
        read_pcap(path)
    path.write_bytes(ng_file("<", [b"a" * 60], ts=[9_000_000_000_000_000]))   # 2255: still fine
    assert read_pcap(path).ts_ns.tolist() == [9_000_000_000_000_000_000]


def test_a_pcapng_block_whose_trailing_length_differs_is_corrupt(tmp_path):
    path = tmp_path / "x.pcapng"
    raw = bytearray(ng_file(">", [b"a" * 60, b"b" * 60]))
    epb = len(ng_file(">", [b"a" * 60])) - 24
    blen = 12 + 20 + 60
    struct.pack_into(">I", raw, epb + blen - 4, blen + 4)
    path.write_bytes(raw)
    with pytest.raises(PcapError, match=rf"pcapng block 6 at byte {epb}: its trailing length \(byte "
                                        rf"{epb + blen - 4}\) is {blen + 4}, its leading length {blen}: a corrupt "
                                        "block"):
        read_pcap(path, allow_cut=True)


def test_a_pcapng_packet_past_its_interface_snap_length_is_corrupt(tmp_path):
    path = tmp_path / "x.pcapng"
    path.write_bytes(ng_file("<", [b"a" * 60, b"b" * 65536]))     # ng_file's interface has snaplen 65535
    with pytest.raises(PcapError, match=r"captured length \(byte \d+\) is 65536, beyond the snap length 65535 of "
                                        "interface 0: a corrupt field"):
        read_pcap(path)


@pytest.mark.parametrize("case", ["timestamp", "trailer", "caplen", "bad-length"])
def test_pcapng_structure_errors_are_exit_2_at_check_and_run(tmp_path, case):
    from click.testing import CliRunner

    from ixypipe.cli import main

    pkts = [b"a" * 60, b"b" * 60]
    raw = bytearray(ng_file("<", pkts, ts=[0, 0xFFFF_FFFF << 32] if case == "timestamp" else None))
    epb = len(ng_file("<", pkts[:1])) - 24
    if case == "trailer":
        struct.pack_into("<I", raw, epb + 88, 0)
    elif case == "caplen":
        struct.pack_into("<I", raw, epb + 20, 1 << 31)
    elif case == "bad-length":
        struct.pack_into("<I", raw, epb + 4, 7)
    (tmp_path / "in.pcapng").write_bytes(raw)
    (tmp_path / "p.toml").write_text(
        '[[ports]]\nname = "in"\ndriver = "pcap"\npath = "in.pcapng"\nforward_to = "out"\n\n'
        '[[ports]]\nname = "out"\ndriver = "pcap"\npath = "out.pcap"\nmode = "write"\n\n'
        '[workers]\nfunction = "touch"\n')
    for check in (["--check"], ["--duration", "5"]):
        res = CliRunner().invoke(main, ["run", str(tmp_path / "p.toml"), *check])
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output
        assert f"p.toml: ports[0].path (line 4): {tmp_path / 'in.pcapng'}: pcapng " in res.stderr
    assert not (tmp_path / "out.pcap").exists()


def test_captures_on_procfs_and_sysfs_are_refused(tmp_path):
    for path, fs in (("/proc/version", "procfs"), ("/proc/self/mem", "procfs"), ("/sys/kernel/mm/x.pcap", "sysfs")):
        with pytest.raises(PcapError, match=rf"'{path}' is on {fs} \(a kernel interface, not a data file\)"):
            (probe if os.path.exists(path) and "mem" not in path else check_output)(path)
    with pytest.raises(PcapError, match=r"'/proc/self/mem' is on procfs"):
        probe("/proc/self/mem")


def test_a_capture_larger_than_the_free_memory_is_refused_before_it_is_read(tmp_path):
    import psutil

    path = tmp_path / "sparse.pcap"
    with PcapWriter(path) as w:
        w.write(b"a" * 60)
    size = psutil.virtual_memory().total * 2
    with open(path, "r+b") as f:                 # sparse: costs no disk
        f.truncate(size)
    assert check_input(path).format == "pcap"
    with pytest.raises(PcapError, match=rf"{path} is {size} bytes, more than this machine's free memory"):
        read_pcap(path, allow_cut=True)
