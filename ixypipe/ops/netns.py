"""Test-host helpers: two end hosts in network namespaces of their own, joined through veth pairs.

``VethTestbed`` builds host A and host B, each in a namespace with a unique
name (``ixyt-<pid>-<hex>-a`` / ``-b``), with one veth pair each: the host's
end (``eth0``, an address in 10.77.0.0/24) lives in its namespace, the other
end (``ixy<hex>a`` / ``ixy<hex>b``) stays in the caller's namespace, where
ixypipe - or a Linux bridge, for comparison - joins the two as a bump in the
wire.  IPv6 is switched off on every end (no router solicitations or MLD
reports in the counts) and checksum and segmentation offloads are switched
off on the hosts' ends, so frames on the wire are real, complete frames.
Everything is removed by ``close`` (also when building failed half-way and
when the process exits); ``remove_stale`` removes what a killed run left.

With ``wire=True`` the outer ends live in a third namespace (``-w``) instead
of the caller's, so nothing is added to the root namespace; ixypipe then runs
there (``ip netns exec <wire> ixypipe run ...``).  A testbed with a ``name``
(namespaces ``ixyn-<name>-a|b|w``) can be kept past the process
(``keep``): its description is saved as JSON in STATE_DIR, where
``ixypipe netns down`` and ``status`` (ixypipe/commands/netns.py) find it
and ``VethTestbed.from_state`` turns it back into a testbed to ``close``.
All commands go through ``ip`` and ``ethtool``; commands in a host run with
``ip netns exec``.  ``python -m ixypipe.ops.netns send|capture`` puts exact
frames on a host's interface or records what arrives there (a raw packet
socket, frames in pcap files), so tests compare bytes, not just counts.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ixypipe.nic.af_packet_abi import ETH_P_ALL, PACKET_IGNORE_OUTGOING, SOL_PACKET
from ixypipe.protocols import ETH_HEADER_LEN, ETH_TYPE_OFF

NETNS_PREFIX = "ixyt"
KEPT_PREFIX = "ixyn"             # testbeds kept by `ixypipe netns up`: ixyn-<name>-a|b|w (no pid in it)
STATE_DIR = Path(os.environ.get("IXYPIPE_NETNS_STATE", "/run/ixypipe/netns"))
NAME_FORM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]{0,15}$")
DEFAULT_SUBNET = "10.77.0"
COMMAND_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0              # `netns down`: what runs in a testbed has this long to stop on SIGTERM
CAPTURE_BUFFER = 64 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_live: set[VethTestbed] = set()


class NetnsError(RuntimeError):
    """A namespace, link or command of the testbed failed; the message has the command and its error."""


def run(argv: list[str], timeout: float = COMMAND_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise NetnsError(f"{argv[0]} is not installed (Debian: apt-get install iproute2 ethtool)") from None
    if check and res.returncode:
        raise NetnsError(f"`{' '.join(argv)}` failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res


def _write_sysctl(path: str, value: str, netns: str | None = None) -> None:
    if netns is None:
        with contextlib.suppress(OSError):
            Path(path).write_text(value)
        return
    run(["ip", "netns", "exec", netns, "sh", "-c", f"[ -e {path} ] && echo {value} > {path} || true"])


@dataclass
class Host:
    """An end host: a namespace with one interface, ``ifname``, holding ``ip``."""
    netns: str
    ip: str
    peer: str                    # the veth end outside, where the bump in the wire attaches
    ifname: str = "eth0"
    procs: list[subprocess.Popen] = field(default_factory=list)

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, argv: list[str], timeout: float = COMMAND_TIMEOUT, check: bool = False,
            **kw) -> subprocess.CompletedProcess:
        """Run a command inside the host (bounded by ``timeout``)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        res = subprocess.run(self.argv(argv), timeout=timeout, **kw)
        if check and res.returncode:
            raise NetnsError(f"`{' '.join(argv)}` in {self.netns} failed ({res.returncode}): {res.stderr}")
        return res

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        """Start a command inside the host; the testbed stops it at close if it still runs."""
        proc = subprocess.Popen(self.argv(argv), **kw)
        self.procs.append(proc)
        return proc

    @property
    def mac(self) -> str:
        return self.run(["cat", f"/sys/class/net/{self.ifname}/address"], check=True).stdout.strip()

    def counter(self, name: str) -> int:
        """An interface statistic of the host's end, e.g. ``rx_packets``."""
        out = self.run(["cat", f"/sys/class/net/{self.ifname}/statistics/{name}"], check=True).stdout
        return int(out)

    def send(self, pcap: Path, timeout: float = COMMAND_TIMEOUT) -> int:
        """Put every frame of ``pcap`` on the host's interface, in order; returns how many."""
        res = self.run([sys.executable, "-m", "ixypipe.ops.netns", "send", self.ifname, str(pcap)],
                       timeout=timeout, check=True)
        return int(res.stdout.split()[-1])

    def capture(self, pcap: Path, count: int, seconds: float, ethertype: int | None = None) -> Capture:
        """Start recording frames arriving on the host's interface (stops after ``count`` or ``seconds``)."""
        argv = [sys.executable, "-m", "ixypipe.ops.netns", "capture", self.ifname, str(pcap), str(count), str(seconds)]
        if ethertype is not None:
            argv.append(hex(ethertype))
        proc = self.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise NetnsError(f"capture in {self.netns} did not start: {line}{proc.stderr.read()}")
        return Capture(proc, Path(pcap), seconds)

    def stop_processes(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(3)
        self.procs.clear()


@dataclass
class Capture:
    proc: subprocess.Popen
    path: Path

    seconds: float

    def frames(self) -> list[bytes]:
        """Wait for the capture to end; the frames it recorded."""
        from ixypipe.pcapfile import read_pcap

        out, err = self.proc.communicate(timeout=self.seconds + COMMAND_TIMEOUT)
        if self.proc.returncode:
            raise NetnsError(f"capture failed ({self.proc.returncode}): {err}")
        return read_pcap(self.path).packets()


class VethTestbed:
    """Host A and host B in namespaces of their own; ``port_a`` / ``port_b`` are the outer veth ends.

    Use as a context manager (or call ``close``)::

        with VethTestbed() as tb:
            # bridge tb.port_a and tb.port_b somehow, then
            tb.a.run(["ping", "-c", "3", tb.b.ip])
    """

    def __init__(self, subnet: str = DEFAULT_SUBNET, mtu: int = 1500, offloads: bool = False,
                 name: str | None = None, wire: bool = False, _build: bool = True):
        self.tag = secrets.token_hex(3)
        if name is not None and not NAME_FORM.match(name):
            raise NetnsError(f"testbed name {name!r}: 1-16 letters, digits or '_', starting with a letter or digit")
        self.name = name
        base = f"{KEPT_PREFIX}-{name}" if name else f"{NETNS_PREFIX}-{os.getpid()}-{self.tag}"
        self.wire = f"{base}-w" if wire else None
        self.port_a = f"ixy{self.tag}a"
        self.port_b = f"ixy{self.tag}b"
        self.a = Host(f"{base}-a", f"{subnet}.1", self.port_a)
        self.b = Host(f"{base}-b", f"{subnet}.2", self.port_b)
        self.bridge_name = f"ixy{self.tag}br"
        self.subnet = subnet
        self.mtu = mtu
        self.offloads = offloads
        self.closed = False
        if not _build:
            return
        taken = sorted(set(self.namespaces) & set(list_namespaces()))
        if taken:                             # never build into (or, on failure, delete) someone else's
            raise NetnsError(f"namespace {', '.join(taken)} exists already")
        _live.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    @property
    def namespaces(self) -> list[str]:
        return [h.netns for h in self.hosts] + ([self.wire] if self.wire else [])

    def outer(self, argv: list[str]) -> list[str]:
        """``argv`` run where the outer ends live (the wire namespace, or the caller's)."""
        return ["ip", "netns", "exec", self.wire, *argv] if self.wire else argv

    # ---- kept past the process: a description as JSON, and a testbed made from it again ----
    def keep(self) -> dict:
        """Leave the testbed up when this process exits; returns its description (see ``from_state``)."""
        _live.discard(self)
        return self.state()

    def state(self) -> dict:
        hosts = {key: {"netns": h.netns, "interface": h.ifname, "ip": h.ip, "outer": h.peer}
                 for key, h in zip("ab", self.hosts, strict=True)}
        return {"name": self.name, "tag": self.tag, "wire": self.wire, "subnet": self.subnet, "mtu": self.mtu,
                "hosts": hosts, "bridge": self.bridge_name, "namespaces": self.namespaces}

    @classmethod
    def from_state(cls, state: dict) -> VethTestbed:
        """The testbed a ``state`` describes, to ``close`` it (or ``add_bridge``); builds nothing."""
        tb = cls(subnet=state["subnet"], mtu=state["mtu"], name=state["name"], wire=bool(state["wire"]),
                 _build=False)
        tb.tag, tb.wire, tb.bridge_name = state["tag"], state["wire"], state["bridge"]
        for host, key in zip(tb.hosts, "ab", strict=True):
            saved = state["hosts"][key]
            host.netns, host.ifname, host.ip, host.peer = saved["netns"], saved["interface"], saved["ip"], \
                saved["outer"]
        tb.port_a, tb.port_b = tb.a.peer, tb.b.peer
        return tb

    @property
    def hosts(self) -> tuple[Host, Host]:
        return self.a, self.b

    def _build(self) -> None:
        for netns in self.namespaces:
            run(["ip", "netns", "add", netns])
            for scope in ("all", "default"):       # before a link moves in, so it starts without IPv6
                _write_sysctl(f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6", "1", netns)
        for host in self.hosts:
            run(self.outer(["ip", "link", "add", host.peer, "mtu", str(self.mtu), "type", "veth",
                            "peer", "name", f"i{host.peer}", "mtu", str(self.mtu)]))
            _write_sysctl(f"/proc/sys/net/ipv6/conf/{host.peer}/disable_ipv6", "1", self.wire)
            run(self.outer(["ip", "link", "set", f"i{host.peer}", "netns", host.netns]))
            ns = ["ip", "-n", host.netns]
            run([*ns, "link", "set", f"i{host.peer}", "name", host.ifname])
            run([*ns, "addr", "add", f"{host.ip}/24", "dev", host.ifname])
            run([*ns, "link", "set", "lo", "up"])
            if not self.offloads:
                run(host.argv(["ethtool", "-K", host.ifname, "tx", "off", "tso", "off", "gso", "off",
                               "gro", "off"]))
                run(self.outer(["ethtool", "-K", host.peer, "gro", "off", "tso", "off", "gso", "off"]))
            run([*ns, "link", "set", host.ifname, "up"])
            run(self.outer(["ip", "link", "set", host.peer, "up"]))

    # ---- a Linux bridge between the two outer ends (the kernel's own bump in the wire) ----
    def add_bridge(self) -> str:
        run(self.outer(["ip", "link", "add", self.bridge_name, "type", "bridge", "stp_state", "0",
                        "forward_delay", "0"]))
        _write_sysctl(f"/proc/sys/net/ipv6/conf/{self.bridge_name}/disable_ipv6", "1", self.wire)
        for port in (self.port_a, self.port_b):
            run(self.outer(["ip", "link", "set", port, "master", self.bridge_name]))
        run(self.outer(["ip", "link", "set", self.bridge_name, "up"]))
        return self.bridge_name

    def remove_bridge(self) -> None:
        if self.wire and self.wire not in list_namespaces():
            return                                # gone with its namespace
        for port in (self.port_a, self.port_b):
            run(self.outer(["ip", "link", "set", port, "nomaster"]), check=False)
        run(self.outer(["ip", "link", "del", self.bridge_name]), check=False)

    # ---- tear-down -------------------------------------------------------------------
    def close(self) -> None:
        """Stop what runs in the hosts, delete the namespaces, bridge and links; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        errors = []
        for host in self.hosts:
            host.stop_processes()
        self.remove_bridge()
        for netns in self.namespaces:
            pids = run(["ip", "netns", "pids", netns], check=False).stdout.split()
            for pid in pids:                      # only ever processes started inside our namespace
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            res = run(["ip", "netns", "del", netns], check=False)
            if res.returncode and "No such file" not in res.stderr:
                errors.append(res.stderr.strip())
        if not self.wire:
            for host in self.hosts:               # the outer end goes with its peer; one never moved in here
                run(["ip", "link", "del", host.peer], check=False)
        _live.discard(self)
        if errors:
            raise NetnsError("testbed clean-up: " + "; ".join(errors))

    def __enter__(self) -> VethTestbed:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def list_namespaces() -> list[str]:
    """Every named network namespace (``ip netns list``)."""
    res = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def namespaces_made() -> list[str]:
    """Namespaces a testbed made (``ixyt-<pid>-...``), alive or not."""
    return [n for n in list_namespaces() if n.startswith(NETNS_PREFIX + "-")]


def remove_stale() -> list[str]:
    """Delete testbed namespaces whose creating process is gone; returns their names."""
    removed = []
    for name in namespaces_made():
        pid = name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed



# ---- testbeds kept past the process (`ixypipe netns up|down|status`) --------------------------

IXYPIPE = '"$(command -v ixypipe)"'    # sudo's secure_path would not find a virtual environment's ixypipe


def state_file(name: str) -> Path:
    return STATE_DIR / f"{name}.json"


def pipeline_text(state: dict) -> str:
    """A pipeline joining the testbed's two outer ends, as pipelines/bridge-veth.toml does."""
    ports = "".join(f"""
[[ports]]
name = "{key}"
driver = "af_packet"
interface = "{state["hosts"][key]["outer"]}"
forward_to = "{other}"
rx_ring_size = 1024
tx_ring_size = 1024
""" for key, other in (("a", "b"), ("b", "a")))
    return (f"# ixypipe as a bump in the wire between the two hosts of testbed {state['name']}\n"
            f"# (made by `ixypipe netns up`; run it inside namespace {state['wire']})\n\n"
            f'[pipeline]\nname = "netns-{state["name"]}"\nbatch_size = 64\nring_size = 1024\n'
            f'buffers_per_queue = 4096\nhugepages = "auto"\n{ports}\n'
            f'[workers]\nfunction = "forward"\nprocesses = 1\n\n[stats]\ninterval = 1.0\n')


def usage_commands(state: dict) -> dict[str, str]:
    """Ready-to-paste shell lines for using the testbed, by what they do."""
    a, b, wire, path = state["hosts"]["a"], state["hosts"]["b"], state["wire"], state["pipeline"]
    return {
        "check": f"sudo ip netns exec {wire} {IXYPIPE} run {path} --check",
        "run": f"sudo ip netns exec {wire} {IXYPIPE} run {path}",
        "ping": f"sudo ip netns exec {a['netns']} ping {b['ip']}",
        "iperf3_server": f"sudo ip netns exec {b['netns']} iperf3 -s",
        "iperf3_client": f"sudo ip netns exec {a['netns']} iperf3 -c {b['ip']}",
        "down": f"sudo {IXYPIPE} netns down {state['name']}",
    }


def keep_testbed(name: str, subnet: str = DEFAULT_SUBNET) -> dict:
    """Build testbed ``name`` (hosts and a wire namespace), write its pipeline file and state; leave it up."""
    if not NAME_FORM.match(name):
        raise NetnsError(f"testbed name {name!r}: 1-16 letters, digits or '_', starting with a letter or digit")
    if state_file(name).exists():
        raise NetnsError(f"testbed {name} exists already ({state_file(name)}); `ixypipe netns down {name}` "
                         "removes it, `ixypipe netns status` lists the testbeds")
    try:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NetnsError(f"cannot create {STATE_DIR} for the testbed's state ({exc.strerror}); needs root") \
            from None
    try:
        tb = VethTestbed(subnet=subnet, name=name, wire=True)
    except NetnsError as exc:
        raise NetnsError(f"testbed {name}: {exc}") from None
    state = tb.state()
    state["pipeline"] = str(STATE_DIR / f"{name}.toml")
    state["state"] = str(state_file(name))
    state["created"] = time.time()
    try:
        Path(state["pipeline"]).write_text(pipeline_text(state))
        state_file(name).write_text(json.dumps(state, indent=1) + "\n")
    except BaseException:
        tb.close()
        Path(state["pipeline"]).unlink(missing_ok=True)
        raise
    tb.keep()
    return state


def kept_testbeds() -> list[dict]:
    """The saved testbeds, each with ``status``: up (every namespace there), partial or gone."""
    present = set(list_namespaces())
    found = []
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            state = json.loads(path.read_text())
            there = [n for n in state["namespaces"] if n in present]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            state, there = {"name": path.stem, "state": str(path), "error": f"unreadable: {exc}"}, []
        state["status"] = ("up" if len(there) == len(state.get("namespaces", ())) else "partial") if there \
            else "gone"
        found.append(state)
    return found


def stop_processes_in(namespaces: list[str], timeout: float = STOP_TIMEOUT) -> list[int]:
    """SIGTERM every process in ``namespaces`` (a pipeline stops in order; its stages ignore it) and wait
    up to ``timeout`` for them to end; returns their pids (``close`` SIGKILLs whatever is left)."""
    present = set(list_namespaces())
    pids = sorted({int(p) for ns in namespaces if ns in present
                   for p in run(["ip", "netns", "pids", ns], check=False).stdout.split() if p.isdigit()})
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.1)
    return pids


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent (e.g. whoever started ixypipe)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:][:1] not in ("Z", "X")


def remove_kept(state: dict) -> list[int]:
    """Remove a saved testbed: stop what runs there, delete its namespaces (and so its links), its pipeline
    file and state; returns the pids stopped."""
    stopped = []
    if "error" not in state:
        stopped = stop_processes_in(state["namespaces"])
        VethTestbed.from_state(state).close()
        Path(state["pipeline"]).unlink(missing_ok=True)
    Path(state["state"]).unlink(missing_ok=True)
    return stopped


def find_kept(name: str) -> dict:
    for state in kept_testbeds():
        if state["name"] == name:
            return state
    names = ", ".join(s["name"] for s in kept_testbeds()) or "none"
    raise NetnsError(f"no testbed {name!r} (testbeds: {names}; `ixypipe netns status` lists them)")

# ---- frames in and out of an interface of the current namespace (run inside a host) -------

def send_frames(ifname: str, frames: list[bytes]) -> int:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        sock.bind((ifname, 0))
        for frame in frames:
            while True:
                try:
                    sock.send(frame)
                    break
                except OSError as exc:           # the queue is full for a moment: wait, do not lose it
                    if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                        raise
                    time.sleep(0.0005)
    return len(frames)


def capture_frames(ifname: str, count: int, seconds: float, ethertype: int | None = None,
                   ready=None) -> list[bytes]:
    """Frames arriving on ``ifname`` (not those sent from here), optionally of one ethertype."""
    got: list[bytes] = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock:
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        with contextlib.suppress(OSError):     # room for a whole burst while Python catches up (root only)
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, CAPTURE_BUFFER)
        sock.bind((ifname, ETH_P_ALL))
        if ready:
            ready()
        deadline = time.monotonic() + seconds
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                frame = sock.recv(65536)
            except TimeoutError:
                break
            if len(frame) < ETH_HEADER_LEN:
                continue
            if ethertype is None or int.from_bytes(frame[ETH_TYPE_OFF:ETH_TYPE_OFF + 2], "big") == ethertype:
                got.append(frame)
    return got


def main(argv: list[str]) -> int:
    from ixypipe.pcapfile import PcapWriter, read_pcap

    if len(argv) >= 3 and argv[0] == "send":
        print(send_frames(argv[1], read_pcap(argv[2]).packets()))
        return 0
    if len(argv) in (5, 6) and argv[0] == "capture":
        ethertype = int(argv[5], 16) if len(argv) == 6 else None

        def ready():
            print("ready", flush=True)

        frames = capture_frames(argv[1], int(argv[3]), float(argv[4]), ethertype, ready)
        with PcapWriter(argv[2]) as w:
            w.write_batch(frames)
        return 0
    print("usage: python -m ixypipe.ops.netns send IFNAME FILE.pcap | capture IFNAME FILE.pcap COUNT SECONDS "
          "[ETHERTYPE]", file=sys.stderr)
    return 2


@atexit.register
def _close_all() -> None:
    for tb in list(_live):
        with contextlib.suppress(Exception):
            tb.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
