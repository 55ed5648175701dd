"""What to change when a verifying sink's findings come from the worker's design, not from a fault.

A sink in mode "verify" expects the generator's frames back unchanged past the
MAC addresses (and, with ``expect_touch``, byte 1 incremented once, as the
``touch`` worker does).  A worker that rewrites headers (a TTL or address
rewrite), makes its own frames, or does not touch byte 1 fails those checks
by design; the summary then names the key to change, once.  The built-ins
that leave frames as they are (``forward``, ``touch``, ``count``) get no such
hint: a changed frame behind them is a fault.  Also: why a sink's "lost" can
stand beside "accounting OK".
"""

from __future__ import annotations

UNCHANGED = ("forward", "touch", "count")       # built-in workers that change no byte but touch's byte 1


def sink_hints(cfg, sim: dict[str, dict]) -> list[str]:
    """Hints for the verifying sinks of ``cfg``'s sim ports, from their counters ``sim`` (port -> fields)."""
    worker = cfg.workers.function
    rewritten, foreign, untouched = [], [], []
    for p in cfg.ports:
        c = sim.get(p.name)
        if p.driver != "sim" or p.sink is None or p.sink.mode != "verify" or c is None:
            continue
        if c.get("sink_rewritten", 0):
            rewritten.append(f"{p.name} {c['sink_rewritten']:,}")
        if c.get("sink_corrupt", 0) > c.get("sink_rewritten", 0):
            foreign.append(f"{p.name} {c['sink_corrupt'] - c.get('sink_rewritten', 0):,}")
        if p.sink.expect_touch and c.get("sink_untouched", 0):
            untouched.append(p.name)
    hints = []
    if (rewritten or foreign) and worker not in UNCHANGED:
        seen = "; ".join(filter(None, (
            rewritten and "frames with the generator's record but other bytes changed: " + ", ".join(rewritten),
            foreign and "frames that are not the generator's: " + ", ".join(foreign))))
        ports = sorted({s.split()[0] for s in rewritten + foreign})
        hints.append(f"the worker ({worker}) rewrites packets ({seen}): use mode = \"count\" in [ports.sink] of "
                     f"{', '.join(ports)} (a verifying sink expects the generator's frames unchanged; see "
                     "docs/pipeline-file.md, [ports.sink])")
    if untouched and worker != "touch":
        hints.append(f"expect_touch = true checks for the touch worker's data[1]++, which {worker} does not do: set "
                     f"expect_touch = false in [ports.sink] of {', '.join(untouched)} (MAC rewrites pass a "
                     "verifying sink), or mode = \"count\" if the worker rewrites more")
    return hints


def lost_note(sim: dict[str, dict], modes: dict[str, str]) -> str:
    """Said after "accounting OK" when a verifying sink reports lost frames: they are counted, not missing."""
    lost = sum(c.get("sink_lost", 0) for name, c in sim.items() if modes.get(name) == "verify")
    if not lost:
        return ""
    return f" (the sinks' {lost:,} lost are frames missed at RX or dropped on the way, each counted above)"
