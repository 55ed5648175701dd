"""PCI access through a fake sysfs tree: identity checks, unbind, bus mastering, BAR mapping, locks."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from ixypipe.nic import pci
from ixypipe.nic.registers import BAR0_SIZE, CTRL, EEC, EEC_ARD, PCI_COMMAND_BUS_MASTER, PCI_COMMAND_MEMORY

ADDR = "0000:03:00.0"


def make_device(root: Path, address: str = ADDR, vendor: int = 0x8086, device: int = 0x10FB,
                base_class: int = 0x02, command: int = PCI_COMMAND_MEMORY, bar_size: int = BAR0_SIZE,
                driver: str | None = "ixgbe") -> Path:
    d = root / "bus/pci/devices" / address
    d.mkdir(parents=True)
    config = bytearray(256)
    struct.pack_into("<HHH", config, 0, vendor, device, command)
    config[0x0B] = base_class
    (d / "config").write_bytes(bytes(config))
    (d / "resource0").write_bytes(bytes(bar_size))
    if driver:
        drv = root / "bus/pci/drivers" / driver
        drv.mkdir(parents=True, exist_ok=True)
        (drv / "unbind").write_text("")
        (d / "driver").symlink_to(drv)
    return d


def test_address_forms():
    assert pci.normalize_address("03:00.0") == "0000:03:00.0"
    assert pci.normalize_address("0000:5E:00.1") == "0000:5e:00.1"
    with pytest.raises(pci.PciError, match=r"'eth0' is not a PCI address: expected domain:bus:device.function"):
        pci.normalize_address("eth0")
    with pytest.raises(pci.PciError, match="not a PCI address"):
        pci.normalize_address("0000:03:00.8")


def test_open_unbinds_enables_bus_master_and_maps_bar(tmp_path):
    d = make_device(tmp_path)
    bar = pci.open_device(ADDR, tmp_path)
    try:
        assert (tmp_path / "bus/pci/drivers/ixgbe/unbind").read_text() == ADDR
        (command,) = struct.unpack_from("<H", (d / "config").read_bytes(), 4)
        assert command == PCI_COMMAND_MEMORY | PCI_COMMAND_BUS_MASTER     # other bits kept
        bar.write(CTRL, 0x12345678)
        bar.set_flags(EEC, EEC_ARD)
        raw = np.fromfile(d / "resource0", dtype="<u4")
        assert raw[CTRL // 4] == 0x12345678
        assert raw[EEC // 4] == EEC_ARD
        assert bar.read(CTRL) == 0x12345678
    finally:
        bar.close()


def test_not_root(tmp_path):
    make_device(tmp_path)
    with pytest.raises(pci.PciError, match=f"opening PCI device {ADDR} needs root"):
        pci.open_device(ADDR, tmp_path, geteuid=lambda: 1000)


def test_no_such_device(tmp_path):
    make_device(tmp_path)
    with pytest.raises(pci.PciError, match="no such PCI device 0000:04:00.0"):
        pci.open_device("04:00.0", tmp_path)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"vendor": 0x1AF4, "device": 0x1000}, "is not an Intel 82599: the vendor is not Intel"),
    ({"device": 0x1533}, "is an Intel NIC but not an 82599"),
    ({"device": 0x10ED}, "is an 82599 virtual function"),
    ({"base_class": 0x01}, "is not a network controller"),
])
def test_not_an_82599(tmp_path, kwargs, message):
    make_device(tmp_path, **kwargs)
    with pytest.raises(pci.PciError, match=message):
        pci.open_device(ADDR, tmp_path)
    # nothing was touched: the kernel driver is still bound
    assert (tmp_path / "bus/pci/drivers/ixgbe/unbind").read_text() == ""


def test_resource_busy_and_shared_attach(tmp_path):
    make_device(tmp_path, driver=None)
    first = pci.open_device(ADDR, tmp_path)
    try:
        with pytest.raises(pci.PciError, match=f"resource busy: PCI device {ADDR} is already in use"):
            pci.open_device(ADDR, tmp_path)
        with pytest.raises(pci.PciError, match="resource busy"):
            pci.attach_device(ADDR, tmp_path)        # still initialising: exclusive
        pci.share(first)
        stage = pci.attach_device(ADDR, tmp_path)
        try:
            first.write(CTRL, 7)
            assert stage.read(CTRL) == 7             # the same registers
            with pytest.raises(pci.PciError, match="resource busy"):
                pci.open_device(ADDR, tmp_path)      # a second opener would reset a NIC in use
        finally:
            stage.close()
    finally:
        first.close()
    again = pci.open_device(ADDR, tmp_path)          # closing released the lock
    again.close()


def test_bar_too_small(tmp_path):
    make_device(tmp_path, bar_size=4096)
    with pytest.raises(pci.PciError, match=f"is 4096 bytes: too small for the 82599's registers, which span "
                                           f"131072 bytes of its {BAR0_SIZE}-byte BAR0"):
        pci.open_device(ADDR, tmp_path)


def test_a_128k_bar_is_enough(tmp_path):
    make_device(tmp_path, bar_size=128 * 1024)
    bar = pci.open_device(ADDR, tmp_path)
    try:
        bar.set_flags(EEC, EEC_ARD)
        assert bar.read(EEC) == EEC_ARD
    finally:
        bar.close()


def test_wait_times_out_naming_the_register_and_polls_through_sleep(tmp_path):
    make_device(tmp_path)
    bar = pci.open_device(ADDR, tmp_path)
    slept = []
    try:
        with pytest.raises(pci.PciError, match=r"timeout after 0.05 s waiting for EEC.ARD \(register 0x10010"):
            bar.wait_set(EEC, EEC_ARD, "EEC.ARD", 0.05, sleep=slept.append, interval=0.01)
        assert slept == [0.01] * 5          # a first look, then 5 more, 10 ms apart

        def arrive(seconds):
            slept.append(seconds)
            if len(slept) == 9:
                bar.set_flags(EEC, EEC_ARD)
        bar.wait_set(EEC, EEC_ARD, "EEC.ARD", 1.0, sleep=arrive)
        assert len(slept) == 9
    finally:
        bar.close()
