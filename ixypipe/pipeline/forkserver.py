"""The process a supervisor forks its stages and its software 82599 from: everything imported and loaded once.

A stage started with multiprocessing's "spawn" is a new interpreter that
imports numpy, numba and the driver and loads its compiled kernels: about
a second of CPU each, six times per pipeline on a two-CPU machine.  With
:func:`context` a supervisor uses multiprocessing's "forkserver" instead:
one clean process (a fresh interpreter that never maps the BAR, a ring or
the arena, so a worker forked from it inherits none of them) imports all
that once and warms the kernels, then forks each stage in milliseconds.
Stages stay separate processes, pinned by themselves as before; the
supervisor still sees each one's death at once (the server reports the
exit status through the process sentinel).

The server is started once per process and ends with it: it dies with its
owner (parent-death signal), and what it forks dies with it, so a kill -9
of ``ixypipe run`` takes every stage along.  It ignores the signals that
stop its owner (proc.ignore_stop_signals), and so does what it forks: a
SIGTERM to the whole process group (``timeout``, systemd's stop) is the
owner's to act on.  When it dies all the same (kill -9), the exit status
of every process it forked goes with it (multiprocessing reports 255);
:func:`death` says how the server itself ended, for the owner to name it.

It warms only when started by :func:`context` for an owner whose
``ixypipe`` package is the one it imported; otherwise it forgets the
package and every child imports it afresh, as a spawned one would.

Python 3.11's fork server ignores the owner's sys.path: it starts as
``python -c``, whose first path entry is its working directory.  So the
owner starts it from the directory that holds its own ``ixypipe`` package:
run from a directory with another ixypipe in it (a source checkout beside
an installed copy), the server would otherwise import that one.  Each child
goes back to the owner's directory and sys.path as it starts
(multiprocessing applies them).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import sys
from pathlib import Path

import ixypipe
from ixypipe import jitcache
from ixypipe.proc import describe_exit, die_with_parent, ignore_stop_signals, set_process_name

log = logging.getLogger(__name__)
ENV_OWNER = "IXYPIPE_FORK_SERVER_OWNER"     # "<owner pid>:<its ixypipe package directory>", for the server only
ENV_SERVER = "IXYPIPE_FORK_SERVER_PID"      # set in the server, so every process it forks knows its parent
PROCESS_NAME = "ixypipe-fork"


def context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context to start stages with; the server is started (once) now, so it warms up
    while the caller builds the pipeline."""
    jitcache.decide_before_children()           # numba missing: warned once here, not in every process
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    package = Path(ixypipe.__file__).parent
    os.environ[ENV_OWNER] = f"{os.getpid()}:{package}"
    here = os.getcwd()
    try:
        with contextlib.suppress(OSError):      # (a package in a zip file: the server checks what it found)
            os.chdir(package.parent)            # the server's first sys.path entry: where it finds this ixypipe
        multiprocessing.forkserver.ensure_running()
    finally:
        os.chdir(here)
        del os.environ[ENV_OWNER]
    return ctx


def server_pid() -> int | None:
    """The pid of this process's fork server, None when none was started (multiprocessing keeps it)."""
    return getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)


def death() -> str:
    """How this process's fork server ended ("killed by SIGKILL", "exit code 1"), "" while it runs.

    Looked at without reaping it (WNOWAIT), so multiprocessing still finds it dead and starts another
    if asked to."""
    pid = server_pid()
    if pid is None:
        return ""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:           # reaped already (multiprocessing replaced it): not ours to judge
        return ""
    if info is None:
        return ""
    killed = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
    return describe_exit(-info.si_status if killed else info.si_status)


def expected_parent(owner: int) -> int:
    """The pid a started process's parent has: the server it was forked from, or ``owner`` that started it."""
    return int(os.environ.get(ENV_SERVER) or owner)


def _warm() -> None:
    """Import what stages and the model run, and load the compiled kernels (numba's first use of any kernel
    also loads its own registries: most of the cost)."""
    import ixypipe.nic.ixgbe  # noqa: F401  (the driver and its compiled hot path)
    import ixypipe.nic.ports  # noqa: F401
    import ixypipe.pipeline.stages  # noqa: F401
    import ixypipe.sim.server  # noqa: F401
    import ixypipe.workers.loader  # noqa: F401
    from ixypipe.sim.model import load_kernels
    from ixypipe.workers.headers import from_bytes

    load_kernels("auto")
    from_bytes([bytes(60)]).parse_all()


def _serve() -> None:
    """In the server (imported as its preload): die with the owner, name itself, warm up."""
    owner, _, package = os.environ.pop(ENV_OWNER).partition(":")
    os.environ[ENV_SERVER] = str(os.getpid())
    ignore_stop_signals()                 # the owner's to handle; what it forks inherits it (SIGINT: multiprocessing
    die_with_parent(int(owner))           # ignores it too once it serves, and gives its children this setting back)
    set_process_name(PROCESS_NAME)
    if package != str(Path(ixypipe.__file__).parent):
        # another ixypipe than the owner's: children must import theirs (their sys.path is the owner's).  The
        # failed preload import (multiprocessing ignores ImportError there) leaves no ixypipe module behind.
        for name in [n for n in sys.modules if n == "ixypipe" or n.startswith("ixypipe.")]:
            del sys.modules[name]
        raise ImportError(f"the fork server found {ixypipe.__file__}, not the owner's package in {package}")
    try:
        _warm()
    except Exception as exc:             # a stage meets the same error and reports it
        log.debug("fork server: warming up failed: %s", exc)
    # the server leaves without tearing the interpreter down (collecting numba's objects costs ~0.4 s of CPU);
    # the processes it forks never run exit handlers (they leave through os._exit)
    atexit.register(os._exit, 0)


if os.environ.get(ENV_OWNER, "").partition(":")[0] == str(os.getppid()):
    _serve()
