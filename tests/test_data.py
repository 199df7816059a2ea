"""data: every spec kind, deterministic splits, labels, resizing, and clear errors on bad data."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import IDX_COUNT, TEST_IDX_COUNT, make_digits
from typer.testing import CliRunner

from latentz import data
from latentz.cli import app
from latentz.data import DatasetError, load_dataset, named, split_indices, write_idx


@pytest.fixture()
def no_default_roots(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Only $LATENTZ_DATA (an empty tmp folder) is searched: the machine's real data stays invisible."""
    root = tmp_path / "latentz-data"
    root.mkdir()
    monkeypatch.setenv("LATENTZ_DATA", str(root))
    monkeypatch.setattr(named, "DEFAULT_ROOTS", [tmp_path / "cache", tmp_path / "system"])
    return root


# -- IDX ----------------------------------------------------------------------------------------
def test_idx_gz_with_labels_loads_exactly_what_was_written(idx_path: Path) -> None:
    written, written_labels = make_digits(IDX_COUNT, seed=1)
    loaded = load_dataset(f"idx:{idx_path}", split="all")
    assert len(loaded) == IDX_COUNT
    assert loaded.images.shape == (IDX_COUNT, 28, 28, 1) and loaded.images.dtype == np.uint8
    assert np.array_equal(loaded.images[:, :, :, 0], written)
    assert loaded.labels is not None and loaded.labels.dtype == np.int64
    assert np.array_equal(loaded.labels, written_labels)
    assert loaded.split == "all" and loaded.spec == f"idx:{idx_path}"


def test_plain_idx_without_labels(idx_plain_path: Path) -> None:
    loaded = load_dataset(f"idx:{idx_plain_path}", split="all")
    assert loaded.images.shape == (20, 28, 28, 1)
    assert loaded.labels is None


def test_a_bare_idx_path_is_accepted(idx_path: Path) -> None:
    assert len(load_dataset(str(idx_path), split="all")) == IDX_COUNT


def test_train_and_val_partition_the_file_deterministically(idx_path: Path) -> None:
    spec = f"idx:{idx_path}"
    everything = load_dataset(spec, split="all")
    train = load_dataset(spec, split="train", val_fraction=0.25, seed=3)
    val = load_dataset(spec, split="val", val_fraction=0.25, seed=3)
    assert (len(train), len(val)) == (48, 16)
    train_index, val_index = split_indices(IDX_COUNT, 0.25, 3)
    assert set(train_index).isdisjoint(val_index) and len(set(train_index) | set(val_index)) == IDX_COUNT
    assert np.array_equal(train.images, everything.images[train_index])
    assert np.array_equal(val.labels, everything.labels[val_index])
    again = load_dataset(spec, split="val", val_fraction=0.25, seed=3)
    assert np.array_equal(again.images, val.images)
    other_seed = load_dataset(spec, split="val", val_fraction=0.25, seed=4)
    assert not np.array_equal(other_seed.images, val.images)
    assert "held-out 25% of 64" in val.source_note and "seed 3" in val.source_note


def test_split_indices_sizes_and_edge_cases() -> None:
    train, val = split_indices(1000, 0.1, 0)
    assert (len(train), len(val)) == (900, 100)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert [len(part) for part in split_indices(5, 0.01, 0)] == [4, 1]  # a tiny set still gets a val image
    assert [len(part) for part in split_indices(5, 0.0, 0)] == [5, 0]
    with pytest.raises(DatasetError, match="val_fraction"):
        split_indices(10, 1.0, 0)


def test_test_split_is_the_official_test_file(idx_path: Path) -> None:
    test = load_dataset(f"idx:{idx_path}", split="test")
    assert len(test) == TEST_IDX_COUNT
    assert np.array_equal(test.images[:, :, :, 0], make_digits(TEST_IDX_COUNT, seed=2)[0])
    assert "official test set" in test.source_note


def test_test_split_falls_back_to_val_and_says_so(idx_plain_path: Path) -> None:
    spec = f"idx:{idx_plain_path}"
    test = load_dataset(spec, split="test")
    assert np.array_equal(test.images, load_dataset(spec, split="val").images)
    assert "using the validation split" in test.source_note


def test_channels_size_and_limit(idx_path: Path) -> None:
    spec = f"idx:{idx_path}"
    grey = load_dataset(spec, split="train", limit=5)
    rgb = load_dataset(spec, split="train", channels=3, limit=5)
    assert rgb.images.shape == (5, 28, 28, 3)
    assert all(np.array_equal(rgb.images[..., c], grey.images[..., 0]) for c in range(3))
    assert len(grey.labels) == 5 and "limit 5" in grey.source_note
    small = load_dataset(spec, split="train", image_size=14, limit=5)
    assert small.images.shape == (5, 14, 14, 1)
    # a 2x box-like shrink keeps the overall brightness
    assert abs(float(small.images.mean()) - float(grey.images.mean())) < 4


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(100),
            "truncated",
        ),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes(5), "magic number 2049"),
        (b"GIF89a this is not an idx file", "not an IDX images file"),
        (b"\x00\x00\x08", "too short"),
        (b"\x00\x00\x08\x03" + (1).to_bytes(4, "big") + (2).to_bytes(4, "big") * 2 + bytes(5), "trailing"),
    ],
)
def test_bad_idx_files_name_the_path_and_the_problem(tmp_path: Path, payload: bytes, message: str) -> None:
    path = tmp_path / "bad-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(payload))
    with pytest.raises(DatasetError, match=message) as caught:
        load_dataset(f"idx:{path}")
    assert str(path) in str(caught.value)


def test_a_truncated_gzip_stream_is_a_dataset_error(idx_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut-images-idx3-ubyte.gz"
    path.write_bytes(idx_path.read_bytes()[:500])
    with pytest.raises(DatasetError, match="corrupt or truncated gzip"):
        load_dataset(f"idx:{path}")


def test_labels_that_do_not_match_are_refused(tmp_path: Path) -> None:
    images, labels = make_digits(6, seed=0)
    write_idx(tmp_path / "x-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "x-labels-idx1-ubyte.gz", labels[:5])
    with pytest.raises(DatasetError, match="do not match the 6 images"):
        load_dataset(f"idx:{tmp_path / 'x-images-idx3-ubyte.gz'}")


def test_missing_idx_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(f"idx:{tmp_path / 'absent.gz'}")


# -- named data sets ----------------------------------------------------------------------------
def test_named_dataset_found_through_latentz_data(idx_dir: Path, no_default_roots: Path) -> None:
    shutil.copytree(idx_dir, no_default_roots / "fashion-mnist")
    train_file, test_file = data.resolve_named("fashion-mnist")
    assert train_file == no_default_roots / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    assert test_file == no_default_roots / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    loaded = load_dataset("fashion-mnist", split="test")
    assert len(loaded) == TEST_IDX_COUNT and loaded.labels is not None


def test_named_dataset_accepts_the_9k_subset_name(idx_path: Path, no_default_roots: Path) -> None:
    folder = no_default_roots / "mnist"
    folder.mkdir()
    shutil.copy(idx_path, folder / "mnist9k-images-idx3-ubyte.gz")
    assert len(load_dataset("mnist", split="all")) == IDX_COUNT


def test_missing_named_dataset_lists_every_place_and_the_fix(no_default_roots: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        load_dataset("mnist")
    message = str(caught.value)
    for place in (no_default_roots / "mnist", tmp_path / "cache" / "mnist", tmp_path / "system" / "mnist"):
        assert str(place) in message
    assert "latentz data download mnist" in message
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_default_search_path_covers_cache_system_and_shared(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LATENTZ_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    places = [str(path) for path in data.search_dirs("mnist")]
    assert str(tmp_path.parent / "shared" / "data" / "mnist") in places  # relative to the current dir
    assert (
        str(Path(named.__file__).resolve().parents[4] / "shared" / "data" / "mnist") in places
    )  # to the repo
    assert str(Path("~/.cache/latentz/mnist").expanduser()) in places
    assert "/usr/share/datasets/mnist" in places


# -- folders ------------------------------------------------------------------------------------
def test_folder_loads_every_readable_photo_and_skips_the_corrupt_one(
    photo_dir: Path, photo_count: int
) -> None:
    with pytest.warns(UserWarning, match="z_corrupt.jpg"):
        loaded = load_dataset(f"folder:{photo_dir}", split="all", image_size=32)
    assert loaded.images.shape == (photo_count, 32, 32, 3) and loaded.images.dtype == np.uint8
    assert loaded.skipped == 1 and "1 unreadable" in loaded.source_note
    assert loaded.labels is None
    names = [path.name for path in loaded.files]
    assert names == ["a_wide.jpg", "b_tall.png", "c_square.webp", "d_small.bmp", "e_nested.JPEG"]


def test_folder_default_size_grey_and_bare_path(photo_dir: Path, photo_count: int) -> None:
    with pytest.warns(UserWarning):
        loaded = load_dataset(str(photo_dir), split="all", channels=1)
    assert loaded.images.shape == (photo_count, data.DEFAULT_FOLDER_SIZE, data.DEFAULT_FOLDER_SIZE, 1)


def test_folder_splits_are_disjoint_and_deterministic(photo_dir: Path) -> None:
    spec = f"folder:{photo_dir}"
    with pytest.warns(UserWarning):  # the corrupt file lands in one of the two splits
        train = load_dataset(spec, split="train", image_size=16, val_fraction=0.4, seed=1)
        val = load_dataset(spec, split="val", image_size=16, val_fraction=0.4, seed=1)
    assert set(train.files).isdisjoint(val.files)
    assert len(train) + len(val) + train.skipped + val.skipped == 6
    with pytest.warns(UserWarning):
        again = load_dataset(spec, split="train", image_size=16, val_fraction=0.4, seed=1)
    assert again.files == train.files and np.array_equal(again.images, train.images)
    assert (
        "no official test set"
        in load_dataset(spec, split="test", image_size=16, val_fraction=0.4, seed=1).source_note
    )


def test_empty_and_unreadable_folders_are_errors(empty_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no JPEG/PNG/WebP/BMP files"):
        load_dataset(f"folder:{empty_dir}")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"nope")
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="none of the 1 image files"):
        load_dataset(f"folder:{broken}", split="all")
    with pytest.raises(DatasetError, match="no such folder"):
        load_dataset(f"folder:{tmp_path / 'absent'}")


# -- argument checks ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("cifar", {}, "unknown data spec 'cifar'"),
        ("", {}, "empty data spec"),
        ("idx:", {}, "missing the path"),
        ("mnist", {"split": "dev"}, "unknown split 'dev'"),
        ("mnist", {"channels": 2}, "channels must be 1"),
        ("mnist", {"image_size": 0}, "image_size"),
    ],
)
def test_bad_arguments_are_clear(spec: str, options: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset(spec, **options)


def test_real_mnist_subset(mnist_path: Path) -> None:
    everything = load_dataset(f"idx:{mnist_path}", split="all")
    assert everything.images.shape == (9000, 28, 28, 1)
    assert set(np.unique(everything.labels)) == set(range(10))
    assert len(load_dataset(f"idx:{mnist_path}", split="val")) == 900


# -- describe and CLI ---------------------------------------------------------------------------
def test_describe_idx(idx_path: Path) -> None:
    info = data.describe(f"idx:{idx_path}")
    assert info["count"] == IDX_COUNT and info["labels"] is True
    assert info["splits"] == {"train": 58, "val": 6, "test": TEST_IDX_COUNT}


def test_cli_data_info_json_and_table(photo_dir: Path, idx_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "info", f"folder:{photo_dir}", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kind"] == "folder" and info["count"] == 6
    table = runner.invoke(app, ["data", "info", f"idx:{idx_path}"])
    assert table.exit_code == 0 and "64" in table.stdout


def test_cli_data_info_errors_are_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "info", f"idx:{tmp_path / 'nothing.gz'}"])
    assert result.exit_code == 2
    assert "no such file" in result.output and "Traceback" not in result.output


def test_cli_download_refuses_unknown_names() -> None:
    result = CliRunner().invoke(app, ["data", "download", "imagenet"])
    assert result.exit_code == 2 and "cannot download 'imagenet'" in result.output
