"""The fake sysfs tree of the software 82599 and virtio-net ports.

``<root>/bus/pci/devices/<pci address>/`` holds what the unchanged pci.py
path opens: ``config`` (256 bytes of PCI config space: Intel's vendor id,
the 82599 device id, a writable command register, class 0x02),
``resource0`` (the 512 KiB BAR0 register file itself, mapped MAP_SHARED by
the driver and by the model), ``driver/unbind`` (writable) and the text
files ``vendor``, ``device`` and ``class`` as real sysfs has them.  The
root defaults to a fresh directory in /dev/shm (tmpfs: the BAR lives in
memory) named ``ixypipe-sim-<pid>-<random>``, removed by :func:`remove_tree`;
trees of dead owners are found by :func:`stale_roots`.  A virtio-net port's
directory (:func:`create_virtio_device`) has virtio's identity and its
transport's BAR file instead.
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ixypipe.nic import registers as R
from ixypipe.nic import virtio_regs as V

PCI_CONFIG_SIZE = 256
SIM_ROOT_PREFIX = "ixypipe-sim-"
SIM_ROOT_DIR = Path("/dev/shm")
DEFAULT_DEVICE_ID = 0x10FB
CLASS_CODE_ETHERNET = 0x020000          # base class network, subclass ethernet, prog-if 0
PCI_CFG_SUBCLASS = 0x0A


def default_address(index: int) -> str:
    """PCI address of the ``index``-th simulated port: 0000:5e:00.0, 0000:5e:00.1, 0000:5f:00.0, ..."""
    return f"0000:{0x5E + index // 2:02x}:00.{index % 2}"


def device_dir(root: Path, address: str) -> Path:
    return Path(root) / "bus" / "pci" / "devices" / address


def make_root() -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{SIM_ROOT_PREFIX}{os.getpid()}-", dir=SIM_ROOT_DIR))


@dataclass
class DeviceFiles:
    address: str
    path: Path
    bar_file: Path
    config_file: Path


def create_device(root: Path, address: str, device_id: int = DEFAULT_DEVICE_ID,
                  iommu_group: int | None = None) -> DeviceFiles:
    """Create one device directory with its config space and an all-zero BAR0 file
    (``iommu_group``: behind the simulated IOMMU in that group, see :func:`add_iommu_group`)."""
    d = device_dir(root, address)
    if d.exists():
        raise FileExistsError(f"simulated PCI device {address} already exists under {root}")
    (d / "driver").mkdir(parents=True, mode=0o700)
    config = np.zeros(PCI_CONFIG_SIZE, np.uint8)
    config[R.PCI_CFG_VENDOR:R.PCI_CFG_VENDOR + 2] = np.frombuffer(R.PCI_VENDOR_INTEL.to_bytes(2, "little"), np.uint8)
    config[R.PCI_CFG_DEVICE:R.PCI_CFG_DEVICE + 2] = np.frombuffer(device_id.to_bytes(2, "little"), np.uint8)
    config[PCI_CFG_SUBCLASS] = (CLASS_CODE_ETHERNET >> 8) & 0xFF
    config[R.PCI_CFG_CLASS] = R.PCI_CLASS_NETWORK
    cfg = d / "config"
    cfg.write_bytes(config.tobytes())
    bar = d / "resource0"
    fd = os.open(bar, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, R.BAR0_SIZE)
    finally:
        os.close(fd)
    (d / "driver" / "unbind").write_text("")
    (d / "vendor").write_text(f"{R.PCI_VENDOR_INTEL:#06x}\n")
    (d / "device").write_text(f"{device_id:#06x}\n")
    (d / "class").write_text(f"{CLASS_CODE_ETHERNET:#08x}\n")
    for f in (cfg, d / "driver" / "unbind", d / "vendor", d / "device", d / "class"):
        f.chmod(0o600)
    if iommu_group is not None:
        add_iommu_group(root, address, iommu_group)
    return DeviceFiles(address, d, bar, cfg)


def map_file(path: Path) -> tuple[mmap.mmap, np.ndarray]:
    """MAP_SHARED mapping of a whole file and a uint8 view of it."""
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    return mm, np.frombuffer(mm, np.uint8)


def remove_tree(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


def stale_roots(directory: Path = SIM_ROOT_DIR) -> list[Path]:
    """Simulator roots whose creating process is gone."""
    stale = []
    for entry in directory.glob(f"{SIM_ROOT_PREFIX}*"):
        pid = entry.name[len(SIM_ROOT_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.append(entry)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


IOMMU_GROUP_BASE = 40                   # simulated port i sits alone in IOMMU group 40 + i
VFIO_PCI = "vfio-pci"


def iommu_group_of(index: int) -> int:
    return IOMMU_GROUP_BASE + index


def add_iommu_group(root: Path, address: str, group: int) -> None:
    """Put a device behind the (simulated) IOMMU, bound to vfio-pci, as the kernel shows it.

    ``kernel/iommu_groups/<group>/devices/<address>`` and the device's
    ``iommu_group`` link, ``driver`` -> ``bus/pci/drivers/vfio-pci``, and
    the VFIO nodes ``dev/vfio/vfio`` and ``dev/vfio/<group>`` (plain files
    owned by the tree's user, answered by a VFIO kernel stand-in).
    """
    root = Path(root)
    d = device_dir(root, address)
    group_dir = root / "kernel" / "iommu_groups" / str(group)
    (group_dir / "devices").mkdir(parents=True, exist_ok=True)
    (group_dir / "devices" / address).symlink_to(d)
    (d / "iommu_group").symlink_to(group_dir)
    driver = root / "bus" / "pci" / "drivers" / VFIO_PCI
    driver.mkdir(parents=True, exist_ok=True)
    (driver / "unbind").touch(mode=0o600)
    shutil.rmtree(d / "driver")
    (d / "driver").symlink_to(driver)
    nodes = root / "dev" / "vfio"
    nodes.mkdir(parents=True, exist_ok=True, mode=0o755)
    for node, mode in ((nodes / "vfio", 0o666), (nodes / str(group), 0o600)):
        if not node.exists():
            node.touch(mode=mode)
            node.chmod(mode)


def create_virtio_device(root: Path, address: str, transport: str) -> DeviceFiles:
    """One software virtio-net function: config space with virtio's identity (and, for the modern transport,
    the vendor capabilities naming its structures in BAR4); ``resource0`` (legacy: the I/O BAR's registers)
    or ``resource4`` (modern: common, ISR, device and notify structures).  ``bar_file`` is that resource."""
    d = device_dir(root, address)
    if d.exists():
        raise FileExistsError(f"simulated PCI device {address} already exists under {root}")
    (d / "driver").mkdir(parents=True, mode=0o700)
    device_id = V.DEVICE_ID_NET_TRANSITIONAL if transport == "legacy" else V.DEVICE_ID_NET_MODERN
    config = bytearray(PCI_CONFIG_SIZE)
    struct.pack_into("<HH", config, R.PCI_CFG_VENDOR, V.PCI_VENDOR_VIRTIO, device_id)
    struct.pack_into("<HH", config, V.PCI_CFG_SUBSYS_VENDOR, V.PCI_VENDOR_VIRTIO, V.VIRTIO_ID_NET)
    config[PCI_CFG_SUBCLASS] = (CLASS_CODE_ETHERNET >> 8) & 0xFF
    config[R.PCI_CFG_CLASS] = R.PCI_CLASS_NETWORK
    if transport == "legacy":
        bar, size = d / "resource0", V.SIM_LEGACY_BAR_SIZE
    else:
        bar, size = d / f"resource{V.SIM_MODERN_BAR}", V.SIM_MODERN_BAR_SIZE
        config[V.PCI_CFG_STATUS] |= V.PCI_STATUS_CAP_LIST
        config[V.PCI_CFG_CAP_PTR] = V.SIM_CAP_START
        caps = [(V.CFG_COMMON, V.SIM_COMMON_OFF, V.COMMON_SIZE), (V.CFG_NOTIFY, V.SIM_NOTIFY_OFF, 0x1000),
                (V.CFG_ISR, V.SIM_ISR_OFF, 4), (V.CFG_DEVICE, V.SIM_DEVICE_OFF, 0x100)]
        at = V.SIM_CAP_START
        for i, (cfg_type, offset, length) in enumerate(caps):
            cap_len = V.NOTIFY_CAP_SIZE if cfg_type == V.CFG_NOTIFY else V.CAP_SIZE
            nxt = at + 24 if i + 1 < len(caps) else 0
            struct.pack_into("<BBBBB3xII", config, at, V.PCI_CAP_ID_VNDR, nxt, cap_len, cfg_type, V.SIM_MODERN_BAR,
                             offset, length)
            if cfg_type == V.CFG_NOTIFY:
                struct.pack_into("<I", config, at + V.CAP_NOTIFY_MULTIPLIER, V.SIM_NOTIFY_MULTIPLIER)
            at += 24
    cfg = d / "config"
    cfg.write_bytes(bytes(config))
    fd = os.open(bar, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    (d / "driver" / "unbind").write_text("")
    (d / V.SIM_MARKER).write_text("a software virtio-net device: let its model step between register selections\n")
    (d / "vendor").write_text(f"{V.PCI_VENDOR_VIRTIO:#06x}\n")
    (d / "device").write_text(f"{device_id:#06x}\n")
    (d / "class").write_text(f"{CLASS_CODE_ETHERNET:#08x}\n")
    for f in (cfg, d / "driver" / "unbind", d / "vendor", d / "device", d / "class"):
        f.chmod(0o600)
    return DeviceFiles(address, d, bar, cfg)
