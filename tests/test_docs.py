"""The README and docs/: what they show runs and gives what they say, and their links lead somewhere.

docs/ as a whole is built by `mkdocs build --strict` in CI (.ci/run), which fails on a broken link or
anchor between its pages; the README lives outside it, so its links are checked here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ixypipe.workers.api import Batch, WorkerContext

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "dns-sample.pcap"


def test_the_readme_is_at_most_300_lines():
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


def test_every_relative_link_of_the_readme_names_a_file():
    readme = (REPO / "README.md").read_text()
    links = [t for t in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme) if "://" not in t]
    assert len(links) >= 10
    missing = [t for t in links if not (REPO / t).is_file()]
    assert not missing


def test_every_docs_page_is_in_the_mkdocs_nav():
    nav = (REPO / "mkdocs.yml").read_text()
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert pages == set(re.findall(r"([a-z-]+\.md)", nav))


def worker_api_namespace(monkeypatch) -> dict:
    """Run every python block of docs/worker-api.md in order, in one namespace, from the repository."""
    monkeypatch.chdir(REPO)
    text = (REPO / "docs" / "worker-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 10
    ns: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"worker-api.md block {i}", "exec"), ns)
    return ns


def test_the_worker_api_examples_run_and_give_what_they_say(monkeypatch, capsys):
    ns = worker_api_namespace(monkeypatch)
    # the sample: 10.1.2.3 DNS query, 192.0.2.7 query, VLAN 7 198.51.100.9 query, a reply from 10.0.0.53,
    # a TCP SYN from 192.0.2.7, an IPv6 query
    assert ns["inside"].tolist() == [True, False, False, True, False, False]
    assert ns["syn"].tolist() == [False, False, False, False, True, False]
    assert ns["vlan7"].tolist() == [False, False, True, False, False, False]
    assert ns["batch"].counters == {"dns_dropped": 5}
    text = (REPO / "docs" / "worker-api.md").read_text()
    cut = {"batch": Batch.from_pcap(SAMPLE)}
    exec(next(c for c in re.findall(r"```python\n(.*?)```", text, re.S) if "set_lengths" in c), cut)
    assert cut["first"][12:14].tobytes() == b"\x08\x00"
    assert cut["batch"].lengths.tolist() == [64, 64, 64, 64, 54, 64]
    assert "[False, False, False, False, True, False] {'dns_dropped': 5}" in capsys.readouterr().out

    batch = Batch.from_pcap(SAMPLE)
    assert ns["no_foreign_dns"](batch).tolist() == [True, False, False, True, True, True]

    batch = Batch.from_pcap(SAMPLE)
    ns["router"](batch)
    assert batch.counters == {"expired": 0}
    assert (batch.src_mac() == [2, 0, 0, 0, 0, 0xfe]).all()
    assert [bool((m == [2, 0, 0, 0, 0, 1]).all()) for m in batch.dst_mac()] == [False, False, False, True, False, False]
    assert (batch.ipv4.ttl[batch.ipv4.valid] == 63).all() and batch.ipv6.hop_limit[5] == 63


def test_the_worker_api_state_example_blocks_what_setup_read(monkeypatch, tmp_path):
    ns = worker_api_namespace(monkeypatch)
    (tmp_path / "blocklist.txt").write_text("192.0.2.0/24\n\n")
    ctx = WorkerContext(worker=7, workers=8, port_names=["in", "out"], base_dir=str(tmp_path))
    ns["setup"](ctx)
    batch = Batch.from_pcap(SAMPLE, ctx=ctx)
    assert ns["block"](batch).tolist() == [True, False, True, True, False, True]
    batch.count("blocked", 2)
    ns["teardown"](ctx)
    written = Path("/tmp/seen-7.csv")
    try:
        assert written.read_text().splitlines() == ["blocked,2"]
    finally:
        written.unlink()


def offline_section(tmp_path: Path) -> str:
    """The README's "Try a worker offline" section; its dns_filter.py is written into ``tmp_path``."""
    section = (REPO / "README.md").read_text().split("## Try a worker offline", 1)[1].split("\n## ", 1)[0]
    (tmp_path / "dns_filter.py").write_text(section.split("```python\n", 1)[1].split("```", 1)[0])
    return section


def test_the_readme_sample_lines_are_what_ixypipe_try_prints(tmp_path):
    section = offline_section(tmp_path)
    shown = section.split("The sample prints", 1)[1].split("```\n", 2)[1].splitlines()
    assert len(shown) == 4
    done = subprocess.run([sys.executable, "-m", "ixypipe", "try", "dns_filter.py:dns_filter", str(SAMPLE)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    for line in shown:
        assert line in printed
    assert sum(line.endswith(" DROP") for line in printed) == 3
    assert np.count_nonzero([line.endswith(" out") for line in printed]) == 3



def test_the_readme_dns_pipeline_runs_and_ends_as_the_readme_says(tmp_path):
    """The README's dns.toml beside its dns_filter.py, run as shown: every outside query dropped by the worker
    and counted, every inside one at p0's sink, and the summary's words as the README quotes them."""
    section = offline_section(tmp_path)
    (tmp_path / "dns.toml").write_text(section.split("```toml\n", 1)[1].split("```", 1)[0])
    done = subprocess.run([sys.executable, "-m", "ixypipe", "run", "dns.toml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    said = section.split("```toml\n", 1)[1].split("```", 1)[1]
    quotes = re.findall(r"`([^`]*40,000[^`]*)`", said)
    assert len(quotes) == 2, quotes                     # the drops and the worker's counter
    for quoted in quotes:
        words = r"\s+".join(map(re.escape, quoted.split()))        # the summary aligns its columns
        assert re.search(words, done.stdout), (quoted, done.stdout)
    assert re.search(r"sim p0: generated 40,000, missed at RX 0, sink received 40,000, lost 0", done.stdout)
    assert "accounting OK" in done.stdout

def mkdocs_build(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(root / "site")], cwd=root, capture_output=True, text=True, timeout=120)


def test_the_docs_build_strict_and_a_broken_anchor_fails_it(tmp_path):
    """What .ci/run does: `mkdocs build --strict` passes on docs/, and fails on a link to a missing anchor."""
    pytest.importorskip("mkdocs", reason="pip install -e '.[docs]'")
    import shutil
    for root, broken in ((tmp_path / "good", ""), (tmp_path / "bad", "[x](worker-api.md#no-such-section)\n")):
        shutil.copytree(REPO / "docs", root / "docs")
        shutil.copy(REPO / "mkdocs.yml", root)
        with open(root / "docs" / "index.md", "a") as f:
            f.write(broken)
    good, bad = mkdocs_build(tmp_path / "good"), mkdocs_build(tmp_path / "bad")
    assert good.returncode == 0, good.stderr
    assert bad.returncode == 1
    assert "does not contain an anchor '#no-such-section'" in bad.stderr
