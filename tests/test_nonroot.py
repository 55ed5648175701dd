"""An ordinary user runs a pipeline with numba installed: compiled kernels cache where that user can write.

The package directory belongs to root and is not writable by the user, and
the user's HOME does not exist (as for ``nobody``): numba alone then has no
cache locator and every run failed ("cannot cache function 'rx_burst': no
locator available").  ixypipe/jitcache.py picks a per-user directory
instead.  Nothing else is granted to the user: no hugepages (the arenas fall
back to /dev/shm), no capability.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import users
from tests.support.runs import FWD, REPO, check_sinks, summary_of

TEST_USER = "ixynonroot"
PACKAGE = REPO / "ixypipe"
JIT_DIRS = ("memory", "nic", "pipeline", "rings", "sim", "workers")    # where the compiled modules live (one cache subdirectory each)


@pytest.fixture
def user():
    users.skip_unless_possible()
    who, made = users.ensure_user(TEST_USER)
    work = users.private_workdir("ixypipe-nonroot-")
    tmp = work / "tmp"                       # the user's TMPDIR: its /tmp fallback lands here, removed after
    tmp.mkdir()
    tmp.chmod(0o1777)
    yield who, work
    shutil.rmtree(work, ignore_errors=True)
    if made:
        users.remove_user(TEST_USER)


def base_env(work: Path, **more: str) -> dict:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "TMPDIR": str(work / "tmp"),
            "HOME": "/nonexistent", **more}


def test_the_package_is_not_writable_by_the_user(user):
    who, _ = user
    st = PACKAGE.stat()
    assert st.st_uid != who.pw_uid and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


WHERE = '''
import json, logging, sys
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from ixypipe import jitcache
print(json.dumps([str(jitcache.cache_dir(d)) for d in sys.argv[1:]]))
'''


def cache_dirs_as(user, work: Path, env: dict) -> tuple[list[str], str]:
    who, _ = user
    res = users.run_as(who, ["-c", WHERE, *(str(PACKAGE / d) for d in JIT_DIRS)], work, env, REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout), res.stderr


def test_the_cache_goes_to_the_users_own_directories(user):
    who, work = user
    home = work / "home"
    home.mkdir()
    os.chown(home, who.pw_uid, who.pw_gid)
    # a writable HOME: ~/.cache/ixypipe/numba, for every compiled module, without a warning
    dirs, err = cache_dirs_as(user, work, base_env(work, HOME=str(home)))
    assert dirs == [str(home / ".cache" / "ixypipe" / "numba")] * len(JIT_DIRS) and err == ""
    # XDG_CACHE_HOME first
    dirs, err = cache_dirs_as(user, work, base_env(work, HOME=str(home), XDG_CACHE_HOME=str(home / "xdg")))
    assert dirs == [str(home / "xdg" / "ixypipe" / "numba")] * len(JIT_DIRS) and err == ""
    # NUMBA_CACHE_DIR the user set wins
    dirs, err = cache_dirs_as(user, work, base_env(work, HOME=str(home), NUMBA_CACHE_DIR=str(home / "mine")))
    assert dirs == [str(home / "mine")] * len(JIT_DIRS) and err == ""


def test_without_a_home_the_cache_is_a_private_temporary_directory(user):
    who, work = user
    dirs, err = cache_dirs_as(user, work, base_env(work))
    private = work / "tmp" / f"ixypipe-numba-{who.pw_uid}"
    assert dirs == [str(private)] * len(JIT_DIRS) and err == ""
    st = private.lstat()
    assert st.st_uid == who.pw_uid and stat.S_IMODE(st.st_mode) == 0o700


def test_a_temporary_directory_someone_else_made_is_refused_and_one_warning_says_so(user):
    who, work = user
    planted = work / "tmp" / f"ixypipe-numba-{who.pw_uid}"
    planted.mkdir(mode=0o777)                # made by root (another user could have): never used
    planted.chmod(0o777)
    dirs, err = cache_dirs_as(user, work, base_env(work))
    assert dirs == ["None"] * len(JIT_DIRS)
    assert err.count("WARNING") == 1 and "compiled kernels are not cached" in err, err
    assert "set NUMBA_CACHE_DIR to a writable directory" in err
    assert list(planted.iterdir()) == []


def test_an_unprivileged_user_runs_fwd_with_numba_compiled_kernels(user):
    pytest.importorskip("numba", reason="the compiled kernels need numba: pip install -e '.[fast]'")
    who, work = user
    pipeline = work / "fwd.toml"
    pipeline.write_text(FWD.read_text())
    res = users.run_as(who, ["-m", "ixypipe", "run", str(pipeline), "--duration", "2", "--json"], work,
                       base_env(work), REPO, timeout=600)
    assert res.returncode == 0, (res.stderr[-4000:], res.stdout[-2000:])
    assert "cannot cache" not in res.stderr and "not cached" not in res.stderr
    s = summary_of(res.stdout)
    assert s["ok"] is True and s["failures"] == [] and s["in_flight"] == 0
    assert s["received"] > 0 and s["received"] == s["transmitted"] + sum(s["drops"].values())
    check_sinks(s)
    # every compiled module cached its kernels in the user's private directory, none in the package
    cache = work / "tmp" / f"ixypipe-numba-{who.pw_uid}"
    cached = {p.parent.name.split("_")[0] for p in cache.glob("*/*.nbi")}
    assert cached == set(JIT_DIRS), sorted(cache.glob("*/*"))
    assert not [p for p in PACKAGE.rglob("*") if p.lstat().st_uid == who.pw_uid]


KERNEL = '''
from ixypipe import jitcache


@jitcache.njit(__file__)
def twice(x):
    return x * 2
'''

STOP = '''
import sys
sys.path.insert(0, sys.argv[1])
from ixypipe import jitcache
import kernel
kernel.twice(1)                 # compiled and saved (int64)
jitcache.stop_saving()
print(kernel.twice(1.5))        # compiled in memory only (float64)
'''


def test_after_stop_saving_new_kernels_are_compiled_but_not_written(tmp_path):
    pytest.importorskip("numba", reason="pip install -e '.[fast]'")
    src = tmp_path / "src"
    src.mkdir()
    (src / "kernel.py").write_text(KERNEL)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "NUMBA_CACHE_DIR": str(cache)}
    res = subprocess.run([sys.executable, "-c", STOP, str(src)], capture_output=True, text=True, env=env,
                         timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "3.0"
    data = sorted(p.name for p in cache.glob("*/*.nbc"))
    assert len(data) == 1 and data[0].startswith("kernel.twice-"), data     # the int64 one only


VENV_PROBE = '''
import json, pwd, sys
from pathlib import Path
from tests.support import users
res = users.run_as(pwd.getpwnam(sys.argv[1]), ["-c", "import json, sys, numpy, ixypipe; print(json.dumps("
                   "[sys.prefix, sys.base_prefix, ixypipe.__file__]))"], Path(sys.argv[2]),
                   {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PYTHONPATH": sys.argv[4]}, sys.argv[3],
                   timeout=120)
print(json.dumps([res.returncode, res.stdout, res.stderr]))
'''


def test_the_user_runs_the_interpreter_of_a_venv_under_a_closed_directory(user, tmp_path):
    """A venv's python is a symlink to an interpreter outside the venv (here under /root or a pyenv), and
    the venv lies under pytest's tmp_path (mode 0700): the user still runs it, as that venv, at its own path.
    (users.run_as used to bind the prefix elsewhere and set PYTHONHOME, which turns venv detection off and
    could not place the resolved interpreter: "... is not in the subpath of ...venv".)"""
    who, work = user
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    venv = closed / "v"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True, capture_output=True, timeout=120)
    python = venv / "bin" / "python"
    assert python.is_symlink() and not python.resolve().is_relative_to(venv)
    # the packages of this test run (pytest, numpy: perhaps in this run's own venv, not beside the interpreter)
    path = os.pathsep.join([str(REPO), *site.getsitepackages()])
    res = subprocess.run([str(python), "-c", VENV_PROBE, who.pw_name, str(work), str(REPO), path],
                         capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": path})
    assert res.returncode == 0, res.stderr
    code, out, err = json.loads(res.stdout)
    assert code == 0, err
    prefix, base, package = json.loads(out)
    assert prefix == str(venv) and base == sys.base_prefix and package == str(PACKAGE / "__init__.py")
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700           # nothing was opened outside the namespace
