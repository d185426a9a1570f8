"""Data layer: load image datasets as uint8 tensors, cache the decoding, and make reproducible splits.

Dataset specs accepted by :func:`load_dataset`:

- ``"sample"``: the bundled 4,000-image CIFAR-10 sample (``trainers/sample/cifar10-sample.zip``).
- ``"cifar10-jpeg"``: the shared 50,000-image zip, ``$POLICY_SEARCH_SHARED_DATA/cifar10-train-jpeg.zip``
  (the variable may also name the zip itself) or else ``../shared/data/cifar10-train-jpeg.zip`` from cwd.
- a directory or ``.zip`` in ImageFolder layout (``<class>/<file>``); single wrapper folders such as
  ``train/`` above the class folders are skipped. Files with an image extension (.jpg .jpeg .png .bmp
  .gif .ppm .pgm .tif .tiff .webp) count; hidden files, ``__MACOSX/`` and files beside the class
  folders are ignored.
- a ``.npz`` with uint8 ``x`` (NHWC, NCHW with 1/3/4 channels, or NHW grayscale), integer ``y`` and
  optional str ``classes`` (default ``"0"``, ``"1"``, ...), read with ``allow_pickle=False``.
- ``"torchvision:cifar10" | "torchvision:cifar100" | "torchvision:svhn"``: the training split through
  ``torchvision.datasets`` with ``root`` (default ``<cache_dir>/torchvision``) and ``download``.

Decoding rules (files, and arrays that need conversion):

- Pillow decodes every file. ``channels=3`` gives ``convert("RGB")`` and ``channels=1`` gives
  ``convert("L")``, from any mode (grayscale, CMYK, RGBA, LA, P, ...); alpha and palette
  transparency are dropped, not composited.
- Size: the target is ``image_size`` x ``image_size`` if given, else the most common (H, W) in the
  source (first in file order wins a tie). Other images are scaled with bicubic resampling, keeping
  the aspect ratio, until they cover the target (shorter side to S for a square target), then
  centre-cropped.
- Corrupt, truncated or unreadable files are skipped: one ``warnings.warn`` gives the count and first
  names, and ``ImageData.skipped`` holds the count. A DataError is raised when the path is missing,
  the source has no image files, fewer than two classes, or no file decodes.
- Order is deterministic: labels index the sorted class names, files are sorted by name within a
  class. Sources of 4,096 files or more are decoded by a process pool over chunks, in the same order.

Cache: a decoded file source is stored once as an uncompressed ``.npz`` (no pickle) named by the
sha256 of its content (zip: the file; directory: sorted relative paths and file contents) plus
``image_size`` and ``channels``, under ``cache_dir`` (default ``$POLICY_SEARCH_CACHE``, else
``~/.cache/policy-search``). Writes are atomic (temp file + rename); an unreadable entry is reported
with a warning and rebuilt; an unwritable cache directory only warns. Array sources are not cached.
"""

from ._common import DataError, ImageData
from ._sources import load_dataset
from .splits import Splits, make_splits, stratified_kfold, to_device_tensors

__all__ = [
    "DataError",
    "ImageData",
    "Splits",
    "load_dataset",
    "make_splits",
    "stratified_kfold",
    "to_device_tensors",
]
