"""A run's first compilation of numba kernels, said out loud: one line before it, progress, one line when done.

numba compiles a kernel the first time a process uses it and caches it on disk
(jitcache.py); a run whose kernels are all cached starts in a second or two, a
first run (a fresh install, an edited kernel module) spends 20-60 s compiling
in its stages before they report running.  :class:`FirstRun` checks the cache
from its files before anything starts (no compiling, no import of the kernel
modules), and when something is missing says so, reports how many stages are
ready while they compile, and how long it took.  A warm start prints nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import time

from ixypipe import jitcache

log = logging.getLogger(__name__)

# the compiled modules every run loads (stages' batch checks, the workers' header parser), and those a driver adds
ALWAYS = ("ixypipe.memory.batchcheck", "ixypipe.workers.headers_jit", "ixypipe.workers.keyed_jit",
          "ixypipe.rings.spsc_jit", "ixypipe.rings.wakeup_jit", "ixypipe.pipeline.breathe_jit")
BY_DRIVER = {"sim": ("ixypipe.nic.ixgbe_jit", "ixypipe.sim.kernels"), "ixgbe": ("ixypipe.nic.ixgbe_jit",),
             "virtio": ("ixypipe.nic.virtio_jit",),
             "sim-virtio": ("ixypipe.nic.virtio_jit", "ixypipe.sim.virtio_kernels"),   # a sim port with device virtio
             "af_packet": ("ixypipe.nic.af_packet_jit",)}
EXPECTED = "20-60 s"       # a first run's compiling on the 2-vCPU development machine: 24 s quiet, 30-70 s busy
PROGRESS_EVERY_S = 5.0


def uncached(cfg) -> list[str]:
    """The compiled modules ``cfg``'s run loads whose kernels are not in numba's cache ([] without numba)."""
    if jitcache.load_numba() is None:
        return []
    names = dict.fromkeys(ALWAYS)
    for p in cfg.ports:
        kind = "sim-virtio" if p.driver == "sim" and p.device == "virtio" else p.driver
        names.update(dict.fromkeys(BY_DRIVER.get(kind, ())))
    return [n for n in names if not jitcache.is_cached(importlib.util.find_spec(n).origin)]


class FirstRun:
    """Tells the user a run compiles kernels first; silent when they are cached."""

    def __init__(self, cfg):
        self.missing = uncached(cfg)
        self.started = time.monotonic()
        self._said = self.started
        if self.missing:
            self._say(f"compiling kernels (first run only, {EXPECTED}): "
                      f"{', '.join(n.rpartition('.')[2] for n in self.missing)} ...")

    def progress(self, ready: int, total: int) -> None:
        """Called while stages start: a line every few seconds, how many of them are ready."""
        now = time.monotonic()
        if self.missing and now - self._said >= PROGRESS_EVERY_S:
            self._said = now
            self._say(f"compiling kernels: {ready} of {total} stages ready ({now - self.started:.0f} s)")

    def done(self) -> None:
        if self.missing:
            self._say(f"kernels compiled and cached in {time.monotonic() - self.started:.1f} s; "
                      "later runs start without compiling")
            self.missing = []

    def _say(self, text: str) -> None:
        log.info("%s", text)
