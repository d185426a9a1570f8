"""The CIFAR-10 sample bundled with policy-search (``trainers/sample/cifar10-sample.zip``) as a plain Dataset.

Shared by the examples; reads the zip with zipfile + PIL only (no policy-search import).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

SAMPLE_ZIP = Path(__file__).resolve().parents[1] / "trainers" / "sample" / "cifar10-sample.zip"


class ZipImages(Dataset):
    """``(transform(PIL image), label)`` for the first ``limit`` images of a class-folder zip."""

    def __init__(self, path=SAMPLE_ZIP, transform=None, limit=256):
        with zipfile.ZipFile(path) as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))[:: max(1, 4000 // limit)][:limit]
            self.images = [Image.open(io.BytesIO(zf.read(n))).convert("RGB") for n in names]
        classes = sorted({n.split("/")[0] for n in names})
        self.labels = [classes.index(n.split("/")[0]) for n in names]
        self.num_classes = len(classes)
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = self.images[i]
        return (self.transform(image) if self.transform else image), self.labels[i]
