"""ixypipe gen: generated frames onto a pcap file, a software 82599 and an AF_PACKET interface."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from ixypipe.cli import main
from ixypipe.ops.generate import GenError, GenSession
from ixypipe.pcapfile import read_pcap
from ixypipe.sim.payload import SIM_FLOW_OFF, SIM_SEQ_OFF
from ixypipe.sim.traffic import Generator, PacketBatch, Sink
from tests.support.system import needs_root


def test_pcap_holds_every_frame_byte_exact(tmp_path):
    out = tmp_path / "gen.pcap"
    res = CliRunner().invoke(main, ["gen", "--pcap", str(out), "--count", "1000", "--flows", "4", "--size", "128",
                                    "--hugepages", "never", "--dst-mac", "02:00:00:00:00:09"])
    assert res.exit_code == 0, res.output
    assert re.search(r"sent 1000 packets \(128000 bytes\) in [\d.]+ s, [\d.]+ (pps|kpps|Mpps); stopped by count",
                     res.output)
    frames = read_pcap(out).packets()
    assert len(frames) == 1000 and {len(f) for f in frames} == {128}
    assert all(f[:6] == bytes.fromhex("020000000009") for f in frames)
    batch = PacketBatch.from_frames(frames)
    flows = batch.data[:, SIM_FLOW_OFF:SIM_FLOW_OFF + 2].copy().view("<u2")[:, 0]
    seqs = batch.data[:, SIM_SEQ_OFF:SIM_SEQ_OFF + 8].copy().view("<u8")[:, 0]
    assert (flows == np.arange(1000) % 4).all() and (seqs == np.arange(1000) // 4).all()
    # the frames are exactly what generator 0 makes: the sink finds nothing wrong
    ref = Generator(0, 128, 4, 1000, 0, bytes(6), bytes(6))
    sink = Sink({0: ref})
    sink.receive(batch)
    r = sink.result
    assert (r.received, r.lost, r.reordered, r.corrupt) == (1000, 0, 0, 0)


def test_sim_port_sink_sees_every_frame_paced():
    res = CliRunner().invoke(main, ["gen", "--sim", "--count", "5000", "--rate", "20k", "--flows", "8",
                                    "--hugepages", "never"])
    assert res.exit_code == 0, res.output
    assert "sink: received 5000 of 5000, lost 0, reordered 0, corrupt 0" in res.output
    seconds = float(re.search(r"in ([\d.]+) s", res.output).group(1))
    assert seconds >= 5000 / 20e3 * 0.9          # the rate held it back (0.25 s at 20 kpps)


def test_session_duration_and_stop():
    session = GenSession("sim", packet_size=64, flows=2, hugepages="never")
    try:
        result = session.run(session.generator(), duration=0.3)
        assert result.stop_reason == "duration 0.3 s" and result.sent > 0
        assert result.sink["sink_received"] == result.sent and result.sink["sink_corrupt"] == 0
        calls = []
        result = session.run(session.generator(), stop=lambda: calls.append(1) or len(calls) > 3)
        assert result.stop_reason == "ctrl-c"
    finally:
        session.close()
    assert session.arena is None and session.server is None


@pytest.mark.parametrize("args, message", [
    ([], "choose exactly one port: --sim, --interface IFACE or --pcap FILE"),
    (["--sim", "--pcap", "x.pcap"], "choose exactly one port"),
    (["--sim", "--size", "40"], "Invalid value for '--size': packet size must be 60..9018 bytes without FCS for "
                                "profile udp"),
    (["--sim", "--flows", "0"], "Invalid value for '--flows': must be 1..65535, got 0"),
    (["--sim", "--profile", "imix", "--flows", "5"], "Invalid value for '--flows': profile imix gives each flow one size"),
    (["--sim", "--dst-mac", "zz"], "'zz' is not a MAC address like 02:00:00:00:00:01"),
    (["--pcap", "/nonexistent/dir/x.pcap", "--count", "1"], "directory /nonexistent/dir for pcap file"),
])
def test_bad_input_is_named(args, message):
    res = CliRunner().invoke(main, ["gen", "--hugepages", "never", *args])
    assert res.exit_code in (1, 2) and message in res.output, res.output


def test_unknown_target():
    with pytest.raises(GenError, match="unknown target 'tap'; choose one of sim, af_packet, pcap"):
        GenSession("tap")


@needs_root
def test_af_packet_frames_arrive_on_the_peer(testbed, tmp_path):
    capture = testbed.a.capture(tmp_path / "cap.pcap", 200, 10.0)
    res = CliRunner().invoke(main, ["gen", "--interface", testbed.port_a, "--count", "200", "--size", "100",
                                    "--rate", "10k", "--hugepages", "never",
                                    "--dst-mac", testbed.a.mac])
    assert res.exit_code == 0, res.output
    got = [f for f in capture.frames() if len(f) == 100]
    assert len(got) == 200
    batch = PacketBatch.from_frames(got)
    sink = Sink({0: Generator(0, 100, 1, 200, 0, bytes(6), bytes(6))})
    sink.receive(batch)
    assert (sink.result.received, sink.result.lost, sink.result.corrupt) == (200, 0, 0)
