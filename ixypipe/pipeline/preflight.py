"""What ``ixypipe run --check`` verifies beyond the file: everything that can be checked without starting.

The pipeline file itself is validated by ixypipe.pipeline.config; here a
validated config meets this machine: each AF_PACKET port's interface
exists and is up in the network namespace the command runs in, each
``ixgbe`` port's PCI device is there and is an 82599, ``hot_path =
"numba"`` has numba, ``hugepages = "require"`` finds enough free
hugepages (and a hugetlbfs mount) for the run's two arenas, and no
other running pipeline holds a port's interface or PCI device
(pipeline.claims) unless the port says ``share = true``.  (The worker module's import is checked before, in a
child with a time limit: config.check_worker_imports, exit 2 when it fails.)
Nothing is mapped, bound or started.  Each check
gives a :class:`Finding`; the command prints them as text or JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ixypipe import jitcache
from ixypipe.nic.af_packet import check_interface
from ixypipe.nic.device import DeviceError
from ixypipe.nic.pci import check_82599, device_dir, read_identity
from ixypipe.nic.virtio_pci import check_virtio_net
from ixypipe.pipeline import claims


@dataclass
class Finding:
    what: str          # "port a: interface veth0", "workers: guard.py:guard"
    ok: bool
    message: str       # what was found, or what is wrong and how to fix it

    def as_dict(self) -> dict:
        return asdict(self)


def preflight(cfg, sysfs_root: str = "/sys", mounts_file: str = "/proc/mounts") -> list[Finding]:
    """Every check on this machine for the validated ``cfg``, in port order, then the hugepages."""
    found = []
    for p in cfg.ports:
        if p.driver == "af_packet":
            found.append(_interface(p))
        elif p.driver in ("ixgbe", "virtio"):
            found.append(_pci(p, sysfs_root))
        held = claims.in_use(p)
        if held:
            found.append(Finding(f"port {p.name}: in use", False, f"{held}; stop it, or say share = true in "
                                                                  f"port {p.name} to share it on purpose"))
        if getattr(p, "hot_path", "auto") == "numba" and jitcache.load_numba() is None:
            found.append(Finding(f"port {p.name}: hot_path", False,
                                 "hot_path = \"numba\" needs the numba package, which cannot be loaded (pip install numba)"))
    if cfg.hugepages == "require":
        found.append(_hugepages(cfg, sysfs_root, mounts_file))
    return found


def _hugepages(cfg, sysfs_root: str, mounts_file: str) -> Finding:
    """hugepages = "require": the packet and device arenas the supervisor would create, all on hugepages."""
    from ixypipe.memory.arena import Arena, hugepage_shortfall
    from ixypipe.pipeline.plan import plan_from_config
    from ixypipe.pipeline.supervisor import device_arena_regions, packet_arena_regions
    from ixypipe.pipeline.supervisor import uses_physical_addresses as physical

    plan = plan_from_config(cfg)
    packets = Arena.planned_size(*Arena.split_size_for(packet_arena_regions(plan, cfg.buffer_size)))
    sizes = [packets, Arena.size_for(device_arena_regions(plan))]        # as Supervisor._build makes them
    why_not, mount = hugepage_shortfall(sizes, physical(cfg), sysfs_root=sysfs_root,
                                        mounts_file=mounts_file)
    what = 'hugepages = "require"'
    if why_not:
        return Finding(what, False, f"hugepages required but unavailable: {why_not}")
    return Finding(what, True, f"{sum(sizes) >> 20} MiB of arenas fit in the free 2 MiB hugepages at {mount}")


def _interface(p) -> Finding:
    what = f"port {p.name}: interface {p.interface}"
    try:
        index = check_interface(p.interface, p.name)
    except DeviceError as exc:
        return Finding(what, False, str(exc))
    return Finding(what, True, f"{p.interface} exists (index {index}) and is up")


def _pci(p, sysfs_root: str) -> Finding:
    what = f"port {p.name}: PCI device {p.pci}"
    path = device_dir(p.pci, sysfs_root)
    if not path.exists():
        return Finding(what, False, f"no PCI device {p.pci} ({path} is missing; see 'ixypipe devices')")
    try:
        (check_virtio_net if p.driver == "virtio" else check_82599)(p.pci, read_identity(path))
    except DeviceError as exc:
        return Finding(what, False, str(exc))
    driver = path / "driver"
    bound = driver.resolve().name if driver.exists() else "no driver"
    return Finding(what, True, f"{'a virtio-net function' if p.driver == 'virtio' else 'an 82599'}, bound to {bound}")
