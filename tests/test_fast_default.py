"""Issue #27, fast by default: numba is decided in one place (jitcache.load_numba), a numba that cannot be loaded
is named once with its cause while the numpy paths serve, and a first run says it compiles its kernels."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ixypipe.pipeline import firstrun
from tests.support.runs import FWD, IXYPIPE, REPO

MODULES = ("ixypipe.nic.ixgbe_jit", "ixypipe.nic.af_packet_jit", "ixypipe.sim.kernels",
           "ixypipe.workers.headers_jit", "ixypipe.memory.batchcheck")
SHOW = ("import sys, " + ", ".join(f"{m} as m{i}" for i, m in enumerate(MODULES)) + "; "
        "print(m0.AVAILABLE, m1.AVAILABLE, m2.AVAILABLE, m3.AVAILABLE, m4.COMPILED, 'numba' in sys.modules)")
BROKEN = "simulated: libllvmlite.so cannot be opened"
WARNING = f"numba cannot be loaded (ImportError: {BROKEN}): the numpy paths serve"


def env_with(tmp_path, broken_numba: bool = False, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("IXYPIPE_NUMBA", "NUMBA_CACHE_DIR")}
    if broken_numba:                 # a numba package whose import fails, first on the path of every process
        fake = tmp_path / "fake" / "numba"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text(f"raise ImportError({BROKEN!r})\n")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(fake.parent), env.get("PYTHONPATH"))))
    env.update(extra)
    return env


def python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


def test_ixypipe_numba_off_takes_the_numpy_paths_without_a_word(tmp_path):
    r = python(SHOW, env_with(tmp_path, IXYPIPE_NUMBA="off"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False"] * 6          # numba not even imported
    assert "numba" not in r.stderr


def test_a_numba_that_cannot_load_is_named_with_its_cause_once(tmp_path):
    r = python(SHOW + "; import os; print(os.environ['IXYPIPE_NUMBA'])", env_with(tmp_path, broken_numba=True))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False"] * 6 + ["off"]     # the decision, for the processes this one starts
    assert r.stderr.count("numba cannot be loaded") == 1 and WARNING in r.stderr, r.stderr


def test_a_run_without_a_loadable_numba_warns_once_and_forwards_on_the_numpy_paths(tmp_path):
    r = subprocess.run([*IXYPIPE, "run", str(FWD), "--packets", "20000"], capture_output=True, text=True,
                       timeout=300, cwd=REPO, env=env_with(tmp_path, broken_numba=True))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.count("numba cannot be loaded") == 1, r.stderr     # not once per stage or simulator
    assert WARNING in r.stderr
    assert "compiling kernels" not in r.stderr
    assert r.stdout.rstrip().splitlines()[-1].startswith("accounting OK")


def test_an_empty_kernel_cache_is_found_without_compiling(tmp_path):
    code = ("from ixypipe.pipeline.config import load_pipeline; from ixypipe.pipeline.firstrun import uncached; "
            f"print(uncached(load_pipeline({str(FWD)!r})))")
    cache = tmp_path / "cache"
    r = python(code, env_with(tmp_path, NUMBA_CACHE_DIR=str(cache)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(["ixypipe.memory.batchcheck", "ixypipe.workers.headers_jit",
                                    "ixypipe.workers.keyed_jit", "ixypipe.rings.spsc_jit", "ixypipe.rings.wakeup_jit",
                                    "ixypipe.pipeline.breathe_jit", "ixypipe.nic.ixgbe_jit", "ixypipe.sim.kernels"])
    assert not list(cache.rglob("*.nb*"))               # judged from the files: nothing was compiled


@pytest.mark.slow
def test_a_first_run_says_it_compiles_and_a_second_starts_silently(tmp_path):
    env = env_with(tmp_path, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    args = [*IXYPIPE, "run", str(FWD), "--packets", "20000"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    compiled = [*firstrun.ALWAYS, *firstrun.BY_DRIVER["sim"]]
    assert (f"compiling kernels (first run only, {firstrun.EXPECTED}): "
            f"{', '.join(n.rpartition('.')[2] for n in compiled)} ..." in first.stderr), first.stderr
    assert "kernels compiled and cached in " in first.stderr
    assert first.stderr.index("compiling kernels (first") < first.stderr.index("kernels compiled and cached")
    second = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "compil" not in second.stderr, second.stderr
