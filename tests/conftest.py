"""Shared fixtures: real CIFAR-10 images from ../shared/data, and quiet Ray settings."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

for key, value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_DEDUP_LOGS": "0",
    "TUNE_DISABLE_DATED_SUBDIR": "1",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
}.items():
    os.environ.setdefault(key, value)

def _shared_zip() -> Path:
    """``$POLICY_SEARCH_SHARED_DATA`` (a folder or the zip, as the data loader reads it), else ../shared/data."""
    env = os.environ.get("POLICY_SEARCH_SHARED_DATA")
    base = Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return base if base.suffix == ".zip" else base / "cifar10-train-jpeg.zip"


SHARED_ZIP = _shared_zip()
SHARED_REFERENCE = SHARED_ZIP.parent.parent / "reference"  # ../shared/reference beside ../shared/data


@pytest.fixture(scope="session")
def shared_zip() -> Path:
    """Path of the shared 50,000-image CIFAR-10 zip (skips the test when absent)."""
    if not SHARED_ZIP.is_file():
        pytest.skip(f"shared data not found at {SHARED_ZIP}")
    return SHARED_ZIP


@pytest.fixture(scope="session")
def cifar_images(shared_zip: Path) -> torch.Tensor:
    """64 real CIFAR-10 images (uint8, (64, 3, 32, 32)), a few from every class."""
    with zipfile.ZipFile(shared_zip) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        picked = names[:: len(names) // 64][:64]
        arrays = [np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB")) for n in picked]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
