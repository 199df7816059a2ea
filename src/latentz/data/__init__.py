"""Data sets named by one spec string, used the same way by the CLI, the API and configs.

Specs:

- ``idx:PATH`` — an IDX image file (gzipped or plain, magic 2051, uint8 ``(N, rows, cols)``).
  Labels are read from the file beside it whose name has ``labels-idx1`` for ``images-idx3``.
  If PATH is a ``train-images`` file and a ``t10k-images`` file sits beside it, that is the test split.
- ``mnist``, ``fashion-mnist`` — found on a search path (see `search_dirs`), never downloaded
  implicitly. ``latentz data download NAME`` fetches them for users who are online.
- ``folder:DIR`` — every JPEG/PNG/WebP/BMP under DIR (recursive, sorted, content-checked).
  Photos are resized keeping the aspect ratio and centre-cropped to a square; unreadable files
  are skipped with a warning and counted. Without ``image_size`` they become 64x64
  (`DEFAULT_FOLDER_SIZE`), RGB unless ``channels=1``. Training decodes a folder once into a
  memory-mapped cache (`latentz.folder_cache`) and reads it batch by batch (``lazy=True``); other
  loads reuse that cache when it is current and otherwise decode just the split they need.

A bare path also works: an existing ``*idx3-ubyte[.gz]`` file is read as ``idx:``, a directory as
``folder:``.

Splits: ``train`` and ``val`` partition the training file with a seeded permutation
(`split_indices`); ``test`` is the official test file when there is one, else the same images
as ``val`` (``source_note`` says which); ``all`` is the whole training file.

Torch-free. Images are uint8 ``(N, H, W, C)``: numpy arrays, or with ``lazy=True`` (folders only)
an `ImageRows` that reads the cached images a batch at a time.

The package, bottom to top: `sets` (`ImageSet`, `DatasetError`, the split rule), `idx`, `named`
(search path and downloads) and `folders` (photos and their cache), `specs` (`load_dataset`,
`describe`), `runs` (a training run's images, and a bundle's split of them).
"""

from __future__ import annotations

from latentz.data.folders import DEFAULT_FOLDER_SIZE, FOLDER_EXTENSIONS, list_image_files
from latentz.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, labels_path_for, read_idx, write_idx
from latentz.data.named import DOWNLOADS, NAMED_DATASETS, download, resolve_named, search_dirs
from latentz.data.runs import (
    SPLIT_SEED,
    Images,
    TrainingData,
    card_data_spec,
    load_bundle_split,
    load_training_data,
    split_limit,
)
from latentz.data.sets import SPLITS, DatasetError, ImageSet, split_indices
from latentz.data.specs import describe, load_dataset, parse_spec
from latentz.folder_cache import ImageRows

__all__ = [
    "DEFAULT_FOLDER_SIZE",
    "DOWNLOADS",
    "FOLDER_EXTENSIONS",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "NAMED_DATASETS",
    "SPLITS",
    "SPLIT_SEED",
    "DatasetError",
    "ImageRows",
    "ImageSet",
    "Images",
    "TrainingData",
    "card_data_spec",
    "describe",
    "download",
    "labels_path_for",
    "list_image_files",
    "load_bundle_split",
    "load_dataset",
    "load_training_data",
    "parse_spec",
    "read_idx",
    "resolve_named",
    "search_dirs",
    "split_indices",
    "split_limit",
    "write_idx",
]
