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
All commands go through ``ip`` and ``ethtool``; commands in a host run with
``ip netns exec``.  ``python -m ixypipe.ops.netns send|capture`` puts exact
frames on a host's interface or records what arrives there (a raw packet
socket, frames in pcap files), so tests compare bytes, not just counts.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ixypipe.nic.af_packet_abi import ETH_P_ALL, PACKET_IGNORE_OUTGOING, SOL_PACKET
from ixypipe.protocols import ETH_HEADER_LEN, ETH_TYPE_OFF

NETNS_PREFIX = "ixyt"
DEFAULT_SUBNET = "10.77.0"
COMMAND_TIMEOUT = 20.0
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

    def __init__(self, subnet: str = DEFAULT_SUBNET, mtu: int = 1500, offloads: bool = False):
        self.tag = secrets.token_hex(3)
        base = f"{NETNS_PREFIX}-{os.getpid()}-{self.tag}"
        self.port_a = f"ixy{self.tag}a"
        self.port_b = f"ixy{self.tag}b"
        self.a = Host(f"{base}-a", f"{subnet}.1", self.port_a)
        self.b = Host(f"{base}-b", f"{subnet}.2", self.port_b)
        self.bridge_name = f"ixy{self.tag}br"
        self.mtu = mtu
        self.offloads = offloads
        self.closed = False
        _live.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    @property
    def hosts(self) -> tuple[Host, Host]:
        return self.a, self.b

    def _build(self) -> None:
        for host in self.hosts:
            run(["ip", "netns", "add", host.netns])
            for scope in ("all", "default"):       # before the link moves in, so it starts without IPv6
                _write_sysctl(f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6", "1", host.netns)
            run(["ip", "link", "add", host.peer, "mtu", str(self.mtu), "type", "veth",
                 "peer", "name", f"i{host.peer}", "mtu", str(self.mtu)])
            _write_sysctl(f"/proc/sys/net/ipv6/conf/{host.peer}/disable_ipv6", "1")
            run(["ip", "link", "set", f"i{host.peer}", "netns", host.netns])
            ns = ["ip", "-n", host.netns]
            run([*ns, "link", "set", f"i{host.peer}", "name", host.ifname])
            run([*ns, "addr", "add", f"{host.ip}/24", "dev", host.ifname])
            run([*ns, "link", "set", "lo", "up"])
            if not self.offloads:
                run(host.argv(["ethtool", "-K", host.ifname, "tx", "off", "tso", "off", "gso", "off",
                               "gro", "off"]))
                run(["ethtool", "-K", host.peer, "gro", "off", "tso", "off", "gso", "off"])
            run([*ns, "link", "set", host.ifname, "up"])
            run(["ip", "link", "set", host.peer, "up"])

    # ---- a Linux bridge between the two outer ends (the kernel's own bump in the wire) ----
    def add_bridge(self) -> str:
        run(["ip", "link", "add", self.bridge_name, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
        _write_sysctl(f"/proc/sys/net/ipv6/conf/{self.bridge_name}/disable_ipv6", "1")
        for port in (self.port_a, self.port_b):
            run(["ip", "link", "set", port, "master", self.bridge_name])
        run(["ip", "link", "set", self.bridge_name, "up"])
        return self.bridge_name

    def remove_bridge(self) -> None:
        for port in (self.port_a, self.port_b):
            run(["ip", "link", "set", port, "nomaster"], check=False)
        run(["ip", "link", "del", self.bridge_name], check=False)

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
        for host in self.hosts:
            pids = run(["ip", "netns", "pids", host.netns], check=False).stdout.split()
            for pid in pids:                      # only ever processes started inside our namespace
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            res = run(["ip", "netns", "del", host.netns], check=False)
            if res.returncode and "No such file" not in res.stderr:
                errors.append(res.stderr.strip())
            # the outer end goes with its peer; a link that never moved in is deleted here
            run(["ip", "link", "del", host.peer], check=False)
        _live.discard(self)
        if errors:
            raise NetnsError("testbed clean-up: " + "; ".join(errors))

    def __enter__(self) -> VethTestbed:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def namespaces_made() -> list[str]:
    """Namespaces a testbed made (``ixyt-<pid>-...``), alive or not."""
    res = run(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(NETNS_PREFIX + "-")]


def remove_stale() -> list[str]:
    """Delete testbed namespaces whose creating process is gone; returns their names."""
    removed = []
    for name in namespaces_made():
        pid = name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


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
