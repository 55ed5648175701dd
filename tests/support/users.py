"""Running ixypipe as an unprivileged user created for a test (root only; skips saying why otherwise).

The interpreter may live where other users cannot read it (a pyenv under
/root, mode 0700, on the development machines), so the command runs in a
private mount namespace that binds the interpreter's prefix to a readable
place first, then switches to the user with runuser; nothing else is
granted to the user.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
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


def run_as(user: pwd.struct_passwd, argv: list[str], work: Path, env: dict, cwd: str | os.PathLike,
           timeout: float) -> subprocess.CompletedProcess:
    """``python3 argv...`` as ``user`` (argv without the interpreter), its interpreter made readable.

    ``env`` is the whole environment of the command (runuser's own HOME
    and the caller's variables are not passed on); ``work`` holds the mount
    point of the interpreter's view.
    """
    prefix = Path(sys.prefix).resolve()
    exe = Path(sys.executable).resolve()
    view = work / "python"
    view.mkdir(exist_ok=True)
    inner_exe = view / exe.relative_to(prefix)
    env = {**env, "PYTHONHOME": str(view), "USER": user.pw_name, "LOGNAME": user.pw_name,
           "LD_LIBRARY_PATH": str(view / "lib")}      # its libpython too (the binary's rpath is under the prefix)
    assignments = [f"{k}={v}" for k, v in env.items()]
    script = (f"mount --bind {shlex.quote(str(prefix))} {shlex.quote(str(view))} && exec runuser -u "
              f"{shlex.quote(user.pw_name)} -- env -i {shlex.join([*assignments, str(inner_exe), *argv])}")
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                              capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as exc:        # say where it stood
        tail = [(b if isinstance(b, str) else (b or b"").decode(errors="replace"))[-3000:]
                for b in (exc.stderr, exc.output)]
        raise AssertionError(f"still running after {timeout} s; stderr ends:\n{tail[0]}\nstdout ends:\n"
                             f"{tail[1]}") from None
