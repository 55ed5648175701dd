"""Shared fixtures: hugepages on first need, arenas and network namespaces that are always removed."""

from __future__ import annotations

import pytest

from ixypipe.memory.arena import Arena
from tests.support.sharing import share_machine
from tests.support.system import TESTBED_TOOLS, hugepages_unavailable, require_tools


@pytest.fixture(autouse=True)
def machine_share(request):
    """Every test runs beside the others (pytest-xdist), except one marked ``alone`` (tests/support/sharing.py)."""
    with share_machine(alone=request.node.get_closest_marker("alone") is not None):
        yield


@pytest.fixture(scope="session", autouse=True)
def sim_kernels_compiled():
    """The software 82599's numba kernels are compiled (or loaded from numba's cache) here, once, before
    any test starts a model process: a model compiling them itself would be slow to answer its driver."""
    from ixypipe.sim.model import load_kernels
    load_kernels("auto")


@pytest.fixture(scope="session")
def hugepages_ready():
    """Reserves and mounts hugepages the first time a test needs them; skips that test when they cannot be had."""
    why = hugepages_unavailable()
    if why:
        pytest.skip(f"hugepages unavailable: {why}")


@pytest.fixture
def make_arena():
    """make_arena(size, hugepages_mode='auto') -> Arena, destroyed after the test."""
    made = []

    def make(size: int = 16 << 20, hugepages_mode: str = "auto") -> Arena:
        arena = Arena.create(size, hugepages_mode=hugepages_mode, tag="test")
        made.append(arena)
        return arena

    yield make
    for arena in made:
        arena.destroy()


@pytest.fixture
def testbed():
    """Two hosts in network namespaces of their own behind veth pairs; removed even when a test fails."""
    from ixypipe.ops.netns import VethTestbed, namespaces_made

    require_tools(*TESTBED_TOOLS)
    tb = VethTestbed()
    yield tb
    tb.close()
    assert not [n for n in namespaces_made() if tb.tag in n]
