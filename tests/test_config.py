"""Pipeline files: the good ones load with the documented defaults, every bad one gets a clear ConfigError.

Each file in tests/bad_pipelines/ is wrong in one way; its expected message
(file, key path, line, what is allowed) is listed here and asserted as an
exact substring.  A hypothesis test mutates a valid document and checks that
the parser either accepts it or raises ConfigError, never anything else.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ixypipe.pcapfile import PcapWriter
from ixypipe.pipeline.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_BUFFERS_PER_QUEUE,
    DEFAULT_DESC_RING,
    DEFAULT_RING_SIZE,
    DEFAULT_STATS_INTERVAL,
    ConfigError,
    GeneratorSpec,
    PipelineConfig,
    SinkSpec,
    key_lines,
    load_pipeline,
    parse_pipeline,
)
from tests.support.tomltext import to_toml

HERE = Path(__file__).resolve().parent
BAD = HERE / "bad_pipelines"
FWD = HERE.parent / "pipelines" / "fwd.toml"
PORT_KEYS = "name, driver, rx_queues, tx_queues, rx_ring_size, tx_ring_size, promiscuous, forward_to"

# file -> what follows "<path>: " in the message (key path, line, what is wrong and what is allowed)
EXPECTED = {
    "toml_syntax": "not valid TOML: Expected '=' after a key in a key/value pair (at line 12, column 6)",
    "unknown_top_level_key": "routes (line 19): unknown key (top-level tables); allowed keys: "
                             "pipeline, ports, workers, cpus, stats",
    "unknown_port_key": f"ports[1].speed (line 14): unknown key for a 'sim' port; allowed keys: {PORT_KEYS}, "
                        "pci, generator, sink",
    "missing_port_name": "ports[1] (line 11): missing required key name (the port's name, [A-Za-z0-9_-]{1,15})",
    "bad_port_name": "ports[1].name (line 12): must be 1 to 15 of A-Z a-z 0-9 _ -, got 'port one'",
    "duplicate_port_names": "ports[1].name (line 12): duplicate port name 'p0' (already ports[0]); "
                            "port names must be unique",
    "bad_driver": "ports[1].driver (line 13): must be one of 'sim', 'ixgbe', 'virtio', 'vhost-user', 'af_packet', 'pcap', "
                  "got 'e1000'",
    "vhost_user_without_socket": "ports[0] (line 6): missing required key socket for a 'vhost-user' port (the "
                                 "backend's unix socket, e.g. \"/tmp/vhost-user0.sock\")",
    "virtio_without_pci": "ports[1] (line 11): missing required key pci for an 'virtio' port (its PCI address, ",
    "virtio_unpaired_queues": "ports[0].tx_queues (line 11): a virtio port's queues come in pairs (MQ): rx_queues "
                              "and tx_queues must be equal, at most 16; got 2 and 1",
    "transport_on_82599": "ports[0].transport (line 9): only for a virtio port (driver = \"virtio\", or a sim port "
                          "with device = \"virtio\")",
    "virtio_legacy_ring_sizes": "ports[0].tx_ring_size (line 12): a legacy virtio device has one queue size: "
                                "rx_ring_size (512) and tx_ring_size (256) must be equal",
    "ixgbe_without_pci": "ports[1] (line 11): missing required key pci for an 'ixgbe' port (its PCI address, "
                         "\"DDDD:BB:DD.F\", e.g. \"0000:03:00.0\")",
    "iommu_bad": "ports[0].iommu (line 9): must be one of 'vfio', 'none', 'auto', got 'on'",
    "bad_pci_format": "ports[1].pci (line 14): must be a PCI address \"DDDD:BB:DD.F\" (hex), e.g. \"0000:03:00.0\", "
                      "got '03:00.0'",
    "af_packet_without_interface": "ports[1] (line 11): missing required key interface for an 'af_packet' port",
    "pcap_without_path": "ports[1] (line 11): missing required key path for a 'pcap' port (the pcap file, "
                         "relative to the pipeline file's directory)",
    "pcap_two_queues": "ports[1].rx_queues (line 16): a 'pcap' port has exactly one RX and one TX queue, got 2",
    "ring_size_not_power_of_two": "pipeline.ring_size (line 5): must be a power of two from 64 to 65536, got 1000",
    "ring_size_too_large": "pipeline.ring_size (line 5): must be a power of two from 64 to 65536, got 131072",
    "desc_ring_not_power_of_two": "ports[0].rx_ring_size (line 10): must be a power of two from 8 to 4096, got 500",
    "desc_ring_too_large": "ports[1].tx_ring_size (line 15): must be a power of two from 8 to 4096, got 8192",
    "batch_size_zero": "pipeline.batch_size (line 4): must be a whole number from 1 to 4096, got 0",
    "buffer_size_not_power_of_two": "pipeline.buffer_size (line 5): must be a power of two from 256 to 16384, "
                                    "got 3000",
    "buffers_per_queue_too_small": "pipeline.buffers_per_queue (line 5): must be at least 1088 (port 'p0': "
                                   "rx_ring_size 512 + largest tx_ring_size 512 + 2 x batch_size 32)",
    "forward_to_missing_port": "ports[1].forward_to (line 14): must name a port of this file, one of 'p0', 'p1', "
                               "got 'p2'",
    "three_ports_without_forward_to": "ports[2] (line 16): missing forward_to: with 3 ports say where packets "
                                      "received on 'p2' go (one of 'p0', 'p1', 'p2')",
    "generator_on_ixgbe_port": f"ports[1].generator (line 17): unknown key for a 'ixgbe' port; allowed keys: "
                               f"{PORT_KEYS}, pci",
    "generator_packet_too_small": "ports[0].generator.packet_size (line 12): must be a whole number from 60 to "
                                  "9018, got 59",
    "generator_packet_too_large": "ports[1].generator.packet_size (line 17): must be a whole number from 60 to "
                                  "9018, got 9019",
    "generator_packet_larger_than_buffer": "ports[0].generator.packet_size (line 13): packet size 1000 does not fit "
                                           "a packet buffer: buffers of this size hold frames up to 960 bytes; a "
                                           "larger buffer_size (a power of two, e.g. 16384) makes room for jumbo "
                                           "frames ([pipeline] buffer_size = 1024)",
    "generator_flows_zero": "ports[0].generator.flows (line 12): must be a whole number from 1 to 65535, got 0",
    "sink_mode_bad": "ports[0].sink.mode (line 12): must be one of 'verify', 'count', got 'dump'",
    "sink_mode_and_verify": "ports[0].sink.verify (line 13): give mode or the older verify = true/false, not both",
    "sink_count_expect_touch": "ports[0].sink.expect_touch (line 13): needs mode = 'verify' (a 'count' sink does "
                               "not look inside frames), got mode = 'count'",
    "processes_zero": "workers.processes (line 18): must be a whole number from 1 to 64, got 0",
    "distribute_bad": "workers.distribute (line 18): must be one of 'flow', 'round-robin', got 'random'",
    "worker_not_builtin": "workers.function (line 17): 'tuoch' is not a built-in worker (forward, touch, macswap, "
                          "drop, count), nor 'package.module:function' or 'file.py:function'",
    "worker_module_missing": "workers.function (line 17): no module 'no_such_module_ixy'",
    "worker_file_missing": f"workers.function (line 17): no worker file {BAD / 'no_such_worker.py'}",
    "worker_function_missing": "workers.function (line 17): ixypipe.workers.builtin has no function 'reflect'",
    "cpus_missing_cpu": "cpus.workers[0] (line 21): CPU 4095 is not available on this machine; available CPUs: ",
    "cpus_not_a_list": "cpus.tx (line 20): must be a non-empty list of CPU ids (e.g. [2, 3]) or left out for "
                       "automatic placement, got 1",
    "hugepages_bad": "pipeline.hugepages (line 5): must be one of 'auto', 'require', 'never', got 'always'",
    "stats_interval_twice": "stats.interval (line 21): disagrees with pipeline.stats_interval (2); "
                            "give the interval once",
    "no_ports": "ports: no ports: add at least one [[ports]] table with a name and a driver",
    "wrong_type_batch_size": "pipeline.batch_size (line 4): must be a whole number from 1 to 4096, got '32'",
    "wrong_type_promiscuous": "ports[0].promiscuous (line 10): must be true or false, got 'yes'",
    "wrong_type_ports_table": "ports (line 6): must be an array of tables ([[ports]] ... ) with at least one port, "
                              "got a table",
    "wrong_type_rate": "ports[0].generator.rate_mpps (line 12): must be a number from 0 to 14.88, got 'fast'",
    "wrong_type_workers": "workers (line 2): must be a table ([workers]), got 'touch'",
    "sim_pci_collides_with_default": "ports[1].pci (line 12): PCI address 0000:5e:00.0 is also the address of port "
                                     "'p0' (ports[0], the simulator's default for a sim port without pci); ports "
                                     "'p0' and 'p1' need different addresses",
    "stats_interval_too_small": "pipeline.stats_interval (line 4): must be a number from 0.1 to 3600, got 1e-09",
    "generator_rate_above_line_rate": "ports[0].generator.rate_mpps (line 7): must be a number from 0 to 14.88, "
                                      "got 1e+300",
    "pipeline_name_with_escape": "pipeline.name (line 3): must be at most 64 printable characters (no control "
                                 "characters, NUL or newlines), got '\\x1b[31mred\\x00'",
    "options_nested_too_deeply": "workers.options.x[0][0][0][0][0][0][0][0][0][0][0][0][0][0] (line 7): nested too "
                                 "deeply (a pipeline file nests at most 16 levels of tables and arrays)",
    "sink_pcap_is_a_device": "ports[0].sink.pcap (line 8): '/dev/full' is a character device; an output must be a "
                             "regular file (it is created or replaced)",
    "cpus_listed_twice": "cpus.rx[1] (line 7): CPU 0 is listed twice",
}


def test_every_bad_file_has_an_expected_message():
    files = {p.stem for p in BAD.glob("*.toml")}
    assert files == set(EXPECTED)
    assert len(files) >= 20


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_pipeline_is_rejected_naming_file_key_and_line(name):
    path = BAD / f"{name}.toml"
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert f"{path}: {EXPECTED[name]}" in str(info.value)
    err = info.value
    assert err.file == str(path)
    match = re.match(r"([^ ]*) \(line (\d+)\)", EXPECTED[name])
    if match:   # the parts are kept apart for programs too
        assert (err.key, err.line) == (match.group(1), int(match.group(2)))


def test_missing_file_and_binary_file(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'nope.toml'}: no such pipeline file")):
        load_pipeline(tmp_path / "nope.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"[pipeline]\nname = \"\xff\xfe\"\n")
    with pytest.raises(ConfigError) as info:
        load_pipeline(binary)
    assert str(info.value) == f"{binary}: not UTF-8 text (byte 19): a pipeline file is TOML"


def test_fwd_toml_loads_as_written():
    cfg = load_pipeline(FWD)
    assert isinstance(cfg, PipelineConfig)
    assert (cfg.name, cfg.batch_size, cfg.ring_size, cfg.buffers_per_queue) == ("fwd", 32, 4096, 16384)
    assert (cfg.hugepages, cfg.on_stage_death, cfg.buffer_size) == ("auto", "stop", DEFAULT_BUFFER_SIZE)
    assert [(p.name, p.driver, p.forward_to) for p in cfg.ports] == [("p0", "sim", "p1"), ("p1", "sim", "p0")]
    assert [(p.rx_ring_size, p.tx_ring_size) for p in cfg.ports] == [(4096, 4096), (4096, 4096)]
    assert cfg.ports[0].generator == GeneratorSpec(packet_size=60, rate_mpps=0.3, flows=8, count=0)
    assert cfg.ports[1].sink == SinkSpec(mode="verify", expect_touch=True, pcap="")
    assert (cfg.workers.function, cfg.workers.processes, cfg.workers.distribute) == ("touch", 1, "flow")
    assert cfg.stats.interval == 1.0
    assert cfg.base_dir == FWD.parent


def test_minimal_file_gets_the_documented_defaults(tmp_path):
    cfg = parse_pipeline('[[ports]]\nname = "a"\ndriver = "sim"\n', tmp_path / "tiny.toml")
    assert cfg.name == "tiny"                        # the file name without .toml
    assert (cfg.batch_size, cfg.ring_size, cfg.buffer_size) == (DEFAULT_BATCH_SIZE, DEFAULT_RING_SIZE,
                                                                DEFAULT_BUFFER_SIZE)
    assert cfg.buffers_per_queue == DEFAULT_BUFFERS_PER_QUEUE
    assert (cfg.hugepages, cfg.on_stage_death) == ("auto", "stop")
    port = cfg.ports[0]
    assert (port.rx_queues, port.tx_queues, port.rx_ring_size, port.tx_ring_size) == (1, 1, DEFAULT_DESC_RING,
                                                                                      DEFAULT_DESC_RING)
    assert port.promiscuous is True and port.forward_to == "a"   # one port sends back out of itself
    assert port.generator is None and port.sink is None and port.pci == ""
    assert (cfg.workers.function, cfg.workers.processes, cfg.workers.distribute, cfg.workers.per_packet) == (
        "forward", 1, "flow", False)    # no [workers]: forward
    assert (cfg.cpus.rx, cfg.cpus.workers, cfg.cpus.tx, cfg.cpus.sim) == (None, None, None, None)
    assert (cfg.stats.interval, cfg.stats.json) == (DEFAULT_STATS_INTERVAL, False)


def test_two_ports_forward_to_each_other_and_big_rings_raise_the_pool(tmp_path):
    text = ('[[ports]]\nname = "a"\ndriver = "ixgbe"\npci = "0000:03:00.0"\nrx_ring_size = 4096\n'
            '[[ports]]\nname = "b"\ndriver = "ixgbe"\npci = "0000:03:00.1"\n')
    cfg = parse_pipeline(text, tmp_path / "two.toml")
    assert [p.forward_to for p in cfg.ports] == ["b", "a"]
    assert cfg.buffers_per_queue == 4096 + 512 + 2 * DEFAULT_BATCH_SIZE
    assert cfg.ports[0].to_spec().address == "0000:03:00.0"


def test_relative_paths_resolve_against_the_pipeline_file(tmp_path):
    PcapWriter(tmp_path / "in.pcap").close()      # a valid (empty) capture: the file is checked
    text = ('[[ports]]\nname = "f"\ndriver = "pcap"\npath = "in.pcap"\nloop = 3\n'
            '[workers]\nfunction = "w.py:keep"\n')
    (tmp_path / "w.py").write_text("def keep(batch):\n    return None\n")
    cfg = parse_pipeline(text, tmp_path / "p.toml")
    spec = cfg.ports[0].to_spec()
    assert spec.address == str(tmp_path / "in.pcap")
    assert spec.options == {"mode": "read", "loop": 3, "rate_mpps": 0.0}
    assert cfg.workers.function == "w.py:keep"


@pytest.mark.parametrize(("keys", "expected"), [
    ("", {"mode": "client", "connect_timeout": 30.0}),
    ('mode = "server"\nconnect_timeout = 120', {"mode": "server", "connect_timeout": 120}),
])
def test_a_vhost_user_port_in_client_or_server_mode(tmp_path, keys, expected):
    text = f'[[ports]]\nname = "v"\ndriver = "vhost-user"\nsocket = "v.sock"\n{keys}\n'
    spec = parse_pipeline(text, tmp_path / "v.toml").ports[0].to_spec()
    assert spec.address == str(tmp_path / "v.sock")
    assert {k: spec.options[k] for k in expected} == expected


@pytest.mark.parametrize(("line", "message"), [
    ('mode = "both"', "ports[0].mode (line 5): must be one of 'client', 'server', got 'both'"),
    ("connect_timeout = 0", "ports[0].connect_timeout (line 5): must be a number from 0.1 to 86400, got 0"),
])
def test_a_vhost_user_port_with_a_bad_mode_or_timeout_is_refused(tmp_path, line, message):
    text = f'[[ports]]\nname = "v"\ndriver = "vhost-user"\nsocket = "v.sock"\n{line}\n'
    with pytest.raises(ConfigError) as err:
        parse_pipeline(text, tmp_path / "v.toml")
    assert message in str(err.value)


def test_key_lines_follow_arrays_of_tables_and_skip_multiline_values():
    text = ('a = 1\n[t]\nb = """x\nc = 2\n"""\n[[ports]]\nname = "p0"\nlist = [\n  1,\n]\n'
            '[ports.generator]\nflows = 2\n[[ports]]\n"name" = "p1"\n')
    lines = key_lines(text)
    assert lines["a"] == 1 and lines["t.b"] == 3 and "t.c" not in lines
    assert lines["ports[0]"] == 6 and lines["ports[0].name"] == 7 and lines["ports[0].list"] == 8
    assert lines["ports[0].generator.flows"] == 12 and lines["ports[1].name"] == 14


# ---- hypothesis: mutations of a valid document ------------------------------------------------
VALID = {
    "pipeline": {"name": "h", "batch_size": 32, "ring_size": 1024, "buffer_size": 2048,
                 "buffers_per_queue": 4096, "hugepages": "never", "on_stage_death": "stop"},
    "ports": [
        {"name": "p0", "driver": "sim", "forward_to": "p1", "rx_ring_size": 512, "tx_ring_size": 512,
         "generator": {"packet_size": 60, "rate_mpps": 0.5, "flows": 4, "count": 0},
         "sink": {"verify": True, "expect_touch": True}},
        {"name": "p1", "driver": "ixgbe", "pci": "0000:03:00.0", "forward_to": "p0", "promiscuous": True},
    ],
    "workers": {"function": "touch", "processes": 2, "distribute": "flow", "per_packet": False},
    "cpus": {"rx": [0]},
    "stats": {"interval": 1.0, "json": False},
}
KNOWN_KEYS = sorted({"pipeline", "ports", "workers", "cpus", "stats", "name", "batch_size", "ring_size",
                     "buffer_size", "buffers_per_queue", "hugepages", "on_stage_death", "stats_interval",
                     "driver", "pci", "interface", "path", "mode", "loop", "rate_mpps", "generator", "sink",
                     "rx_queues", "tx_queues", "forward_to", "packet_size", "flows", "count", "verify",
                     "expect_touch", "pcap", "function", "processes", "distribute", "per_packet", "rx", "tx",
                     "sim", "interval", "json", "qdisc_bypass", "fanout_defrag"})
INTERESTING = [0, 1, -1, 7, 8, 59, 60, 63, 64, 256, 512, 1000, 1024, 1514, 1515, 4096, 65536, 2**40,
               "sim", "ixgbe", "af_packet", "pcap", "p0", "p1", "", "flow", "round-robin", "never", "touch",
               "macswap", "x.py:f", "os:nothing_here", ":f", "a\x00.py:f", "0000:03:00.0", "veth0",
               "/nonexistent/dir/x.pcap", "write", "read", "restart", 0.0, -0.5, 1e300, math.inf, math.nan]
SCALARS = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(), st.text(max_size=12), st.booleans(),
                    st.sampled_from(INTERESTING))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KNOWN_KEYS), inner, max_size=3)), max_leaves=6)
def places(doc) -> list[tuple[object, object]]:
    """Every (container, key or index) in the document, to mutate."""
    found = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for k, v in items:
        found.append((doc, k))
        if isinstance(v, dict | list):
            found.extend(places(v))
    return found


def test_the_hypothesis_base_document_is_valid(tmp_path):
    cfg = parse_pipeline(to_toml(VALID), tmp_path / "h.toml")
    assert cfg.ports[1].pci == "0000:03:00.0" and cfg.workers.processes == 2
    assert cfg.ports[0].generator == GeneratorSpec(60, 0.5, 4, 0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_documents_are_accepted_or_rejected_with_config_error(data, tmp_path):
    doc = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        spots = places(doc)
        container, key = data.draw(st.sampled_from(spots), label="where")
        action = data.draw(st.sampled_from(["drop", "replace", "add"]), label="action")
        if action == "drop":
            del container[key]
        elif action == "replace":
            container[key] = data.draw(VALUES, label="value")
        else:
            target = container[key] if isinstance(container[key], dict) else doc
            extra = data.draw(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(min_size=1, max_size=8)), label="key")
            target[extra] = data.draw(VALUES, label="value")
    text = to_toml(doc)
    try:
        cfg = parse_pipeline(text, tmp_path / "mutated.toml")
    except ConfigError as exc:
        assert str(exc).startswith(str(tmp_path / "mutated.toml"))
        assert exc.message
    else:
        assert cfg.ports and all(p.forward_to in {q.name for q in cfg.ports} for p in cfg.ports)


def test_the_reference_example_is_valid_and_its_values_are_the_defaults(tmp_path):
    reference = (HERE.parent / "docs" / "pipeline-file.md").read_text()
    section = reference.split("## Example", 1)[1]
    example = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    PcapWriter(tmp_path / "in.pcap").close()      # a valid (empty) capture: the file is checked
    documented = parse_pipeline(example, tmp_path / "fwd.toml")
    # the same ports with nothing but the required keys: every value the reference shows is the default
    bare = parse_pipeline('[[ports]]\nname = "p0"\ndriver = "sim"\nforward_to = "p1"\n[ports.generator]\n'
                          '[ports.sink]\n[[ports]]\nname = "p1"\ndriver = "af_packet"\nforward_to = "p0"\n'
                          'interface = "veth0"\n[[ports]]\nname = "p2"\ndriver = "pcap"\nforward_to = "p0"\n'
                          'path = "in.pcap"\n', tmp_path / "fwd.toml")
    assert documented == bare
    keys = set(re.findall(r"^#? ?([a-z_]+) = ", example, re.M))
    # the keys shaping the generator's flows have their own page, with their own example
    shaping = re.search(r"```toml\n(.*?)```", (HERE.parent / "docs" / "generator.md").read_text(), re.S).group(1)
    keys |= set(re.findall(r"^#? ?([a-z_]+) = ", shaping, re.M))
    # and the virtio and vhost-user ports theirs
    for block in re.findall(r"```toml\n(.*?)```", (HERE.parent / "docs" / "virtio.md").read_text(), re.S):
        keys |= set(re.findall(r"^#? ?([a-z_]+) = ", block, re.M))
    from ixypipe.pipeline import config
    every_key = {*config.PIPELINE_KEYS, *config.PORT_COMMON_KEYS, *sum(config.PORT_DRIVER_KEYS.values(), ()),
                 *config.GENERATOR_KEYS, *config.SINK_KEYS, *config.WORKERS_KEYS, *config.CPU_ROLES,
                 *config.STATS_KEYS} - {"generator", "sink", "options"}
    assert every_key <= keys, every_key - keys


@pytest.mark.parametrize("table, expected", [
    ('mode = "count"\npcap = "out.pcap"', ("count", False, "out.pcap")),
    ('mode = "verify"\nexpect_touch = true', ("verify", True, "")),
    ("verify = false", ("count", False, "")),                # the older spelling of a counting sink
    ("", ("verify", False, "")),
])
def test_sink_modes(tmp_path, table, expected):
    text = f'[[ports]]\nname = "a"\ndriver = "sim"\n\n[ports.sink]\n{table}\n'
    sink = parse_pipeline(text, tmp_path / "s.toml").ports[0].sink
    mode, touch, pcap = expected
    assert sink == SinkSpec(mode, touch, str(tmp_path / pcap) if pcap else "")
    assert sink.verify == (mode == "verify")


@pytest.mark.parametrize(("line", "expected"), [
    ("stall_timeout = 0.1", "pipeline.stall_timeout (line 2): must be a number from 0.5 to 600, got 0.1"),
    ("stall_timeout = 1e9", "pipeline.stall_timeout (line 2): must be a number from 0.5 to 600, "
                            "got 1000000000.0"),
    ("stall_timeout = 'long'", "pipeline.stall_timeout (line 2): must be a number from 0.5 to 600, got 'long'"),
    ("max_restarts = -1", "pipeline.max_restarts (line 2): must be a whole number from 0 to 1000, got -1"),
    ("max_restarts = 1.5", "pipeline.max_restarts (line 2): must be a whole number from 0 to 1000, got 1.5"),
])
def test_liveness_keys_are_checked_against_their_ranges(tmp_path, line, expected):
    with pytest.raises(ConfigError) as info:
        parse_pipeline(f'[pipeline]\n{line}\n[[ports]]\nname = "a"\ndriver = "sim"\n', tmp_path / "p.toml")
    assert str(info.value).endswith(expected), str(info.value)


def test_liveness_keys_default_and_take_values(tmp_path):
    ports = '[[ports]]\nname = "a"\ndriver = "sim"\n'
    cfg = parse_pipeline(ports, tmp_path / "p.toml")
    assert (cfg.stall_timeout, cfg.max_restarts) == (2.0, 5)
    cfg = parse_pipeline(f"[pipeline]\nstall_timeout = 10\nmax_restarts = 0\n{ports}", tmp_path / "p.toml")
    assert (cfg.stall_timeout, cfg.max_restarts) == (10.0, 0)


@pytest.mark.parametrize("lines, size, ok", [("", 1980, True), ("", 1981, False), ('profile = "vlan"\n', 1984, True)])
def test_generator_frames_must_fit_the_max_frame_size_the_82599_driver_sets(tmp_path, lines, size, ok):
    text = FWD.read_text().replace("packet_size = 60\nrate_mpps = 0.3 ", f"{lines}packet_size = {size}\nrate_mpps = 0.3 ", 1)
    if ok:
        assert parse_pipeline(text, tmp_path / "p.toml").ports[0].generator.packet_size == size
        return
    with pytest.raises(ConfigError) as info:
        parse_pipeline(text, tmp_path / "p.toml")
    assert str(info.value) == (
        f"{tmp_path / 'p.toml'}: ports[0].generator.packet_size (line 28): packet size 1981 is longer than the port "
        "takes: with 2048-byte buffers its 82599 driver sets a max frame size of 1984 bytes with FCS (1980 without, "
        "1984 with an 802.1Q tag) and the NIC drops longer frames; a larger buffer_size makes room ([pipeline] "
        "buffer_size = 2048)")
    text = text.replace("[pipeline]\n", "[pipeline]\nbuffer_size = 4096\n", 1)
    assert parse_pipeline(text, tmp_path / "p.toml").ports[0].generator.packet_size == 1981
