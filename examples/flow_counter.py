"""Count packets and bytes per flow (addresses, protocol, ports) in a numpy flow table.

    ixypipe run examples/flow_counter.toml      # the table lands in /tmp/ixypipe-flows-0.csv

    [workers]
    function = "examples/flow_counter.py:FlowCounter"
    [workers.options]
    output = "/tmp/flows.csv" # one file per worker (flows-0.csv ...), relative to the pipeline file; optional

The file is opened in setup (a path the worker may not write fails the run at
once, not after it) and written at teardown.  Workers of a pipeline started
as root run as ``nobody`` (``[pipeline] worker_user``), so the file must be
somewhere that user can write: /tmp, or a directory given to it.

A class keeps the table between batches.  Each batch packs every packet's
flow key into one row of bytes, finds the batch's distinct flows with
``np.unique``, adds to their rows with ``np.add.at``; a Python dict meets
only flows never seen before, never a packet.  Live counters: ``flows``,
``flow_packets``, ``flow_bytes``.  Non-IP packets are one flow of zeros.
"""

import csv
import ipaddress
import os
import pwd
from pathlib import Path

import numpy as np

KEY_BYTES = 16 + 16 + 1 + 2 + 2        # src, dst (IPv4 in the first 4 bytes), protocol, ports


class FlowCounter:
    def setup(self, ctx):
        self.ctx = ctx
        self.out = open_output(ctx)
        self.index: dict[bytes, int] = {}
        self.keys = np.zeros((1024, KEY_BYTES), np.uint8)
        self.packets = np.zeros(1024, np.int64)
        self.bytes = np.zeros(1024, np.int64)

    def flow_keys(self, batch) -> np.ndarray:
        v4, v6, l4 = batch.ipv4, batch.ipv6, batch.l4
        key = np.zeros((batch.n, KEY_BYTES), np.uint8)
        key[:, 0:16] = v6.src
        key[:, 16:32] = v6.dst
        key[v4.valid, 0:4] = v4.src[v4.valid].astype(">u4").view(np.uint8).reshape(-1, 4)
        key[v4.valid, 16:20] = v4.dst[v4.valid].astype(">u4").view(np.uint8).reshape(-1, 4)
        key[:, 32] = np.where(l4.proto == 255, 0, l4.proto)
        key[:, 33:35] = l4.sport.astype(">u2").view(np.uint8).reshape(-1, 2)
        key[:, 35:37] = l4.dport.astype(">u2").view(np.uint8).reshape(-1, 2)
        return key

    def process(self, batch):
        key = self.flow_keys(batch)
        uniq, inverse = np.unique(key.view(f"V{KEY_BYTES}").ravel(), return_inverse=True)
        rows = np.empty(len(uniq), np.int64)
        for k, u in enumerate(uniq):                      # distinct flows of the batch, not packets
            raw = u.tobytes()
            row = self.index.get(raw)
            if row is None:
                row = self.index[raw] = len(self.index)
                self.grow(row)
                self.keys[row] = np.frombuffer(raw, np.uint8)
            rows[k] = row
        np.add.at(self.packets, rows[inverse], 1)
        np.add.at(self.bytes, rows[inverse], batch.lengths)
        batch.count("flows", len(self.index) - batch.counters.get("flows", 0))
        batch.count("flow_packets", batch.n)
        batch.count("flow_bytes", int(batch.lengths.sum()))

    def grow(self, row: int) -> None:
        if row < len(self.packets):
            return
        size = 2 * len(self.packets)
        self.keys = np.resize(self.keys, (size, KEY_BYTES))
        self.packets = np.concatenate((self.packets, np.zeros(size - len(self.packets), np.int64)))
        self.bytes = np.concatenate((self.bytes, np.zeros(size - len(self.bytes), np.int64)))

    def table(self) -> list[tuple[str, str, int, int, int, int, int]]:
        """(src, dst, proto, sport, dport, packets, bytes) for every flow seen."""
        out = []
        for row in range(len(self.index)):
            k = self.keys[row]
            v4 = not k[4:16].any() and not k[20:32].any()
            addr = (lambda b: str(ipaddress.IPv4Address(b[:4].tobytes()))) if v4 else \
                (lambda b: str(ipaddress.IPv6Address(b.tobytes())))
            out.append((addr(k[0:16]), addr(k[16:32]), int(k[32]), int(k[33]) << 8 | int(k[34]),
                        int(k[35]) << 8 | int(k[36]), int(self.packets[row]), int(self.bytes[row])))
        return out

    def teardown(self, ctx):
        if self.out is None:
            return
        with self.out as f:
            w = csv.writer(f)
            w.writerow(["src", "dst", "proto", "sport", "dport", "packets", "bytes"])
            w.writerows(self.table())


def open_output(ctx):
    """This worker's output file (``output`` with the worker's number), opened for writing, or None."""
    name = ctx.options.get("output")
    if not name:
        return None
    path = Path(ctx.base_dir) / name
    path = path.with_name(f"{path.stem}-{ctx.worker}{path.suffix}")
    try:
        return path.open("w", newline="")
    except OSError as exc:
        uid = os.geteuid()
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
        raise type(exc)(
            f"flow_counter: cannot write {path}: {exc.strerror}; this worker runs as user {user!r} (uid {uid}), "
            f"set by [pipeline] worker_user (nobody when ixypipe runs as root): give [workers.options] output a "
            f"file in a directory that user can write, e.g. \"/tmp/flows.csv\"") from None
