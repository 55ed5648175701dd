"""ixypipe devices / bind / unbind on fake sysfs trees with a fake kernel, and read-only on this machine."""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from ixypipe.cli import main
from ixypipe.ops import binding
from ixypipe.ops.binding import BindError, give_back, take
from ixypipe.ops.pcidevs import list_network_devices, routed_interfaces, status_lines
from tests.support.fakesys import FakeDevice, FakeKernel, make_tree
from tests.support.outputschema import validated

NIC_A = "0000:03:00.0"      # 82599 on ixgbe, interface up with routes
NIC_B = "0000:03:00.1"      # 82599 on ixgbe, interface down
VF = "0000:03:10.0"         # 82599 VF, no driver
VIRTIO = "0000:00:03.0"     # virtio-net, up without routes
GPU = "0000:00:02.0"        # not a network controller


@pytest.fixture
def host(tmp_path):
    return make_tree(tmp_path, [
        FakeDevice(NIC_A, 0x8086, 0x10FB, 0x020000, "ixgbe", "ixgbe", {"eth1": True}, numa_node=0, iommu_group=17),
        FakeDevice(NIC_B, 0x8086, 0x10FB, 0x020000, "ixgbe", "ixgbe", {"eth2": False}, numa_node=1, iommu_group=18),
        FakeDevice(VF, 0x8086, 0x10ED, 0x020000, None, "ixgbevf"),
        FakeDevice(VIRTIO, 0x1AF4, 0x1041, 0x020000, "virtio-pci", "virtio-pci", {"eth0": True}),
        FakeDevice(GPU, 0x1234, 0x1111, 0x030000, None),
    ], drivers=["ixgbe", "vfio-pci"], routes={"eth1": "0002000A"})


def ops(host, kernel):
    return {"sysfs_root": host.sysfs, "proc_root": host.proc, "writer": kernel}


def test_listing_marks_82599s_drivers_interfaces_and_active(host):
    devs = {d.address: d for d in list_network_devices(host.sysfs, host.proc)}
    assert sorted(devs) == [VIRTIO, NIC_A, NIC_B, VF]                       # the GPU is not listed
    assert (devs[NIC_A].kind, devs[VF].kind, devs[VIRTIO].kind) == ("82599", "82599 VF", "virtio-net")
    assert devs[NIC_A].interfaces[0].routes == ["10.0.2.0/24"] and devs[NIC_A].interfaces[0].active
    assert not devs[VIRTIO].interfaces[0].active                             # up, but no route
    assert status_lines(list(devs.values())) == [
        "Network devices ready for ixypipe (no kernel driver, or vfio-pci/uio_pci_generic/igb_uio)",
        "=" * 89,
        "0000:03:10.0 8086:10ed Intel 82599 VF drv=none numa=0",
        "",
        "Network devices using a kernel driver",
        "=" * 37,
        "0000:00:03.0 1af4:1041 virtio-net if=eth0 drv=virtio-pci numa=0",
        "0000:03:00.0 8086:10fb Intel 82599 if=eth1 drv=ixgbe numa=0 *Active*",
        "0000:03:00.1 8086:10fb Intel 82599 if=eth2 drv=ixgbe numa=1",
        "",
        "4 network devices, 2 of them Intel 82599, 1 virtio-net (take one with: ixypipe bind ADDRESS)",
    ]


def test_take_leaves_device_driverless_then_give_back_restores_ixgbe(host):
    kernel = FakeKernel(host)
    assert take(NIC_B, **ops(host, kernel)) == f"{NIC_B} taken from ixgbe: no kernel driver now, ready for ixypipe"
    assert host.driver_of(NIC_B) is None and kernel.writes == [("bus/pci/drivers/ixgbe/unbind", NIC_B)]
    assert take(NIC_B, **ops(host, kernel)).endswith("already without a kernel driver: nothing to do")
    assert give_back(NIC_B, **ops(host, kernel)) == f"{NIC_B} moved from no driver back to ixgbe"
    assert host.driver_of(NIC_B) == "ixgbe"
    assert kernel.writes[1:] == [(f"bus/pci/devices/{NIC_B}/driver_override", "\n"), ("bus/pci/drivers_probe", NIC_B)]
    assert give_back(NIC_B, **ops(host, kernel)) == f"{NIC_B} is already on its kernel driver ixgbe: nothing to do"


def test_vfio_round_trip(host):
    kernel = FakeKernel(host)
    moved, group, user = take("03:00.1", "vfio-pci", **ops(host, kernel)).splitlines()
    assert moved == f"{NIC_B} moved from ixgbe to vfio-pci"
    assert group == f"IOMMU group 18 ({host.sysfs / 'dev/vfio/18'}): {NIC_B} is alone in it"
    assert user.startswith(f"to run without root: give the user {host.sysfs / 'dev/vfio/18'} (chown USER")
    assert host.driver_of(NIC_B) == "vfio-pci"
    assert (host.device_dir(NIC_B) / "driver_override").read_text() == "vfio-pci\n"
    devs = {d.address: d for d in list_network_devices(host.sysfs, host.proc)}
    assert devs[NIC_B].userspace and devs[NIC_B].driver_override == "vfio-pci"
    assert give_back(NIC_B, **ops(host, kernel)) == f"{NIC_B} moved from vfio-pci back to ixgbe"
    assert (host.device_dir(NIC_B) / "driver_override").read_text() == "(null)\n"
    assert [w[0] for w in kernel.writes] == [
        "bus/pci/drivers/ixgbe/unbind", f"bus/pci/devices/{NIC_B}/driver_override", "bus/pci/drivers_probe",
        "bus/pci/drivers/vfio-pci/unbind", f"bus/pci/devices/{NIC_B}/driver_override", "bus/pci/drivers_probe"]


def test_refuses_an_interface_that_is_up_with_routes_unless_forced(host):
    kernel = FakeKernel(host)
    with pytest.raises(BindError, match=re.escape(
            f"interface eth1 of {NIC_A} is up and carries routes (10.0.2.0/24); taking {NIC_A} from ixgbe would "
            "cut this host off that network. Take the interface down first (ip link set eth1 down) or use --force")):
        take(NIC_A, **ops(host, kernel))
    assert kernel.writes == [] and host.driver_of(NIC_A) == "ixgbe"
    take(NIC_A, force=True, **ops(host, kernel))
    assert host.driver_of(NIC_A) is None


def test_refusals_name_the_problem(host):
    kernel = FakeKernel(host)
    with pytest.raises(BindError, match=f"{GPU} is not a network controller; refusing to take it"):
        take(GPU, **ops(host, kernel))
    with pytest.raises(BindError, match=r"no PCI device 0000:09:00.0 \(no .*\); 'ixypipe devices' lists"):
        take("09:00.0", **ops(host, kernel))
    with pytest.raises(BindError, match="'eth0' is not a PCI address"):
        take("eth0", **ops(host, kernel))
    with pytest.raises(BindError, match=r"driver uio_pci_generic is not loaded \(no .*\); load it with "
                                        "'modprobe uio_pci_generic'"):
        take(NIC_B, "uio_pci_generic", modprobe=lambda d: pytest.fail("modprobe on a fake tree"), **ops(host, kernel))
    with pytest.raises(BindError, match=f"no kernel driver claimed {VF}: load its driver"):
        give_back(VF, **ops(host, kernel))
    assert host.driver_of(NIC_B) == "ixgbe"


def test_give_back_refused_while_ixypipe_holds_the_device(host):
    kernel = FakeKernel(host)
    take(NIC_B, "vfio-pci", **ops(host, kernel))
    fd = os.open(host.device_dir(NIC_B) / "resource0", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)          # as an attached ixypipe stage holds it
        with pytest.raises(BindError, match=f"{NIC_B} is in use by an ixypipe process"):
            give_back(NIC_B, **ops(host, kernel))
    finally:
        os.close(fd)
    assert give_back(NIC_B, **ops(host, kernel)).endswith("back to ixgbe")


def test_cli_devices_bind_unbind(host, monkeypatch, tmp_path):
    kernel = FakeKernel(host)
    monkeypatch.setattr(binding, "SysfsWriter", lambda: kernel)
    roots = ["--sysfs-root", str(host.sysfs), "--proc-root", str(host.proc)]
    runner = CliRunner()
    (tmp_path / "pci.ids").write_text("")        # no names: the same output whether the machine has pci.ids
    res = runner.invoke(main, ["devices", *roots, "--pci-ids", str(tmp_path / "pci.ids")])
    assert res.exit_code == 0 and "0000:03:00.0 8086:10fb Intel 82599 if=eth1 drv=ixgbe numa=0 *Active*" in res.output
    res = runner.invoke(main, ["bind", NIC_A, *roots])
    assert res.exit_code == 1 and "is up and carries routes (10.0.2.0/24)" in res.output
    res = runner.invoke(main, ["bind", NIC_B, "--vfio", *roots])
    assert res.exit_code == 0 and res.output.startswith(f"{NIC_B} moved from ixgbe to vfio-pci\nIOMMU group 18 (")
    res = runner.invoke(main, ["unbind", NIC_B, *roots, "--json"])
    [doc] = validated(res.output)                       # fits docs/schema/ixypipe-output.schema.json
    assert doc.pop("time") > 0 and doc == {"type": "unbind", "address": NIC_B, "driver": "ixgbe",
                                           "message": f"{NIC_B} moved from vfio-pci back to ixgbe"}
    res = runner.invoke(main, ["bind", NIC_B, *roots])
    assert (res.exit_code, res.output) == (0, f"{NIC_B} taken from ixgbe: no kernel driver now, ready for ixypipe\n")
    res = runner.invoke(main, ["--json", "bind", NIC_B, *roots])          # already taken: nothing to do, said so
    [doc] = validated(res.output)
    assert doc["driver"] is None and doc["type"] == "bind" and doc["address"] == NIC_B
    res = runner.invoke(main, ["unbind", NIC_B, *roots])
    assert (res.exit_code, res.output) == (0, f"{NIC_B} moved from no driver back to ixgbe\n")
    res = runner.invoke(main, ["bind", NIC_B, "--vfio", "--driver", "igb_uio", *roots])
    assert res.exit_code == 2 and "--vfio and --driver name different drivers" in res.output


def test_this_machine_read_only():
    """Every kernel interface backed by a PCI network device shows up on that device's line."""
    devs = {d.address: d for d in list_network_devices()}
    expected = {}
    for net in Path("/sys/class/net").iterdir():
        try:
            real = (net / "device").resolve(strict=True)
        except OSError:
            continue                    # virtual interface
        pci = next((p.name for p in [real, *real.parents] if re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.\d",
                                                                            p.name)), None)
        if pci and pci in devs:
            expected.setdefault(pci, set()).add(net.name)
    for pci, names in expected.items():
        assert {i.name for i in devs[pci].interfaces} == names
        assert devs[pci].driver == os.path.basename(os.readlink(f"/sys/bus/pci/devices/{pci}/driver"))
    routed = routed_interfaces()
    for d in devs.values():
        for i in d.interfaces:
            assert i.routes == routed.get(i.name, [])
    assert len(status_lines(list(devs.values()))) >= 7


def test_vfio_bind_reports_the_group_and_refuses_without_an_iommu(tmp_path):
    other = "0000:03:00.2"
    host = make_tree(tmp_path, [
        FakeDevice(NIC_B, 0x8086, 0x10FB, 0x020000, "ixgbe", "ixgbe", {"eth2": False}, iommu_group=5),
        FakeDevice(other, 0x8086, 0x10FB, 0x020000, "ixgbe", "ixgbe", {"eth3": False}, iommu_group=5),
    ], drivers=["ixgbe", "vfio-pci"])
    kernel = FakeKernel(host)
    lines = take(NIC_B, "vfio-pci", **ops(host, kernel)).splitlines()
    assert lines[1] == f"IOMMU group 5 ({host.sysfs / 'dev/vfio/5'}): also holds {other} (ixgbe)"
    assert lines[2] == (f"a group goes to VFIO as a whole: until {other} are bound to vfio-pci (ixypipe bind "
                        "ADDRESS --vfio) or have no driver, the group is not viable")
    lines = take(other, "vfio-pci", **ops(host, kernel)).splitlines()
    assert lines[1] == f"IOMMU group 5 ({host.sysfs / 'dev/vfio/5'}): also holds {NIC_B} (vfio-pci)"
    assert lines[2].startswith("to run without root")           # viable now: no complaint

    off = make_tree(tmp_path / "off", [FakeDevice(NIC_B, 0x8086, 0x10FB, 0x020000, "ixgbe", "ixgbe")],
                    drivers=["ixgbe", "vfio-pci"])
    with pytest.raises(BindError, match=r"cannot hand 0000:03:00.1 to vfio-pci: the IOMMU is off \(no entries in "
                                        r".*kernel/iommu_groups\)\. To turn it on, boot with intel_iommu=on "
                                        r"\(Intel VT-d\) or amd_iommu=on \(AMD-Vi\).*enable_unsafe_noiommu_mode"):
        take(NIC_B, "vfio-pci", **ops(off, FakeKernel(off)))
    assert off.driver_of(NIC_B) == "ixgbe"                        # nothing was touched
    param = off.sysfs / binding.NOIOMMU_PARAMETER
    param.parent.mkdir(parents=True)
    param.write_text("Y\n")
    moved, warning = take(NIC_B, "vfio-pci", **ops(off, FakeKernel(off))).splitlines()
    assert moved == f"{NIC_B} moved from ixgbe to vfio-pci"
    assert warning.startswith("WARNING: no IOMMU, vfio is in enable_unsafe_noiommu_mode: the NIC can DMA "
                              "anywhere in memory")


# ---- names from the PCI id database ------------------------------------------------------------

PCI_IDS = """\
# a few lines in the format of Debian's /usr/share/misc/pci.ids
1af4  Red Hat, Inc.
\t1041  Virtio 1.0 network device
\t\t1af4 1100  QEMU Virtual Machine
8086  Intel Corporation
\t10ed  82599 Ethernet Controller Virtual Function
\t10fb  82599ES 10-Gigabit SFI/SFP+ Network Connection
\t\t8086 000c  Ethernet Server Adapter X520-DA2

C 02  Network controller
\t00  Ethernet controller
"""


def test_names_come_from_pci_ids_and_fall_back_to_ids(host, tmp_path):
    from ixypipe.ops.pciids import PciNames

    ids = tmp_path / "pci.ids"
    ids.write_text(PCI_IDS)
    names = PciNames(ids)
    assert names.describe(0x8086, 0x10FB) == "Intel Corporation 82599ES 10-Gigabit SFI/SFP+ Network Connection"
    assert names.describe(0x8086, 0x1234) == "Intel Corporation device 1234"     # vendor known, device not
    assert names.describe(0x1234, 0x1111) is None and PciNames(None).describe(0x8086, 0x10FB) is None
    assert (0x8086, 0x000C) not in names.devices                                 # subsystem lines are skipped
    res = CliRunner().invoke(main, ["devices", "--sysfs-root", str(host.sysfs), "--proc-root", str(host.proc),
                                    "--pci-ids", str(ids)])
    assert res.exit_code == 0, res.output
    assert ("0000:03:00.0 8086:10fb 'Intel Corporation 82599ES 10-Gigabit SFI/SFP+ Network Connection' "
            "Intel 82599 if=eth1 drv=ixgbe numa=0 *Active*") in res.output.splitlines()
    assert "0000:00:03.0 1af4:1041 'Red Hat, Inc. Virtio 1.0 network device' virtio-net if=eth0 drv=virtio-pci numa=0" \
        in res.output.splitlines()
    # without a database (a fresh machine without the pci.ids package): the ids alone
    bare = status_lines(list_network_devices(host.sysfs, host.proc, PciNames(None)))
    assert "0000:03:00.0 8086:10fb Intel 82599 if=eth1 drv=ixgbe numa=0 *Active*" in bare


def test_devices_json(host, tmp_path):
    ids = tmp_path / "pci.ids"
    ids.write_text(PCI_IDS)
    res = CliRunner().invoke(main, ["--json", "devices", "--sysfs-root", str(host.sysfs), "--proc-root",
                                    str(host.proc), "--pci-ids", str(ids)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["type"] == "devices" and doc["pci_ids"] == str(ids)
    devs = {d["address"]: d for d in doc["devices"]}
    assert sorted(devs) == [VIRTIO, NIC_A, NIC_B, VF]
    assert devs[NIC_A] == {"address": NIC_A, "vendor": "8086", "device": "10fb",
                           "name": "Intel Corporation 82599ES 10-Gigabit SFI/SFP+ Network Connection",
                           "kind": "82599", "driver": "ixgbe", "driver_override": None, "numa_node": 0,
                           "ready_for_ixypipe": False,
                           "interfaces": [{"name": "eth1", "up": True, "routes": ["10.0.2.0/24"], "active": True}]}
    assert devs[VF]["ready_for_ixypipe"] is True and devs[VF]["kind"] == "82599 VF"
    res = CliRunner().invoke(main, ["devices", "--json", "--pci-ids", str(tmp_path / "none.ids")])
    assert res.exit_code == 2 and json.loads(res.output)["message"].startswith("Invalid value for '--pci-ids'")
