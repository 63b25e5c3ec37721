"""Small filesystems for disk-fault tests: a tmpfs that fills up or turns read-only (root only).

Shared by the store's unit tests and the end-to-end fault suite; without root or
tmpfs the tests using them skip with the reason.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def make_tmpfs(tmp_path):
    """``make_tmpfs("8m")`` mounts a tmpfs of that size under tmp_path; every mount is removed afterwards."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        mnt = tmp_path / f"mnt{len(mounts)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounts.append(mnt)
        return mnt

    yield mount
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill_filesystem(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` until ENOSPC; returns the filler file (delete it to free space)."""
    filler = Path(directory) / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: closing it cannot fail on what is left
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler
