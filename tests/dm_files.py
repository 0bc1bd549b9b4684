"""Real DigitalMicrograph files for the reader tests, fetched rather than committed.

rosettasciio reads .dm3/.dm4 but cannot write them, and its wheels no longer carry test data.
HyperSpy 1.7.6's wheel on PyPI does (`hyperspy/tests/io/`); it is GPL-3.0, so its files are
not copied into this MIT repository: the first test that needs them downloads the wheel with
pip (about 33 MB), extracts three files into tests/data/dm/ (git-ignored), and checks their
sha256. tests/data/dm/README.md says what each file holds.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["DM_DIR", "fetch_dm_files"]

DM_DIR = Path(__file__).parent / "data" / "dm"
WHEEL = "hyperspy==1.7.6"
FILES = {
    "float32_2x2.dm3": (
        "hyperspy/tests/io/dm3_2D_data/test-2.dm3",
        "f40485142df39dbdc06d7225983f3e0676c8a3a1caa614fbe5c1918c8a33b1c7",
    ),
    "float32_2x2.dm4": (
        "hyperspy/tests/io/dm4_2D_data/test-2.dm4",
        "db23e0fa74d1c50ea1ef3c4df847e952aa15cc97eb25ea96deede46ba1e0edcd",
    ),
    "diffraction_87x87.dm3": (
        "hyperspy/tests/io/dm3_2D_data/test_diffraction_pattern.dm3",
        "ebd6c192ce39e6bd5e67e2c6d53a36809307723023b16c9e149c7afbc3ef601a",
    ),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_dm_files() -> Path:
    """The folder with the three files, downloading them first if any is missing or altered."""
    if all((DM_DIR / n).is_file() and _sha256(DM_DIR / n) == h for n, (_, h) in FILES.items()):
        return DM_DIR
    DM_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-q", "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("hyperspy-*.whl")
        with zipfile.ZipFile(wheel) as z:
            for name, (member, sha) in FILES.items():
                data = z.read(member)
                if hashlib.sha256(data).hexdigest() != sha:
                    raise RuntimeError(f"{member} in {wheel.name} is not the expected file")
                staged = DM_DIR / f".{name}.tmp"
                staged.write_bytes(data)
                staged.replace(DM_DIR / name)
    return DM_DIR
