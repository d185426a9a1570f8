"""Shared fixtures: real CIFAR-10 images from ../shared/data, quiet Ray settings and a local Ray."""

from __future__ import annotations

import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # tests show every worker's log line (read when Ray is imported)
from policy_search.session import RAY_ENV  # noqa: E402  (the campaigns' quiet Ray settings)

for key, value in RAY_ENV.items():  # (importing the module applies them too; kept explicit here)
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


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray (2 CPUs) for the module's campaigns: started when none is running and left running for the
    next module (a test that needs another cluster shuts it down itself); shut down when the session ends."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield


def pytest_sessionfinish(session, exitstatus):
    """Shut down a Ray the tests left running."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
