"""The supervisor behind ``ixypipe run``: builds, starts, watches and stops a pipeline.

It creates the two arenas (the packet arena that every stage maps, and the
device arena with descriptor rings that workers never see), the packet
buffers, one mempool per RX queue, the SPSC rings and the stage table;
starts the software 82599 for ``sim`` ports; initialises every port; then
spawns and pins one process per stage.  While running it prints per-port
and per-stage figures once a second and notices a dead stage at once.  On
Ctrl-C, SIGTERM, --duration or --packets it stops the stages in data-flow
order (RX, workers, TX), drains the rings, takes every buffer home, proves
the accounting and removes everything it created.
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

from ixypipe.layout import (
    ARENA_MIN_ALIGN,
    DROP_REASONS,
    STAGE_CMD_DRAIN,
    STAGE_CMD_RUN,
    STAGE_STATE_DONE,
    STAGE_STATE_RUNNING,
)
from ixypipe.memory.arena import Arena, remove_stale
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import ports as port_factory
from ixypipe.nic.registers import DESC_SIZE
from ixypipe.pipeline import stagetable
from ixypipe.pipeline.plan import PipelinePlan, plan_from_config
from ixypipe.pipeline.planinfo import write_plan_info
from ixypipe.pipeline.report import Accounting, StatsPrinter, send_home
from ixypipe.pipeline.stages import stage_main
from ixypipe.rings.spsc import Ring

log = logging.getLogger(__name__)
START_TIMEOUT = 60.0          # seconds for every stage to report running
DRAIN_TIMEOUT = 10.0          # seconds per stage to drain before it is killed (CPUs may be shared)
POLL = 0.05                   # seconds between checks of the stop conditions


class PipelineError(Exception):
    """The pipeline could not be started; the message says why."""


@dataclass
class StageProc:
    name: str
    role: str
    row: int
    process: multiprocessing.process.BaseProcess
    died: str = ""            # why it ended badly, "" while fine


@dataclass
class RunResult:
    exit_code: int
    accounting: Accounting | None = None
    stop_reason: str = ""
    failures: list[str] = field(default_factory=list)


class Supervisor:
    def __init__(self, cfg, duration: float | None = None, packets: int | None = None,
                 json_lines: bool | None = None, out=None):
        self.cfg = cfg
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
        self.sim_died = False

    # ---- the whole run -------------------------------------------------------------
    def run(self) -> RunResult:
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        result = RunResult(exit_code=1)
        try:
            remove_stale()
            self._build()
            self._start_sim()
            self._open_ports()
            self._spawn_stages()
            self._wait_running()
            self._start_traffic()
            self._watch()
        except PipelineError as exc:
            self.failures.append(str(exc))
        finally:
            try:
                result = self._shutdown()
            finally:
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

    # ---- building ------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.cfg
        dummy = plan_from_config(cfg)
        specs = dummy.ports
        n_pools = sum(s.rx_queues for s in specs)
        n_bufs = n_pools * cfg.buffers_per_queue
        ring_bytes = sum(Ring.region_size(self._ring_capacity(r)) + ARENA_MIN_ALIGN for r in dummy.ring_names())
        packet_bytes = (PacketBuffers.bytes_needed(n_bufs, cfg.buffer_size)
                        + sum(Mempool.region_size(cfg.buffers_per_queue) + 128 for _ in range(n_pools))
                        + ring_bytes + stagetable.bytes_needed(len(dummy.stages)) + (1 << 20))
        device_bytes = sum((s.rx_queues * s.rx_ring_size + s.tx_queues * s.tx_ring_size) * (DESC_SIZE + 8)
                           + (s.rx_queues + s.tx_queues) * 8192 for s in specs) + (2 << 20)
        try:
            self.arena = Arena.create(packet_bytes, hugepages_mode=cfg.hugepages, tag="pkt")
            self.dev_arena = Arena.create(device_bytes, hugepages_mode=cfg.hugepages, tag="dev")
        except Exception as exc:
            raise PipelineError(f"cannot create the DMA arenas: {exc}") from exc
        plan = plan_from_config(cfg, str(self.arena.path), str(self.dev_arena.path))
        self.bufs = PacketBuffers.create(self.arena, n_bufs, cfg.buffer_size)
        self.pools = [Mempool.create(self.arena, self.bufs, p.name, p.first, p.count, p.pool_id)
                      for p in plan.pools]
        for name in plan.ring_names():
            Ring.create(self.arena, name, self._ring_capacity(name))
        stagetable.create(self.arena, len(plan.stages))
        self.table = stagetable.table(self.arena)
        self.plan = plan
        write_plan_info(self.arena, plan)     # for observers: 'ixypipe top'

    def _ring_capacity(self, name: str) -> int:
        if ">pool" in name:   # a return ring holds its whole pool, so going home never fails
            return 1 << (self.cfg.buffers_per_queue - 1).bit_length()
        return self.cfg.ring_size

    def _start_sim(self) -> None:
        sim_ports = [p for p in self.cfg.ports if p.driver == "sim"]
        if not sim_ports:
            return
        from ixypipe.sim.server import SimServer
        self.sim = SimServer(sim_port_configs(sim_ports), [self.arena.path, self.dev_arena.path])
        self.sim.start()
        for p in sim_ports:
            self.plan.sysfs_roots[p.name] = str(self.sim.sysfs_root)
            spec = self.plan.ports[[q.name for q in self.cfg.ports].index(p.name)]
            spec.address = self.sim.addresses[p.name]

    def _open_ports(self) -> None:
        for p, spec in enumerate(self.plan.ports):
            pools = [self.pools[pp.pool_id] for pp in self.plan.pools if pp.port == p]
            try:
                self.devices[p] = port_factory.open_port(spec, self.dev_arena, self.bufs, pools,
                                                         tx_done=self._send_home,
                                                         sysfs_root=self.plan.sysfs_roots.get(spec.name))
            except Exception as exc:
                raise PipelineError(f"port {spec.name} ({spec.driver} {spec.address}): {exc}") from exc
            log.info("port %s: %s %s up", spec.name, spec.driver, spec.address)

    def _send_home(self, idx: np.ndarray) -> None:
        send_home(self.pools, self.bufs, idx)

    # ---- stages --------------------------------------------------------------------
    def _spawn_stages(self) -> None:
        from ixypipe.pipeline.placement import place_stages
        placement = place_stages(self.plan, self.cfg, sim_pid=getattr(self.sim, "pid", None))
        for warning in placement.warnings:
            log.warning("%s", warning)
        write_plan_info(self.arena, self.plan)    # now with each stage's CPU
        ctx = multiprocessing.get_context("spawn")
        level = logging.getLogger().getEffectiveLevel()
        for s in self.plan.stages:
            self.table[s.row]["command"] = STAGE_CMD_RUN
        self._ctx, self._level = ctx, level
        for s in self.plan.stages:
            self.procs.append(StageProc(s.name, s.role, s.row, self._start_stage(s.name)))

    def _start_stage(self, name: str) -> multiprocessing.process.BaseProcess:
        proc = self._ctx.Process(target=stage_main, args=(self.plan, name, self._level, os.getpid()), name=name, daemon=True)
        proc.start()
        return proc

    def _wait_running(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.stop_reason:
                return
            self._check_deaths()
            if self.failures:
                raise PipelineError("a stage died while starting")
            states = self.table["state"][[p.row for p in self.procs]]
            if (states >= STAGE_STATE_RUNNING).all():
                return
            time.sleep(POLL)
        slow = [p.name for p in self.procs if self.table[p.row]["state"] < STAGE_STATE_RUNNING]
        raise PipelineError(f"stages did not start within {START_TIMEOUT:.0f} s: {', '.join(slow)}")

    def _start_traffic(self) -> None:
        if self.sim is not None:
            self.sim.start_traffic()

    def _watch(self) -> None:
        printer = StatsPrinter(self.plan, self.table, self.devices, self.out, self.json_lines, self.sim,
                               counters=lambda: stagetable.stage_counters(self.arena, self.plan))
        started = time.monotonic()
        next_print = started + self.cfg.stats.interval
        sentinels = {p.process.sentinel: p for p in self.procs}
        while not self.stop_reason:
            now = time.monotonic()
            ready = multiprocessing.connection.wait(list(sentinels), timeout=min(POLL, max(0, next_print - now)))
            if ready:
                self._check_deaths()
                self._restart_workers(sentinels)
                if self.failures:
                    self.stop_reason = "stage died"
                    break
            if self.sim is not None and not self.sim.is_alive():
                code = self.sim.process.exitcode
                self.failures.append(f"the software 82599 (pid {self.sim.pid}) died: "
                                     f"{describe_exit(code) if code is not None else 'gone'}")
                log.error("%s", self.failures[-1])
                self.sim_died = True
                self.stop_reason = "simulator died"
                break
            now = time.monotonic()
            if now >= next_print:
                printer.interval(now - started)
                next_print += self.cfg.stats.interval
            if self.duration is not None and now - started >= self.duration:
                self.stop_reason = f"duration {self.duration:g} s"
            if self.packets is not None and self._received() >= self.packets:
                self.stop_reason = f"{self.packets} packets"

    def _restart_workers(self, sentinels: dict) -> None:
        """Policy "restart": a dead worker is replaced; a new process takes over its rings and row.

        The buffers the dead one held are found missing at the end and counted
        as dropped with reason stage_died.
        """
        if self.cfg.on_stage_death != "restart":
            return
        for p in self.procs:
            if not p.died or p.role != "worker":
                continue
            self.failures.remove(f"stage {p.name} (pid {p.process.pid}) died: {p.died}")
            sentinels.pop(p.process.sentinel, None)
            self.restarts += 1
            log.warning("restarting %s (it died: %s)", p.name, p.died)
            self.table[p.row]["state"] = 0
            p.process = self._start_stage(p.name)
            p.died = ""
            sentinels[p.process.sentinel] = p

    def _received(self) -> int:
        return int(self.table["packets_in"][[s.row for s in self.plan.stages_of("rx")]].sum())

    def _check_deaths(self) -> None:
        for p in self.procs:
            code = p.process.exitcode
            if code is None or p.died:
                continue
            if code == 0 and self.table[p.row]["state"] == STAGE_STATE_DONE:
                continue
            p.died = describe_exit(code)
            msg = f"stage {p.name} (pid {p.process.pid}) died: {p.died}"
            log.error("%s", msg)
            self.failures.append(msg)

    # ---- stopping ------------------------------------------------------------------
    def _shutdown(self) -> RunResult:
        accounting = None
        try:
            if self.procs:
                if self.sim is not None and self.sim.is_alive():
                    self.sim.pause_traffic()
                for role in ("rx", "worker", "tx"):          # data-flow order
                    self._drain_role(role)
            sim_counters = self.sim.stop() if self.sim is not None else None
            self.sim = None
            if self.plan is not None and self.arena is not None:
                accounting = Accounting.take(self)
                accounting.sim = sim_counters
                accounting.check_sim(self.cfg)
                accounting.print(self.out, self.json_lines)
        finally:
            self._release()
        ok = accounting is not None and accounting.ok and not self.failures
        for failure in self.failures:
            print(f"error: {failure}", file=sys.stderr)
        return RunResult(0 if ok else 1, accounting, self.stop_reason, list(self.failures))

    def _drain_role(self, role: str) -> None:
        procs = [p for p in self.procs if p.role == role]
        for p in procs:
            self.table[p.row]["command"] = STAGE_CMD_DRAIN
        deadline = time.monotonic() + DRAIN_TIMEOUT
        for p in procs:
            p.process.join(max(0.0, deadline - time.monotonic()))
            if p.process.exitcode is None:
                msg = f"stage {p.name} did not drain within {DRAIN_TIMEOUT:.0f} s: killed"
                log.error("%s", msg)
                self.failures.append(msg)
                p.process.kill()
                p.process.join(2)
                p.died = "killed after drain timeout"
        self._check_deaths()

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
        for dev in self.devices.values():
            try:
                dev.close()
            except Exception as exc:
                log.warning("closing %s: %s", dev.name, exc)
        self.devices = {}
        self.pools = []
        self.bufs = None
        self.table = None
        for arena in (self.arena, self.dev_arena):
            if arena is not None:
                arena.destroy()
        self.arena = self.dev_arena = None


def sim_port_configs(ports) -> list:
    """The simulator's view of the pipeline file's ``sim`` ports."""
    from ixypipe.sim.server import GeneratorConfig, SimPortConfig, SinkConfig

    configs = []
    for p in ports:
        g, s = p.generator, p.sink
        configs.append(SimPortConfig(
            name=p.name, pci_address=p.pci or None,
            generator=GeneratorConfig(packet_size=g.packet_size, rate_pps=g.rate_mpps * 1e6, flows=g.flows,
                                      count=g.count) if g else None,
            sink=SinkConfig(verify=s.verify, expect_touch=s.expect_touch, pcap=s.pcap or None) if s else None))
    return configs


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


__all__ = ["Supervisor", "PipelineError", "RunResult", "DROP_REASONS"]
