"""The memory-mapped photo-folder cache: built once, rebuilt when the folder changes, decoded pixels."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentz import folder_cache
from latentz.config import ModelConfig, TrainConfig
from latentz.data import DatasetError, load_dataset, load_training_data
from latentz.folder_cache import ImageRows

PHOTOS = 300
SIZE = 16


def write_photos(directory: Path, count: int, seed: int = 0) -> None:
    """Small random-coloured JPEGs and PNGs of varying shapes, in two sub-folders."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        height, width = rng.integers(12, 40, size=2)
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        path = directory / f"part{index % 2}" / f"photo{index:04d}.{'png' if index % 3 == 0 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)


@pytest.fixture(autouse=True)
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder of this test's own, so it sees only the caches it made."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LATENTZ_CACHE", str(root))
    return root


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """300 photos plus one unreadable file."""
    directory = tmp_path / "photos"
    write_photos(directory, PHOTOS)
    (directory / "part0" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return directory


def cache_files(root: Path) -> tuple[list[Path], list[Path]]:
    return sorted(root.glob("*.u8")), sorted(root.glob("*.json"))


def load(directory: Path, split: str = "train", **options: object):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_dataset(f"folder:{directory}", split=split, image_size=SIZE, **options)
    return loaded, [str(w.message) for w in caught]


def test_the_cache_holds_every_readable_photo_once(photos: Path, cache_root: Path) -> None:
    in_ram, ram_warnings = load(photos, split="all")
    assert cache_files(cache_root) == ([], [])  # a plain load decodes and caches nothing
    lazy, lazy_warnings = load(photos, split="all", lazy=True)
    (rows_file,), (index_file,) = cache_files(cache_root)
    assert rows_file.stat().st_size == PHOTOS * SIZE * SIZE * 3  # every photo, the broken one left out
    index = json.loads(index_file.read_text())
    assert index["count"] == PHOTOS and list(index["errors"]) == ["part0/broken.jpg"]

    assert isinstance(lazy.images, ImageRows) and lazy.images.shape == in_ram.images.shape == (
        PHOTOS,
        16,
        16,
        3,
    )
    np.testing.assert_array_equal(np.asarray(lazy.images), in_ram.images)  # the same pixels, in order
    assert lazy.files == in_ram.files and lazy.source_note == in_ram.source_note
    # The unreadable file is skipped, counted and warned about from the index, as decoding does.
    assert lazy.skipped == in_ram.skipped == 1
    assert lazy_warnings == ram_warnings and "broken.jpg" in ram_warnings[0]

    # The splits come out of the same cache: lazily for training, as arrays otherwise.
    train, _ = load(photos, split="train", lazy=True)
    val, _ = load(photos, split="val")
    assert isinstance(train.images, ImageRows) and isinstance(val.images, np.ndarray)
    assert len(train) + len(val) + train.skipped + val.skipped == PHOTOS + 1
    assert len(cache_files(cache_root)[0]) == 1


def test_indexing_reads_only_the_rows_asked_for(photos: Path) -> None:
    everything, _ = load(photos, split="all")
    lazy, _ = load(photos, split="all", lazy=True)
    rows = lazy.images
    order = np.random.default_rng(1).permutation(len(rows))[:37]
    np.testing.assert_array_equal(rows[order], everything.images[order])
    np.testing.assert_array_equal(rows[5:9], everything.images[5:9])
    np.testing.assert_array_equal(rows[3], everything.images[3])
    np.testing.assert_array_equal(rows[[0, 2], :4, :4], everything.images[[0, 2], :4, :4])
    assert rows.shape == (PHOTOS, SIZE, SIZE, 3) and len(rows) == PHOTOS and rows.dtype == np.uint8


def test_a_changed_folder_builds_a_new_cache_and_drops_the_old(photos: Path, cache_root: Path) -> None:
    first, _ = load(photos, split="all", lazy=True)
    (old_rows,), (old_index,) = cache_files(cache_root)
    build_time = old_index.stat().st_mtime_ns

    load(photos, split="val", lazy=True)  # unchanged: reused, not rebuilt
    assert cache_files(cache_root) == ([old_rows], [old_index])
    assert old_index.stat().st_mtime_ns == build_time

    replaced = photos / "part1" / "photo0001.jpg"
    Image.fromarray(np.full((20, 20, 3), 200, dtype=np.uint8)).save(replaced)
    os.utime(replaced, ns=(build_time + 10**9, build_time + 10**9))  # a newer mtime even on coarse clocks
    changed, _ = load(photos, split="all", lazy=True)
    (new_rows,), _ = cache_files(cache_root)
    assert new_rows != old_rows and not old_rows.exists()
    position = changed.files.index(replaced)
    assert (changed.images[position] == 200).all()
    assert not (first.images[position] == 200).all()

    write_photos(photos / "more", 3, seed=9)  # an added photo changes the key as well
    grown, _ = load(photos, split="all", lazy=True)
    assert len(grown) == PHOTOS + 3
    assert len(cache_files(cache_root)[0]) == 1


def test_training_through_the_cache_sees_the_same_batches(photos: Path) -> None:
    model = ModelConfig(arch="conv", image_size=SIZE, channels=3, latent_dim=2, widths=[4, 8], hidden=8,
                        likelihood="gaussian")  # fmt: skip
    config = TrainConfig(data=f"folder:{photos}", model=model, epochs=1, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_ram = load_training_data(config)
        cached = load_training_data(config, lazy=True)
    assert isinstance(in_ram.train, np.ndarray) and isinstance(cached.train, ImageRows)
    from latentz.train.batches import images_at

    order = torch.randperm(len(in_ram.train), generator=torch.Generator().manual_seed(0))
    for start in range(0, len(order), config.batch_size):
        index = order[start : start + config.batch_size]
        assert torch.equal(images_at(cached.train, index), torch.from_numpy(in_ram.train[index.numpy()]))
    assert torch.equal(images_at(cached.val, slice(0, 16)), torch.from_numpy(in_ram.val[:16]))


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads Linux /proc/self/status")
def test_reading_every_row_keeps_resident_memory_flat(tmp_path: Path) -> None:
    """Batches are read, not mapped: reading a 25 MB rows file adds about one batch to the process,
    where mapping it (the control) leaves the pages it touched resident."""
    count, size, batch = 2048, 64, 32  # 25 MB of rows, 0.4 MB per batch
    rows_file = tmp_path / "rows.u8"
    rows_file.write_bytes(
        np.random.default_rng(0).integers(0, 256, count * size * size * 3, np.uint8).tobytes()
    )
    rows = ImageRows(folder_cache.RowsFile(rows_file, count, size, 3), np.arange(count))
    order = np.random.default_rng(1).permutation(count)
    start_rss, peak_rss = _status_mb("VmRSS"), 0.0
    for start in range(0, count, batch):
        assert rows[order[start : start + batch]].shape == (batch, size, size, 3)
        peak_rss = max(peak_rss, _status_mb("VmRSS"))
    assert peak_rss - start_rss < 6

    mapped = np.memmap(rows_file, np.uint8, "r", shape=(count, size, size, 3))
    start_file = _status_mb("RssFile")
    total = sum(int(mapped[order[start : start + batch]].sum()) for start in range(0, count, batch))
    assert total > 0 and _status_mb("RssFile") - start_file > 20
    np.testing.assert_array_equal(rows[order[:batch]], mapped[order[:batch]])


def _status_mb(field: str) -> float:
    line = next(
        line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":")
    )
    return int(line.split()[1]) / 1024


def test_no_room_for_the_cache_is_a_clear_error(photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folder_cache, "SPACE_MARGIN_BYTES", 1 << 62)  # more than any disk has free
    with pytest.raises(DatasetError, match=r"not enough disk space for the image cache.*LATENTZ_CACHE"):
        load(photos, lazy=True)


def test_an_unwritable_cache_folder_is_a_clear_error(photos: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be created under a file")
    monkeypatch.setenv("LATENTZ_CACHE", str(blocker / "cache"))
    with pytest.raises(DatasetError, match=r"cannot write the image cache.*LATENTZ_CACHE"):
        load(photos, lazy=True)
