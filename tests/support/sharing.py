"""Tests running side by side (pytest-xdist workers, or another suite) share this machine; one marked
``alone`` has it to itself.

Almost every test can run beside any other: it waits for counts and
progress, never for a clock.  A few watch state that other tests change
machine-wide: the files a killed process left behind, which any
pipeline's start-up removes as stale, or the number of free hugepages.
Those are marked ``@pytest.mark.alone``.

Two flock()ed files make a readers-writer lock that lets the writer in.
Every test takes the gate, then the machine lock (shared; exclusive when
alone), and lets go of the gate at once unless it is alone.  An ``alone``
test keeps the gate while it waits, so no new test starts, the running
ones end, and then it runs by itself.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

LOCK_DIR = Path(tempfile.gettempdir())
GATE = LOCK_DIR / "ixypipe-tests-gate.lock"
MACHINE = LOCK_DIR / "ixypipe-tests-machine.lock"


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


@contextmanager
def share_machine(alone: bool):
    """Hold the machine for one test: beside others, or (``alone``) by itself."""
    gate, machine = _open(GATE), _open(MACHINE)
    try:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(machine, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        yield
    finally:
        os.close(machine)            # closing lets go of the locks
        os.close(gate)
