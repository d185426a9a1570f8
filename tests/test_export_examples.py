"""Every file in examples/ runs on the bundled CIFAR-10 sample with a freshly exported policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from search_spaces import Magnitude, OpConfig, Policy, preset
from search_spaces.export import albumentations_json, kornia_source, to_timm, torchvision_source

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ALBUMENTATIONS_POLICY = Policy("rand_augment", num_ops=2, ops=(
    OpConfig("rotate", 1.0, Magnitude(9.0, random_sign=True)),
    OpConfig("brightness", 1.0, Magnitude(1.3, random_sign=True)),
    OpConfig("sharpness", 1.0, Magnitude(1.3)), OpConfig("equalize", 1.0), OpConfig("hflip", 1.0)))


@pytest.mark.parametrize(("script", "make"), [
    ("torchvision_dataloader.py", lambda d: _write(d / "rank1.py", torchvision_source(preset("autoaugment_cifar10")))),
    ("kornia_gpu_batches.py", lambda d: _write(d / "rank1.py", kornia_source(preset("trivialaugment_wide")))),
    ("timm_create_transform.py", lambda d: to_timm(preset("randaugment"))),
    ("albumentations_pipeline.py", lambda d: _write(d / "rank1.json", albumentations_json(ALBUMENTATIONS_POLICY))),
])
def test_example_runs_on_the_bundled_sample(tmp_path, script, make):
    arg = make(tmp_path)
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), str(arg), "--steps", "2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("ok: 2 steps") and ("(32, 3, 32, 32)" in line or "(64, 3, 32, 32)" in line), line


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
