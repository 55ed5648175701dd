"""End to end: fwd.toml on software 82599 ports behind the simulated IOMMU, driven through VFIO.

Every process of the run (supervisor, stages, simulator) talks to the VFIO
stand-in kernel (IXYPIPE_VFIO_KERNEL); the model translates every
descriptor address through the MAP_DMA mappings the supervisor made, so a
descriptor carrying anything but those IOVAs would be a DMA fault.  An
audit hook in every process (a sitecustomize on PYTHONPATH) refuses any
open of a pagemap file, and the last test runs the whole pipeline as an
unprivileged user created for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import users
from tests.support.runs import FWD, IXYPIPE, REPO, check_sinks, summary_of

STAND_IN = "tests.support.vfio_kernel:StandInKernel"
TEST_USER = "ixyvfio"

NO_PAGEMAP = '''
import sys

def _refuse_pagemap(event, args):
    if event == "open" and args and "pagemap" in str(args[0]):
        raise PermissionError(f"pagemap opened during a VFIO run: {args[0]}")

sys.addaudithook(_refuse_pagemap)
'''


def vfio_pipeline(directory: Path, hugepages: str = "never") -> Path:
    """fwd.toml with both ports behind the IOMMU (iommu = "vfio")."""
    text = FWD.read_text().replace('driver = "sim"', 'driver = "sim"\niommu = "vfio"')
    text = text.replace('hugepages = "auto"', f'hugepages = "{hugepages}"')
    assert text.count('iommu = "vfio"') == 2
    path = directory / "vfio.toml"
    path.write_text(text)
    return path


def guarded_env(directory: Path) -> dict:
    hook = directory / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(NO_PAGEMAP)
    return {**os.environ, "IXYPIPE_VFIO_KERNEL": STAND_IN,
            "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)])}


def check_forwarded(res: subprocess.CompletedProcess) -> dict:
    assert res.returncode == 0, (res.stderr, res.stdout[-3000:])
    assert "pagemap opened" not in res.stderr
    s = summary_of(res.stdout)
    assert s["ok"] is True, (s, res.stderr)
    assert s["received"] > 2_000 and s["in_flight"] == 0
    assert s["received"] == s["transmitted"] + sum(s["drops"].values())
    for port in ("p0", "p1"):
        assert s["sim"][port]["dma_faults"] == 0
        assert s["sim"][port]["sink_received"] > 1_000
    check_sinks(s)
    # the model found the two arenas the supervisor mapped with MAP_DMA, in each port's group
    assert res.stderr.count("2 mapping(s)") >= 2, res.stderr
    return s


def test_the_hook_refuses_pagemap(tmp_path):
    res = subprocess.run([sys.executable, "-c", "open('/proc/self/pagemap', 'rb')"], env=guarded_env(tmp_path),
                         capture_output=True, text=True)
    assert res.returncode != 0 and "pagemap opened during a VFIO run" in res.stderr


@pytest.mark.parametrize("hugepages", ["never", "require"])
def test_fwd_on_sim_ports_through_vfio_and_the_iommu(tmp_path, hugepages, request):
    # "require": as root on hugepages too, the arenas are made without their physical-address table
    if hugepages == "require":
        request.getfixturevalue("hugepages_ready")
    res = subprocess.run([*IXYPIPE, "run", str(vfio_pipeline(tmp_path, hugepages)), "--duration", "3", "--json"],
                         capture_output=True, text=True, timeout=120, cwd=REPO, env=guarded_env(tmp_path))
    check_forwarded(res)


def test_without_the_stand_in_the_error_says_what_the_node_is(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("IXYPIPE_VFIO_KERNEL", None)
    res = subprocess.run([*IXYPIPE, "run", str(vfio_pipeline(tmp_path)), "--duration", "1"],
                         capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert res.returncode != 0
    assert "VFIO_GET_API_VERSION failed: Inappropriate ioctl for device (not a VFIO container" in res.stderr


# ---- as an unprivileged user ----------------------------------------------------------------

@pytest.fixture
def unprivileged():
    users.skip_unless_possible()
    user, made = users.ensure_user(TEST_USER)
    work = users.private_workdir("ixypipe-vfio-user-")
    yield user, work
    shutil.rmtree(work, ignore_errors=True)
    if made:
        users.remove_user(TEST_USER)


def test_an_unprivileged_user_forwards_through_vfio(unprivileged):
    """The whole pipeline as a user without any capability, its group node its own, no pagemap read
    (tests/support/users.py makes the interpreter readable to that user; nothing else is granted)."""
    user, work = unprivileged
    pipeline = vfio_pipeline(work)
    env = guarded_env(work)
    for p in (pipeline, work / "hook", work / "hook" / "sitecustomize.py"):
        os.chown(p, user.pw_uid, user.pw_gid)
    env = {k: env[k] for k in ("PATH", "PYTHONPATH", "IXYPIPE_VFIO_KERNEL")}
    tmp = work / "tmp"               # no HOME: compiled kernels are cached in TMPDIR/ixypipe-numba-<uid>
    tmp.mkdir(mode=0o1777)
    tmp.chmod(0o1777)
    env.update(HOME="/nonexistent", TMPDIR=str(tmp))
    res = users.run_as(user, ["-m", "ixypipe", "run", str(pipeline), "--duration", "3", "--json"], work, env,
                       REPO, timeout=600)
    check_forwarded(res)
    # the simulated machine's VFIO group node belonged to that user, with no access for others
    assert "needs root" not in res.stderr
