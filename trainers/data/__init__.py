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

Limits and large images (``limits=DataLimits(...)``, one-line DataError naming the limit when passed):

- ``max_bytes`` (4 GiB): all image files of a source together; a zip's uncompressed sizes are taken from its
  directory and checked before anything is inflated (a zip bomb is refused, not read); also a ``.npz``'s arrays.
- ``max_file_bytes`` (256 MiB): one image file; every read stops one byte past it, whatever a zip header
  or ``stat`` claims (a link to ``/dev/zero`` is refused too).
- ``max_image_pixels`` (2**26, 8192 x 8192): one image, from its header, before its pixels are decoded
  (Pillow's own decompression-bomb ceiling, twice ``Image.MAX_IMAGE_PIXELS``, also gives this error).
- ``max_pixels`` (2**30, 3 GiB of RGB): the decoded dataset, N x H x W, counted as images decode.
- ``decode_size=S`` scales every image whose shorter side exceeds S to that shorter side as it decodes
  (bicubic, aspect kept; JPEGs are first decoded at 1/2, 1/4 or 1/8 scale, never below S), so a folder of
  full-size photos never exists at native size (arrays are scaled the same way); the size rules above then
  apply. It is part of the cache key.

Cache: a decoded file source is stored once as an uncompressed ``.npz`` (no pickle) named by the
sha256 of its content (zip: the file; directory: sorted relative paths and file contents) plus
``image_size``, ``decode_size`` and ``channels``, under ``cache_dir`` (default ``$POLICY_SEARCH_CACHE``, else
``~/.cache/policy-search``). Writes are atomic (temp file + rename); an unreadable entry is reported
with a warning and rebuilt; an unwritable cache directory only warns. Array sources are not cached.
"""

from ._common import DataError, DataLimits, ImageData
from ._sources import load_dataset
from .splits import Splits, make_splits, prepare_data, stratified_kfold, to_device_tensors

__all__ = [
    "DataError",
    "DataLimits",
    "ImageData",
    "Splits",
    "load_dataset",
    "make_splits",
    "prepare_data",
    "stratified_kfold",
    "to_device_tensors",
]
