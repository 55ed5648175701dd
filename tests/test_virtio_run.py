"""``ixypipe run pipelines/virtio-sim.toml``: two software virtio-net ports (one modern, one legacy) forwarding
through the virtio driver, every packet accounted."""

from __future__ import annotations

import pytest

from tests.support.runs import REPO, run, summary_of

VIRTIO_SIM = REPO / "pipelines" / "virtio-sim.toml"
COUNT = 20_000


@pytest.mark.parametrize("pairs", [1, 2])
def test_virtio_sim_forwards_every_generated_packet_exactly(tmp_path, pairs):
    # rate 0 (as fast as the RX virtqueue takes it) and a count: nothing is missed, so every counter is exact;
    # with two queue pairs (MQ) each port has two RX and two TX stages
    text = VIRTIO_SIM.read_text().replace("rate_mpps = 0.3", f"rate_mpps = 0\ncount = {COUNT}")
    text = text.replace("\nforward_to =", f"\nrx_queues = {pairs}\ntx_queues = {pairs}\nforward_to =")
    assert text.count(f"count = {COUNT}") == 2 and text.count(f"rx_queues = {pairs}") == 2
    path = tmp_path / "virtio.toml"
    path.write_text(text)
    res = run([str(path), "--packets", str(2 * COUNT), "--json"], timeout=180)
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["ok"] is True
    assert (s["received"], s["transmitted"], s["in_flight"]) == (2 * COUNT, 2 * COUNT, 0)
    assert not any(s["drops"].values())
    for name in ("p0", "p1"):
        assert s["ports"][name] == {"rx_packets": COUNT, "rx_bytes": 60 * COUNT, "tx_packets": COUNT,
                                    "tx_bytes": 60 * COUNT}
        sim = s["sim"][name]
        assert (sim["generated"], sim["rx_delivered"], sim["rx_missed"], sim["tx_sent"]) == (COUNT, COUNT, 0, COUNT)
        assert (sim["sink_received"], sim["sink_bytes"]) == (COUNT, 60 * COUNT)
        assert sim["sink_lost"] == sim["sink_reordered"] == sim["sink_corrupt"] == sim["sink_untouched"] == 0
        assert sim["dma_faults"] == 0


def test_virtio_sim_as_shipped_says_accounting_ok():
    res = run([str(VIRTIO_SIM), "--duration", "2"], timeout=180)
    assert res.returncode == 0, res.stderr
    assert "accounting OK" in res.stdout
    assert "[p1] TX:" in res.stdout


def test_preflight_checks_a_virtio_ports_pci_function(tmp_path):
    from ixypipe.pipeline.config import parse_pipeline
    from ixypipe.pipeline.preflight import preflight
    from tests.support.fakesys import FakeDevice, make_tree

    host = make_tree(tmp_path, [FakeDevice("0000:00:04.0", 0x1AF4, 0x1000, 0x020000, "virtio-pci", "virtio-pci"),
                                FakeDevice("0000:03:00.0", 0x8086, 0x10FB, 0x020000, "ixgbe", "ixgbe")],
                     drivers=["virtio-pci", "ixgbe"])
    text = ('[[ports]]\nname = "p0"\ndriver = "virtio"\npci = "0000:00:04.0"\n'
            '[[ports]]\nname = "p1"\ndriver = "virtio"\npci = "0000:03:00.0"\n')
    cfg = parse_pipeline(text, tmp_path / "v.toml")
    found = {f.what: f for f in preflight(cfg, sysfs_root=host.sysfs)}
    good, bad = found["port p0: PCI device 0000:00:04.0"], found["port p1: PCI device 0000:03:00.0"]
    assert good.ok and good.message == "a virtio-net function, bound to virtio-pci"
    assert not bad.ok and bad.message == ("PCI device 0000:03:00.0 (vendor 0x8086, device 0x10fb) is not a virtio "
                                         "device: the vendor is not 0x1af4")


def test_the_first_run_of_virtio_sim_names_the_virtio_kernels_it_compiles(tmp_path):
    from tests.test_fast_default import env_with, python

    code = ("from ixypipe.pipeline.config import load_pipeline; from ixypipe.pipeline.firstrun import uncached; "
            f"print(uncached(load_pipeline({str(VIRTIO_SIM)!r})))")
    r = python(code, env_with(tmp_path, NUMBA_CACHE_DIR=str(tmp_path / "cache")))
    assert r.returncode == 0, r.stderr
    from ixypipe.pipeline.firstrun import ALWAYS
    assert r.stdout.strip() == str([*ALWAYS, "ixypipe.nic.virtio_jit", "ixypipe.sim.virtio_kernels"])


def exact_summary(res, count: int) -> dict:
    """The run's summary, checked: ``count`` frames generated on each port, every one forwarded and verified."""
    s = summary_of(res.stdout)
    assert s["ok"] and (s["received"], s["transmitted"], s["in_flight"]) == (2 * count, 2 * count, 0)
    for name in ("p0", "p1"):
        sim = s["sim"][name]
        assert (sim["generated"], sim["sink_received"], sim["sink_lost"], sim["sink_corrupt"]) == (count, count, 0, 0)
    return s


def test_virtio_sim_on_the_numpy_paths_forwards_exactly(tmp_path):
    import subprocess

    from tests.support.runs import IXYPIPE
    from tests.test_fast_default import env_with

    count = 5000
    path = tmp_path / "virtio.toml"
    path.write_text(VIRTIO_SIM.read_text().replace("rate_mpps = 0.3", f"rate_mpps = 0\ncount = {count}"))
    res = subprocess.run([*IXYPIPE, "run", str(path), "--packets", str(2 * count), "--json"], capture_output=True,
                         text=True, timeout=300, cwd=REPO, env=env_with(tmp_path, IXYPIPE_NUMBA="off"))
    assert res.returncode == 0, res.stderr
    exact_summary(res, count)


def test_virtio_sim_on_the_python_stage_passes_forwards_exactly(tmp_path):
    """Ports with hot_path = "numpy" have no compiled queue kernels (VirtioDevice.compiled_rx/tx give None), so
    their RX and TX stages run the Python passes, the reference for the compiled loops the other tests run."""
    count = 5000
    text = VIRTIO_SIM.read_text().replace("rate_mpps = 0.3", f"rate_mpps = 0\ncount = {count}")
    text = text.replace('device = "virtio"', 'device = "virtio"\nhot_path = "numpy"')
    assert text.count('hot_path = "numpy"') == 2
    path = tmp_path / "virtio.toml"
    path.write_text(text)
    res = run([str(path), "--packets", str(2 * count), "--json"], timeout=180)
    assert res.returncode == 0, res.stderr
    s = exact_summary(res, count)
    for name in ("p0", "p1"):
        assert s["ports"][name]["tx_packets"] == count
