"""A directory the workers' user may write to: worker code runs as ``nobody`` when the tests run as root, and a
pytest tmp_path (under a 0700 directory of root's) is out of its reach."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def worker_writable_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ixypipe-test-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
