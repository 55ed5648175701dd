"""Which paths may be data files: what every file the project reads as data or writes must be, and bounded reads.

A capture to replay or write, a sink's capture, the generator's output, a
pci.ids database: each is a regular file on a real filesystem.  A FIFO or a
device (/dev/zero, /dev/full) blocks, never ends or fails at the first write;
a file on procfs or sysfs (``/proc/self/mem``, ``/proc/version``) looks
like a regular file to stat but is a kernel interface, so it is refused by
the filesystem it lives on (statfs f_type).  :func:`data_file_problem` is
the one check (for reading, or for writing, where a file that does not
exist yet is judged by its directory); :func:`read_bounded` reads a file it
passed with a cap on the bytes, checking the opened file again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat

# statfs f_type of the kernel's interface filesystems (linux/magic.h)
KERNEL_FILESYSTEMS = {0x9FA0: "procfs", 0x62656572: "sysfs", 0x64626720: "debugfs", 0x74726163: "tracefs",
                      0x73636673: "securityfs", 0x27E0EB: "cgroup", 0x63677270: "cgroup2",
                      0x62656570: "configfs", 0xDE5E81E4: "efivarfs", 0xCAFE4A11: "bpf"}
_STATFS_BYTES = 256                      # more than struct statfs on any Linux ABI; f_type is its first word

_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"))


class DataFileError(ValueError):
    """A path that cannot be read or written as a data file; the message names the path and why."""


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is ("a FIFO (named pipe)"), for messages."""
    return next((what for test, what in _NOT_REGULAR if test(mode)), "not a regular file")


_libc = None


def _statfs_type(path: str) -> int | None:
    """statfs(2) f_type of the filesystem holding ``path``, None when it cannot be asked."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    buf = ctypes.create_string_buffer(_STATFS_BYTES)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def kernel_filesystem(path: str | os.PathLike) -> str | None:
    """"procfs", "sysfs", ... when ``path`` (or, if it does not exist, its nearest existing directory) is on
    one of the kernel's interface filesystems; None on a real one."""
    where = os.path.abspath(os.fspath(path))
    while True:
        kind = _statfs_type(where)
        if kind is not None:
            return KERNEL_FILESYSTEMS.get(kind)
        parent = os.path.dirname(where)
        if parent == where:
            return None
        where = parent


def data_file_problem(path: str | os.PathLike, write: bool = False) -> str:
    """Why ``path`` cannot be a data file to read (or, ``write``, to create or replace); "" when it can.

    The reasons start with the path as written: "'/dev/full' is a character device", "'/proc/version' is on
    procfs (a kernel interface, not a data file)"."""
    shown = repr(os.fspath(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not write:
            return f"{shown} does not exist"
        st = None
    except ValueError as exc:                     # an embedded NUL byte
        return f"{shown} is not a usable path: {exc}"
    except OSError as exc:
        why = "a loop of symbolic links" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        return f"{shown} cannot be used: {why}"
    if st is not None and not stat.S_ISREG(st.st_mode):
        return f"{shown} is {file_kind(st.st_mode)}; a data file must be a regular file"
    fs = kernel_filesystem(path)
    if fs is not None:
        return f"{shown} is on {fs} (a kernel interface, not a data file)"
    return ""


def check_data_file(path: str | os.PathLike, write: bool = False) -> None:
    """Raise DataFileError when ``path`` cannot be a data file (see data_file_problem)."""
    problem = data_file_problem(path, write)
    if problem:
        raise DataFileError(problem)


def read_bounded(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of a data file of at most ``limit`` bytes (checked before and after it is opened)."""
    check_data_file(path)
    shown = repr(os.fspath(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise DataFileError(f"cannot read {shown}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):                # swapped since the check
            raise DataFileError(f"{shown} is {file_kind(st.st_mode)}; a data file must be a regular file")
        if st.st_size > limit:
            raise DataFileError(f"{shown} is {st.st_size} bytes; at most {limit} are read")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise DataFileError(f"cannot read {shown}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise DataFileError(f"{shown} grew beyond {limit} bytes while being read")
    return b"".join(chunks)
