"""Where numba caches ixypipe's compiled kernels, decided once per process before the first one is made.

numba caches a ``cache=True`` function next to its source (``__pycache__``)
or under ``~/.cache/numba``; when neither is writable (an ordinary user, the
package installed by root, a HOME that does not exist, as for ``nobody``)
decorating the function fails with "no locator available".  The compiled
modules (nic/ixgbe_jit.py, sim/kernels.py, workers/headers_jit.py) decorate
through :func:`njit`, which picks, in order:

1. ``NUMBA_CACHE_DIR`` when the user set it and it is usable;
2. the package's own ``__pycache__`` when it is writable (numba's default);
3. a per-user directory: ``$XDG_CACHE_HOME/ixypipe/numba`` or
   ``~/.cache/ixypipe/numba``, else ``/tmp/ixypipe-numba-<uid>`` (0700,
   owned by the user, refused if anyone else could write it);
4. no cache at all (each process compiles), with one warning.

The choice goes into the environment, so the stage processes a supervisor
spawns inherit it without deciding (or warning) again.  A process that
drops privileges after loading its kernels calls :func:`stop_saving`: a
kernel compiled afterwards stays in memory instead of failing to write into
a directory that belonged to the old user.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import stat
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

ENV_DIR = "NUMBA_CACHE_DIR"          # numba's own setting
ENV_OFF = "IXYPIPE_NUMBA_CACHE"      # "off": an ancestor decided there is no usable cache
ENV_NUMBA = "IXYPIPE_NUMBA"          # "off": the numpy paths (set by the user, or by an ancestor that warned)
SUBDIR = Path("ixypipe") / "numba"
TMP_PREFIX = "ixypipe-numba-"
PRIVATE_DIR_MODE = 0o700
PUBLIC_DIR_MODE = 0o777              # less the umask, as Python makes __pycache__
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH

_dispatchers: list = []
_numba: list = []                     # [module or None], once decided


def _writable(directory: Path, mode: int = PRIVATE_DIR_MODE) -> bool:
    """``directory`` exists or can be made (with ``mode``), and a file can be created in it (as numba checks)."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=mode)
        tempfile.TemporaryFile(dir=directory).close()
        return True
    except OSError:
        return False


def _private_tmp_dir() -> Path | None:
    """/tmp/ixypipe-numba-<uid>: made 0700, or reused only when it is ours and nobody else can write it."""
    d = Path(tempfile.gettempdir()) / f"{TMP_PREFIX}{os.geteuid()}"
    try:
        d.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = d.lstat()                  # lstat: a symlink planted by another user is refused
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & _OTHERS_WRITE:
        log.debug("%s is not a private directory of uid %d: not used", d, os.geteuid())
        return None
    return d if _writable(d) else None


def user_cache_dirs() -> list[Path]:
    """The per-user candidates, in order of preference (those whose base is known)."""
    out = []
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        out.append(Path(xdg) / SUBDIR)
    home = os.environ.get("HOME", "")
    if os.path.isabs(home) and home != "/":
        out.append(Path(home) / ".cache" / SUBDIR)
    return out


@functools.cache
def cache_dir(source_dir: str) -> Path | None:
    """Where kernels of modules in ``source_dir`` are cached (None: not cached); sets NUMBA_CACHE_DIR if needed."""
    if os.environ.get(ENV_OFF) == "off":
        return None
    given = os.environ.get(ENV_DIR, "")
    if given and _writable(Path(given)):
        return Path(given)
    in_tree = Path(source_dir) / "__pycache__"
    if _writable(in_tree, PUBLIC_DIR_MODE):
        return in_tree
    for d in user_cache_dirs():
        if _writable(d):
            return _use(d)
    d = _private_tmp_dir()
    if d is not None:
        return _use(d)
    os.environ[ENV_OFF] = "off"
    log.warning("compiled kernels are not cached: neither %s, %s nor %s/%s<uid> is writable by uid %d, so each "
                "process compiles them (set NUMBA_CACHE_DIR to a writable directory to cache them)",
                given or in_tree, " nor ".join(map(str, user_cache_dirs())) or "a home directory",
                tempfile.gettempdir(), TMP_PREFIX, os.geteuid())
    return None


def _use(d: Path) -> Path:
    os.environ[ENV_DIR] = str(d)
    numba = sys.modules.get("numba")
    if numba is not None:            # numba read its environment when imported; tell it too
        numba.config.CACHE_DIR = str(d)
    log.debug("numba caches compiled kernels in %s", d)
    return d


def load_numba():
    """The numba module, or None (the numpy paths serve): decided once per process, warned about once per run.

    numba that is missing or broken (an llvmlite or numpy it does not accept) costs most of the rate, so the
    cause is logged once; the decision goes into the environment, so the processes a run starts take the
    numpy paths without importing or warning again."""
    if not _numba:
        _numba.append(_import_numba())
    return _numba[0]


def decide_before_children() -> None:
    """Before a process starts others (~0.2 s when numba loads): a numba that cannot be loaded is found so
    here, and the one warning comes from this process; its children inherit the decision."""
    load_numba()


def _import_numba():
    if os.environ.get(ENV_NUMBA) == "off":
        return None
    try:
        import numba
        return numba
    except Exception as exc:             # ImportError, or a dependency that fails while numba loads
        cause = f"{type(exc).__name__}: {exc}"
    os.environ[ENV_NUMBA] = "off"
    log.warning("numba cannot be loaded (%s): the numpy paths serve, at a fraction of the compiled rate "
                "(pip install numba; %s=off chooses the numpy paths without this warning)", cause, ENV_NUMBA)
    return None


def is_cached(source_file: str) -> bool:
    """Whether numba has compiled kernels of the module at ``source_file`` cached (an index at least as new as
    the source), judged from the files alone: a cheap check before a run, so a first run can say it compiles."""
    src = Path(source_file).resolve()
    d = cache_dir(str(src.parent))
    if d is None:
        return False
    if d != src.parent / "__pycache__":          # numba's user-wide and NUMBA_CACHE_DIR locations: a subdirectory
        from numba.core.caching import _CacheLocator
        d = d / _CacheLocator.get_suitable_cache_subpath(str(src))
    try:
        since = src.stat().st_mtime
        tag = f"py{sys.version_info.major}{sys.version_info.minor}"       # numba's index names, per Python
        return any(f.stat().st_mtime >= since for f in d.glob(f"{src.stem}.*.{tag}.nbi"))
    except OSError:
        return False


def njit(source_file: str, **options):
    """``numba.njit(cache=..., **options)`` for a function of the module at ``source_file``."""
    import numba

    cached = cache_dir(str(Path(source_file).resolve().parent)) is not None
    jit = numba.njit(cache=cached, **options)

    def decorate(fn):
        d = jit(fn)
        if cached:
            _dispatchers.append(d)
            _tolerate_save_races(d)
        return d

    return decorate


def _no_save(sig, data) -> None:
    pass


def _tolerate_save_races(dispatcher) -> None:
    """A kernel saved to the cache by two processes at once (two RX stages of a first run) can make numba's
    index code fail in one of them (a KeyError or EOFError reading the index the other is writing): the kernel
    is compiled and in memory all the same, so that process goes on without saving it rather than dying."""
    cache = getattr(dispatcher, "_cache", None)
    if cache is None:
        return
    save = cache.save_overload

    def save_overload(sig, data) -> None:
        try:
            save(sig, data)
        except (KeyError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:   # another writes the index
            log.debug("%s: not saved to numba's cache (%s: %s); compiled all the same", dispatcher.__name__,
                      type(exc).__name__, exc)

    cache.save_overload = save_overload


def stop_saving() -> None:
    """Kernels compiled from now on are not written to the cache (loading what is there still works).

    numba has no public switch for this; its dispatchers keep their cache in
    ``_cache``, whose ``save_overload`` is replaced for this process only.
    """
    for d in _dispatchers:
        cache = getattr(d, "_cache", None)
        if cache is not None:
            cache.save_overload = _no_save
