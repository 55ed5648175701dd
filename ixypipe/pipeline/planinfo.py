"""The plan of a running pipeline as JSON in its packet arena, for observers such as ``ixypipe top``.

Owns the region ``plan.json`` (layout in ixypipe.layout): the supervisor
writes the pipeline's name, port names, stages (name, role, stage-table row,
port, queue, CPU), forward ring names and its own pid once the stage table
exists, and again after placement chose the CPUs.  Readers attach the arena
and call :func:`read_plan_info`; a reader that catches a write half-way (the
byte count is zeroed first and set last) retries, and gives up with a clear
error when the region is missing or never becomes valid.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from ixypipe.layout import (
    PLAN_INFO_LEN_DTYPE,
    PLAN_INFO_REGION,
    PLAN_INFO_SIZE,
    PLAN_INFO_TEXT_OFF,
    PORT_DROPS_DTYPE,
    PORT_DROPS_MAX_PORTS,
    PORT_DROPS_REGION,
)
from ixypipe.memory.arena import Arena, RegionSize

READ_ATTEMPTS = 20
READ_RETRY_S = 0.01


class PlanInfoError(Exception):
    """The plan region is missing, too small for the plan, or unreadable."""


def plan_info(plan, pid: int | None = None) -> dict:
    """The JSON-able summary of a PipelinePlan that observers need."""
    forward = set(plan.forward_rings())
    return {
        "name": plan.name,
        "pid": os.getpid() if pid is None else pid,
        "ports": list(plan.port_names),
        "drivers": [p.driver for p in plan.ports],
        "stages": [{"name": s.name, "role": s.role, "row": s.row, "port": s.port, "queue": s.queue,
                    "cpu": -1 if s.cpu is None else int(s.cpu),
                    "in": [r for r in s.in_rings if r in forward],             # forward rings it consumes
                    "out": [*s.out_rings, *s.out_ring_of.values()]} for s in plan.stages],
        "rings": list(plan.forward_rings()),
    }


def arena_regions() -> list[RegionSize]:
    """The regions :func:`write_plan_info` and :func:`publish_port_drops` carve on first use."""
    return [RegionSize(PLAN_INFO_SIZE), RegionSize(PORT_DROPS_DTYPE.itemsize * PORT_DROPS_MAX_PORTS)]


def _port_drops(arena: Arena, create: bool) -> np.ndarray | None:
    region = arena.find(PORT_DROPS_REGION)
    if region is None:
        if not create:
            return None
        region = arena.alloc(PORT_DROPS_REGION, PORT_DROPS_DTYPE.itemsize * PORT_DROPS_MAX_PORTS)
    return arena.view(region)[:PORT_DROPS_DTYPE.itemsize * PORT_DROPS_MAX_PORTS].view(PORT_DROPS_DTYPE)


def publish_port_drops(arena: Arena, port_names: list[str], drops: dict[str, dict[str, int]]) -> None:
    """Write each port's cumulative drops (report.port_drops' figures) for observers; ports past the limit are left out."""
    table = _port_drops(arena, create=True)
    for i, name in enumerate(port_names[:PORT_DROPS_MAX_PORTS]):
        for field_name in PORT_DROPS_DTYPE.names:
            table[i][field_name] = int(drops.get(name, {}).get(field_name, 0))


def read_port_drops(arena: Arena, port_names: list[str]) -> dict[str, dict[str, int]]:
    """What :func:`publish_port_drops` last wrote (zeros before the first stats interval)."""
    table = _port_drops(arena, create=False)
    return {name: {f: int(table[i][f]) if table is not None and i < len(table) else 0
                   for f in PORT_DROPS_DTYPE.names} for i, name in enumerate(port_names)}


def write_plan_info(arena: Arena, plan, pid: int | None = None) -> None:
    """Write (or rewrite) the plan region; creates it on first use."""
    text = json.dumps(plan_info(plan, pid), separators=(",", ":")).encode()
    if PLAN_INFO_TEXT_OFF + len(text) > PLAN_INFO_SIZE:
        raise PlanInfoError(f"the plan of pipeline {plan.name!r} takes {len(text)} bytes of JSON, more than "
                            f"the {PLAN_INFO_SIZE - PLAN_INFO_TEXT_OFF} the {PLAN_INFO_REGION} region holds")
    region = arena.find(PLAN_INFO_REGION) or arena.alloc(PLAN_INFO_REGION, PLAN_INFO_SIZE)
    view = arena.view(region)
    length = view[:PLAN_INFO_LEN_DTYPE.itemsize].view(PLAN_INFO_LEN_DTYPE)
    length[0] = 0
    view[PLAN_INFO_TEXT_OFF:PLAN_INFO_TEXT_OFF + len(text)] = memoryview(text)
    length[0] = len(text)


def read_plan_info(arena: Arena) -> dict:
    """The plan a supervisor wrote into ``arena``."""
    region = arena.find(PLAN_INFO_REGION)
    if region is None:
        raise PlanInfoError(f"arena {arena.name} has no {PLAN_INFO_REGION} region (not a pipeline's packet "
                            "arena, or its supervisor has not finished building it)")
    view = arena.view(region)
    if len(view) < region.size:           # another supervisor's arena, still being sized or of another layout
        raise PlanInfoError(f"the {PLAN_INFO_REGION} region of arena {arena.name} is cut short ({len(view)} "
                            f"bytes): its {region.size} bytes lie past the {len(arena.buf):,} mapped")
    problem = "it is empty"
    for _ in range(READ_ATTEMPTS):
        n = int(view[:PLAN_INFO_LEN_DTYPE.itemsize].view(PLAN_INFO_LEN_DTYPE)[0])
        if 0 < n <= region.size - PLAN_INFO_TEXT_OFF:
            try:
                return json.loads(bytes(view[PLAN_INFO_TEXT_OFF:PLAN_INFO_TEXT_OFF + n]))
            except ValueError as exc:
                problem = f"its JSON does not parse ({exc})"
        elif n:
            problem = f"it claims {n} bytes of JSON in a {region.size}-byte region"
        time.sleep(READ_RETRY_S)
    raise PlanInfoError(f"the {PLAN_INFO_REGION} region of arena {arena.name} is unreadable: {problem}")
