"""The VFIO user ABI as ixypipe uses it: ioctl numbers, struct layouts, flags (facts from linux/vfio.h).

Every VFIO ioctl is ``_IO(';', 100 + n)``: no direction and no size in the
request number, because each struct starts with ``argsz`` (the caller's
struct size) and ``flags``, and the kernel checks ``argsz`` against the
smallest size it accepts (EINVAL when smaller).  The structs are numpy
structured dtypes with explicit offsets, so their byte layout is written
down here once and ``tobytes()`` gives exactly what the kernel reads.
"""

from __future__ import annotations

import numpy as np

VFIO_TYPE = ord(";")
VFIO_BASE = 100
IOC_TYPE_SHIFT = 8                   # _IO(type, nr) = type << 8 | nr (direction and size bits are 0)


def _io(n: int) -> int:
    return (VFIO_TYPE << IOC_TYPE_SHIFT) | (VFIO_BASE + n)


# container fd (/dev/vfio/vfio)
VFIO_GET_API_VERSION = _io(0)
VFIO_CHECK_EXTENSION = _io(1)        # arg: the extension number itself
VFIO_SET_IOMMU = _io(2)              # arg: the IOMMU type itself
# group fd (/dev/vfio/<group>)
VFIO_GROUP_GET_STATUS = _io(3)       # arg: struct vfio_group_status
VFIO_GROUP_SET_CONTAINER = _io(4)    # arg: pointer to the container fd (__s32)
VFIO_GROUP_UNSET_CONTAINER = _io(5)
VFIO_GROUP_GET_DEVICE_FD = _io(6)    # arg: NUL-terminated device name; returns the new fd
# device fd
VFIO_DEVICE_GET_INFO = _io(7)        # arg: struct vfio_device_info
VFIO_DEVICE_GET_REGION_INFO = _io(8)  # arg: struct vfio_region_info with index set
# container fd, once an IOMMU type is set
VFIO_IOMMU_MAP_DMA = _io(13)         # arg: struct vfio_iommu_type1_dma_map
VFIO_IOMMU_UNMAP_DMA = _io(14)       # arg: struct vfio_iommu_type1_dma_unmap (size written back)

VFIO_API_VERSION = 0
VFIO_TYPE1_IOMMU = 1

VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1

VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2

VFIO_DMA_MAP_FLAG_READ = 1 << 0      # the device may read the mapping
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1     # the device may write it

# vfio-pci region indices
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_NUM_REGIONS = 9

GROUP_STATUS = np.dtype({"names": ["argsz", "flags"], "formats": ["<u4", "<u4"], "offsets": [0, 4],
                         "itemsize": 8})
DEVICE_INFO = np.dtype({"names": ["argsz", "flags", "num_regions", "num_irqs", "cap_offset", "pad"],
                        "formats": ["<u4"] * 6, "offsets": [0, 4, 8, 12, 16, 20], "itemsize": 24})
REGION_INFO = np.dtype({"names": ["argsz", "flags", "index", "cap_offset", "size", "offset"],
                        "formats": ["<u4", "<u4", "<u4", "<u4", "<u8", "<u8"],
                        "offsets": [0, 4, 8, 12, 16, 24], "itemsize": 32})
DMA_MAP = np.dtype({"names": ["argsz", "flags", "vaddr", "iova", "size"],
                    "formats": ["<u4", "<u4", "<u8", "<u8", "<u8"], "offsets": [0, 4, 8, 16, 24], "itemsize": 32})
DMA_UNMAP = np.dtype({"names": ["argsz", "flags", "iova", "size"],
                      "formats": ["<u4", "<u4", "<u8", "<u8"], "offsets": [0, 4, 8, 16], "itemsize": 24})
CONTAINER_FD = np.dtype("<i4")       # VFIO_GROUP_SET_CONTAINER's argument


def pack(dtype: np.dtype, **fields) -> bytearray:
    """A struct of ``dtype`` as a mutable buffer, ``argsz`` set to its size, other fields as given."""
    rec = np.zeros(1, dtype)
    if "argsz" in dtype.names:
        rec["argsz"] = dtype.itemsize
    for name, value in fields.items():
        rec[name] = value
    return bytearray(rec.tobytes())


def unpack(dtype: np.dtype, buf: bytes | bytearray) -> np.void:
    """The struct the kernel filled in, fields by name."""
    return np.frombuffer(bytes(buf[:dtype.itemsize]), dtype)[0]
