"""The simulator process: runs a SimWorld in its own process for the supervisor and ``ixypipe fwd --sim``.

:class:`SimServer` creates the fake sysfs trees (so the ixgbe driver opens
the ports with ``sysfs_root=server.sysfs_root``) and a shared block
``<root>/counters`` (a control row, then one counters row per port), then
spawns the model process, named ``ixypipe-sim`` , which
attaches the arenas by path and steps the world in a loop, backing off
when idle (spin, sched_yield, short naps).  Generators stay silent until
:meth:`SimServer.start_traffic` and stop at :meth:`SimServer.pause_traffic`.
:meth:`SimServer.stop` ends the process (killing it if it does not exit in
time), removes the trees and returns the final counters.  The process also
exits by itself when its parent dies.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

from ixypipe.proc import (
    Backoff,
    Pacing,
    describe_exit,
    ignore_stop_signals,
    log_level,
    set_process_name,
    setup_logging,
    wait_for_answer,
)
from ixypipe.sim import sysfs
from ixypipe.sim.block import SIM_CMD_RUN, SIM_CMD_STOP, SIM_CONTROL_DTYPE, SIM_COUNTERS_DTYPE
from ixypipe.sim.model import STATS_PERIOD_NS
from ixypipe.sim.world import (
    GeneratorConfig,
    PortCounters,
    SimConfigError,
    SimPortConfig,
    SimWorld,
    SinkConfig,
    counters_from,
    create_port_files,
    validate_ports,
)

__all__ = ["GeneratorConfig", "PortCounters", "SimConfigError", "SimPortConfig", "SimServer", "SimServerError",
           "SimWorld", "SinkConfig"]

log = logging.getLogger(__name__)
PROCESS_NAME = "ixypipe-sim"
START_TIMEOUT = 30.0            # seconds the starting model process may make no progress
STOP_TIMEOUT = 5.0              # seconds for it to exit before it is killed
PARENT_CHECK_LOOPS = 4096       # loops between checks that the parent is still alive
COUNTERS_FILE = "counters"
DRIVER_POLL_NS = 1_000_000_000  # how often a foreign-DMA model checks that its driver is still there
PACE_WANT = 4096                # descriptors (generated + transmitted) to let build up between idle steps


class SimServerError(Exception):
    """The simulator process could not be started or died."""


def _block_size(n_ports: int) -> int:
    return SIM_CONTROL_DTYPE.itemsize + n_ports * SIM_COUNTERS_DTYPE.itemsize


def _block_views(buf: np.ndarray, n_ports: int) -> tuple[np.ndarray, np.ndarray]:
    control = buf[:SIM_CONTROL_DTYPE.itemsize].view(SIM_CONTROL_DTYPE)
    counters = buf[SIM_CONTROL_DTYPE.itemsize:_block_size(n_ports)].view(SIM_COUNTERS_DTYPE)
    return control, counters


class SimServer:
    def __init__(self, ports: list[SimPortConfig], arena_path: str | os.PathLike | list | None,
                 root: Path | None = None, stats_period_ns: int = STATS_PERIOD_NS, context=None):
        """``arena_path`` None (or []): serve a foreign driver, whose DMA memory the model finds
        itself through /proc (the process that maps a port's resource0; see sim/foreign.py).
        ``context``: the multiprocessing context that starts the model process (default "spawn"; the
        supervisor passes its fork server's, pipeline/forkserver.py)."""
        self.ports = validate_ports(list(ports))
        if arena_path is None:
            arena_path = []
        paths = arena_path if isinstance(arena_path, (list, tuple)) else [arena_path]
        self.arena_paths = [str(p) for p in paths]
        self.names = [p.name for p in self.ports]
        self.addresses = {p.name: p.pci_address or sysfs.default_address(i) for i, p in enumerate(self.ports)}
        self._given_root = Path(root) if root is not None else None
        self.sysfs_root: Path | None = None
        self.stats_period_ns = stats_period_ns
        self.process: multiprocessing.process.BaseProcess | None = None
        self._mm = None
        self._control = self._counters = None
        self._final: dict[str, PortCounters] | None = None
        self._conn = None               # the model process reports "ok", later why it failed
        self._cause: str | None = None
        self._context = context or multiprocessing.get_context("spawn")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        """Create the trees and the counters block, spawn the model process, return once it runs."""
        if self.process is not None:
            raise SimServerError("the simulator is already started")
        for stale in sysfs.stale_roots():
            log.warning("removing stale simulator tree %s (its owner is gone)", stale)
            sysfs.remove_tree(stale)
        self.sysfs_root = self._given_root or sysfs.make_root()
        try:
            for i, p in enumerate(self.ports):
                create_port_files(self.sysfs_root, p, self.addresses[p.name], i)
            block = self.sysfs_root / COUNTERS_FILE
            fd = os.open(block, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            try:
                os.ftruncate(fd, _block_size(len(self.ports)))
            finally:
                os.close(fd)
            self._mm, buf = sysfs.map_file(block)
            self._control, self._counters = _block_views(buf, len(self.ports))
            self._control["command"] = SIM_CMD_RUN
            parent_end, child_end = self._context.Pipe(duplex=False)
            self.process = self._context.Process(
                target=serve, name="ixypipe-sim", daemon=True,
                args=(self.ports, self.arena_paths, str(self.sysfs_root), child_end, self.stats_period_ns,
                      log_level()))
            self.process.start()
            child_end.close()
            if not wait_for_answer(parent_end, self.process.pid, START_TIMEOUT):
                parent_end.close()
                raise SimServerError(f"the simulator process did not start: it made no progress for "
                                     f"{START_TIMEOUT:.0f} s")
            try:
                answer = parent_end.recv()
            except EOFError:
                parent_end.close()
                self.process.join(STOP_TIMEOUT)
                raise SimServerError(f"the simulator process died while starting (exit code "
                                     f"{self.process.exitcode})") from None
            if answer != "ok":
                parent_end.close()
                raise SimServerError(f"the simulator could not start: {answer}")
            self._conn = parent_end
        except BaseException:
            self._teardown()
            raise

    # ---- control ----------------------------------------------------------------------
    def start_traffic(self) -> None:
        self._require_running()
        self._control["traffic"] = 1

    def pause_traffic(self, wait: float = 0.0) -> bool:
        """Silence the generators; with ``wait``, up to that many seconds until the model says it has.

        Returns True once the model confirmed (no generated frame arrives after
        that), False if it did not within ``wait`` or died.
        """
        self._require_running()
        self._control["traffic"] = 0
        deadline = time.monotonic() + wait
        while int(self._control["traffic_applied"][0]):
            if time.monotonic() >= deadline or not self.is_alive():
                return False
            time.sleep(0.001)
        return True

    def _require_running(self) -> None:
        if self._control is None:
            raise SimServerError("the simulator is not running (start() it first)")

    def is_alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def death_cause(self) -> str:
        """Why the model process ended: its exit code or signal, and the error it reported if any."""
        if self._cause is None and self._conn is not None:
            try:
                if self._conn.poll():
                    self._cause = self._conn.recv()
            except (EOFError, OSError):
                pass
        if self.process is None:
            return "not started"
        code = self.process.exitcode
        if code is None:
            self.process.join(STOP_TIMEOUT)     # it just ended: reap it for the exit code
            code = self.process.exitcode
        how = describe_exit(code) if code is not None else "still running"
        return f"{how}: {self._cause}" if self._cause else how

    def counters(self) -> dict[str, PortCounters]:
        """Live counters of every port (or the final ones after stop())."""
        if self._counters is None:
            if self._final is not None:
                return self._final
            raise SimServerError("the simulator is not running (start() it first)")
        return counters_from(self._counters.view(np.int64).reshape(len(self.ports), -1), self.names)

    def stop(self) -> dict[str, PortCounters]:
        """Stop the process, remove the trees, return the final counters (idempotent)."""
        if self._control is None:
            return self._final or {}
        self._control["traffic"] = 0
        self._control["command"] = SIM_CMD_STOP
        if self.process is not None:
            self.process.join(STOP_TIMEOUT)
            if self.process.is_alive():
                log.error("the simulator process %d did not stop within %.0f s: killed", self.process.pid,
                          STOP_TIMEOUT)
                self.process.kill()
                self.process.join(STOP_TIMEOUT)
        self._final = self.counters()
        self._teardown()
        return self._final

    def _teardown(self) -> None:
        if self._conn is not None:
            if self.process is not None and not self.process.is_alive():
                self.death_cause()          # keep what a dead model said
            self._conn.close()
            self._conn = None
        if self.process is not None and self.process.pid is not None:    # (none: interrupted while starting)
            if self.process.is_alive():
                self.process.kill()
            self.process.join(STOP_TIMEOUT)     # reaped: no zombie left behind
        self._control = self._counters = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass
            self._mm = None
        if self.sysfs_root is not None:
            if self._given_root is None:
                sysfs.remove_tree(self.sysfs_root)
            else:
                sysfs.remove_tree(self.sysfs_root / "bus")
                (self.sysfs_root / COUNTERS_FILE).unlink(missing_ok=True)
            self.sysfs_root = None

    def __enter__(self) -> SimServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(ports, arena_paths, root, conn, stats_period_ns, log_level=logging.WARNING) -> None:
    """The model process: attach, report ready, step until told to stop or orphaned."""
    from ixypipe.memory.arena import Arena

    setup_logging(log_level, "ixypipe-sim: %(levelname)s %(message)s")
    set_process_name(PROCESS_NAME)
    # Ctrl-C in a terminal (a group's SIGTERM, SIGHUP) reaches the whole process group; the owner stops the
    # model (SIM_CMD_STOP), and it leaves by itself when orphaned
    ignore_stop_signals()
    parent = os.getppid()
    arenas, world, mm = [], None, None
    try:
        try:
            arenas = [Arena.attach(p) for p in arena_paths]
            mm, buf = sysfs.map_file(Path(root) / COUNTERS_FILE)
            control, counters = _block_views(buf, len(ports))
            world = SimWorld(ports, arenas, Path(root), create=False, counters=counters,
                             stats_period_ns=stats_period_ns, foreign=not arena_paths)
        except Exception as exc:
            conn.send(f"{type(exc).__name__}: {exc}")
            return
        control["pid"] = os.getpid()
        log.debug("pid %d: ports %s, %s hot path", os.getpid(), ", ".join(world.names),
                  "compiled" if any(p.kernels is not None for p in world.ports.values()) else "numpy")
        conn.send("ok")
        try:
            _loop(world, control, parent, Backoff(shared=True))
        except Exception as exc:
            log.exception("the model failed")
            conn.send(f"{type(exc).__name__}: {exc}")
            raise SystemExit(1) from None
    finally:
        conn.close()
        if world is not None:
            world.publish(exact=True)      # the final counters: latency percentiles of the whole run
            world.close()
        control = counters = buf = None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass
        for arena in arenas:
            arena.close()


def _loop(world: SimWorld, control: np.ndarray, parent: int, backoff) -> None:
    row = control[0:1]
    loops = work = 0
    # under steady traffic idle naps follow the rate work arrives at; not with a generator at a fixed
    # rate, whose frames fall due during a nap and would overflow a small RX ring at the next step
    fixed_rate = any(g.rate_pps > 0 for g in world.generators.values())
    pacing = None if fixed_rate else Pacing(PACE_WANT)
    traffic = False
    next_driver_poll = 0
    while True:
        loops += 1
        if loops % PARENT_CHECK_LOOPS == 0:
            if os.getppid() != parent:
                log.error("the simulator's parent %d is gone: exiting", parent)
                return
            now = time.monotonic_ns()
            row["heartbeat_ns"] = now
            row["steps"] = loops
            if now >= next_driver_poll:
                next_driver_poll = now + DRIVER_POLL_NS
                world.poll_driver()
        if int(row["command"][0]) == SIM_CMD_STOP:
            return
        want = bool(row["traffic"][0])
        if want != traffic:
            traffic = want
            (world.start_traffic if traffic else world.pause_traffic)()
            row["traffic_applied"] = int(traffic)     # every frame generated before is on the wire now
        done = world.step()
        if done:
            work += done
            backoff.work()
        else:
            nap = pacing.nap(work) if pacing is not None else 0.0
            if nap > 0.0:
                time.sleep(nap)
            else:
                backoff.wait()
