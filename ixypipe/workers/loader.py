"""Finds the worker a pipeline file names, and checks that name without running the worker's code.

``function`` is a built-in name (see ixypipe.workers.builtin), a
``package.module:name`` on the Python path, or ``path/to/file.py:name``
relative to the pipeline file's directory.  ``name`` is a batch function
(the module may also define ``setup(ctx)`` and ``teardown(ctx)``), or a
class whose instance has ``process(batch)`` (or is callable) and may have
``setup(ctx)`` and ``teardown(ctx)``.  With ``per_packet`` (or a function
marked by ``@per_packet``) a ``handle(pkt) -> bool`` is wrapped into a
batch function.

:func:`check_worker` is what the supervisor runs while it validates the
pipeline file: it reads the worker's source with ``ast`` and never imports
it, so module-level code (an ``atexit`` handler, a connection, a print)
never runs in the supervisor.  Errors only an import can show (an
``ImportError`` inside the file, an import that never returns) are found
by :func:`probe`, which ``ixypipe run`` calls at --check and before it
creates anything: it loads the worker in a short-lived child process with
a time limit.  :func:`load_worker` and :func:`load` import; the probe's
child and the worker stage call them, unprivileged and with their forks
guarded (workers/confine.py), after :func:`preread` read a worker file.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import linecache
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ixypipe.proc import die_with_parent
from ixypipe.workers.api import PER_PACKET_ATTR, WorkerContext
from ixypipe.workers.api import per_packet as wrap_per_packet
from ixypipe.workers.builtin import BUILTINS
from ixypipe.workers.builtin_jit import COMPILED
from ixypipe.workers.compiled import CompiledWorker


class WorkerLoadError(Exception):
    """The worker function cannot be found or is not callable.

    ``where`` is the file:line an import raised at (when it did), ``details`` its traceback (shown with -v).
    """

    def __init__(self, message: str, where: str = "", details: str = ""):
        super().__init__(message)
        self.where, self.details = where, details


def _failed(message: str, exc: BaseException) -> WorkerLoadError:
    """A WorkerLoadError for an import that raised ``exc``: where in the user's code, and the traceback."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{exc.filename}:{exc.lineno}"
    else:
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return WorkerLoadError(message, where, "".join(traceback.format_exception(exc)).rstrip())


@dataclass
class Worker:
    """A loaded worker: the batch function and the optional setup/teardown hooks."""

    process: Callable
    setup: Callable[[WorkerContext], None] | None = None
    teardown: Callable[[WorkerContext], None] | None = None
    where: str = ""                  # "file:line" of the batch function, for error messages
    compiled: object = None          # its workers/compiled.py CompiledWorker, when the stage may run it compiled


def load_worker(spec: str, base_dir: str | Path = ".", per_packet: bool = False) -> Callable:
    """The function (or class) ``spec`` names, imported; wrapped when ``per_packet``."""
    _, fn = _find(spec, Path(base_dir))
    if not callable(fn):
        raise WorkerLoadError(f"{spec!r} names a value of type {type(fn).__name__}, not a function")
    if per_packet and not inspect.isclass(fn) and not getattr(fn, PER_PACKET_ATTR, False) \
            and not isinstance(fn, CompiledWorker):
        fn = wrap_per_packet(fn)
    return fn


def load(spec: str, base_dir: str | Path = ".", per_packet: bool = False) -> Worker:
    """The worker ``spec`` names, ready to run: a class is instantiated, a module's hooks are found.  A built-in
    with a compiled twin (workers/builtin_jit.py) and a function marked ``@compiled_worker`` come with their
    CompiledWorker in ``compiled``."""
    if spec in BUILTINS:
        return Worker(BUILTINS[spec], where=_where(BUILTINS[spec]), compiled=COMPILED.get(spec))
    module, _ = _find(spec, Path(base_dir))
    found = load_worker(spec, base_dir, per_packet)
    if inspect.isclass(found):
        try:
            obj = found()
        except Exception as exc:
            raise WorkerLoadError(f"creating {found.__name__}() failed: {type(exc).__name__}: {exc}") from exc
        process = getattr(obj, "process", None) or (obj if callable(obj) else None)
        if process is None:
            raise WorkerLoadError(f"class {found.__name__} has neither a process(batch) method nor __call__")
        if per_packet:
            process = wrap_per_packet(process)
        return Worker(process, getattr(obj, "setup", None), getattr(obj, "teardown", None), _where(process))
    hooks = [getattr(module, h, None) if module is not None else None for h in ("setup", "teardown")]
    for name, hook in zip(("setup", "teardown"), hooks, strict=True):
        if hook is not None and not callable(hook):
            raise WorkerLoadError(f"{spec}: the module's {name} is a {type(hook).__name__}, not a function")
    return Worker(found, hooks[0], hooks[1], _where(found), found if isinstance(found, CompiledWorker) else None)


def _where(fn) -> str:
    target = getattr(fn, "__wrapped__", fn)
    code = getattr(target, "__code__", None) or getattr(getattr(target, "__func__", None), "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else repr(fn)


def _find(spec: str, base_dir: Path):
    if spec in BUILTINS:
        return None, BUILTINS[spec]
    where, name = _split(spec)
    module = _module_from_file(where, base_dir) if where.endswith(".py") else _module(where)
    try:
        return module, getattr(module, name)
    except AttributeError:
        raise WorkerLoadError(f"{where} has no function {name!r}") from None


def _split(spec: str) -> tuple[str, str]:
    if ":" not in spec:
        raise WorkerLoadError(f"{spec!r} is not a built-in worker ({', '.join(BUILTINS)}), nor "
                              "'package.module:function' or 'file.py:function'")
    where, name = spec.rsplit(":", 1)
    if not name.isidentifier():
        raise WorkerLoadError(f"{name!r} in {spec!r} is not a function name")
    return where, name


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise WorkerLoadError(f"no module {name!r} ({exc})") from None
    except Exception as exc:
        raise _failed(f"importing {name!r} failed: {type(exc).__name__}: {exc}", exc) from None


def _resolve(path: str, base_dir: Path) -> Path:
    try:
        file = (base_dir / path).resolve()
    except (OSError, ValueError) as exc:          # e.g. an embedded NUL byte
        raise WorkerLoadError(f"{path!r} is not a usable file path: {exc}") from None
    if not file.is_file():
        raise WorkerLoadError(f"no worker file {file}")
    return file


_PREREAD: dict[tuple[str, str], tuple[Path, bytes]] = {}   # (path, base_dir) -> the file and its source


def preread(spec: str, base_dir: str | Path = ".") -> None:
    """Read the worker file ``spec`` names now (a module on the path is imported as usual, later).

    A confined process (workers/confine.py) reads it before it drops its
    privileges and executes it after: the file may sit where the worker's
    user cannot look (a 0700 directory of the user who runs ixypipe).  A
    file that cannot be read is left to the import, which names the error.
    """
    if spec in BUILTINS or ":" not in spec:
        return
    where = spec.rsplit(":", 1)[0]
    if not where.endswith(".py"):
        return
    try:
        file = _resolve(where, Path(base_dir))
        _PREREAD[(where, str(base_dir))] = (file, file.read_bytes())
    except (WorkerLoadError, OSError):
        pass


def _exec_preread(module, file: Path, source: bytes) -> None:
    """Execute ``file``'s ``source`` (read by :func:`preread`) in ``module``, as its loader would."""
    text = source.decode("utf-8", "replace")
    linecache.cache[str(file)] = (len(text), None, text.splitlines(True), str(file))   # tracebacks show lines
    exec(compile(source, str(file), "exec", dont_inherit=True), module.__dict__)


def _module_from_file(path: str, base_dir: Path):
    read = _PREREAD.get((path, str(base_dir)))
    file = read[0] if read is not None else _resolve(path, base_dir)
    mod_name = f"ixypipe_user_{file.stem}_{abs(hash(str(file))):x}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, file)
    module = importlib.util.module_from_spec(spec)
    try:
        if read is not None:
            _exec_preread(module, file, read[1])
        else:
            spec.loader.exec_module(module)
    except Exception as exc:
        raise _failed(f"loading {file} failed: {type(exc).__name__}: {exc}", exc) from None
    sys.modules[mod_name] = module
    return module


# ---- checking without importing ------------------------------------------------------------------

def check_worker(spec: str, base_dir: str | Path = ".") -> None:
    """Raise WorkerLoadError when ``spec`` cannot name a worker; never runs the worker's module code.

    A file is parsed (a syntax error is reported) and must define ``name`` at top level; a module is
    located with importlib's finder (its parent packages are imported, the module itself is not) and
    checked the same way from its source.  A module that is already imported is looked at directly.
    """
    if spec in BUILTINS:
        return
    where, name = _split(spec)
    if where.endswith(".py"):
        file = _resolve(where, Path(base_dir))
    else:
        if where in sys.modules:
            if not hasattr(sys.modules[where], name):
                raise WorkerLoadError(f"{where} has no function {name!r}")
            if not callable(getattr(sys.modules[where], name)):
                raise WorkerLoadError(f"{spec!r} names a value of type "
                                      f"{type(getattr(sys.modules[where], name)).__name__}, not a function")
            return
        try:
            found = _locate(where)
        except ModuleNotFoundError as exc:
            raise WorkerLoadError(f"no module {where!r} ({exc})") from None
        except Exception as exc:
            raise WorkerLoadError(f"importing {where!r} failed: {type(exc).__name__}: {exc}") from None
        if found is None:
            raise WorkerLoadError(f"no module {where!r} (No module named {where!r})")
        if not (found.origin and found.origin.endswith(".py")):
            return                                # a compiled or namespace module: only an import can tell
        file = Path(found.origin)
    try:
        tree = ast.parse(file.read_bytes(), str(file))
    except SyntaxError as exc:
        raise WorkerLoadError(f"loading {file} failed: SyntaxError: {exc}") from None
    except (OSError, ValueError) as exc:
        raise WorkerLoadError(f"loading {file} failed: {type(exc).__name__}: {exc}") from None
    _check_defines(tree, spec, where, name)


def _locate(name: str):
    """The spec of module ``name``, found as importlib.util.find_spec finds it but without importing its
    parent packages: their ``__init__`` is the user's code too, and must not run in the supervisor."""
    spec, path = None, None
    parts = name.split(".")
    for i in range(len(parts)):
        full = ".".join(parts[:i + 1])
        if full in sys.modules:
            spec = getattr(sys.modules[full], "__spec__", None)
            path = getattr(sys.modules[full], "__path__", None)
        else:
            spec = next((s for f in sys.meta_path if hasattr(f, "find_spec")
                         for s in [f.find_spec(full, path)] if s is not None), None)
            path = spec.submodule_search_locations if spec is not None else None
        if spec is None or (path is None and i < len(parts) - 1):
            return None                          # no such module, or a parent that is not a package
    return spec


def _check_defines(tree: ast.Module, spec: str, where: str, name: str) -> None:
    star = False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                if isinstance(node.value, ast.Constant):     # e.g. LIMIT = 64: surely not a function
                    raise WorkerLoadError(f"{spec!r} names a value of type "
                                          f"{type(node.value.value).__name__}, not a function")
                return
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                star |= alias.name == "*"
                if (alias.asname or alias.name.split(".")[0]) == name:
                    return
    if not star:
        raise WorkerLoadError(f"{where} has no function {name!r}")


# ---- importing in a child, with a time limit -----------------------------------------------------

IMPORT_TIMEOUT = 10.0        # seconds a worker's module may take to import (workers.import_timeout)
PROBE_START_LIMIT = 60.0     # seconds for the forked child to report in (only a starved machine is this slow)
CHECK_ENV = "IXYPIPE_WORKER_CHECK"   # set to "1" in the child, so module code can tell it is only checked


def probe(spec: str, base_dir: str | Path = ".", per_packet: bool = False, timeout: float = IMPORT_TIMEOUT,
          worker_user: str = "") -> None:
    """Load the worker ``spec`` names in a short-lived child process; raise WorkerLoadError if that fails.

    What only an import can show is found before a pipeline starts: a module
    that raises (the message says at which file:line), and one whose import
    never returns ("did not finish importing within N s"; the child and
    anything it started in its session are killed).  The child's output goes
    to /dev/null and it leaves without running exit handlers; a built-in
    worker needs no child.  The child imports as the worker stage does:
    as ``worker_user``, its forks guarded (workers/confine.py), and
    whatever it started in its session is killed when it is done.
    """
    if spec in BUILTINS:
        return
    where = _split(spec)[0]
    # fork, not spawn: no second interpreter start (about 0.4 s of CPU), and what this process has imported
    # already (numpy, the ixypipe API) is not counted against the module's time limit
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_probe_child, args=(spec, str(base_dir), per_packet, sender, os.getpid(), worker_user),
                        name="ixypipe-worker-check", daemon=True)
    child.start()
    sender.close()
    try:
        reply = _receive(receiver, PROBE_START_LIMIT)          # "importing": the child runs
        if reply == ("timeout",):
            raise WorkerLoadError(f"the process to import worker module {where} did not start within "
                                  f"{PROBE_START_LIMIT:g} s")
        if reply[0] == "importing":
            reply = _receive(receiver, timeout)
            if reply == ("timeout",):
                raise WorkerLoadError(f"worker module {where} did not finish importing within {timeout:g} s "
                                      "(a loop or a blocking call at module level?)")
        if reply == ("closed",):
            child.join(5)
            code = child.exitcode
            how = f"exit code {code}" if code is not None and code >= 0 else f"signal {-code}" if code else "?"
            raise WorkerLoadError(f"importing worker module {where} ended its process ({how})")
        if reply[0] == "error":
            _, message, at, details = reply
            at_text = f" (at {at})" if at else ""
            raise WorkerLoadError(f"{message.splitlines()[0] if message else 'failed'}{at_text}", at, details)
    finally:
        receiver.close()
        _end(child)


def _receive(conn, timeout: float) -> tuple:
    """The child's next message, ("timeout",) when none came within ``timeout``, ("closed",) when it left."""
    try:
        return conn.recv() if conn.poll(timeout) else ("timeout",)
    except (EOFError, OSError):
        return ("closed",)


def _end(child) -> None:
    """Kill the child's session (the module may have started processes, also when the child is done) and
    reap the child.  The group is killed before the child is reaped, so its id cannot have been reused."""
    if child.pid:
        try:
            os.killpg(child.pid, signal.SIGKILL)            # the child made itself a session leader
        except OSError:                                     # not yet (or nothing left): then only the child
            pass
    if child.is_alive():
        child.kill()
    child.join(10)


def _probe_child(spec: str, base_dir: str, per_packet: bool, conn, parent: int, worker_user: str = "") -> None:
    die_with_parent(parent)                  # a SIGTERM'd or killed `ixypipe run` takes the check with it
    os.setsid()                              # its own session: a timeout kills what the module started too
    quiet = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):                     # module-level prints and warnings go nowhere
        os.dup2(quiet, fd)
    os.environ[CHECK_ENV] = "1"
    conn.send(("importing",))
    try:
        from ixypipe.workers.confine import confine
        confine(spec, base_dir, worker_user)     # unprivileged, forks guarded: as in the worker stage
        load(spec, base_dir, per_packet)
        reply: tuple = ("ok",)
    except WorkerLoadError as exc:
        reply = ("error", str(exc), exc.where, exc.details)
    except BaseException as exc:             # SystemExit, KeyboardInterrupt raised by module code
        reply = ("error", f"loading {spec} failed: {type(exc).__name__}: {exc}", "", traceback.format_exc())
    try:
        conn.send(reply)
    finally:
        os._exit(0)                          # no exit handlers the module registered, no teardown
