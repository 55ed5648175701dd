"""Stage liveness: which stages are hung, what they were doing, and how often a worker may be restarted.

Every stage stores its loop count in its row's ``heartbeat`` once per loop,
idle loops included (every wait of an idle stage is bounded: a semaphore
timeout, a poll timeout, a nap).  A heartbeat that stood still for
``stall_timeout`` while the stage is in its loop (state "running") means the
stage is stopped (SIGSTOP, a debugger), blocked, or spinning inside user
code.  A stage that is runnable but got no CPU at all is starved by a busy
machine, not hung: it is given STARVED_LIMIT times longer.  A stage's first
batch may compile kernels, so until one batch is done the limit is at least
FIRST_BATCH_GRACE.

A worker that is still starting runs the user's code too: its import and
``setup(ctx)`` (the row's ``phase``).  One that stays in them for
``workers.setup_timeout`` is stuck (:meth:`Heartbeats.stuck_starting`),
and named with the phase it is in.

Restarts of one worker are limited to ``max_restarts`` within RESTART_WINDOW,
each after a back-off that doubles from RESTART_BACKOFF.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import psutil

from ixypipe.layout import STAGE_PHASE_IMPORT, STAGE_PHASE_SETUP, STAGE_STATE_RUNNING, STAGE_STATE_STARTING
from ixypipe.rings.spsc import Ring

FIRST_BATCH_GRACE = 30.0      # seconds: a first batch may compile a worker's numba kernels
STARVED_LIMIT = 6             # a runnable stage that got no CPU gets this many times stall_timeout
RESTART_WINDOW = 60.0         # seconds over which max_restarts counts
RESTART_BACKOFF = 0.1         # seconds before the first restart; doubles with each restart in the window
RESTART_BACKOFF_MAX = 5.0
PF_EXITING = 0x4              # a task flag (linux/sched.h) in /proc/PID/stat: the process is exiting
PHASES = {STAGE_PHASE_IMPORT: "importing its module", STAGE_PHASE_SETUP: "in setup()"}


class Heartbeats:
    """Watches the stage table's heartbeats; :meth:`hung` names the stages whose heartbeat stopped."""

    def __init__(self, table: np.ndarray, stall_timeout: float, clock=time.monotonic):
        self.table = table
        self.stall_timeout = stall_timeout
        self.clock = clock
        self.seen: dict[int, tuple[int, float]] = {}     # row -> (heartbeat, when it last changed)
        self.cpu: dict[int, float] = {}                  # row -> CPU time when its heartbeat was found still
        self.phase: dict[int, tuple[int, int, float]] = {}   # row -> (pid, phase, since when) of a starting stage

    def hung(self, procs) -> list[tuple[object, str, float]]:
        """(proc, how, seconds still) for each of ``procs`` (StageProc) that is hung now."""
        now = self.clock()
        beats = self.table["heartbeat"]
        out = []
        for p in procs:
            beat, row = int(beats[p.row]), self.table[p.row]
            last = self.seen.get(p.row)
            if last is None or last[0] != beat or beat == 0 or int(row["state"]) != STAGE_STATE_RUNNING:
                self.seen[p.row] = (beat, now)           # moving, not in its loop yet, or past it
                self.cpu.pop(p.row, None)
                continue
            still = now - last[1]
            limit = self.stall_timeout if int(row["batches"]) else max(self.stall_timeout, FIRST_BATCH_GRACE)
            if still < limit:
                continue
            how = self._judge(p, still, limit)
            if how:
                out.append((p, how, still))
        return out

    def _judge(self, p, still: float, limit: float) -> str:
        """Why the heartbeat stopped, or "" when the stage is only starved of CPU (not yet hung)."""
        try:
            proc = psutil.Process(p.process.pid)
            status = proc.status()
            times = proc.cpu_times()
        except (psutil.Error, TypeError):
            return ""                                     # gone: its death is reported as such
        if status == psutil.STATUS_ZOMBIE or _killed(p.process.pid):
            return ""            # dying (a busy machine can take seconds to tear it down): reported as a death
        if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
            return "the process is stopped (SIGSTOP or a debugger)"
        if status != psutil.STATUS_RUNNING:
            return f"the process is {status}: blocked"
        cpu = times.user + times.system
        before = self.cpu.setdefault(p.row, cpu)
        if cpu > before:
            return "the process runs without looping: spinning"
        if still >= limit * STARVED_LIMIT:
            return f"the process got no CPU for {still:.0f} s"
        return ""

    def stuck_starting(self, procs, limit: float) -> list[tuple[object, str, float]]:
        """(proc, how, seconds) for each of ``procs`` that has been in one start-up phase (importing the user's
        module, in setup()) for ``limit`` seconds; how is "in setup()" or "importing its module"."""
        now = self.clock()
        out = []
        for p in procs:
            row = self.table[p.row]
            phase = int(row["phase"]) if int(row["state"]) == STAGE_STATE_STARTING else 0
            key = (p.process.pid, phase)
            last = self.phase.get(p.row)
            if phase not in PHASES:
                self.phase.pop(p.row, None)
                continue
            if last is None or last[:2] != key:
                self.phase[p.row] = (*key, now)
                continue
            if now - last[2] >= limit:
                out.append((p, PHASES[phase], now - last[2]))
        return out

    def forget(self, row: int) -> None:
        """A new process took over ``row`` (a restart)."""
        self.seen.pop(row, None)
        self.cpu.pop(row, None)
        self.phase.pop(row, None)


def doing(plan, table: np.ndarray, arena, row: int) -> str:
    """What the stage of ``row`` was doing, from its row and its rings: for a hung stage's message."""
    me = next(s for s in plan.stages if s.row == row)
    r = table[row]
    n, k = int(r["last_batch"]), int(r["last_ring"])
    source = me.in_rings[k] if 0 <= k < len(me.in_rings) else f"NIC queue {me.queue} of {plan.port_names[me.port]}"
    inside = {"worker": "inside the worker function", "rx": "handing a batch on", "tx": "posting to the NIC"}
    if int(r["state"]) == STAGE_STATE_STARTING and int(r["phase"]) in PHASES:
        what = f"starting, {PHASES[int(r['phase'])]}"
    elif int(r["batch_no"]) == 0:
        what = "no batch taken yet"
    elif int(r["batch_no"]) > int(r["batches"]):
        what = f"{inside[me.role]} with a batch of {n} packets from {source}"
    else:
        what = f"between batches (the last: {n} packets from {source})"
    ins = [] if me.role == "rx" else me.in_rings           # an RX stage's in_rings are its buffers' way home
    outs = list(me.out_rings) or list(me.out_ring_of.values())
    return (f"{what}; input {ring_fill(arena, ins) or 'the NIC'}; "
            f"output {ring_fill(arena, outs) or 'the NIC'}; holding {int(r['held'])} for full outputs")


def ring_fill(arena, names: list[str]) -> str:
    """'ring a 12/1024, ring b 0/1024': how full each ring is now."""
    parts = []
    for name in names:
        ring = Ring.attach(arena, name)
        parts.append(f"{name} {ring.count()}/{ring.capacity}")
        ring.close()
    return ", ".join(parts)


class RestartBudget:
    """At most ``per_minute`` restarts of one stage within RESTART_WINDOW, each after a doubling back-off."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self.times: dict[str, list[float]] = {}

    def delay(self, name: str) -> float | None:
        """Seconds to wait before restarting ``name``, or None when its budget is spent."""
        now = self.clock()
        recent = self.times[name] = [t for t in self.times.get(name, []) if now - t < RESTART_WINDOW]
        if len(recent) >= self.per_minute:
            return None
        return min(RESTART_BACKOFF * 2 ** len(recent), RESTART_BACKOFF_MAX)

    def restarted(self, name: str) -> None:
        self.times.setdefault(name, []).append(self.clock())

    def recent(self, name: str) -> int:
        return len(self.times.get(name, []))


class FlowWatch:
    """The pipeline's progress as a whole, beside each stage's heartbeat (issue #24's silent 0 pps).

    Every stage may be looping (heartbeats move, so none is hung) while packets
    stop: a stage holding output it never pushes, a ring its consumer never
    takes from.  :meth:`check` names a stall when, for ``stall_timeout``,

    * a forward ring stayed full and its consumer took nothing from it while
      that consumer looped, running and outside a batch; or
    * no stage took or sent a packet while a port missed frames and the
      stages looped, every one running and none inside a batch.

    An idle pipeline (nothing waits) and a starved one (no stage loops; the
    heartbeat watch judges those) are not stalls.
    """

    def __init__(self, plan, arena, table: np.ndarray, stall_timeout: float, clock=time.monotonic):
        self.plan = plan
        self.table = table
        self.stall_timeout = stall_timeout
        self.clock = clock
        self.rings = {name: Ring.attach(arena, name) for name in plan.forward_rings()}
        self.consumer = {name: plan.consumer_row(name) for name in self.rings}
        now = clock()
        self.moved, self.since, self.beats = -1, now, 0    # packets moved, when that last changed, heartbeats then
        self.missed: dict[str, int] = {}                    # per port: frames missed when it last changed
        self.full: dict[str, tuple[int, float, int]] = {}   # full ring -> (taken, since when, consumer's beat)

    def check(self, missed: dict[str, int]) -> str:
        """'' while packets move or nothing waits; else what waits and what each stage waits on."""
        now = self.clock()
        t = self.table
        # rows inside a batch (a first one may compile) or not in their loop (starting after a restart, dead)
        inside = (t["batch_no"] > t["batches"]) | (t["state"] != STAGE_STATE_RUNNING)
        waiting = self._stuck_rings(now, inside)
        moved = int(t["packets_in"].sum() + t["packets_out"].sum())
        beats = int(t["heartbeat"].sum())
        if moved != self.moved or inside.any():
            self.moved, self.since, self.beats, self.missed = moved, now, beats, dict(missed)
        elif now - self.since >= self.stall_timeout and beats != self.beats:
            waiting += [f"port {port} missed {n - self.missed.get(port, n):,} frames while no stage moved a packet "
                        f"for {now - self.since:.1f} s" for port, n in missed.items() if n > self.missed.get(port, n)]
        if not waiting:
            return ""
        stages = "; ".join(f"{s.name} {stage_waits_on(s, t[s.row], self.rings)}" for s in self.plan.stages)
        return f"pipeline stalled: {', '.join(waiting)}; {stages}"

    def _stuck_rings(self, now: float, inside: np.ndarray) -> list[str]:
        """Full rings whose consumer loops, outside a batch, yet took nothing from them for stall_timeout."""
        stuck = []
        beat = self.table["heartbeat"]
        for name, ring in self.rings.items():
            row = self.consumer[name]
            taken = ring.taken()
            seen = self.full.get(name)
            if not ring.full() or inside[row] or seen is None or seen[0] != taken or self._pushed_back(row):
                self.full[name] = (taken, now, int(beat[row]))
                if not ring.full():
                    self.full.pop(name)
                continue
            if now - seen[1] >= self.stall_timeout and int(beat[row]) != seen[2]:
                stuck.append(f"ring {name} stayed full for {now - seen[1]:.1f} s, its consumer taking nothing")
        return stuck

    def _pushed_back(self, row: int) -> bool:
        """The stage of ``row`` holds packets for a full output (a full ring, or the NIC for a TX stage):
        it waits for its consumer, whose own input is judged instead."""
        s = next(s for s in self.plan.stages if s.row == row)
        return bool(self.table[row]["held"]) and (s.role == "tx" or _out_full(s, self.rings))

    def culprits(self) -> list[int]:
        """Rows of the stages that hold a full forward ring up: its consumer, when that one is not itself
        waiting for a full output (what restarting would clear)."""
        rows = []
        for s in self.plan.stages:
            ins = [self.rings[r] for r in s.in_rings if r in self.rings]
            if any(r.full() for r in ins) and not _out_full(s, self.rings):
                rows.append(s.row)
        return rows

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        self.rings = {}


def _outs(s) -> list[str]:
    return list(s.out_rings) or list(s.out_ring_of.values())


def _out_full(s, rings: dict) -> bool:
    return any(rings[r].full() for r in _outs(s) if r in rings)


def stage_waits_on(s, row, rings: dict) -> str:
    """What one stage waits on now, from its row and the levels of its forward rings (shown with it)."""
    def level(name: str) -> str:
        ring = rings[name]
        return f"{name} {ring.count()}/{ring.capacity}"

    outs = [r for r in _outs(s) if r in rings]
    held = int(row["held"])
    if held and s.role == "tx":
        return f"waits on the NIC (no free descriptor on TX queue {s.queue}, holding {held})"
    if held:
        full = [r for r in outs if rings[r].full()]
        if full:
            return f"waits on out {', '.join(level(r) for r in full)} (holding {held})"
        return f"holds {held} for outputs that are not full ({', '.join(level(r) for r in outs)}): it does not push"
    ins = [r for r in s.in_rings if r in rings]
    if s.role == "rx":
        return f"waits on the NIC (RX queue {s.queue})"
    if ins and all(rings[r].count() == 0 for r in ins):
        return "waits on in (every input empty)"
    if ins:
        return f"does not take from {', '.join(level(r) for r in ins if rings[r].count())}"
    return "waits on the NIC"


def _killed(pid: int) -> bool:
    """Whether ``pid`` is on its way out: exiting (PF_EXITING in /proc/PID/stat's flags), or a SIGKILL is
    pending.  A busy machine can take seconds to tear a killed process down, its state reading
    "disk-sleep" while its memory goes: a death to report as such, not a hang."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            flags = int(f.read().rpartition(")")[2].split()[6])
        with open(f"/proc/{pid}/status") as f:
            masks = [int(line.split()[1], 16) for line in f if line.startswith(("SigPnd:", "ShdPnd:"))]
    except (OSError, ValueError, IndexError):
        return False
    return bool(flags & PF_EXITING) or any(mask & (1 << (signal.SIGKILL - 1)) for mask in masks)
