"""The native wake-up floor (bench/wake_floor.c): built with the system C compiler, run, its samples read back.

``wake_floor(processes, rounds, gap)`` compiles wake_floor.c with ``cc -O2``
into a temporary directory, runs it, and returns the round trips and the
single hops in ms (numpy arrays).  bench/latency_bench.py runs it beside the
pings, with as many rounds as pings and the same gap between them, so its
row reads like theirs: with 7 processes a round trip has the wake-ups of a
ping through pipelines/bridge-veth.toml and nothing else.

    python3 bench/wake_floor.py [--processes 7] [--rounds 200] [--gap-ms 20]
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import click
import numpy as np

SOURCE = Path(__file__).resolve().parent / "wake_floor.c"
COMPILERS = ("cc", "gcc", "clang")


class NoCompiler(RuntimeError):
    """No C compiler on PATH."""


def compiler() -> str:
    """The system C compiler's path; NoCompiler names what to install when there is none."""
    for name in COMPILERS:
        path = shutil.which(name)
        if path:
            return path
    raise NoCompiler(f"no C compiler ({', '.join(COMPILERS)}) on PATH: apt-get install gcc")


def build(directory: Path) -> Path:
    """wake_floor.c compiled with -O2 into ``directory``; the compiler's messages when it fails."""
    exe = directory / "wake_floor"
    res = subprocess.run([compiler(), "-O2", "-Wall", "-o", str(exe), str(SOURCE)], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"compiling {SOURCE.name} failed: {res.stderr.strip()}")
    return exe


def wake_floor(processes: int = 7, rounds: int = 200, gap: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """(round trips, hops) in ms of ``rounds`` tokens sent round a ring of ``processes``, ``gap`` s apart."""
    with tempfile.TemporaryDirectory(prefix="wake-floor-") as tmp:
        exe = build(Path(tmp))
        res = subprocess.run([str(exe), str(processes), str(rounds), str(round(gap * 1e6))],
                             capture_output=True, text=True, timeout=rounds * (gap + 1.0) + 30)
    if res.returncode:
        raise RuntimeError(f"wake_floor {processes} {rounds} failed ({res.returncode}): {res.stderr.strip()}")
    ns = np.array([[int(v) for v in line.split()] for line in res.stdout.splitlines()], dtype=np.float64)
    if ns.shape != (rounds, processes + 1):
        raise RuntimeError(f"wake_floor printed {ns.shape} values, expected {rounds} rows of {processes + 1}")
    return ns[:, 0] / 1e6, ns[:, 1:].ravel() / 1e6


@click.command()
@click.option("--processes", default=7, show_default=True, help="processes in the ring (hops per round trip)")
@click.option("--rounds", default=200, show_default=True, help="round trips measured")
@click.option("--gap-ms", default=20.0, show_default=True, help="pause before each round (every process asleep)")
def main(processes: int, rounds: int, gap_ms: float) -> None:
    # the pings' own summary, so the rows compare
    from latency_bench import percentiles

    trips, hops = wake_floor(processes, rounds, gap_ms / 1e3)
    for what, ms in ((f"round trip ({processes} hops)", trips), ("one hop", hops)):
        m = percentiles(ms, len(ms))
        print(f"{what:<22} p50 {m['p50_ms'] * 1e3:8.1f} us  p90 {m['p90_ms'] * 1e3:8.1f} us  "
              f"avg {m['avg_ms'] * 1e3:8.1f} us  max {m['max_ms'] * 1e3:8.1f} us")


if __name__ == "__main__":
    main()
