"""Processes a run leaves behind: found by their mark, named and killed.

A worker's code may start processes the stage does not end: a child forked
by C code (the fork guard, workers/confine.py, only sees Python's fork), a
program started with subprocess, a daemon that left its session.  Such a
process holds what it inherited (the run's stdout, so ``ixypipe run``
never returns to a caller that reads it; the packet arena's hugepages) and
must not outlive the run.

Every process of a run carries its mark in its environment: the stages and
what they fork have the fork server's (``IXYPIPE_FORK_SERVER_OWNER=<run
pid>:...``, forkserver.py), and each stage puts ``IXYPIPE_RUN`` and
``IXYPIPE_STAGE`` into its own before any of the user's code runs, for the
programs it starts.  The supervisor makes itself a child subreaper
(PR_SET_CHILD_SUBREAPER), so what a stage leaves when it exits is re-parented
to it, not to init, and is still its descendant: at the end of a run
:func:`sweep` names every marked descendant that is not one of its own
helpers (the fork server, the resource tracker) and kills it.  When the
supervisor itself was killed, ``ixypipe cleanup`` finds marked processes
whose run is gone (:func:`orphans`).
"""

from __future__ import annotations

import ctypes
import os
import signal
from dataclasses import dataclass

import psutil

from ixypipe.pipeline import forkserver

ENV_RUN = "IXYPIPE_RUN"          # the supervisor's pid, set by every stage for the programs it starts
ENV_STAGE = "IXYPIPE_STAGE"      # the stage's name, likewise
PR_SET_CHILD_SUBREAPER = 36      # linux/prctl.h
STAGE_PROCESS_PREFIX = "ixy-"    # a stage's process name: ixy-<stage> (what a process it forks inherits)


def become_subreaper() -> None:
    """Orphans of this process's descendants come to it, not to init, so :func:`sweep` can find them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def mark_stage(run_pid: int, stage: str) -> None:
    """What a stage does before any user code runs: the programs it starts carry the run's mark."""
    os.environ[ENV_RUN] = str(run_pid)
    os.environ[ENV_STAGE] = stage


@dataclass(frozen=True)
class Leftover:
    pid: int
    name: str
    uid: int
    stage: str           # the stage it came from, "" when unknown
    run: int | None = None   # the supervisor's pid

    def describe(self) -> str:
        came = f", started by stage {self.stage}" if self.stage else ""
        return f"process {self.pid} ({self.name}, uid {self.uid}{came})"


def run_of(proc: psutil.Process) -> int | None:
    """The pid of the run ``proc`` belongs to, from its mark; None when it has none."""
    env = proc.environ()
    if env.get(ENV_RUN, "").isdigit():
        return int(env[ENV_RUN])
    owner = env.get(forkserver.ENV_OWNER, "").partition(":")[0]
    return int(owner) if owner.isdigit() else None


def describe(proc: psutil.Process, stages: set[str] | None = None) -> Leftover:
    """What is known of a marked process: its name and uid, the stage (one of ``stages``, when given) and the
    run it came from.  The stage is the one in its environment, else the one its process name names (a
    process a stage forked without exec has the stage's name)."""
    name = proc.name()
    stage = proc.environ().get(ENV_STAGE, "")
    if not stage and name.startswith(STAGE_PROCESS_PREFIX):
        stage = name[len(STAGE_PROCESS_PREFIX):]
    if stages is not None and stage not in stages:
        stage = ""
    return Leftover(proc.pid, name, proc.uids().real, stage, run_of(proc))


def _helpers() -> set[int]:
    """This process's own multiprocessing helpers (the fork server, the resource tracker): not left over."""
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker

    pids = {getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
            getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)}
    return {p for p in pids if p}


def sweep(stages: set[str] | None = None, keep: set[int] = frozenset(),
          keep_tree: set[int] = frozenset()) -> list[Leftover]:
    """Kill every descendant of this process that carries this run's mark, except ``keep`` (the stage
    processes themselves: they are ended, not swept), ``keep_tree`` and what they started (the simulator)
    and the multiprocessing helpers; returns what was found running (zombies are only reaped).  A child of
    a stage still alive is swept too: nothing of the user's code may outlive the run."""
    me = os.getpid()
    try:
        below = psutil.Process(me).children(recursive=True)
    except psutil.Error:
        return []
    spared = set(keep) | set(keep_tree) | _helpers()
    for p in below:
        if p.pid in keep_tree:
            try:
                spared.update(c.pid for c in p.children(recursive=True))
            except psutil.Error:
                pass
    found, killed = [], []
    for p in below:
        if p.pid in spared:
            continue
        try:
            if run_of(p) != me:
                continue
            if p.status() != psutil.STATUS_ZOMBIE:        # a zombie is only reaped
                found.append(describe(p, stages))
                p.send_signal(signal.SIGKILL)
            killed.append(p)
        except psutil.Error:
            continue
    for p in killed:
        _reap(p, me)
    return found


def _reap(p: psutil.Process, me: int) -> None:
    """Wait for a killed process; a child of this process (re-parented here) is reaped, else only awaited."""
    try:
        if p.ppid() == me:
            os.waitpid(p.pid, 0)
        else:
            p.wait(5)
    except (psutil.Error, ChildProcessError, OSError):
        pass


def orphans() -> list[psutil.Process]:
    """Marked processes whose run is gone (its supervisor died, or the pid now belongs to a younger process)."""
    out = []
    for p in psutil.process_iter():
        try:
            run = run_of(p)
            if run is None or run == os.getpid():
                continue
            try:
                if psutil.Process(run).create_time() <= p.create_time():
                    continue                          # its run is alive
            except psutil.NoSuchProcess:
                pass
            out.append(p)
        except psutil.Error:
            continue
    return out


def kill_orphans() -> list[Leftover]:
    """``ixypipe cleanup``: name and kill every process :func:`orphans` finds."""
    found = []
    for p in orphans():
        try:
            found.append(describe(p))
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
    return found
