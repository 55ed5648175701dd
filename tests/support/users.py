"""Running ixypipe as an unprivileged user created for a test (root only; skips saying why otherwise).

The interpreter, a virtual environment and the checkout may live where
other users cannot pass (a pyenv or a venv under /root, mode 0700), so the
command runs in a private mount namespace in which every directory the
interpreter needs keeps its path but the closed directory above it is
replaced by an empty tmpfs holding only those directories (bound back in);
then it switches to the user with runuser.  Paths stay the same, so a venv
(found through its pyvenv.cfg and a symlink to an interpreter elsewhere)
and an editable install work as they do for root; nothing else is granted
to the user, and nothing changes outside the namespace.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

TOOLS = ("useradd", "userdel", "runuser", "unshare", "mount")


def skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a user needs root; run the tests as root")
    for tool in TOOLS:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing (apt-get install util-linux passwd mount)")
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here ({probe.stderr.decode().strip()}); an "
                    "interpreter other users cannot read needs one")


def ensure_user(name: str, home: str = "/nonexistent") -> tuple[pwd.struct_passwd, bool]:
    """The user ``name``, created (system user, no home directory made) if missing; and whether it was made."""
    try:
        return pwd.getpwnam(name), False
    except KeyError:
        pass
    res = subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", home, "--shell",
                          "/usr/sbin/nologin", name], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot create the test user {name} (useradd: {res.stderr.strip()}); run as root on a "
                    "machine where useradd works")
    return pwd.getpwnam(name), True


def remove_user(name: str) -> None:
    subprocess.run(["userdel", name], capture_output=True)


def private_workdir(prefix: str) -> Path:
    """A temporary directory every user can enter (pytest's tmp_path is root's alone)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    work.chmod(0o755)
    return work


def needed_dirs(env: dict, cwd: str | os.PathLike) -> list[Path]:
    """Every directory the interpreter of this process and the command need: the venv's and the base
    installation's prefixes, where the executable really is, the import path, PYTHONPATH and ``cwd``."""
    paths = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
             Path(sys.executable).resolve().parent, cwd, *sys.path, *env.get("PYTHONPATH", "").split(os.pathsep)]
    found = sorted({Path(p).resolve() for p in paths if p and Path(p).is_dir()}, key=lambda p: len(p.parts))
    outer: list[Path] = []                      # each one once: a directory inside another comes with it
    for p in found:
        if not any(p.is_relative_to(q) for q in outer):
            outer.append(p)
    return outer


def _open_to_others(path: Path, mode_bits: int) -> bool:
    return bool(path.stat().st_mode & mode_bits == mode_bits)


def closed_ancestor(path: Path) -> Path | None:
    """The outermost directory above ``path`` that other users cannot pass (no o+x), if any."""
    for parent in reversed(path.parents):       # "/" first
        if not _open_to_others(parent, stat.S_IXOTH):
            return parent
    return None


def view_script(dirs: list[Path], work: Path) -> str:
    """Shell commands (for a private mount namespace) that make each of ``dirs`` reachable at its own path
    by any user: each closed ancestor becomes a tmpfs holding only the needed directories, bound back in.

    Skips (saying which) when a needed directory is itself closed to others or lies under another
    closed directory inside a needed one: binding cannot open those without changing them.
    """
    hide: dict[Path, list[Path]] = {}
    for d in dirs:
        if not _open_to_others(d, stat.S_IROTH | stat.S_IXOTH):
            pytest.skip(f"{d} is not readable by other users (mode {stat.S_IMODE(d.stat().st_mode):o}); the test "
                        "user needs it: chmod o+rx it (a venv made with umask 077 is like this)")
        closed = closed_ancestor(d)
        if closed is not None:
            hide.setdefault(closed, []).append(d)
    for closed in hide:
        inner = [c for c in hide if c != closed and c.is_relative_to(closed)]
        if inner:
            pytest.skip(f"{inner[0]} and {closed} are both closed to other users; the test user cannot be "
                        "given the directories under them without changing their modes")
    keep = work / "keep"
    commands, binds = [], []
    for i, (closed, under) in enumerate(hide.items()):
        for j, d in enumerate(under):
            stage = keep / f"{i}-{j}"
            stage.mkdir(parents=True, exist_ok=True)
            commands.append(f"mount --bind {shlex.quote(str(d))} {shlex.quote(str(stage))}")   # before hiding
            binds.append(f"mkdir -p {shlex.quote(str(d))} && mount --bind {shlex.quote(str(stage))} "
                         f"{shlex.quote(str(d))}")
        binds.insert(len(binds) - len(under),
                     f"mount -t tmpfs -o mode=0755,size=1m ixypipe-view {shlex.quote(str(closed))}")
    return " && ".join([*commands, *binds, "true"])


def run_as(user: pwd.struct_passwd, argv: list[str], work: Path, env: dict, cwd: str | os.PathLike,
           timeout: float) -> subprocess.CompletedProcess:
    """``python3 argv...`` as ``user`` (argv without the interpreter), its interpreter made reachable.

    ``env`` is the whole environment of the command (runuser's own HOME
    and the caller's variables are not passed on); ``work`` (a directory
    every user can enter) holds the staging points of the bind mounts.
    """
    env = {**env, "USER": user.pw_name, "LOGNAME": user.pw_name}
    assignments = [f"{k}={v}" for k, v in env.items()]
    script = (f"{view_script(needed_dirs(env, cwd), work)} && cd {shlex.quote(str(cwd))} && exec runuser -u {shlex.quote(user.pw_name)} -- "
              f"env -i {shlex.join([*assignments, sys.executable, *argv])}")
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                              capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as exc:        # say where it stood
        tail = [(b if isinstance(b, str) else (b or b"").decode(errors="replace"))[-3000:]
                for b in (exc.stderr, exc.output)]
        raise AssertionError(f"still running after {timeout} s; stderr ends:\n{tail[0]}\nstdout ends:\n"
                             f"{tail[1]}") from None
