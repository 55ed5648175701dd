"""Finds the worker function a pipeline file names.

``function`` is a built-in name (see ixypipe.workers.builtin), a
``package.module:function`` on the Python path, or ``path/to/file.py:function``
relative to the pipeline file's directory.  With ``per_packet`` (or a
function marked by ``@per_packet``) a ``handle(pkt) -> bool`` is wrapped
into a batch function.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from ixypipe.workers.api import PER_PACKET_ATTR
from ixypipe.workers.api import per_packet as wrap_per_packet
from ixypipe.workers.builtin import BUILTINS


class WorkerLoadError(Exception):
    """The worker function cannot be found or is not callable."""


def load_worker(spec: str, base_dir: str | Path = ".", per_packet: bool = False) -> Callable:
    fn = _find(spec, Path(base_dir))
    if not callable(fn):
        raise WorkerLoadError(f"{spec!r} names a value of type {type(fn).__name__}, not a function")
    if per_packet and not getattr(fn, PER_PACKET_ATTR, False):
        fn = wrap_per_packet(fn)
    return fn


def _find(spec: str, base_dir: Path):
    if spec in BUILTINS:
        return BUILTINS[spec]
    if ":" not in spec:
        raise WorkerLoadError(f"{spec!r} is not a built-in worker ({', '.join(BUILTINS)}), nor "
                              "'package.module:function' or 'file.py:function'")
    where, name = spec.rsplit(":", 1)
    if not name.isidentifier():
        raise WorkerLoadError(f"{name!r} in {spec!r} is not a function name")
    module = _module_from_file(where, base_dir) if where.endswith(".py") else _module(where)
    try:
        return getattr(module, name)
    except AttributeError:
        raise WorkerLoadError(f"{where} has no function {name!r}") from None


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise WorkerLoadError(f"no module {name!r} ({exc})") from None
    except Exception as exc:
        raise WorkerLoadError(f"importing {name!r} failed: {type(exc).__name__}: {exc}") from None


def _module_from_file(path: str, base_dir: Path):
    try:
        file = (base_dir / path).resolve()
    except (OSError, ValueError) as exc:          # e.g. an embedded NUL byte
        raise WorkerLoadError(f"{path!r} is not a usable file path: {exc}") from None
    if not file.is_file():
        raise WorkerLoadError(f"no worker file {file}")
    mod_name = f"ixypipe_user_{file.stem}_{abs(hash(str(file))):x}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise WorkerLoadError(f"loading {file} failed: {type(exc).__name__}: {exc}") from None
    sys.modules[mod_name] = module
    return module
