"""What a process does before it runs any of a user's worker code: drop its privileges and guard its forks.

Both the worker stage and the import check's child (loader.probe) call
:func:`confine` before they import the user's module, so module-level code,
``setup(ctx)`` and everything after runs as ``worker_user`` (privilege.py),
and a child that code forks (os.fork, multiprocessing's "fork") leaves at
once with FORKED_CHILD_EXIT, before it returns to that code.  The worker's
file is read first (loader.preread), while the process may still read it:
a file in a directory its user cannot enter (a 0700 home or temporary
directory) is still loaded, executed after the drop.

A fork that bypasses Python (a C library calling fork(2), ctypes) does not
run the guard; such a child runs as the unprivileged user, and the
supervisor names and kills whatever is left at the end of a run
(pipeline/leftovers.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ixypipe import privilege
from ixypipe.workers.loader import preread

FORKED_CHILD_EXIT = 70        # exit code of a worker's forked child, stopped before it returns to user code


def guard_forks(note: Callable[[], None] | None = None) -> None:
    """From now on a child forked by this process calls ``note`` (if given) and leaves with FORKED_CHILD_EXIT."""

    def child() -> None:
        try:
            if note is not None:
                note()
        finally:
            os._exit(FORKED_CHILD_EXIT)

    os.register_at_fork(after_in_child=child)


def confine(spec: str, base_dir, worker_user: str, note_fork: Callable[[], None] | None = None) -> None:
    """Read the worker's file, become ``worker_user`` (privilege.drop_worker), guard forks; in that order."""
    preread(spec, base_dir)
    privilege.drop_worker(worker_user)
    guard_forks(note_fork)
