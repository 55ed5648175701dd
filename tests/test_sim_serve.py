"""The software 82599 served to a foreign driver: a separate process with its own private hugepage memory.

The driver is a fresh interpreter running DRIVER below: it creates its OWN
hugepage arena (physical addresses, file unlinked at once), packet buffers
and pools, opens the served ports through the served sysfs tree and
forwards with ixypipe.ops.forwarder.Forwarder.  The model is never told about that
memory: it finds it through /proc/<driver pid>.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ixypipe
from ixypipe.memory.arena import Arena
from ixypipe.nic import registers as R
from ixypipe.sim import foreign
from ixypipe.sim.server import GeneratorConfig, SimPortConfig, SimServer, SimServerError, SinkConfig
from tests.support.system import needs_hugepages, needs_root

pytestmark = [needs_root, needs_hugepages]

COUNT = 20_000
BAD_ADDRESS = 0x1000        # a physical page that is certainly not the driver's

DRIVER = r'''
import json, os, signal, sys
import numpy as np
from ixypipe.memory.arena import Arena
from ixypipe.nic import registers as R
from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic.device import PortSpec
from ixypipe.nic.ixgbe import IxgbeDevice
from ixypipe.ops.forwarder import Forwarder

root, mode, addresses = sys.argv[1], sys.argv[2], sys.argv[3:]
RX_RING, TX_RING, POOL = 256, 1024, 2048
arena = Arena.create(8 << 20, hugepages_mode="require", tag="foreign")
os.unlink(arena.path)                       # private memory: nobody can attach it by name
bufs = PacketBuffers.create(arena, POOL * len(addresses))
pools = [Mempool.create(arena, bufs, f"pool{i}", i * POOL, POOL, i) for i in range(len(addresses))]
home = Homing.to_pools(bufs, pools)
devs = [IxgbeDevice.open(PortSpec(f"p{i}", "ixgbe", a, rx_ring_size=RX_RING, tx_ring_size=TX_RING), arena, bufs,
                         [pools[i]], tx_done=home, sysfs_root=root, allow_iova=False) for i, a in enumerate(addresses)]
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
result = {}
if mode == "forward":
    print("ready", flush=True)
    fwd = Forwarder(devs[0], devs[1], batch=32, touch=True)
    res = fwd.run(out=None)                 # until SIGINT
    fwd.drain()
    result = {"received": res.received, "transmitted": res.transmitted, "dropped": res.dropped}
elif mode == "bad-rx":
    devs[0]._rx[0].desc64[:, 0] = 0x1000     # every RX buffer address outside this process's memory
    print("ready", flush=True)
    out = np.empty(32, np.uint32)
    import time
    while not stop:
        result["received"] = result.get("received", 0) + devs[0].rx_batch(0, out)
        time.sleep(0.001)
for d in devs:
    d.close()
del pools, bufs
arena.close()
print(json.dumps(result), flush=True)
'''


def start_driver(tmp_path: Path, root: Path, mode: str, addresses: list[str],
                 bind_mount: bool = False) -> subprocess.Popen:
    """The driver process; ``bind_mount``: run it as documented for unmodified drivers, in a mount namespace
    where the served tree covers /sys/bus/pci/devices, and let it open the ports under /sys."""
    script = tmp_path / "foreign_driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=str(Path(ixypipe.__file__).parents[1]))   # this checkout's ixypipe
    argv = [sys.executable, str(script), str(root), mode, *addresses]
    if bind_mount:
        argv = ["unshare", "-m", "sh", "-c",
                f'mount --bind {root}/bus/pci/devices /sys/bus/pci/devices && exec "$0" "$@"',
                sys.executable, str(script), "/sys", mode, *addresses]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"foreign driver did not start: {line}{out}{err}")
    return proc


def finish_driver(proc: subprocess.Popen, sig: int) -> dict:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def wait_for(predicate, timeout: float = 40.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("bind_mount", [False, True], ids=["sysfs_root", "unshare_bind_mount"])
def test_foreign_driver_forwards_between_two_served_ports(tmp_path, bind_mount):
    pcap = tmp_path / "b-tx.pcap"
    ports = [SimPortConfig(name, generator=GeneratorConfig(packet_size=size, flows=4, count=COUNT),
                           sink=SinkConfig(expect_touch=True, pcap=str(pcap) if name == "b" else None))
             for name, size in (("a", 60), ("b", 1000))]
    server = SimServer(ports, None)
    server.start()
    root = server.sysfs_root
    proc = None
    try:
        proc = start_driver(tmp_path, root, "forward", [server.addresses["a"], server.addresses["b"]], bind_mount)
        server.start_traffic()
        assert wait_for(lambda: all(c.sink_received == COUNT for c in server.counters().values())), \
            server.counters()
        model_maps = foreign.hugepage_mappings(server.pid)
        driver_maps = foreign.hugepage_mappings(proc.pid)
        result = finish_driver(proc, signal.SIGINT)
        proc = None
        # the driver left: the model resets the ports and unmaps the driver's memory (its hugepages go back)
        assert wait_for(lambda: foreign.hugepage_mappings(server.pid) == [], 15)
        links = np.fromfile(root / "bus/pci/devices" / server.addresses["a"] / "resource0", "<u4")[R.LINKS // 4]
        assert links & R.LINKS_UP == 0
    finally:
        if proc is not None:
            proc.kill()
            proc.communicate()
        final = server.stop()
    assert result["received"] == [COUNT, COUNT] and result["transmitted"] == [COUNT, COUNT]
    for name in ("a", "b"):
        c = final[name]
        assert (c.generated, c.rx_delivered, c.tx_sent, c.sink_received) == (COUNT, COUNT, COUNT, COUNT)
        assert (c.sink_lost, c.sink_reordered, c.sink_corrupt, c.sink_untouched, c.dma_faults) == (0, 0, 0, 0, 0)
    assert final["a"].gen_bytes == COUNT * 60 and final["b"].tx_bytes == COUNT * 60
    assert final["b"].gen_bytes == COUNT * 1000 and final["a"].tx_bytes == COUNT * 1000
    assert not root.exists()                 # the served tree is gone with the server
    assert pcap.stat().st_size == 24 + COUNT * (16 + 60)    # b's TX (a's 60-byte frames) in the pcap file
    # the model had mapped exactly the driver's (unlinked) hugepage arena, nothing else
    assert [m.inode for m in model_maps] == [m.inode for m in driver_maps] and len(driver_maps) == 1
    assert driver_maps[0].path.endswith("(deleted)")


def test_descriptor_outside_the_driver_memory_is_a_fault(tmp_path, capfd):
    port = SimPortConfig("a", generator=GeneratorConfig(packet_size=60, count=100), sink=SinkConfig())
    with SimServer([port], None) as server:
        proc = start_driver(tmp_path, server.sysfs_root, "bad-rx", [server.addresses["a"]])
        try:
            server.start_traffic()
            assert wait_for(lambda: server.counters()["a"].dma_faults == 1, 20)
            time.sleep(0.2)
            c = server.counters()["a"]
        finally:
            result = finish_driver(proc, signal.SIGTERM)
    assert (c.dma_faults, c.rx_delivered, result["received"]) == (1, 0, 0)
    err = capfd.readouterr().err
    assert f"port a rx queue 0 descriptor 0 address {BAD_ADDRESS:#x}: RX buffer [{BAD_ADDRESS:#x}, +60) " \
           "is outside registered memory" in err


def test_foreign_tables_match_the_arena_of_this_process():
    """hugepage_mappings/physical_pages/ForeignRegion on this very process agree with the arena's own table."""
    arena = Arena.create(4 << 20, hugepages_mode="require", tag="test")
    try:
        mine = [m for m in foreign.hugepage_mappings(os.getpid()) if m.inode == os.stat(arena.path).st_ino]
        assert len(mine) == 1 and mine[0].size == arena.size and mine[0].page_size == 2 << 20
        phys = foreign.physical_pages(mine[0])
        page_bases, page_offsets, _ = arena.dma_table()
        assert np.array_equal(np.sort(phys), np.sort(page_bases))
        region = foreign.ForeignRegion(mine[0], phys)
        try:
            arena.buf[arena.size - 7:] = np.frombuffer(b"foreign", np.uint8)
            assert bytes(region.buf[arena.size - 7:]) == b"foreign"
            region.buf[:4] = 0xAB
            assert bytes(arena.buf[:4]) == b"\xab" * 4
        finally:
            region.close()
    finally:
        arena.destroy()


def test_pids_mapping_finds_the_process_that_maps_a_bar(tmp_path):
    bar = tmp_path / "resource0"
    bar.write_bytes(b"\0" * 4096)
    code = ("import mmap, sys, os; f = open(sys.argv[1], 'r+b'); m = mmap.mmap(f.fileno(), 4096); "
            "print('ok', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(bar)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ok"
        assert foreign.pids_mapping([bar]) == [proc.pid]
        assert foreign.pids_mapping([bar], exclude={proc.pid}) == []
        assert foreign.pids_mapping([tmp_path / "missing"]) == []
    finally:
        proc.communicate("", timeout=10)


def test_sim_serve_command_prints_ports_and_removes_its_tree():
    from ixypipe.cli import main
    result = CliRunner().invoke(main, ["sim", "serve", "--ports", "2", "--wire", "0-1", "--duration", "1.5"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    served = [line for line in lines if line.startswith("port ")]
    assert len(served) == 2
    root = Path(served[0].split("sysfs ")[1].split("/bus/pci/devices/")[0])
    assert "0000:5e:00.0" in served[0] and "0000:5e:00.1" in served[1]
    assert "cable to p1" in served[0]
    assert any(line.startswith("final p0") for line in lines)
    assert not root.exists()


def test_ctrl_c_to_the_process_group_prints_the_final_summary_and_removes_the_tree():
    """Ctrl-C in a terminal reaches serve and its model process: one clean stop, no traceback."""
    env = dict(os.environ, PYTHONPATH=str(Path(ixypipe.__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "ixypipe", "sim", "serve", "--ports", "1", "--wire", "0:sink"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("port p0  0000:5e:00.0  sysfs "), first
        root = Path(first.split("sysfs ")[1].split("/bus/pci/devices/")[0])
        assert (root / "bus/pci/devices/0000:5e:00.0/resource0").stat().st_size == R.BAR0_SIZE
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert out.splitlines()[-1] == ("final p0: gen 0  rx 0 (missed 0)  tx 0  sink 0 (lost 0, reordered 0, corrupt 0, "
                                    "untouched 0)  dma faults 0")
    assert not root.exists()


@pytest.mark.parametrize("wire, message", [
    ("0-0", "'0-0': a cable needs two different ports"),
    ("2:gen", "'2:gen': port index '2' is not 0..1"),
    ("0:blast", "'0:blast': 'blast' is not one of gen, sink, count, pcap=FILE, none"),
    ("0:sink+count", "'0:sink+count': a port has one sink, 'sink' (verify) or 'count'"),
])
def test_bad_wiring_is_refused_with_the_spec_named(wire, message):
    from ixypipe.cli import main
    result = CliRunner().invoke(main, ["sim", "serve", "--ports", "2", "--wire", wire])
    assert result.exit_code == 2
    assert message in result.output


GROWING_DRIVER = r'''
import sys
from ixypipe.memory.arena import Arena
bar = open(sys.argv[1], "r+b")
import mmap
bar_map = mmap.mmap(bar.fileno(), 4096)
first = Arena.create(2 << 20, hugepages_mode="require", tag="grow1")
print(int(first.phys(0)), flush=True)
sys.stdin.readline()
second = Arena.create(2 << 20, hugepages_mode="require", tag="grow2")
print(int(second.phys(0)), flush=True)
sys.stdin.readline()
print(bytes(second.buf[100:108]).hex(), flush=True)
sys.stdin.readline()
first.destroy()
second.destroy()
'''


def test_foreign_dma_follows_the_driver_as_it_maps_more_memory_and_releases_it_when_it_leaves(tmp_path):
    from ixypipe.sim.traffic import PacketBatch
    bar = tmp_path / "resource0"
    bar.write_bytes(b"\0" * 4096)
    script = tmp_path / "grow.py"
    script.write_text(GROWING_DRIVER)
    env = dict(os.environ, PYTHONPATH=str(Path(ixypipe.__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, str(script), str(bar)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    dma = foreign.ForeignDma([bar])
    try:
        first = int(proc.stdout.readline())
        ok, _, _ = dma.resolve([first, BAD_ADDRESS], [64, 64])
        assert ok.tolist() == [True, False] and dma.driver_pids == [proc.pid]
        proc.stdin.write("\n")
        proc.stdin.flush()
        second = int(proc.stdout.readline())
        ok, owner, offset = dma.resolve([second + 100], [8])          # not known yet: re-read, then found
        assert ok.tolist() == [True]
        dma.write(owner, offset, PacketBatch(np.frombuffer(b"DMAtest!", np.uint8).reshape(1, 8),
                                             np.array([8])))
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == b"DMAtest!".hex()       # landed in the driver's own memory
        assert not dma.driver_left()
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(10)
        assert dma.driver_left()

        def mapped_here() -> list[str]:
            return sorted(m.path for m in foreign.hugepage_mappings(os.getpid()) if "grow" in m.path)
        assert len(mapped_here()) == 2 and all(p.endswith("(deleted)") for p in mapped_here())
        dma.release()
        assert mapped_here() == []               # the driver's hugepages are not held here any more
        with pytest.raises(foreign.DriverLeft):          # no driver any more: nothing to resolve against
            dma.resolve([first], [64])
    finally:
        dma.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


HALF_DRIVER = r'''
import os, sys, time
from ixypipe.memory.arena import Arena
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import pci
from ixypipe.nic import registers as R
from ixypipe.nic.device import PortSpec
from ixypipe.nic.ixgbe import IxgbeDevice

root, first, second = sys.argv[1:4]
arena = Arena.create(8 << 20, hugepages_mode="require", tag="half1")
os.unlink(arena.path)
bufs = PacketBuffers.create(arena, 1024)
pool = Mempool.create(arena, bufs, "pool0", 0, 1024, 0)
dev = IxgbeDevice.open(PortSpec("p0", "ixgbe", first, rx_ring_size=256, tx_ring_size=256), arena, bufs, [pool],
                       sysfs_root=root, allow_iova=False)
print("first port up", flush=True)
sys.stdin.readline()                      # the model is stopped now
more = Arena.create(2 << 20, hugepages_mode="require", tag="half2")   # memory the model has never seen
os.unlink(more.path)
ring = int(more.phys(0))
bar = pci.open_device(second, root, require_root=False)
bar.write(R.SRRCTL(0), R.SRRCTL_DESCTYPE_ADV_ONEBUF)
bar.write(R.RDBAL(0), ring & 0xFFFFFFFF)
bar.write(R.RDBAH(0), ring >> 32)
bar.write(R.RDLEN(0), 256 * R.DESC_SIZE)
bar.set_flags(R.RXDCTL(0), R.RXDCTL_ENABLE)
print("second port's queue enabled", flush=True)
time.sleep(3600)
'''


def test_driver_killed_while_its_queue_waits_for_the_stopped_model_leaves_fresh_ports_for_the_next(tmp_path):
    """Issue 13's crash: the driver enables a queue on memory the model has not registered, and dies before
    the model's next step.  The model's lookup then finds no driver (once: an empty DMA table and an
    IndexError that killed the model); now it resets the ports, releases the memory and serves the next driver."""
    count = 2000
    ports = [SimPortConfig(name, generator=GeneratorConfig(packet_size=60, flows=4, count=count),
                           sink=SinkConfig(expect_touch=True)) for name in ("a", "b")]
    server = SimServer(ports, None)
    server.start()
    root = server.sysfs_root
    script = tmp_path / "half_driver.py"
    script.write_text(HALF_DRIVER)
    env = dict(os.environ, PYTHONPATH=str(Path(ixypipe.__file__).parents[1]))
    half = subprocess.Popen([sys.executable, str(script), str(root), server.addresses["a"], server.addresses["b"]],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc = None
    try:
        assert half.stdout.readline().strip() == "first port up", half.stderr.read()
        assert wait_for(lambda: len(foreign.hugepage_mappings(server.pid)) == 1)    # the first port's memory
        os.kill(server.pid, signal.SIGSTOP)
        try:
            half.stdin.write("\n")
            half.stdin.flush()
            assert half.stdout.readline().strip() == "second port's queue enabled"
            half.kill()
            half.wait(10)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        bar_b = root / "bus/pci/devices" / server.addresses["b"] / "resource0"
        assert wait_for(lambda: foreign.hugepage_mappings(server.pid) == [], 15)
        assert wait_for(lambda: np.fromfile(bar_b, "<u4")[R.RXDCTL(0) // 4] == 0, 15)   # port b reset
        assert server.is_alive()
        bar_a = root / "bus/pci/devices" / server.addresses["a"] / "resource0"
        assert np.fromfile(bar_a, "<u4")[R.LINKS // 4] & R.LINKS_UP == 0                   # port a reset
        # the next driver gets working ports
        proc = start_driver(tmp_path, root, "forward", [server.addresses["a"], server.addresses["b"]])
        server.start_traffic()
        assert wait_for(lambda: all(c.sink_received == count for c in server.counters().values())), \
            server.counters()
        result = finish_driver(proc, signal.SIGINT)
        proc = None
    finally:
        for p in (half, proc):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
        final = server.stop()
    assert result["received"] == [count, count] and result["transmitted"] == [count, count]
    for c in final.values():
        assert (c.sink_received, c.sink_lost, c.sink_corrupt, c.sink_untouched, c.dma_faults) == (count, 0, 0, 0, 0)


def test_sim_serve_exits_non_zero_naming_the_cause_when_its_model_dies():
    import psutil
    env = dict(os.environ, PYTHONPATH=str(Path(ixypipe.__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "ixypipe", "sim", "serve", "--ports", "1", "--wire", "0:sink"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stdout.readline()
        assert first.startswith("port p0  "), first
        root = Path(first.split("sysfs ")[1].split("/bus/pci/devices/")[0])
        model = [c for c in psutil.Process(proc.pid).children() if c.name() == "ixypipe-sim"]
        assert len(model) == 1
        model[0].kill()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert f"error: the model process (pid {model[0].pid}) died: killed by SIGKILL; the ports are gone" in err
    assert out.splitlines()[-1].startswith("final p0: ")
    assert not root.exists()


def test_a_sink_capture_that_cannot_be_written_is_refused_at_start():
    """/dev/full or a directory as the sink's pcap file: the simulator says so at start instead of dying
    at its first write (a write that fails later is counted, see test_sim_traffic)."""
    for path, why in (("/dev/full", "is a character device"), ("/tmp", "is a directory")):
        ports = [SimPortConfig("a", generator=GeneratorConfig(packet_size=60, count=COUNT)),
                 SimPortConfig("b", sink=SinkConfig(pcap=path))]
        server = SimServer(ports, None)
        with pytest.raises(SimServerError, match=f"port b: sink pcap: '{path}' {why}"):
            server.start()
        server.stop()


PCAP_DRIVER = r'''
import os, sys, time
import numpy as np
from ixypipe.memory.arena import Arena
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic.device import PortSpec
from ixypipe.nic.ixgbe import IxgbeDevice
from ixypipe.pcapfile import read_pcap

root, address, path = sys.argv[1:4]
frames = read_pcap(path).packets()
arena = Arena.create(8 << 20, hugepages_mode="require", tag="sendpcap")
os.unlink(arena.path)
bufs = PacketBuffers.create(arena, 2048)
pool = Mempool.create(arena, bufs, "pool0", 0, 2048, 0)
dev = IxgbeDevice.open(PortSpec("p0", "ixgbe", address, rx_ring_size=256, tx_ring_size=512), arena, bufs, [pool],
                       tx_done=pool.free, sysfs_root=root, allow_iova=False)
sent = 0
while sent < len(frames):
    idx = pool.alloc(min(64, len(frames) - sent))
    for k, i in enumerate(idx):
        f = frames[sent + k]
        bufs.data[i, :len(f)] = np.frombuffer(f, np.uint8)
        bufs.length[i] = len(f)
    done = dev.tx_batch(0, idx)
    if done < len(idx):
        pool.free(idx[done:])
        time.sleep(0.001)
    sent += done
assert dev.tx_drain(0, 30.0) == 0
dev.close()
print(sent, flush=True)
'''


def test_served_count_sink_counts_a_foreign_traffic_source_exactly(tmp_path):
    """Frames ixypipe's generator never made (random bytes of every size class, from a pcap file), sent by a
    driver process through `ixypipe sim serve --wire 0:pcap=FILE`: the counting sink reports exactly their
    packets, bytes and RFC 2819 sizes, judges none of them corrupt, and writes them all to FILE."""
    from ixypipe.pcapfile import PcapWriter, read_pcap
    from ixypipe.sim.traffic import FCS_LEN, SIZE_BUCKET_NAMES, SIZE_BUCKET_UPPER
    rng = np.random.default_rng(2819)
    lengths = [60, 61, 123, 124, 251, 252, 507, 508, 1019, 1020, 1514] + rng.integers(60, 1515, 1989).tolist()
    frames = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]
    source, captured = tmp_path / "foreign.pcap", tmp_path / "captured.pcap"
    with PcapWriter(source) as w:
        w.write_batch(frames)
    env = dict(os.environ, PYTHONPATH=str(Path(ixypipe.__file__).parents[1]))
    serve = subprocess.Popen([sys.executable, "-m", "ixypipe", "sim", "serve", "--ports", "1",
                              "--wire", f"0:pcap={captured}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        first = serve.stdout.readline()
        assert first.startswith("port p0  0000:5e:00.0  sysfs ") and "TX -> counting sink + pcap" in first, first
        root = first.split("sysfs ")[1].split("/bus/pci/devices/")[0]
        script = tmp_path / "send_pcap.py"
        script.write_text(PCAP_DRIVER)
        driver = subprocess.run([sys.executable, str(script), root, "0000:5e:00.0", str(source)],
                                capture_output=True, text=True, env=env, timeout=120)
        assert driver.returncode == 0 and driver.stdout.strip() == str(len(frames)), driver.stderr
        serve.send_signal(signal.SIGINT)
        out, err = serve.communicate(timeout=30)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.communicate()
    assert serve.returncode == 0, err
    buckets = np.bincount(np.searchsorted(SIZE_BUCKET_UPPER, np.array(lengths) + FCS_LEN),
                          minlength=len(SIZE_BUCKET_NAMES))
    assert buckets[1:7].all()                    # every size class from 64 to 1518 is in the traffic
    sizes = " ".join(f"{name}: {k}" for name, k in zip(SIZE_BUCKET_NAMES, buckets.tolist(), strict=True) if k)
    n = len(frames)
    assert out.splitlines()[-1] == (f"final p0: gen 0  rx 0 (missed 0)  tx {n}  sink {n} ({sum(lengths)} bytes; "
                                    f"sizes with FCS {sizes})  dma faults 0")
    assert read_pcap(captured).packets() == frames


def test_the_status_line_names_frames_the_mac_dropped_for_their_length():
    from ixypipe.commands.sim import counter_line
    from ixypipe.sim.world import PortCounters
    c = PortCounters(generated=10, rx_delivered=5, rx_missed=1, rx_undersize=3, rx_oversize=1)
    assert counter_line("p0", c, None, 0.0) == ("p0: gen 10  rx 5 (missed 1, runt 3, too_long 1)  tx 0  sink 0 "
                                                "(lost 0, reordered 0, corrupt 0, untouched 0)  dma faults 0")
    assert "(missed 0)" in counter_line("p0", PortCounters(), None, 0.0)        # nothing to name, nothing said
