"""``ixypipe fwd`` on virtio ports: the same Forwarder between two software virtio-net devices (both transports)
and between two vhost-user backends (DPDK testpmd's net_vhost), every packet accounted."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.support.system import needs_hugepages, needs_root


def fwd(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ixypipe", "fwd", *args], capture_output=True, text=True,
                          timeout=timeout)


def fwd_summary(stdout: str) -> dict:
    from tests.support.runs import json_objects

    found = [d for d in json_objects(stdout) if d["type"] == "fwd_summary"]
    assert found, stdout[-2000:]
    return found[-1]


@pytest.mark.parametrize("transport", ["legacy", "modern"])
def test_fwd_forwards_between_two_software_virtio_devices_and_every_packet_is_accounted(transport):
    """Generators at rate 0 (as fast as the RX virtqueues take) until 40,000 packets were received: each sink
    got exactly what the other port received less what its TX refused, touched, in order, intact."""
    res = fwd("--sim", "--driver", "virtio", "--transport", transport, "--ring", "256", "--packets", "40000",
              "--json")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    s = fwd_summary(res.stdout)
    assert s["ok"] is True and s["problems"] == [] and s["stop_reason"] == "40000 packets"
    ports = s["ports"]
    assert ports["p0"]["rx_packets"] + ports["p1"]["rx_packets"] >= 40_000
    for src, dst in (("p0", "p1"), ("p1", "p0")):
        a, b = ports[src], ports[dst]
        assert a["rx_packets"] > 0
        assert b["tx_packets"] + b["tx_dropped"] == a["rx_packets"]          # each received packet went on or
        assert a["sim"]["rx_delivered"] == a["rx_packets"]                    # was refused by TX, none kept
        assert b["sim"]["tx_sent"] == b["tx_packets"]
        assert b["sim"]["sink_received"] == b["tx_packets"]
        assert b["sim"]["sink_corrupt"] == b["sim"]["sink_untouched"] == b["sim"]["sink_reordered"] == 0
        assert a["sim"]["dma_faults"] == 0


def test_fwd_virtio_text_output_names_the_ports_and_the_verdict():
    res = fwd("--sim", "--driver", "virtio", "--duration", "2", "--rate", "50k", timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert re.search(r"^\[p0\] RX: \d+\.\d\d Mbit/s \d+\.\d\d Mpps$", res.stdout, re.M)
    assert "OK: every packet arrived intact or is counted as dropped" in res.stdout


def test_fwd_refuses_vhost_user_with_sim_and_names_socket_paths():
    res = fwd("--sim", "--driver", "vhost-user")
    assert res.returncode == 2 and "--sim simulates 82599s or virtio-net functions" in res.stderr
    res = fwd("--driver", "vhost-user", "/tmp/only-one.sock")
    assert res.returncode == 2 and "the forwarder needs exactly two socket paths, got 1" in res.stderr


@needs_root
@needs_hugepages
@pytest.mark.skipif(shutil.which("dpdk-testpmd") is None, reason="dpdk-testpmd is not installed "
                                                                 "(apt-get install dpdk-dev)")
def test_fwd_between_two_vhost_user_backends_counts_exactly_against_testpmd(tmp_path):
    """testpmd A (txonly) -> ixypipe fwd p0 -> p1 -> testpmd B (rxonly): B received exactly what fwd says p1
    transmitted, and p1 transmitted or refused everything p0 received."""
    from tests.test_vhost_user import accumulated, start_testpmd, stop_testpmd

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    source = start_testpmd(tmp_path / "a", "txonly")
    sink = start_testpmd(tmp_path / "b", "rxonly")
    try:
        res = fwd("--driver", "vhost-user", source.sock, sink.sock, "--ring", "256", "--packets", "20000", "--json")
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    finally:
        stop_testpmd(source)
        received_by_b = accumulated(stop_testpmd(sink), "RX-packets")
    s = fwd_summary(res.stdout)
    p0, p1 = s["ports"]["p0"], s["ports"]["p1"]
    assert s["ok"] is True and p0["rx_packets"] >= 20_000
    assert p1["tx_packets"] + p1["tx_dropped"] == p0["rx_packets"]
    assert p1["tx_packets"] > 0 and received_by_b == p1["tx_packets"]
    assert p0["tx_packets"] == p1["rx_packets"] == 0            # testpmd B sends nothing back
