"""``ixypipe sim serve --device virtio``: the software virtio-net device served to a driver in another process,
which finds it as any virtio driver would (sysfs, vendor 0x1af4) and whose own hugepage memory the model finds
through /proc (a legacy driver holds resource0 open, a modern one maps resource4)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ixypipe
from ixypipe.sim.server import GeneratorConfig, SimPortConfig, SimServer, SinkConfig
from tests.support.system import needs_hugepages, needs_root

pytestmark = [needs_root, needs_hugepages]

COUNT = 20_000

DRIVER = r'''
import json, os, signal, sys
import numpy as np
from ixypipe.memory.arena import Arena
from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic.device import PortSpec
from ixypipe.nic.virtio import VirtioDevice

root, addresses = sys.argv[1], sys.argv[2:]
RING, POOL = 256, 2048
arena = Arena.create(8 << 20, hugepages_mode="require", tag="foreign")
os.unlink(arena.path)                       # private memory: nobody can attach it by name
bufs = PacketBuffers.create(arena, POOL * len(addresses))
pools = [Mempool.create(arena, bufs, f"pool{i}", i * POOL, POOL, i) for i in range(len(addresses))]
home = Homing.to_pools(bufs, pools)
devs = [VirtioDevice.open(PortSpec(f"p{i}", "virtio", a, rx_ring_size=RING, tx_ring_size=RING), arena, bufs,
                          [pools[i]], tx_done=home, sysfs_root=root) for i, a in enumerate(addresses)]
stop = []
signal.signal(signal.SIGINT, lambda *a: stop.append(1))
print("ready", flush=True)
out = np.empty(32, np.uint32)
received, transmitted = [0, 0], [0, 0]
while not stop:                             # a lossless ixy-fwd: what does not fit in TX waits, nothing is dropped
    for src in (0, 1):
        n = devs[src].rx_batch(0, out)
        idx = out[:n]
        bufs.data[idx, 1] += np.uint8(1)    # the touch the sinks expect
        sent = 0
        while sent < n:
            sent += devs[1 - src].tx_batch(0, idx[sent:])
        received[src] += n
        transmitted[1 - src] += n
for d in devs:
    d.tx_drain(0, timeout=10)
for d in devs:
    d.close()
del pools, bufs
arena.close()
print(json.dumps({"received": received, "transmitted": transmitted}), flush=True)
'''


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("transport", ["legacy", "modern"])
def test_a_driver_process_forwards_between_two_served_virtio_ports(tmp_path, transport):
    ports = [SimPortConfig(name, device="virtio", transport=transport,
                           generator=GeneratorConfig(packet_size=size, flows=4, count=COUNT),
                           sink=SinkConfig(expect_touch=True)) for name, size in (("a", 60), ("b", 1000))]
    server = SimServer(ports, None)
    server.start()
    root = server.sysfs_root
    script = tmp_path / "virtio_driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=str(Path(ixypipe.__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, str(script), str(root), server.addresses["a"], server.addresses["b"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", line + proc.stderr.read()
        server.start_traffic()
        assert wait_for(lambda: all(c.sink_received == COUNT for c in server.counters().values())), \
            server.counters()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        final = server.stop()
    assert result == {"received": [COUNT, COUNT], "transmitted": [COUNT, COUNT]}
    for name, size, other in (("a", 60, 1000), ("b", 1000, 60)):
        c = final[name]
        assert (c.generated, c.rx_delivered, c.rx_missed, c.tx_sent, c.sink_received) == (COUNT, COUNT, 0, COUNT,
                                                                                            COUNT)
        assert (c.gen_bytes, c.tx_bytes) == (COUNT * size, COUNT * other)
        assert (c.sink_lost, c.sink_reordered, c.sink_corrupt, c.sink_untouched, c.dma_faults) == (0, 0, 0, 0, 0)
    assert not root.exists()


def test_sim_serve_command_serves_virtio_net_functions():
    from click.testing import CliRunner

    from ixypipe.cli import main
    result = CliRunner().invoke(main, ["sim", "serve", "--ports", "1", "--device", "virtio", "--transport", "legacy",
                                       "--duration", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    served = [line for line in lines if line.startswith("port ")]
    assert len(served) == 1 and "0000:5e:00.0" in served[0]
    assert any(line.startswith("final p0: gen 0") and line.endswith("dma faults 0") for line in lines)
    bad = CliRunner().invoke(main, ["sim", "serve", "--device", "e1000"])
    assert bad.exit_code == 2 and "'e1000' is not one of '82599', 'virtio'" in bad.output
