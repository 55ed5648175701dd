"""The supervisor behind ``ixypipe run``: builds, starts, watches and stops a pipeline.

It creates the two arenas (the packet arena that every stage maps, and the
device arena with descriptor rings that workers never see), the packet
buffers, one mempool per RX queue, the SPSC rings and the stage table;
starts the software 82599 for ``sim`` ports; initialises every port; then
starts one process per stage, pinned (both forked from its fork server,
forkserver.py, with everything imported once).  While running it prints per-port
and per-stage figures once a second and notices a dead stage at once.  On
Ctrl-C, SIGTERM, --duration or --packets it stops the stages in data-flow
order (RX, workers, TX), drains the rings, takes every buffer home, proves
the accounting and removes everything it created.  SIGHUP stops it as
SIGTERM does (unless it started ignored, as under nohup), and a signal sent
to the whole process group (``timeout``, systemd's stop, ``kill -TERM
-PGID``) the same way: the stages, the fork server and the software 82599
ignore it (proc.ignore_stop_signals) and are stopped by this process.  When
every traffic source is finite (pcap replays with ``loop`` > 0, software-NIC generators
with a ``count``) it stops the same way once they have all sent everything
("all sources finished"); the drain then carries the last packets through.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import psutil

from ixypipe.layout import (
    DROP_REASONS,
    PKTBUF_HEADROOM,
    STAGE_CMD_ABANDON,
    STAGE_CMD_DRAIN,
    STAGE_CMD_RUN,
    STAGE_STATE_DEAD,
    STAGE_STATE_DONE,
    STAGE_STATE_RUNNING,
)
from ixypipe.memory import batchcheck
from ixypipe.memory.arena import Arena, RegionSize, remove_stale
from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import ports as port_factory
from ixypipe.pipeline import claims, forkserver, keyedstate, leftovers, mirror, planinfo, reclaim, stagetable
from ixypipe.pipeline.firstrun import FirstRun
from ixypipe.pipeline.liveness import PHASES, FlowWatch, Heartbeats, RestartBudget, doing
from ixypipe.pipeline.plan import RING_FORWARD, PipelinePlan, plan_from_config, unfed_tx_queues
from ixypipe.pipeline.planinfo import write_plan_info
from ixypipe.pipeline.report import Accounting, PoolCount, StatsPrinter, port_drops
from ixypipe.pipeline.running import owner_alive
from ixypipe.pipeline.service import Notifier, print_ready, ready_line
from ixypipe.pipeline.stages import stage_main
from ixypipe.proc import describe_exit, handled_stop_signals, log_level
from ixypipe.rings import wakeup
from ixypipe.rings.spsc import Ring

log = logging.getLogger(__name__)
START_STALL = 30.0            # seconds a starting stage may go without using CPU or reaching "running"
DRAIN_STALL = 5.0             # seconds a draining stage may go without its counters or state changing
STARVED_LIMIT = 6             # ... times this when it did not even get the CPU (a busy machine)
PROGRESS_FIELDS = ("state", "batches", "packets_in", "packets_out", "held", "drop_stage_died")
POLL = 0.05                   # seconds between checks of the stop conditions
FLOW_CHECK = 0.5              # seconds between checks that the pipeline as a whole moves (liveness.FlowWatch)
SIM_PAUSE_WAIT = 10.0         # seconds for the software 82599 to confirm its generators stopped
DEAD_TX_DRAIN_TIMEOUT = 2.0   # seconds for the NIC to finish what a dead TX stage posted
SOURCES_FINISHED = "all sources finished"
FORK_SERVER_LOST = 255        # multiprocessing's exit code of a process whose fork server died (its status went too)
FORK_SERVER_GRACE = 1.0       # seconds for a fork server that closed its pipes to be seen dead


class PipelineError(Exception):
    """The pipeline could not be started; the message says why."""


@dataclass
class StageProc:
    name: str
    role: str
    row: int
    process: multiprocessing.process.BaseProcess
    died: str = ""            # why it ended badly, "" while fine
    failure: str = ""         # its message in Supervisor.failures
    restart_at: float | None = None   # policy "restart": when its replacement starts
    given_up: bool = False    # policy "restart": its restart budget is spent


@dataclass
class RunResult:
    exit_code: int
    accounting: Accounting | None = None
    stop_reason: str = ""
    failures: list[str] = field(default_factory=list)


class Supervisor:
    def __init__(self, cfg, duration: float | None = None, packets: int | None = None,
                 json_lines: bool | None = None, out=None, metrics=None, quiet: bool = False):
        self.cfg = cfg
        self.quiet = quiet                    # -q: no per-second figures (the ready line and summary stay)
        self.notify = Notifier()              # sd_notify when run by systemd (pipeline/service.py)
        self.metrics = metrics                # a listening metrics.MetricsServer, or None (its owner closes it)
        self.duration = duration
        self.packets = packets
        self.json_lines = cfg.stats.json if json_lines is None else json_lines
        self.out = out or sys.stdout
        self.stop_reason = ""
        self.failures: list[str] = []
        self.arena: Arena | None = None
        self.dev_arena: Arena | None = None
        self.sim = None
        self.devices = {}
        self.procs: list[StageProc] = []
        self.pools: list[Mempool] = []
        self.plan: PipelinePlan | None = None
        self.restarts = 0
        self.budget = RestartBudget(cfg.max_restarts)
        self.heartbeats: Heartbeats | None = None
        self.hung = False
        self._waiting: list[StageProc] = []   # draining: stages of an earlier role that only wait on a consumer
        self.flow: FlowWatch | None = None    # the whole pipeline's progress, while running
        self.stalled = False
        self.forks: dict[int, int] = {}       # row -> forked children reported so far
        self.sim_died = False
        self._gone: set[int] = set()          # ports away when the run stopped (_ports_away)
        self.fork_server_died = ""            # how the stages' fork server ended, when it died under them
        self._sleepers: list[int] = []
        self._port_drops: dict[str, dict[str, int]] = {}
        self.started = False
        self._ctx = None                      # the multiprocessing context stages are started with
        self.claims: list[claims.Claim] = []   # the interfaces and PCI devices held for the run's life

    # ---- the whole run -------------------------------------------------------------
    def run(self) -> RunResult:
        old = {sig: signal.signal(sig, self._on_signal) for sig in handled_stop_signals()}
        result = RunResult(exit_code=1)
        try:
            remove_stale()
            self._claim_devices()
            leftovers.become_subreaper()          # what a stage leaves behind stays findable (leftovers.py)
            self._first_run = FirstRun(self.cfg)  # says so when kernels are not cached yet
            self._ctx = forkserver.context()      # warms up while the arenas are built
            self._build()
            self._start_sim()
            self._open_ports()
            self._spawn_stages()
            self._wait_running()
            self._start_traffic()
            self._ready()
            self._watch()
        except PipelineError as exc:
            self.failures.append(str(exc))
        finally:
            try:
                result = self._shutdown()
            finally:
                claims.release(self.claims)
                self.notify.close()
                for sig, handler in old.items():
                    signal.signal(sig, handler)
        return result

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.stop_reason:
            log.warning("%s again: already stopping", name)
            return
        self.stop_reason = name
        if not self.procs:
            raise KeyboardInterrupt(name)   # still starting: unwind now

    def _claim_devices(self) -> None:
        """Refuse to start on an interface or PCI device another running pipeline uses (pipeline.claims)."""
        try:
            self.claims = claims.claim_ports(self.cfg)
        except claims.ClaimError as exc:
            raise PipelineError(str(exc)) from None

    # ---- building ------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.cfg
        plan = plan_from_config(cfg)          # the arena paths are filled in once the arenas exist
        for line in unfed_tx_queues(plan.ports, cfg.workers.processes):
            log.warning(line)
        try:
            physical = uses_physical_addresses(cfg)
            size, control = Arena.split_size_for(packet_arena_regions(plan, cfg.buffer_size))
            self.arena = Arena.create(size, hugepages_mode=cfg.hugepages, tag="pkt", physical=physical,
                                      control_size=control)     # workers get writable only what they write
            self.dev_arena = Arena.create(Arena.size_for(device_arena_regions(plan)),
                                          hugepages_mode=cfg.hugepages, tag="dev", physical=physical)
        except Exception as exc:
            raise PipelineError(f"cannot create the DMA arenas: {exc}") from exc
        plan.packet_arena, plan.device_arena = str(self.arena.path), str(self.dev_arena.path)
        self.bufs = PacketBuffers.create(self.arena, plan.buffer_count, cfg.buffer_size)
        batchcheck.warm_up(self.bufs.length)  # now, not in the stop: emptying the rings sends buffers home with it
        self.pools = [Mempool.create(self.arena, self.bufs, p.name, p.first, p.count, p.pool_id)
                      for p in plan.pools]
        for ring in plan.rings:
            Ring.create(self.arena, ring.name, ring.capacity)
        stagetable.create(self.arena, len(plan.stages))
        keyedstate.create(self.arena, len(plan.stages_of("worker")), plan.keyed_tables, plan.keyed_slots)
        wakeup.create(self.arena, plan.sleeper_rows(), len(plan.stages))
        mirror.create(self.arena, plan, self.bufs.max_data)     # for 'ixypipe capture'
        self._sleepers = plan.sleeper_rows()
        self.table = stagetable.table(self.arena)
        self.plan = plan
        write_plan_info(self.arena, plan)     # for observers: 'ixypipe top'

    def _start_sim(self) -> None:
        sim_ports = [p for p in self.cfg.ports if p.driver == "sim"]
        if not sim_ports:
            return
        from ixypipe.sim.launch import start_sim
        sim = start_sim([p.to_sim_config() for p in sim_ports], self.plan.ports,
                        [self.arena.path, self.dev_arena.path], context=self._ctx)
        self.sim = sim.server
        self.plan.sysfs_roots.update(sim.sysfs_roots)

    def _open_ports(self) -> None:
        home = Homing.to_pools(self.bufs, self.pools)     # buffers the supervisor's TX use finished
        for p, spec in enumerate(self.plan.ports):
            pools = [self.pools[pp.pool_id] for pp in self.plan.pools if pp.port == p]
            try:
                self.devices[p] = port_factory.open_port(spec, self.dev_arena, self.bufs, pools,
                                                         tx_done=home,
                                                         sysfs_root=self.plan.sysfs_roots.get(spec.name))
            except Exception as exc:
                raise PipelineError(f"port {spec.name} ({spec.driver} {spec.address}): {exc}") from exc
            log.debug("port %s: %s %s up", spec.name, spec.driver, spec.address)     # "ready" says when it forwards

    # ---- stages --------------------------------------------------------------------
    def _spawn_stages(self) -> None:
        from ixypipe.pipeline.placement import place_stages
        placement = place_stages(self.plan, self.cfg, sim_pid=getattr(self.sim, "pid", None))
        for warning in placement.warnings:
            log.warning("%s", warning)
        write_plan_info(self.arena, self.plan)    # now with each stage's CPU
        self._level = log_level()
        for s in self.plan.stages:
            self.table[s.row]["command"] = STAGE_CMD_RUN
        self.heartbeats = Heartbeats(self.table, self.cfg.stall_timeout)
        for s in self.plan.stages:
            self.procs.append(StageProc(s.name, s.role, s.row, self._start_stage(s.name)))

    def _start_stage(self, name: str) -> multiprocessing.process.BaseProcess:
        proc = self._ctx.Process(target=stage_main, args=(self.plan, name, self._level, os.getpid()), name=name, daemon=True)
        proc.start()
        return proc

    def _wait_running(self) -> None:
        """Wait for every stage to report running, as long as the starting ones make progress.

        Progress is a stage reaching "running" or a starting stage using CPU
        (loading modules, compiling kernels): on a busy machine that can take
        long, and only a stage that does nothing for START_STALL is given up on.
        A worker running the user's code (importing it, in setup()) is the
        liveness watch's: named once stuck for workers.setup_timeout, and
        on_stage_death applies to it as to a death.
        """
        progress = Progress(self.procs, self.table)
        while True:
            if self.stop_reason:
                return
            self._check_deaths()
            self._check_hung()
            self._restart_workers({})
            if self.failures:
                raise PipelineError("a stage hung while starting" if self.hung else "a stage died while starting")
            states = self.table["state"][[p.row for p in self.procs]]
            if (states >= STAGE_STATE_RUNNING).all():
                self._first_run.done()
                return
            self._first_run.progress(int((states >= STAGE_STATE_RUNNING).sum()), len(states))
            starting = [p for p in self.procs if self.table[p.row]["state"] < STAGE_STATE_RUNNING
                        and not self.table[p.row]["phase"] and not p.died]
            if progress.stalled(starting, START_STALL):
                raise PipelineError(f"stages made no progress starting for {START_STALL:.0f} s: "
                                    f"{', '.join(p.name for p in starting)}")
            time.sleep(POLL)

    def _start_traffic(self) -> None:
        self.started = True             # from here on the run has packets to account for
        if self.sim is not None:
            self.sim.start_traffic()

    def _ready(self) -> None:
        """Traffic can flow: say so once (the "ready" line or JSON object) and tell systemd (READY=1)."""
        if self.stop_reason:
            return                      # a stop came while starting: never ready
        stages, ports = len(self.procs), list(self.plan.port_names)
        print_ready(self.out, self.json_lines, self.plan)
        self.notify.ready(ready_line(self.plan.name, stages, ports))

    def _watch(self) -> None:
        printer = StatsPrinter(self.plan, self.table, self.devices, self.out, self.json_lines, self.sim,
                               counters=lambda: stagetable.stage_counters(self.arena, self.plan),
                               keyed=lambda: keyedstate.merged(self.arena, self.plan),
                               publish=lambda d: planinfo.publish_port_drops(self.arena, self.plan.port_names, d),
                               observe=self.metrics.watch(self.plan, self.arena, self.sim) if self.metrics else None,
                               quiet=self.quiet)
        started = time.monotonic()
        next_print = started + self.cfg.stats.interval
        sentinels = {p.process.sentinel: p for p in self.procs}
        sources = self._finite_sources()
        while not self.stop_reason:
            now = time.monotonic()
            ready = multiprocessing.connection.wait(list(sentinels), timeout=min(POLL, max(0, next_print - now)))
            if ready:
                self._check_deaths()
            self._check_hung()
            self._check_stalled()
            self._check_forks()
            self._reap_captures()
            self._restart_workers(sentinels)
            if self.failures:
                self.stop_reason = "pipeline stalled" if self.stalled else "stage hung" if self.hung else "stage died"
                break
            if self.sim is not None and not self.sim.is_alive():
                self.failures.append(f"the software 82599 (pid {self.sim.pid}) died: {self.sim.death_cause()}")
                log.error("%s", self.failures[-1])
                self.sim_died = True
                self.stop_reason = "simulator died"
                break
            self.notify.watchdog()            # healthy this turn: a loop that stops turning lets systemd's fire
            now = time.monotonic()
            if now >= next_print:
                printer.interval(now - started)
                self.notify.figures(self.plan, self.table, now - started)
                next_print += self.cfg.stats.interval
            if self.duration is not None and now - started >= self.duration:
                self.stop_reason = f"duration {self.duration:g} s"
            if self.packets is not None and self._received() >= self.packets:
                self.stop_reason = f"{self.packets} packets"
            if sources and all(done() for done in sources):
                self.stop_reason = SOURCES_FINISHED

    def _finite_sources(self) -> list:
        """One check per traffic source saying it has sent all it ever will; empty when a source is
        endless (a NIC, an interface, loop = 0, a generator without count) or there is none."""
        devices = {dev.name: dev for dev in self.devices.values()}
        checks = []
        for p in self.cfg.ports:
            if p.driver == "pcap":
                if p.pcap_mode != "read":
                    continue                       # a capture file: no source
                if p.pcap_loop == 0:
                    return []
                checks.append(devices[p.name].source_finished)
            elif p.driver == "sim":
                if p.generator is None:
                    continue                       # sink or cable only
                if p.generator.count == 0 or self.sim is None:
                    return []
                checks.append(lambda name=p.name, count=p.generator.count:
                              self.sim.counters()[name].generated >= count)
            else:
                return []                          # live traffic may come at any time
        return checks

    def _capture_failures(self, sim_counters) -> None:
        """Frames a capture file could not take (disk full...) fail the run, named with the file."""
        for p in self.cfg.ports:
            lost, path = 0, ""
            if p.driver == "pcap" and p.pcap_mode == "write":
                dev = next((d for d in self.devices.values() if d.name == p.name), None)
                lost, path = (dev.read_stats().tx_dropped if dev is not None else 0), p.path
            elif p.driver == "sim" and p.sink is not None and p.sink.pcap and sim_counters:
                c = sim_counters.get(p.name)
                lost, path = (c.sink_pcap_failed if c is not None else 0), p.sink.pcap
            if lost:
                self.failures.append(f"port {p.name}: {lost:,} frames could not be written to {path} "
                                     "(the error is logged above)")

    def _restart_workers(self, sentinels: dict) -> None:
        """Policy "restart": a dead or hung worker is replaced; a new process takes over its rings and row.

        Each replacement starts after a back-off (liveness.RestartBudget); a worker
        that died more than ``max_restarts`` times within a minute is not replaced
        and its death stops the run.  The buffers a dead one held are found missing
        at the end and counted as dropped with reason stage_died.
        """
        if self.cfg.on_stage_death != "restart" or self.fork_server_died:     # nothing to start them from
            return
        now = time.monotonic()
        for p in self.procs:
            if not p.died or p.role != "worker" or p.given_up:
                continue
            if p.restart_at is None:
                delay = self.budget.delay(p.name)
                self.failures.remove(p.failure)
                if delay is None:
                    p.given_up = True
                    p.failure = (f"stage {p.name} (pid {p.process.pid}) {p.died}; not restarted again: it was "
                                 f"restarted {self.budget.recent(p.name)} times within a minute "
                                 f"(max_restarts = {self.cfg.max_restarts})")
                    log.error("%s", p.failure)
                    self.failures.append(p.failure)
                    continue
                log.warning("restarting %s (it %s) in %.1f s", p.name, p.died, delay)
                p.restart_at = now + delay
            elif now >= p.restart_at:
                sentinels.pop(p.process.sentinel, None)
                self.restarts += 1
                self.budget.restarted(p.name)
                self.heartbeats.forget(p.row)
                row = self.table[p.row]
                row["state"] = row["heartbeat"] = row["batches"] = row["batch_no"] = 0    # a fresh start (first-batch grace)
                p.process = self._start_stage(p.name)
                p.died, p.failure, p.restart_at = "", "", None
                sentinels[p.process.sentinel] = p

    def _check_hung(self) -> None:
        """A stage whose heartbeat stood still for stall_timeout is named, with what it was doing, and killed."""
        if self.heartbeats is None:
            return
        live = [p for p in self.procs if not p.died]
        for p, how, still in self.heartbeats.hung(live):
            what = doing(self.plan, self.table, self.arena, p.row)
            p.process.kill()                  # SIGKILL ends a stopped process too
            p.process.join(2)
            self.hung = True
            self._stage_failed(p, f"hung ({how}), killed",
                               f"stage {p.name} (pid {p.process.pid}) hung: its heartbeat stood still for "
                               f"{still:.1f} s ({how}); it was {what}; killed")
        self._check_stuck_starting(live)

    def _check_stuck_starting(self, live: list[StageProc]) -> None:
        """A worker stuck in its import or setup() for workers.setup_timeout is named with the phase, killed."""
        limit = self.cfg.workers.setup_timeout
        for p, how, still in self.heartbeats.stuck_starting(live, limit):
            if not p.process.is_alive():
                continue                      # its death is reported as such
            p.process.kill()
            p.process.join(2)
            self.hung = True
            self._stage_failed(p, f"was stuck {how}, killed",
                               f"stage {p.name} (pid {p.process.pid}) is stuck {how}: still there after "
                               f"{still:.0f} s (workers.setup_timeout = {limit:g}); killed")

    def _check_stalled(self) -> None:
        """Frames wait while the stages loop and nothing moves for stall_timeout: name it (with what each
        stage waits on) and apply on_stage_death: "restart" replaces the workers that hold a full ring up,
        anything else (or no such worker) stops the run."""
        now = time.monotonic()
        if self._links_down():
            return
        if self.flow is None:
            self.flow = FlowWatch(self.plan, self.arena, self.table, self.cfg.stall_timeout)
            self._next_flow_check = now
        if now < self._next_flow_check or self.failures:      # a death or hang found first is handled first
            return
        self._next_flow_check = now + FLOW_CHECK
        drops = port_drops(self.devices, self.sim)
        msg = self.flow.check({port: d.get("rx_missed", 0) for port, d in drops.items()})
        if not msg:
            return
        rows = set(self.flow.culprits())
        workers = [p for p in self.procs if p.row in rows and p.role == "worker" and not p.died]
        if self.cfg.on_stage_death == "restart" and workers:
            log.error("%s", msg)
            for p in workers:
                p.process.kill()
                p.process.join(2)
                self._stage_failed(p, "stalled the pipeline, killed", f"stage {p.name} (pid {p.process.pid}) "
                                   "held a full ring up while the pipeline stalled (above): killed")
            self.flow.close()
            self.flow = None                   # a fresh watch for the replacements
            return
        self.stalled = True
        log.error("%s", msg)
        self.failures.append(msg)

    def _links_down(self) -> bool:
        """A port whose driver is bringing its link back (a vhost-user backend restarting): frames wait for it,
        which is no stall; the flow is watched afresh once every link is up."""
        down = any(dev.reconnecting() for dev in self.devices.values())
        if down and self.flow is not None:
            self.flow.close()
            self.flow = None
        return down

    def _ports_away(self) -> set[int]:
        """Ports whose link is down while their driver waits to bring it back (a vhost-user backend away) when
        the run stops: what was posted to them or waits for them can never go out.  Like a dead NIC's, their
        TX stages drop what they hold (stage_died) and what sits in their TX rings counts as never sent."""
        away = {p for p, dev in self.devices.items() if dev.reconnecting()}
        for p in sorted(away):
            dev = self.devices[p]
            log.warning("port %s: its link is down as the run stops (%s %s is away): what was posted to it or "
                        "waits for it is dropped (counted as stage_died)", dev.name, dev.driver_name,
                        self.plan.ports[p].address)
        return away

    def _port_of(self, p: StageProc) -> int:
        return next(s.port for s in self.plan.stages if s.row == p.row)

    def _check_forks(self) -> None:
        """A worker whose process forked: the child was stopped before returning to user code (see stages)."""
        forks = self.table["forks"]
        for p in self.procs:
            n = int(forks[p.row])
            if n != self.forks.get(p.row, 0):
                self.forks[p.row] = n
                log.warning("%s forked (child pid %d); the child was stopped before it could touch a ring "
                            "(%d so far): a worker may not fork", p.name, int(self.table[p.row]["fork_pid"]), n)

    def _reap_captures(self) -> None:
        """A capture that died (killed -9) leaves its request in the mirror rings: clear it, so the stage stops
        copying for nobody (pipeline/mirror.py)."""
        for pid in mirror.reap(self.arena, owner_alive):
            log.info("the capture with pid %d is gone: its stages copy no more frames", pid)

    def _received(self) -> int:
        return int(self.table["packets_in"][[s.row for s in self.plan.stages_of("rx")]].sum())

    def _check_deaths(self) -> None:
        for p in self.procs:
            code = p.process.exitcode
            if code is None or p.died:
                continue
            if code == 0 and self.table[p.row]["state"] == STAGE_STATE_DONE:
                continue
            if code == FORK_SERVER_LOST and self._lost_with_fork_server(p):
                continue
            how = describe_exit(code)
            self._stage_failed(p, f"died: {how}", f"stage {p.name} (pid {p.process.pid}) died: {how}")

    def _lost_with_fork_server(self, p: StageProc) -> bool:
        """True when ``p``'s exit status went with its fork server, which died: ``p`` died with it unless it
        had finished its work, and then the server's death is named (once) as the failure."""
        deadline = time.monotonic() + FORK_SERVER_GRACE    # its pipes close just before it can be reaped
        while not (how := forkserver.death()):
            if time.monotonic() >= deadline:
                return False                    # the server runs: the stage itself left with 255
            time.sleep(0.01)
        self.fork_server_died = how             # nothing is started from it any more
        if self.table[p.row]["state"] == STAGE_STATE_DONE:
            return True                         # it finished: only its exit status is lost
        msg = (f"the stages' fork server (pid {forkserver.server_pid()}) died: {how}; "
               "every process it had started died with it")
        if msg not in self.failures:
            log.error("%s", msg)
            self.failures.append(msg)
        self._stage_failed(p, "died with the fork server",
                           f"stage {p.name} (pid {p.process.pid}) died with the fork server")
        return True

    def _stage_failed(self, p: StageProc, died: str, msg: str) -> None:
        p.died = died
        self.table[p.row]["state"] = STAGE_STATE_DEAD      # its producers stop pushing to it
        log.error("%s", msg)
        p.failure = msg
        self.failures.append(msg)

    # ---- stopping ------------------------------------------------------------------
    def _shutdown(self) -> RunResult:
        """Stop the stages in data-flow order, finish what dead ones left, take every buffer home, account."""
        accounting = None
        self.notify.stopping(self.stop_reason or "; ".join(self.failures) or "start-up failed")
        try:
            if self.procs:
                if self.sim is not None and self.sim.is_alive() and not self.sim.pause_traffic(wait=SIM_PAUSE_WAIT):
                    log.warning("the software 82599 did not confirm its generators paused within %g s", SIM_PAUSE_WAIT)
                for dev in self.devices.values():
                    dev.pause_source()              # file replays stop too: the drain finds the ports idle
                self._gone = self._ports_away()
                if self.sim_died or self._gone:    # TX stages drop what reaches them from now on, so nothing waits
                    for p in self.procs:
                        if p.role == "tx" and (self.sim_died or self._port_of(p) in self._gone):
                            self.table[p.row]["command"] = STAGE_CMD_ABANDON
                            wakeup.wake(self.arena, p.row)
                for role in ("rx", "worker", "tx"):          # data-flow order
                    self._drain_role(role)
                self._sweep_leftovers()
            built = self.plan is not None and self.arena is not None
            unsent, sent_in_hand, sent_uncounted = self._drain_dead_tx() if built else (0, 0, 0)
            self._port_drops = port_drops(self.devices, self.sim)    # before the simulator's counters go
            sim_counters = self.sim.stop() if self.sim is not None else None
            self.sim = None
            if self.started:
                self._capture_failures(sim_counters)
            if built and self.started:      # a start-up failure prints only its error
                orphaned, stranded = self._reclaim()
                try:
                    accounting = self._account(stranded, unsent, orphaned, sent_in_hand, sent_uncounted)
                except Exception as exc:       # a table a stage scribbled on: say so, still clean up
                    self.failures.append(f"the accounting failed: {type(exc).__name__}: {exc}")
                    return self._finish(None)
                if accounting.lost_everything:
                    self.failures.append(f"every packet was lost: received {accounting.received:,}, "
                                         "transmitted none, dropped by the worker's verdicts "
                                         f"{accounting.drops['worker']:,}")
                accounting.sim = sim_counters
                accounting.stop_reason = self.stop_reason
                accounting.failures = list(self.failures)
                accounting.check_sim(self.cfg)
                accounting.print(self.out, self.json_lines)
        finally:
            self._release()
        return self._finish(accounting)

    def _finish(self, accounting: Accounting | None) -> RunResult:
        ok = not self.failures and (accounting.ok if accounting is not None else not self.started)
        for failure in self.failures:
            print(f"error: {failure}", file=sys.stderr)
        return RunResult(0 if ok else 1, accounting, self.stop_reason, list(self.failures))

    def _reclaim(self) -> tuple[int, int]:
        """(orphaned, stranded) packets once every ring is emptied (pipeline/reclaim.py): shared memory is
        untrusted, so whatever a stage left there becomes a named failure, never an exception."""
        try:
            orphaned = orphaned_packets(self.plan, self.arena, self._dead_rows())
        except Exception as exc:
            self.failures.append(f"counting what dead stages left in their rings failed: {type(exc).__name__}: {exc}")
            orphaned = 0
        in_nic = []
        for pool_plan in self.plan.pools:
            dev = self.devices.get(pool_plan.port)
            try:
                in_nic.append(dev.rx_held(pool_plan.queue) if dev is not None else [])
            except Exception as exc:
                self.failures.append(f"port {pool_plan.port} queue {pool_plan.queue}: reading its RX ring failed: "
                                     f"{type(exc).__name__}: {exc}")
        stranded = reclaim.reclaim_rings(self.plan, self.arena, self.pools, self.bufs, self.failures, in_nic)
        return orphaned, max(0, stranded - orphaned)

    def _drain_role(self, role: str) -> None:
        """Ask every stage of ``role`` to drain and wait while they make progress; kill one that stalls.

        Progress is a change in a stage's counters or state: a stage that moves
        packets, sends buffers home or finishes is never killed, however busy
        the machine.  One whose counters stand still for DRAIN_STALL while it
        runs (or is stopped) is killed, and that is a failure of the run; not
        one that only holds packets for a consumer still there (:meth:`_blame`).
        """
        procs = [p for p in self.procs if p.role == role]
        command = STAGE_CMD_ABANDON if self.sim_died else STAGE_CMD_DRAIN     # no NIC left to wait for
        for p in procs:
            self.table[p.row]["command"] = max(command, int(self.table[p.row]["command"]))   # ABANDON stays
            if p.row in self._sleepers:
                wakeup.wake(self.arena, p.row)        # a sleeping stage sees the command at once
        procs, self._waiting = procs + self._waiting, []
        progress = Progress(procs, self.table)
        stall = max(DRAIN_STALL, self.cfg.stall_timeout + 1)    # a hung stage upstream is found first
        while True:
            self._check_hung()                # any stage: a hung consumer would hold its producers up
            self._check_deaths()
            self._restart_workers({})         # policy "restart": a worker that dies now is replaced as before
            alive = [p for p in procs if p.process.is_alive()]
            if not alive and not any(p.restart_at is not None for p in procs):
                break
            # a stage still starting in ixypipe's own code (compiling its kernels on a first run) gets the start-up
            # time a worker's setup gets, not the drain's: it is no hung stage (one in the user's import or setup()
            # is judged as before)
            starting = [p for p in alive if self.table[p.row]["state"] < STAGE_STATE_RUNNING
                        and not self.table[p.row]["phase"]]
            others = [p for p in alive if p not in starting]
            stalled = (progress.stalled_procs(others, stall)
                       + progress.stalled_procs(starting, max(stall, self.cfg.workers.setup_timeout)))
            later, blamed = self._blame(stalled, procs, progress)
            self._waiting += later
            procs = [p for p in procs if p not in later]
            for p in blamed:
                phase = self.table[p.row]["phase"] if self.table[p.row]["state"] < STAGE_STATE_RUNNING else 0
                why = f" (still {PHASES[int(phase)]})" if int(phase) in PHASES else ""
                p.process.kill()
                p.process.join(2)
                p.given_up = True             # not replaced: the stop would wait on its successor again
                self._stage_failed(p, "killed: no progress while draining",
                                   f"stage {p.name} made no progress draining for {stall:.0f} s{why}: killed")
            multiprocessing.connection.wait([p.process.sentinel for p in alive], timeout=POLL)
        self._check_deaths()

    def _blame(self, stalled: list[StageProc], watched: list[StageProc],
               progress: Progress) -> tuple[list[StageProc], list[StageProc]]:
        """Of the ``stalled`` stages: (those that only wait on a consumer of a later role, watched on with that
        role; those to blame).  One that waits on a stalled consumer watched here is neither: the consumer is
        judged first, and it gets a fresh DRAIN_STALL.  A stop never blames the stages that wait."""
        rows, stuck = {p.row for p in watched}, {p.row for p in stalled}
        later, blamed = [], []
        for p in stalled:
            waits = self._consumers_waited_on(p)
            if waits - rows:
                later.append(p)
            elif waits & stuck:
                progress.restart(p)
            else:
                blamed.append(p)
        return later, blamed

    def _consumers_waited_on(self, p: StageProc) -> set[int]:
        """The live stages (rows) ``p`` waits on: it is in its loop and holds packets for full outputs whose
        consumers are these.  A stage still starting (in setup()) waits on nothing: its row's figures are
        its predecessor's, if any."""
        row = self.table[p.row]
        if int(row["state"]) < STAGE_STATE_RUNNING or int(row["held"]) <= 0:
            return set()
        me = next(s for s in self.plan.stages if s.row == p.row)
        outs = list(me.out_rings) if me.role == "rx" else list(me.out_ring_of.values())
        live = {q.row for q in self.procs if not q.died and q.process.is_alive()}
        return {self.plan.consumer_row(r) for r in outs} & live

    def _sweep_leftovers(self) -> None:
        """Processes the stages left behind (a worker's children: leftovers.py) are named, killed and a failure."""
        stages = {s.name for s in self.plan.stages} if self.plan is not None else None
        sim = {self.sim.pid} if self.sim is not None and self.sim.pid else set()
        for left in leftovers.sweep(stages, keep={p.process.pid for p in self.procs}, keep_tree=sim):
            msg = f"{left.describe()} was still running after its stages ended: killed"
            log.error("%s", msg)
            self.failures.append(msg)

    def _dead_rows(self) -> set[int]:
        return {p.row for p in self.procs if p.died}

    def _drain_dead_tx(self) -> tuple[int, int, int]:
        """Descriptors left posted: a dead TX stage's are finished by the NIC and their buffers sent home.

        Returns (unsent, sent_in_hand, sent_uncounted).  When the NIC itself
        died nothing finishes them: ``unsent`` were posted and never sent
        (counted once, as stage_died, not as transmitted).  A TX stage that
        died between two steps of its loop leaves the other two:
        ``sent_in_hand`` were sent and counted as transmitted, and it held them
        on their way home (missing from the pools, but not lost with it);
        ``sent_uncounted`` it had posted (the NIC sends them) but not yet counted.
        """
        dead = self._dead_rows()
        unsent = sent_in_hand = sent_uncounted = 0
        for s in self.plan.stages_of("tx"):
            dev = self.devices.get(s.port)
            if dev is None:
                continue
            if self.sim_died or s.port in self._gone:
                unsent += dev.tx_pending(s.queue)
            elif s.row in dead:
                sent_in_hand += dev.tx_sent_in_hand(s.queue)       # before this drain cleans the queue itself
                posted = dev.tx_posted(s.queue)
                if posted is not None:
                    sent_uncounted += max(0, posted - int(self.table[s.row]["packets_out"]))
                dev.tx_drain(s.queue, timeout=DEAD_TX_DRAIN_TIMEOUT)
        return unsent, sent_in_hand, sent_uncounted

    def _pool_counts(self) -> list[PoolCount]:
        counts = []
        for pool_plan, pool in zip(self.plan.pools, self.pools, strict=True):
            dev = self.devices.get(pool_plan.port)
            in_nic = len(dev.rx_held(pool_plan.queue)) if dev is not None else 0
            counts.append(PoolCount(pool.count, pool.available(), in_nic))
        return counts

    def _account(self, stranded: int, unsent: int, orphaned: int = 0, sent_in_hand: int = 0,
                 sent_uncounted: int = 0) -> Accounting:
        """The accounting of this run, from the stage table and what was found once every stage stopped."""
        dead = self._dead_rows()
        return Accounting.of(self.plan, self.table, self._pool_counts(), stranded=stranded, orphaned=orphaned,
                             died=[s.name for s in self.plan.stages if s.row in dead], restarts=self.restarts,
                             sim_died=self.sim_died or bool(self._gone), port_drops=self._port_drops, unsent=unsent,
                             sent_in_hand=sent_in_hand, sent_uncounted=sent_uncounted,
                             worker_counters=stagetable.stage_counters(self.arena, self.plan),
                             keyed=keyedstate.merged(self.arena, self.plan))

    def _release(self) -> None:
        for p in self.procs:
            if p.process.is_alive():
                p.process.kill()
                p.process.join(2)
        if self.sim is not None:
            try:
                self.sim.stop()
            except Exception as exc:
                log.error("stopping the simulator: %s", exc)
        self._sweep_leftovers()
        for dev in self.devices.values():
            try:
                dev.close()
            except Exception as exc:
                log.warning("closing %s: %s", dev.name, exc)
        self.devices = {}
        if self.flow is not None:
            self.flow.close()               # its ring views, before the arena goes
            self.flow = None
        self.pools = []
        self.bufs = None
        self.table = None
        if self.arena is not None:
            wakeup.unlink(self.arena, self._sleepers)
        for arena in (self.arena, self.dev_arena):
            if arena is not None:
                arena.destroy()
        self.arena = self.dev_arena = None


def uses_physical_addresses(cfg) -> bool:
    """Whether the arenas need a physical-address table: only for ports that DMA with physical addresses
    (not VFIO's IOVAs, not kernel interfaces)."""
    return any(p.driver in ("ixgbe", "sim", "virtio") and p.iommu != "vfio" for p in cfg.ports)


def packet_arena_regions(plan: PipelinePlan, buffer_size: int) -> list[RegionSize]:
    """Everything _build carves from the packet arena: buffers, pools, rings, stage table, plan.json."""
    return [*PacketBuffers.arena_regions(plan.buffer_count, buffer_size),
            *(r for pool in plan.pools for r in Mempool.arena_regions(pool.count)),
            *(r for ring in plan.rings for r in Ring.arena_regions(ring.capacity)),
            *stagetable.arena_regions(len(plan.stages)),
            *keyedstate.arena_regions(len(plan.stages_of("worker")), plan.keyed_tables, plan.keyed_slots),
            *wakeup.arena_regions(len(plan.stages)),
            *mirror.arena_regions(plan, buffer_size - PKTBUF_HEADROOM),
            *planinfo.arena_regions()]


def device_arena_regions(plan: PipelinePlan) -> list[RegionSize]:
    """What opening every port carves from the device arena, as each driver says."""
    return [r for spec in plan.ports for r in port_factory.arena_regions(spec)]


def orphaned_packets(plan: PipelinePlan, arena: Arena, dead_rows: set[int]) -> int:
    """Packets waiting in forward rings whose consumer died or hung: lost with it (stage_died), not stranded."""
    total = 0
    for r in plan.rings:
        if r.kind == RING_FORWARD and plan.consumer_row(r.name) in dead_rows:
            ring = Ring.attach(arena, r.name)
            total += ring.count()
            ring.close()
    return total


class Progress:
    """When each stage last showed progress: a change in its counters or state, and when it last got CPU.

    Starting, using CPU counts as progress (a stage loading modules or
    compiling kernels changes no counter).  Draining it does not (a stage can
    spin on a ring nobody empties), but a stage that is runnable and got no
    CPU at all is starved by a busy machine, not stalled: it is given up to
    STARVED_LIMIT times the limit.
    """

    def __init__(self, procs: list[StageProc], table: np.ndarray):
        self.table = table
        self.counters: dict[int, tuple] = {}
        self.cpu: dict[int, float] = {}
        self.changed: dict[int, float] = {}
        self.ran: dict[int, float] = {}
        for p in procs:
            self._update(p)

    def _update(self, p: StageProc) -> None:
        now = time.monotonic()
        row = self.table[p.row]
        counters = tuple(int(row[f]) for f in PROGRESS_FIELDS)
        cpu = _cpu_time(p)
        if counters != self.counters.get(p.row):
            self.counters[p.row] = counters
            self.changed[p.row] = now
        if cpu != self.cpu.get(p.row):
            self.cpu[p.row] = cpu
            self.ran[p.row] = now

    def restart(self, p: StageProc) -> None:
        """Count ``p``'s quiet time from now."""
        self.changed[p.row] = time.monotonic()

    def stalled(self, procs: list[StageProc], limit: float) -> bool:
        """Starting: True when none of ``procs`` changed its counters or used CPU for ``limit`` seconds."""
        now = time.monotonic()
        for p in procs:
            self._update(p)
        return bool(procs) and all(now - max(self.changed[p.row], self.ran[p.row]) >= limit for p in procs)

    def stalled_procs(self, procs: list[StageProc], limit: float) -> list[StageProc]:
        """Draining: the ones of ``procs`` whose counters stood still for ``limit`` seconds while they had CPU."""
        now = time.monotonic()
        out = []
        for p in procs:
            self._update(p)
            quiet = now - self.changed[p.row]
            starved = now - self.ran[p.row] >= limit and _runnable(p)
            if quiet >= (limit * STARVED_LIMIT if starved else limit):
                out.append(p)
        return out


def _cpu_time(p: StageProc) -> float:
    try:
        t = psutil.Process(p.process.pid).cpu_times()
        return t.user + t.system
    except (psutil.Error, TypeError):
        return 0.0


def _runnable(p: StageProc) -> bool:
    try:
        return psutil.Process(p.process.pid).status() == psutil.STATUS_RUNNING
    except psutil.Error:
        return False


__all__ = ["Supervisor", "PipelineError", "RunResult", "DROP_REASONS"]
