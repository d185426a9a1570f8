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

SHARED_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-train-jpeg.zip"


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
