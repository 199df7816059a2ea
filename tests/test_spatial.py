"""The fully convolutional (spatial) VAE: shapes at any size, training on crops, export and the codec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentz import bundle
from latentz.config import ConfigError, ModelConfig, TrainConfig
from latentz.models import VAE, build_model, load_model
from latentz.train import train
from latentz.train.batches import random_crop


def tiny_spatial(image_size: int = 64, stages: int = 4, likelihood: str = "gaussian-learned") -> VAE:
    torch.manual_seed(0)
    widths = [4, 6, 8, 8, 8][:stages]
    return build_model(
        ModelConfig(
            arch="spatial",
            image_size=image_size,
            channels=3,
            latent_dim=5,
            widths=widths,
            likelihood=likelihood,
        )
    )


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("likelihood", ["gaussian-learned", "laplace"])
def test_forward_backward_at_the_training_sizes(size: int, likelihood: str) -> None:
    model = tiny_spatial(size, likelihood=likelihood)
    x = torch.rand(2, 3, size, size)
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (2, *model.config.latent_shape())
    assert model.config.latent_shape() == (5, size // 16, size // 16)
    assert model.decode(mean).shape == x.shape
    out = model(x, kl_weight=0.5)
    for key in ("recon", "kl", "neg_elbo"):
        assert out[key].shape == (2,) and torch.isfinite(out[key]).all()
    # The KL is summed over every latent element of an image, not just over channels.
    expected_kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
    assert torch.allclose(model.kl_divergence(mean, logvar), expected_kl)
    assert torch.allclose(out["loss"], (out["recon"] + 0.5 * out["kl"]).mean())
    out["loss"].backward()
    for parameter in (next(model.encoder.parameters()), list(model.decoder.parameters())[-1]):
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0
    assert model.log_scale.requires_grad == (likelihood == "gaussian-learned")


@pytest.mark.parametrize(("height", "width"), [(48, 80), (30, 50)])
def test_any_image_size_encodes_and_decodes(height: int, width: int) -> None:
    """The latent follows the image's own shape (no squashing); odd sizes round up to whole cells."""
    model = tiny_spatial(64).eval()
    x = torch.rand(1, 3, height, width)
    with torch.no_grad():
        mean, _ = model.encode(x)
        assert mean.shape == (1, *model.config.latent_shape(height, width))
        decoded = model.decode_mean(mean)
        out = model(x)
    assert decoded.shape == (1, 3, -(-height // 16) * 16, -(-width // 16) * 16)
    assert float(decoded.min()) >= 0 and float(decoded.max()) <= 1
    assert torch.isfinite(out["loss"])


def test_the_decoder_can_reach_true_black_and_white() -> None:
    """No tanh/sigmoid squashing: a large enough output reaches 0 and 1 exactly after the clamp."""
    model = tiny_spatial(64).eval()
    last = model.decoder.upsample[-2]  # the convolution before the final pixel shuffle
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-0.5, 1.5, 0.5]).repeat_interleave(4))
        image = model.decode_mean(torch.zeros(1, 5, 4, 4))
    assert torch.equal(image[0, 0], torch.zeros(64, 64)) and torch.equal(image[0, 1], torch.ones(64, 64))


def test_prior_samples_have_the_training_size() -> None:
    model = tiny_spatial(64)
    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 3, 64, 64)


def test_spatial_configs_are_checked() -> None:
    with pytest.raises(ConfigError, match="divisible by 16"):
        ModelConfig(arch="spatial", image_size=40, channels=3, widths=[4, 4, 4, 4])
    spatial = ModelConfig(arch="spatial", image_size=64, channels=3, widths=[4, 4, 4])
    assert spatial.fully_convolutional and spatial.downsampling == 8
    assert spatial.latent_shape(20, 33) == (spatial.latent_dim, 3, 5)
    assert TrainConfig(model=spatial, crop_size=32).crop_size == 32
    for bad in (12, 4, 128):
        with pytest.raises(ConfigError, match="crop_size"):
            TrainConfig(model=spatial, crop_size=bad)
    conv = ModelConfig(arch="conv", image_size=64, channels=3, widths=[4, 4, 4])
    with pytest.raises(ConfigError, match="fully convolutional"):
        TrainConfig(model=conv, crop_size=32)


def test_random_crops_are_windows_of_each_image_and_seeded() -> None:
    x = torch.arange(4 * 3 * 10 * 12, dtype=torch.float32).view(4, 3, 10, 12)
    crops = random_crop(x, 6, torch.Generator().manual_seed(1))
    again = random_crop(x, 6, torch.Generator().manual_seed(1))
    assert crops.shape == (4, 3, 6, 6) and torch.equal(crops, again)
    for image, crop in zip(x, crops, strict=True):
        top = int((crop[0, 0, 0] - image[0, 0, 0]) // 12)
        left = int((crop[0, 0, 0] - image[0, 0, 0]) % 12)
        assert torch.equal(crop, image[:, top : top + 6, left : left + 6])
    assert torch.equal(random_crop(x[:, :, :6, :6], 6, torch.Generator()), x[:, :, :6, :6])


@pytest.fixture(scope="module")
def spatial_bundle(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """A tiny spatial model trained for one epoch on random crops, finished like any bundle."""
    model = ModelConfig(arch="spatial", image_size=32, channels=3, latent_dim=4, widths=[4, 8, 8],
                        likelihood="gaussian-learned")  # fmt: skip
    config = TrainConfig(data=f"folder:{photo_dir}", model=model, epochs=1, batch_size=2, augment=True,
                         val_fraction=0.2, crop_size=16)  # fmt: skip
    out = tmp_path_factory.mktemp("spatial") / "tiny-spatial"
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        return train(config, out, command=["latentz", "train"], progress=False)


def test_a_spatial_run_is_a_complete_bundle(spatial_bundle: Path) -> None:
    card = bundle.read_card(spatial_bundle)
    assert card["onnx"]["decoder_max_abs_diff"] < 1e-4
    assert len(card["latent_stats"]["kl"]) == 4
    for plot in ("reconstructions", "samples", "traversal", "interpolation", "loss"):
        assert (spatial_bundle / bundle.PLOTS_DIR / f"{plot}.png").is_file()


def test_runtime_codes_a_non_square_photo_at_its_own_size(spatial_bundle: Path) -> None:
    """Export + runtime at a size the model never saw, with padding to whole cells and no squashing."""
    from latentz import codec, runtime

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, size=(37, 70, 3), dtype=np.uint8))  # 70 wide, 37 high
    model = runtime.load(spatial_bundle)
    prepared = model.prepare(photo)
    assert prepared.image.shape == (37, 70, 3) and "own size" in prepared.note

    mean, _ = model.encode(prepared.image)
    assert mean.shape == (1, 4, 5, 9)  # ceil(37 / 8), ceil(70 / 8)
    vae = load_model(spatial_bundle)
    padded = np.pad(prepared.image, ((0, 3), (0, 2), (0, 0)), mode="edge")
    with torch.no_grad():
        torch_mean, _ = vae.encode(torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255)
    assert np.abs(torch_mean.numpy() - mean).max() < 1e-4

    data = model.compress(prepared.image, quality=90)
    header, _ = codec.unpack(data)
    assert (header.width, header.height) == (70, 37) and header.latent_shape == (4, 5, 9)
    decoded = model.decompress(data)
    assert decoded.shape == (37, 70, 3) and decoded.dtype == np.uint8
    assert model.reconstruct(prepared.image).shape == (1, 37, 70, 3)


@pytest.mark.parametrize(("extra", "side"), [([], 32), (["--image-size", "48"], 48)])
def test_rd_measures_a_spatial_model_at_its_training_size_unless_told(
    spatial_bundle: Path, photo_dir: Path, tmp_path: Path, extra: list[str], side: int
) -> None:
    """A photo folder has no size of its own: rd uses the model's training size, or --image-size."""
    import json

    from typer.testing import CliRunner

    from latentz.cli import app

    args = ["rd", str(spatial_bundle), "--data", f"folder:{photo_dir}", "--split", "all", "--limit", "3"]
    result = CliRunner().invoke(app, [*args, "--qualities", "50", "-o", str(tmp_path), "--json", *extra])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["image"] == f"{side}x{side}x3"


def test_rd_own_size_codes_each_photo_whole_for_every_codec(
    spatial_bundle: Path, photo_dir: Path, tmp_path: Path
) -> None:
    """--own-size: the same photos at their own sizes for latentz, WebP, AVIF and JPEG, scored whole."""
    import json

    from PIL import features
    from typer.testing import CliRunner

    from latentz import imaging, metrics, rd, runtime
    from latentz.cli import app
    from latentz.data import list_image_files

    args = ["rd", str(spatial_bundle), "--data", f"folder:{photo_dir}", "--split", "all", "--own-size"]
    result = CliRunner().invoke(app, [*args, "--qualities", "0,50", "-o", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    photos = []
    for path in list_image_files(photo_dir):
        try:
            photos.append(imaging.load_array(path, None, 3))
        except imaging.ImageError:
            continue  # the corrupt file, skipped by the loader too
    assert summary["n_images"] == len(photos) and summary["own_size"] is True
    assert summary["image"].startswith("own sizes 30-120 x 20-90")
    model = runtime.load(spatial_bundle)
    files = [model.compress(photo, quality=50) for photo in photos]
    ours = summary["codecs"]["latentz"]["results"]
    assert ours["bytes"][1] == pytest.approx(np.mean([len(f) for f in files]))
    bpp = np.mean([len(f) * 8 / (p.shape[0] * p.shape[1]) for f, p in zip(files, photos, strict=True)])
    assert ours["bpp"][1] == pytest.approx(bpp)
    decoded = [model.decompress(f) for f in files]
    assert [d.shape for d in decoded] == [p.shape for p in photos]
    expected_psnr = np.mean([metrics.psnr(p, d) for p, d in zip(photos, decoded, strict=True)])
    assert ours["psnr"][1] == pytest.approx(expected_psnr)
    codecs = ("webp", "avif", "jpeg") if features.check("avif") else ("webp", "jpeg")
    for fmt in codecs:
        theirs = summary["codecs"][fmt]["results"]
        index = theirs["quality"].index(50)
        sizes = [len(imaging.encode_with(photo, fmt, 50)) for photo in photos]
        assert theirs["bytes"][index] == pytest.approx(np.mean(sizes)), fmt
        bd = rd.bd_rate(theirs["bytes"], theirs["psnr"], ours["bytes"], ours["psnr"])
        assert summary["bd_rate_vs"][fmt]["bd_rate_percent"] == bd
