"""The worker loader: built-in names, package.module:function, file.py:function, and an error for each failure."""

from __future__ import annotations

import numpy as np
import pytest

from ixypipe.workers import builtin
from ixypipe.workers.api import PER_PACKET_ATTR
from ixypipe.workers.loader import WorkerLoadError, load_worker


@pytest.mark.parametrize("name", ["forward", "touch", "macswap", "drop", "count"])
def test_builtin_names(name):
    assert load_worker(name) is getattr(builtin, name)


def test_module_function_on_the_python_path(tmp_path, monkeypatch):
    (tmp_path / "ixy_user_mod.py").write_text("def keep_all(batch):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_worker("ixy_user_mod:keep_all")
    assert fn.__name__ == "keep_all" and fn.__module__ == "ixy_user_mod"
    assert load_worker("ixypipe.workers.builtin:macswap") is builtin.macswap


def test_file_function_relative_to_the_base_dir(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.py").write_text("CALLS = []\ndef mark(batch):\n    CALLS.append(batch)\n")
    fn = load_worker("sub/w.py:mark", tmp_path)
    fn("b")
    assert fn.__globals__["CALLS"] == ["b"]
    assert load_worker("sub/w.py:mark", tmp_path) is fn                 # loaded once, then reused
    assert load_worker(f"{tmp_path}/sub/w.py:mark", "/") is fn          # an absolute path is the same file
    assert load_worker("w.py:mark", tmp_path / "sub") is fn


def test_per_packet_wraps_a_packet_handler(tmp_path):
    (tmp_path / "h.py").write_text("def big(pkt):\n    return len(pkt) > 10\n")
    fn = load_worker("h.py:big", tmp_path, per_packet=True)
    assert getattr(fn, PER_PACKET_ATTR) is True and fn.__wrapped__.__name__ == "big"

    class FakeBatch:
        n = 2

        def packet(self, i):
            return np.zeros(5 + 10 * i, np.uint8)

    assert fn(FakeBatch()).tolist() == [False, True]
    assert load_worker("h.py:big", tmp_path, per_packet=False).__name__ == "big"   # unwrapped without the flag


@pytest.mark.parametrize("spec,files,message", [
    ("tuoch", {}, "'tuoch' is not a built-in worker (forward, touch, macswap, drop, count), nor "
                  "'package.module:function' or 'file.py:function'"),
    ("w.py:1st", {}, "'1st' in 'w.py:1st' is not a function name"),
    ("w.py:", {}, "'' in 'w.py:' is not a function name"),
    ("no_such_module_ixy_test:f", {}, "no module 'no_such_module_ixy_test' (No module named "
                                      "'no_such_module_ixy_test')"),
    ("ixypipe.workers.builtin:reflect", {}, "ixypipe.workers.builtin has no function 'reflect'"),
    ("missing.py:f", {}, "no worker file {base}/missing.py"),
    ("w.py:nope", {"w.py": "def f(batch):\n    pass\n"}, "w.py has no function 'nope'"),
    ("w.py:LIMIT", {"w.py": "LIMIT = 64\n"}, "'w.py:LIMIT' names a value of type int, not a function"),
    ("w.py:f", {"w.py": "x = 1 / 0\n"}, "loading {base}/w.py failed: ZeroDivisionError: division by zero"),
    ("w.py:f", {"w.py": "def f(:\n"}, "loading {base}/w.py failed: SyntaxError: "),
    ("dir.py:f", {"dir.py/x": ""}, "no worker file {base}/dir.py"),
    ("w\x00.py:f", {}, "'w\\x00.py' is not a usable file path: embedded null byte"),
    (":f", {}, "importing '' failed: ValueError: Empty module name"),
])
def test_each_failure_has_a_clear_error(tmp_path, spec, files, message):
    base = tmp_path / "base"
    base.mkdir()
    for name, text in files.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(text)
    with pytest.raises(WorkerLoadError) as info:
        load_worker(spec, base)
    assert str(info.value).startswith(message.format(base=base))


def test_a_failing_import_is_reported_with_its_cause(tmp_path, monkeypatch):
    (tmp_path / "ixy_broken_mod.py").write_text("raise RuntimeError('needs a license key')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(WorkerLoadError) as info:
        load_worker("ixy_broken_mod:f")
    assert str(info.value) == "importing 'ixy_broken_mod' failed: RuntimeError: needs a license key"
