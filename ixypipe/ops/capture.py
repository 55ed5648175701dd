"""What ``ixypipe capture`` does: copies of a running pipeline's frames of one port, into a pcap file.

:class:`Capture` attaches the packet arena of a pipeline ``ixypipe run``
started (found as ``ixypipe top`` finds it, pipeline/running.py), read-only
but for the control pages of the mirror rings it uses (pipeline/mirror.py),
picks the RX and/or TX stages of the port, locks their rings (an open file
description lock on the arena file, one byte per ring: a second capture of
the same ring is refused, and the kernel lets go when the capture dies), and
asks those stages to copy what they take.  :meth:`Capture.run` takes the
copies as they come, merges the rings of one poll by time, writes them with
pcapfile.PcapWriter and stops after ``count`` frames, at ``timeout``, when
``stop()`` says so (Ctrl-C) or when the pipeline ends; :meth:`Capture.close`
lets the rings go.  The pipeline is not stopped and its buffers are not
touched: a full mirror ring drops copies (counted), never packets.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

import numpy as np

from ixypipe.jsonout import json_object
from ixypipe.memory.arena import Arena, ArenaError
from ixypipe.pcapfile import PcapWriter
from ixypipe.pipeline import mirror
from ixypipe.pipeline.planinfo import PlanInfoError, read_plan_info
from ixypipe.pipeline.running import RunningPipeline, owner_alive

DIRECTIONS = {"rx": ("rx",), "tx": ("tx",), "both": ("rx", "tx")}
POLL_S = 0.001              # a capture with nothing to take looks again after this long
ALIVE_EVERY_S = 0.5         # ... and at the pipeline's supervisor this often
MERGE_HOLD_S = 0.25         # frames of several rings wait this long for earlier ones of the others
_FLOCK = "hhqqixxxx"        # struct flock (x86-64 and arm64): type, whence, start, len, pid


class CaptureError(Exception):
    """A capture that cannot start; ``exit_code`` 2 for what was asked wrongly, 1 for the state of things."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class CaptureResult:
    pipeline: str
    pid: int
    port: str
    direction: str
    file: str
    stages: list[str]
    captured: int = 0                      # frames written to the file
    dropped: int = 0                       # copies the mirror rings had no room for while this capture ran
    seconds: float = 0.0
    stop_reason: str = ""
    bytes: int = 0                         # bytes of the frames written (their length on the wire)
    per_stage: dict[str, int] = field(default_factory=dict)    # stage -> frames it copied for this capture

    def to_json(self) -> dict:
        doc = json_object("capture")
        doc.update(asdict(self))
        return doc


def _lock(fd: int, byte: int) -> bool:
    """An open file description lock on one byte of the file (F_OFD_SETLK): True when taken, False when
    another capture holds it.  It goes with the descriptor: closed, or the process gone."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


class Capture:
    """One capture of one port of one running pipeline: make it, ``run`` it, ``close`` it."""

    def __init__(self, target: RunningPipeline, port: str, direction: str = "rx"):
        if direction not in DIRECTIONS:
            raise CaptureError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}", 2)
        self.target, self.direction = target, direction
        self.pid = os.getpid()
        self.blocks: dict[str, int] = {}          # stage name -> its mirror block, once claimed
        self.base: dict[str, tuple[int, int]] = {}
        self._fd: int | None = None
        self._held: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None   # merged frames not yet written
        try:
            self.arena = Arena.attach(target.path, read_only=True)
        except ArenaError as exc:
            raise CaptureError(f"pipeline {target.name} (pid {target.pid}): {exc}") from exc
        try:
            self._choose(port)
        except BaseException:
            self.close()
            raise

    def _choose(self, port: str) -> None:
        try:
            info = read_plan_info(self.arena)
        except PlanInfoError as exc:
            raise CaptureError(str(exc)) from exc
        ports = list(info["ports"])
        if port not in ports:
            raise CaptureError(f"pipeline {info['name']} has no port {port!r}; its ports: {', '.join(ports)}", 2)
        p = ports.index(port)
        stages = [SimpleNamespace(**s) for s in info["stages"]]
        try:
            blocks = mirror.blocks_of(self.arena, stages)
        except mirror.MirrorError as exc:
            raise CaptureError(str(exc)) from exc
        roles = DIRECTIONS[self.direction]
        mine = [s for s in stages if s.role in roles and s.port == p and s.name in blocks]
        for role in roles:
            if not any(s.role == role for s in mine):
                raise CaptureError(f"port {port} of pipeline {info['name']} has no {role.upper()} stage: it "
                                   f"{'receives' if role == 'tx' else 'sends'} only; try --direction "
                                   f"{'tx' if role == 'rx' else 'rx'}", 2)
        self.port, self.info = port, info
        self.stage_names = [s.name for s in mine]
        wanted = {s.name: blocks[s.name] for s in mine}
        self.arena.grant_writes([mirror.control_page(self.arena, k) for k in wanted.values()])
        try:
            self._fd = os.open(self.target.path, os.O_RDWR)
        except OSError as exc:
            raise CaptureError(f"cannot open arena {self.target.path}: {exc.strerror}") from exc
        for name, k in wanted.items():
            try:
                free = _lock(self._fd, k)
            except OSError as exc:
                raise CaptureError(f"cannot lock the mirror ring of {name} in {self.target.path}: "
                                   f"{exc.strerror}") from exc
            if not free:
                holder = int(mirror.control(self.arena, k)[mirror.C_REQUEST])
                who = f"pid {holder}" if holder else "another capture"
                raise CaptureError(f"port {port} ({name}) of pipeline {info['name']} is being captured by "
                                   f"{who}: one capture per port and direction at a time")
            self.blocks[name] = k

    def start(self) -> None:
        """The stages start copying (each ring emptied first)."""
        for name, k in self.blocks.items():
            self.base[name] = mirror.claim(self.arena, k, self.pid)

    def take(self, limit: int | None, final: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frames to write now (at most ``limit``), in time order: (lengths, times ns, rows).

        One ring gives its frames in time order.  Several (``both``, a port's queues) are merged: a stage
        stamps a batch before it copies and publishes it, so a frame of one ring can show up after a later
        one of another; frames stay here until MERGE_HOLD_S old, then go out sorted (``final``: all)."""
        got = [self._held] if self._held is not None else []
        for k in self.blocks.values():
            ctl = mirror.control(self.arena, k)
            if ctl[mirror.C_REQUEST] != self.pid:        # cleared under us (a supervisor that took us for dead)
                ctl[mirror.C_REQUEST] = self.pid
            part = mirror.take(self.arena, k, limit if len(self.blocks) == 1 else None)
            if len(part[0]):
                got.append(part)
        self._held = None
        lengths, stamps, rows = _joined(got)
        if len(self.blocks) > 1 and len(lengths):
            order = np.argsort(stamps, kind="stable")
            lengths, stamps, rows = lengths[order], stamps[order], rows[order]
            if not final:
                ready = int(np.searchsorted(stamps, time.time_ns() - int(MERGE_HOLD_S * 1e9), side="right"))
                if ready < len(lengths):
                    self._held = lengths[ready:], stamps[ready:], rows[ready:]
                    lengths, stamps, rows = lengths[:ready], stamps[:ready], rows[:ready]
        if limit is not None:
            lengths, stamps, rows = lengths[:limit], stamps[:limit], rows[:limit]
        return lengths, stamps, rows

    def counts(self) -> tuple[dict[str, int], int]:
        """(frames each stage copied for this capture, copies dropped for want of room) so far."""
        copied, dropped = {}, 0
        for name, k in self.blocks.items():
            c, d = mirror.counts(self.arena, k)
            copied[name] = c - self.base[name][0]
            dropped += d - self.base[name][1]
        return copied, dropped

    def pipeline_alive(self) -> bool:
        return self.target.path.exists() and owner_alive(self.target.pid)

    def run(self, writer: PcapWriter, count: int | None = None, timeout: float | None = None,
            stop: Callable[[], bool] = lambda: False, progress: Callable[[CaptureResult], None] | None = None,
            progress_every: float = 1.0) -> CaptureResult:
        """Capture into ``writer`` until ``count`` frames, ``timeout`` seconds, ``stop()`` or the pipeline's end."""
        result = CaptureResult(self.info["name"], self.target.pid, self.port, self.direction, str(writer.path),
                               list(self.stage_names))
        self.start()
        t0 = time.monotonic()
        next_alive, next_progress = t0, t0 + progress_every
        reason = ""
        while not reason:
            lengths = self._write(writer, result, count)
            now = time.monotonic()
            if count is not None and result.captured >= count:
                reason = f"{count} frames"
            elif timeout is not None and now - t0 >= timeout:
                reason = f"timeout {timeout:g} s"
            elif stop():
                reason = "interrupted"
            elif now >= next_alive:
                next_alive = now + ALIVE_EVERY_S
                if not self.pipeline_alive():
                    reason = "pipeline ended"
            if progress is not None and now >= next_progress and not reason:
                next_progress = now + progress_every
                result.per_stage, result.dropped = self.counts()
                result.seconds = now - t0
                progress(result)
            if not reason and not len(lengths):
                time.sleep(POLL_S)
        self.release()
        self._write(writer, result, count, final=True)       # what the merge still held
        result.per_stage, result.dropped = self.counts()
        result.seconds = time.monotonic() - t0
        result.stop_reason = reason
        return result

    def _write(self, writer: PcapWriter, result: CaptureResult, count: int | None, final: bool = False) -> np.ndarray:
        left = None if count is None else count - result.captured
        lengths, stamps, rows = self.take(left, final)
        if len(lengths):
            writer.write_batch(rows, lengths, stamps)     # lengths are 1..snap: both passes check first
            result.captured += len(lengths)
            result.bytes += int(lengths.sum())
        return lengths

    def release(self) -> None:
        """The stages copy no more for this capture."""
        for k in self.blocks.values():
            mirror.release(self.arena, k, self.pid)

    def close(self) -> None:
        """Let the rings go (requests cleared, locks dropped) and detach; safe to call twice."""
        if getattr(self, "arena", None) is None:
            return
        try:
            self.release()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self.blocks = {}
            self.arena.close()
            self.arena = None

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _joined(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Several (lengths, times, rows) as one; rows padded to the widest."""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros((0, 0), np.uint8)
    lengths = np.concatenate([p[0] for p in parts])
    stamps = np.concatenate([p[1] for p in parts])
    rows = np.zeros((len(lengths), max(p[2].shape[1] for p in parts)), np.uint8)
    at = 0
    for p in parts:
        rows[at:at + len(p[0]), :p[2].shape[1]] = p[2]
        at += len(p[0])
    return lengths, stamps, rows
