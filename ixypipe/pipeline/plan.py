"""The wiring of a pipeline: which stages exist, which rings join them, which pool each buffer goes home to.

Built once by the supervisor from a validated PipelineConfig and handed
(pickled) to every stage process, so all of them agree on ring names, pool
ids and stage rows without talking to each other.

Rings, all SPSC:
  rx(p,q) -> worker w                 forward path, one per (RX queue, worker)
  worker w -> tx(p,t)                 forward path, worker w feeds TX queue w % tx_queues(p)
  worker w / tx(p,t) -> pool k        return path: buffers go home to the RX stage owning pool k
Return rings hold a whole pool, so sending a buffer home never fails.
The plan lists every ring with its kind and capacity (:class:`RingPlan`).
A TX queue is a stage only when a worker feeds it: as in DPDK, where each lcore owns one TX queue
per port, a worker sends on one queue per port (spreading a worker's flows over several queues would
let the NIC reorder a flow), so with fewer workers than tx_queues the rest stay configured but unused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ixypipe.nic.device import PortSpec


@dataclass
class StagePlan:
    name: str                 # also the process name shown by ps: "ixy-rx-p0-q0" (from the port's name)
    role: str                 # "rx" | "worker" | "tx"
    row: int                  # row in the arena's stage table
    port: int = -1            # rx and tx: port index
    queue: int = -1           # rx and tx: queue on that port
    worker: int = -1          # worker: its number
    pool_id: int = -1         # rx: the pool it owns
    in_rings: list[str] = field(default_factory=list)
    in_ports: list[int] = field(default_factory=list)       # worker: port each input ring comes from
    out_rings: list[str] = field(default_factory=list)      # rx: one per worker; worker: see out_ring_of
    out_ring_of: dict[int, str] = field(default_factory=dict)   # worker: out port -> ring
    home_rings: dict[int, str] = field(default_factory=dict)    # pool id -> return ring (worker, tx)
    cpu: int | None = None


@dataclass
class PoolPlan:
    pool_id: int
    name: str
    port: int
    queue: int
    first: int
    count: int


RING_FORWARD = "forward"      # carries packets on towards the wire
RING_RETURN = "return"        # carries buffers home to the RX stage owning their pool


@dataclass
class RingPlan:
    name: str
    kind: str                 # RING_FORWARD | RING_RETURN
    capacity: int


def return_ring_capacity(pool_size: int) -> int:
    """A return ring holds its whole pool (rounded up to a power of two), so going home never fails."""
    return 1 << (pool_size - 1).bit_length()


@dataclass
class PipelinePlan:
    name: str
    packet_arena: str          # path: buffers, pools, rings, stage table (workers map only this)
    device_arena: str          # path: descriptor rings and driver queue state (never mapped by workers)
    ports: list[PortSpec]
    forward_to: list[int]      # per port: default out port of what it receives
    batch_size: int
    ring_size: int
    pools: list[PoolPlan]
    stages: list[StagePlan]
    worker_function: str
    worker_per_packet: bool
    worker_base_dir: str
    distribute: str            # "flow" | "round-robin"
    rings: list[RingPlan] = field(default_factory=list)        # every ring, in the order stages name them
    sysfs_roots: dict[str, str] = field(default_factory=dict)   # port name -> sysfs root (sim ports)
    spin_only: bool = False      # every stage on an isolated CPU of its own: never sleep
    shared_cpus: bool = False    # stages share CPUs: nap at once when idle
    worker_options: dict = field(default_factory=dict)   # [workers.options], the workers' ctx.options
    idle: str = "nap"            # how idle stages wait: "spin", "wake" or "nap" (placement resolves "auto")
    worker_user: str = ""        # whom workers become after start-up ("": nobody when root; see privilege.py)
    keyed_tables: int = 0        # keyed tables (batch.count_by) per worker, in the arena's workers.keyed region
    keyed_slots: int = 0         # slots per keyed table

    def consumer_row(self, ring: str) -> int:
        """The stage-table row of the stage that consumes ``ring``."""
        for s in self.stages:
            if ring in s.in_rings:
                return s.row
        raise KeyError(f"no stage consumes ring {ring!r}")

    def producer(self, ring: str) -> StagePlan:
        """The stage that produces into ``ring`` (a forward or a return ring)."""
        for s in self.stages:
            if ring in s.out_rings or ring in s.out_ring_of.values() or ring in s.home_rings.values():
                return s
        raise KeyError(f"no stage produces into ring {ring!r}")

    def sleeper_rows(self) -> list[int]:
        """Rows of the stages that sleep on a semaphore when idle in "wake" mode: the ring consumers (workers, TX)."""
        return [s.row for s in self.stages if s.role in ("worker", "tx")]

    @property
    def port_names(self) -> list[str]:
        return [p.name for p in self.ports]

    @property
    def buffer_count(self) -> int:
        """Packet buffers in the arena: every pool's."""
        return sum(p.count for p in self.pools)

    def stages_of(self, role: str) -> list[StagePlan]:
        return [s for s in self.stages if s.role == role]

    def ring_names(self) -> list[str]:
        return [r.name for r in self.rings]

    def forward_rings(self) -> list[str]:
        """Rings that carry packets forward (not buffers going home)."""
        return [r.name for r in self.rings if r.kind == RING_FORWARD]


def rx_name(port: str, q: int) -> str:
    """The RX stage of queue ``q`` of the port named ``port``: "rx-a-q0" (also its ring and process names)."""
    return f"rx-{port}-q{q}"


def tx_name(port: str, t: int) -> str:
    return f"tx-{port}-q{t}"


def build_plan(name: str, packet_arena: str, device_arena: str, ports: list[PortSpec], forward_to: list[int],
               workers: int, batch_size: int, ring_size: int, buffers_per_queue: int, worker_function: str,
               worker_per_packet: bool, worker_base_dir: str, distribute: str) -> PipelinePlan:
    pools: list[PoolPlan] = []
    for p, spec in enumerate(ports):
        for q in range(spec.rx_queues):
            k = len(pools)
            pools.append(PoolPlan(k, f"pool.{p}.{q}", p, q, k * buffers_per_queue, buffers_per_queue))
    stages: list[StagePlan] = []
    for pool in pools:
        stages.append(StagePlan(rx_name(ports[pool.port].name, pool.queue), "rx", len(stages), port=pool.port,
                                queue=pool.queue, pool_id=pool.pool_id))
    for w in range(workers):
        stages.append(StagePlan(f"worker-{w}", "worker", len(stages), worker=w))
    for p, spec in enumerate(ports):
        for t in range(min(spec.tx_queues, workers)):      # the queues some worker feeds (w % tx_queues)
            stages.append(StagePlan(tx_name(spec.name, t), "tx", len(stages), port=p, queue=t))
    rx_stages = [s for s in stages if s.role == "rx"]
    tx_stages = {(s.port, s.queue): s for s in stages if s.role == "tx"}
    for w, ws in enumerate(s for s in stages if s.role == "worker"):
        for rs in rx_stages:
            ring = f"{rs.name}>w{w}"
            rs.out_rings.append(ring)
            ws.in_rings.append(ring)
            ws.in_ports.append(rs.port)
        for p, spec in enumerate(ports):
            ts = tx_stages[(p, w % spec.tx_queues)]
            ring = f"w{w}>{ts.name}"
            ws.out_ring_of[p] = ring
            ts.in_rings.append(ring)
    for s in stages:
        if s.role in ("worker", "tx"):
            src = f"w{s.worker}" if s.role == "worker" else s.name
            s.home_rings = {pool.pool_id: f"{src}>pool{pool.pool_id}" for pool in pools}
    for rs in rx_stages:
        rs.in_rings = [s.home_rings[rs.pool_id] for s in stages if s.role in ("worker", "tx")]
    return PipelinePlan(name, packet_arena, device_arena, ports, forward_to, batch_size, ring_size, pools,
                        stages, worker_function, worker_per_packet, worker_base_dir, distribute,
                        rings=_rings(stages, ring_size, buffers_per_queue))


def _rings(stages: list[StagePlan], ring_size: int, buffers_per_queue: int) -> list[RingPlan]:
    rings: dict[str, RingPlan] = {}
    for s in stages:
        for r in [*s.out_rings, *s.out_ring_of.values()]:
            rings.setdefault(r, RingPlan(r, RING_FORWARD, ring_size))
        for r in s.home_rings.values():
            rings.setdefault(r, RingPlan(r, RING_RETURN, return_ring_capacity(buffers_per_queue)))
    return list(rings.values())


def unfed_tx_queues(ports: list[PortSpec], workers: int) -> list[str]:
    """One line per port with more TX queues than workers: the queues no worker feeds (they get no stage)."""
    return [f"port {spec.name}: TX queue{'s' if spec.tx_queues - workers > 1 else ''} "
            f"{', '.join(str(t) for t in range(workers, spec.tx_queues))} not used (tx_queues = "
            f"{spec.tx_queues}, workers = {workers}: each worker sends on one TX queue per port)"
            for spec in ports if spec.tx_queues > workers]


def plan_from_config(cfg, packet_arena: str = "", device_arena: str = "") -> PipelinePlan:
    """The plan of a validated PipelineConfig (arena paths empty until the arenas exist)."""
    names = [p.name for p in cfg.ports]
    forward_to = [names.index(p.forward_to) if p.forward_to else (i + 1) % len(names)
                  for i, p in enumerate(cfg.ports)]
    plan = build_plan(cfg.name, packet_arena, device_arena, [p.to_spec() for p in cfg.ports], forward_to,
                      cfg.workers.processes, cfg.batch_size, cfg.ring_size, cfg.buffers_per_queue,
                      cfg.workers.function, cfg.workers.per_packet, str(Path(cfg.path).parent),
                      cfg.workers.distribute)
    plan.worker_options = dict(cfg.workers.options)
    plan.worker_user = cfg.worker_user
    plan.keyed_tables, plan.keyed_slots = cfg.workers.keyed_tables, cfg.workers.keyed_slots
    return plan
