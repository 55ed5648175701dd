"""A worker run over frames in this process, as a worker stage runs it: what ``ixypipe try`` prints.

:func:`run_frames` calls the loaded worker's setup(ctx), its function on
batches of ``batch_size`` frames (Batch.from_frames over buffers of this
process's own), the stage's own :func:`stages.verdicts` on what it returned,
and teardown(ctx); a batch whose function raised is dropped whole as
``worker_error`` and a packet whose index the function changed too, as in
the stage.  Each packet's result has its verdict (a port name, DROP,
no_route or worker_error), its length before and after, and the bytes the
function changed, named by header field where the parsed headers of the
frame as it came in know one (:func:`changed_fields`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ixypipe.pipeline import keyedstate
from ixypipe.pipeline.stages import ErrorLog, verdicts
from ixypipe.protocols import (
    ETH_DST_OFF,
    ETH_HEADER_LEN,
    ETH_SRC_OFF,
    ETH_TYPE_OFF,
    IP4_CSUM,
    IP4_DST,
    IP4_SRC,
    IP4_TTL,
    IP6_ADDR_LEN,
    IP6_DST,
    IP6_HOP_LIMIT,
    IP6_SRC,
    IPPROTO_TCP,
    IPPROTO_UDP,
    L4_DPORT,
    L4_SPORT,
    TCP_CSUM,
    UDP_CSUM,
    VLAN_TAG_LEN,
)
from ixypipe.workers.api import DROP, Batch, WorkerContext, buffers_for, merge_state
from ixypipe.workers.fields import PacketFields, packet_fields
from ixypipe.workers.headers import from_bytes
from ixypipe.workers.loader import Worker

WORKER_ERROR = "worker_error"


class HookError(Exception):
    """setup(ctx) or teardown(ctx) raised (a pipeline's worker stage stops on the first, logs the second)."""
NO_ROUTE = "no_route"


@dataclass
class PacketResult:
    number: int                 # 1-based, as tcpdump and wireshark count
    length: int                 # as it came in
    summary: str
    verdict: str                # a port name, DROP, no_route or worker_error
    new_length: int
    changes: list[tuple[int, int, list[str]]] = field(default_factory=list)   # (first, last byte, fields)
    data: bytes = b""            # the packet as it leaves the function

    def rewrites(self) -> str:
        """'rewrote bytes 0-5 (dst MAC), 22 (IPv4 TTL)' ('' when nothing changed)."""
        parts = [(f"{a}" if a == b else f"{a}-{b}") + (f" ({', '.join(names)})" if names else "")
                 for a, b, names in self.changes]
        one = len(self.changes) == 1 and self.changes[0][0] == self.changes[0][1]
        text = f"rewrote {'byte' if one else 'bytes'} {', '.join(parts)}" if parts else ""
        if self.new_length != self.length:
            text = f"{text}; " if text else ""
            text += f"length {self.length} -> {self.new_length}"
        return text


@dataclass
class OfflineRun:
    packets: list[PacketResult]
    counters: dict[str, int]
    errors: list[str]           # one line per batch the function raised on (or whose indices it changed)
    ms: float                   # time in the worker function (and the verdict check), milliseconds
    keyed: dict = field(default_factory=dict)     # keyed tables (count_by), as the summary's "keyed_counters"

    def tally(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for p in self.packets:
            found[p.verdict] = found.get(p.verdict, 0) + 1
        return found


def verdict_name(value: int, port_names: list[str]) -> str:
    if 0 <= value < len(port_names):
        return port_names[value]
    return "DROP" if value == DROP else NO_ROUTE


def field_spans(f: PacketFields) -> list[tuple[int, int, str]]:
    """(first byte, last byte, name) of the header fields a rewrite usually touches, for this packet."""
    if f.eth_type is None:
        return []
    spans = [(ETH_DST_OFF, ETH_DST_OFF + 5, "dst MAC"), (ETH_SRC_OFF, ETH_SRC_OFF + 5, "src MAC")]
    for k in range(len(f.vlans)):
        spans.append((ETH_HEADER_LEN + k * VLAN_TAG_LEN, ETH_HEADER_LEN + k * VLAN_TAG_LEN + 1, f"VLAN {k} TCI"))
    t = ETH_TYPE_OFF + len(f.vlans) * VLAN_TAG_LEN
    spans.append((t, t + 1, "EtherType"))
    o = f.l3_off
    if f.ip == 4:
        spans += [(o + IP4_TTL, o + IP4_TTL, "IPv4 TTL"), (o + IP4_CSUM, o + IP4_CSUM + 1, "IPv4 checksum"),
                  (o + IP4_SRC, o + IP4_SRC + 3, "IPv4 src"), (o + IP4_DST, o + IP4_DST + 3, "IPv4 dst")]
    elif f.ip == 6:
        spans += [(o + IP6_HOP_LIMIT, o + IP6_HOP_LIMIT, "IPv6 hop limit"),
                  (o + IP6_SRC, o + IP6_SRC + IP6_ADDR_LEN - 1, "IPv6 src"),
                  (o + IP6_DST, o + IP6_DST + IP6_ADDR_LEN - 1, "IPv6 dst")]
    if f.sport is not None:
        q = f.l4_off
        spans += [(q + L4_SPORT, q + L4_SPORT + 1, "src port"), (q + L4_DPORT, q + L4_DPORT + 1, "dst port")]
        csum = {IPPROTO_UDP: (UDP_CSUM, "UDP checksum"), IPPROTO_TCP: (TCP_CSUM, "TCP checksum")}.get(f.proto)
        if csum:
            spans.append((q + csum[0], q + csum[0] + 1, csum[1]))
    return spans


def changed_fields(before: bytes, after: bytes, f: PacketFields) -> list[tuple[int, int, list[str]]]:
    """Runs of changed bytes (over the length both have), each with the header fields it overlaps."""
    n = min(len(before), len(after))
    diff = np.flatnonzero(np.frombuffer(before[:n], np.uint8) != np.frombuffer(after[:n], np.uint8))
    if not len(diff):
        return []
    breaks = np.flatnonzero(np.diff(diff) > 1)
    starts = np.concatenate(([diff[0]], diff[breaks + 1]))
    ends = np.concatenate((diff[breaks], [diff[-1]]))
    spans = field_spans(f)
    return [(int(a), int(b), [name for lo, hi, name in spans if lo <= b and hi >= a])
            for a, b in zip(starts, ends, strict=True)]


def run_frames(worker: Worker, frames: list[bytes], port_names: list[str], in_port: int = 0,
               default_out: int | None = None, options: dict | None = None, base_dir: str = ".",
               batch_size: int = 32) -> OfflineRun:
    """Run ``worker`` over ``frames`` in batches of ``batch_size``, as a worker stage would (see module doc)."""
    frames = [bytes(f) for f in frames]
    ctx = WorkerContext(0, 1, list(port_names), dict(options or {}), base_dir=base_dir)
    _hook(worker.setup, "setup", ctx)
    fields = packet_fields(from_bytes(frames)) if frames else []
    errors_of = ErrorLog("try", worker.where)
    bufs = buffers_for(frames)
    verdict: list[str] = []
    errors: list[str] = []
    spent = 0.0
    for start in range(0, len(frames), batch_size):
        chunk = frames[start:start + batch_size]
        batch = Batch.from_frames(chunk, in_port, default_out, port_names, ctx=ctx, bufs=bufs, first=start)
        shown = batch.idx
        shown.flags.writeable = False
        t0 = time.perf_counter()
        try:
            out = verdicts(batch, worker.process(batch), len(chunk))
        except (Exception, SystemExit) as exc:        # the stage drops the batch and goes on: so does try
            spent += time.perf_counter() - t0
            kind, where = errors_of.kind(exc)
            errors.append(f"packets {start + 1}-{start + len(chunk)}: {kind}: {exc} (at {where})")
            verdict += [WORKER_ERROR] * len(chunk)
            continue
        spent += time.perf_counter() - t0
        names = [verdict_name(int(v), port_names) for v in np.broadcast_to(out, (len(chunk),))]
        moved = np.ones(len(chunk), bool) if batch.idx is not shown else np.asarray(batch.idx) != shown
        if moved.any():
            errors.append(f"packets {start + 1}-{start + len(chunk)}: the function changed batch.idx; "
                          f"{int(moved.sum())} packets dropped (worker_error)")
            names = [WORKER_ERROR if m else v for v, m in zip(names, moved.tolist(), strict=True)]
        verdict += names
    _hook(worker.teardown, "teardown", ctx)
    results = []
    for i, frame in enumerate(frames):
        after = bufs.packet(i).tobytes()
        results.append(PacketResult(i + 1, len(frame), fields[i].summary(), verdict[i], len(after),
                                    changed_fields(frame, after, fields[i]), after))
    keyed = ctx.keyed_tables()
    tables = keyedstate.as_json(keyedstate.merge({"try": keyed.read()}, keyed.slots))
    return OfflineRun(results, dict(ctx.counters), errors, spent * 1000, tables)


def _hook(fn, name: str, ctx: WorkerContext) -> None:
    if fn is None:
        return
    try:
        returned = fn(ctx)
        if name == "teardown":
            merge_state(ctx, returned)      # what teardown returns is merged, as in a pipeline
    except Exception as exc:
        raise HookError(f"{name}(ctx) raised {type(exc).__name__}: {exc} (at {ErrorLog(name).kind(exc)[1]})") \
            from exc
