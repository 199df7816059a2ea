"""Finishing a bundle for torch-free use: ONNX encoder and decoder, parity check, entropy model.

The receiver of a .latentz file needs only ``decoder.onnx`` and ``entropy_model.json``; the
browser explorer needs both ONNX files. Files are written with ``external_data=False`` because
ONNX Runtime Web cannot fetch side files.

Signatures (batch dynamic, and height/width too for fully convolutional models)::

    encoder.onnx   image  float32 (batch, C, H, W) in [0, 1]  ->  mean, logvar  float32 (batch, *latent)
    decoder.onnx   latent float32 (batch, *latent)            ->  image  float32 (batch, C, H, W) in [0, 1]
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from latentz import bundle, codec
from latentz.config import load_train_config
from latentz.data import load_training_data
from latentz.folder_cache import ImageRows
from latentz.imaging import to_float_nchw
from latentz.models import VAE, load_model, posterior

OPSET = 18
PARITY_IMAGES = 64


class _EncoderGraph(nn.Module):
    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.vae.encode(image)


class _DecoderGraph(nn.Module):
    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: Tensor) -> Tensor:
        return self.vae.decode_mean(latent)


def _dynamic_axes(rank: int, spatial: bool) -> dict[int, Any]:
    axes: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=4096)}
    if spatial and rank == 4:
        axes.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    return axes


def _export(module: nn.Module, example: Tensor, path: Path, inputs: list[str], outputs: list[str]) -> None:
    spatial = module.vae.config.fully_convolutional  # type: ignore[union-attr]
    export_graph(module, example, path, inputs, outputs, _dynamic_axes(example.ndim, spatial))


def export_graph(
    module: nn.Module,
    example: Tensor,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic: dict[int, Any],
) -> None:
    """``module`` on ``example`` as a self-contained ONNX file (``dynamic``: the input's free axes),
    written atomically: what ONNX Runtime and ONNX Runtime Web load."""
    tmp = path.with_name(f".{path.name}.tmp")
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it lists every torchvision op it skips
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                dynamic_shapes=(dynamic,),
                input_names=inputs,
                output_names=outputs,
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            program.save(str(tmp), external_data=False)
    finally:
        exporter_log.setLevel(level)
    tmp.replace(path)


def export_onnx(vae: VAE, out_dir: str | Path) -> tuple[Path, Path]:
    """Write encoder.onnx and decoder.onnx for ``vae`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vae = vae.eval()
    config = vae.config
    encoder_path, decoder_path = out_dir / bundle.ENCODER_FILE, out_dir / bundle.DECODER_FILE
    example_image = torch.rand(2, *config.image_shape)
    example_latent = torch.randn(2, *config.latent_shape())
    _export(_EncoderGraph(vae), example_image, encoder_path, ["image"], ["mean", "logvar"])
    _export(_DecoderGraph(vae), example_latent, decoder_path, ["latent"], ["image"])
    return encoder_path, decoder_path


def parity_check(vae: VAE, out_dir: str | Path, images: np.ndarray) -> dict[str, float]:
    """Max absolute difference between torch and ONNX Runtime on real images (float32, NCHW)."""
    import onnxruntime as ort

    out_dir = Path(out_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    encoder = ort.InferenceSession(str(out_dir / bundle.ENCODER_FILE), options, providers=providers)
    decoder = ort.InferenceSession(str(out_dir / bundle.DECODER_FILE), options, providers=providers)
    with torch.no_grad():
        mean, logvar = vae.encode(torch.from_numpy(images))
        image = vae.decode_mean(mean)
    onnx_mean, onnx_logvar = encoder.run(None, {"image": images})
    (onnx_image,) = decoder.run(None, {"latent": mean.numpy()})
    return {
        "encoder_mean_max_abs_diff": float(np.abs(onnx_mean - mean.numpy()).max()),
        "encoder_logvar_max_abs_diff": float(np.abs(onnx_logvar - logvar.numpy()).max()),
        "decoder_max_abs_diff": float(np.abs(onnx_image - image.numpy()).max()),
        "parity_images": int(images.shape[0]),
    }


def fit_entropy_model(
    means: np.ndarray, stds: np.ndarray, out_dir: Path, fitted_on: dict[str, Any]
) -> codec.EntropyModel:
    """Fit the codec's integer entropy model to training posteriors and save it in the bundle."""
    entropy = codec.fit(means, stds, fitted_on=fitted_on)
    entropy.save(Path(out_dir) / bundle.ENTROPY_MODEL_FILE)
    return entropy


def finish_bundle(
    vae: VAE,
    out_dir: Path,
    train_images: np.ndarray | ImageRows,
    val_images: np.ndarray | ImageRows,
    spec: str,
    posterior_train: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Any]:
    """Entropy model from the training images, ONNX files, and parity on validation images.

    The one place a bundle is finished for torch-free use: at the end of training (which passes
    the training posteriors it has just computed, ``(mean, logvar)``) and by `latentz export`.
    Returns the card fields describing them (the caller writes the card).
    """
    vae.eval()
    mean, logvar = posterior_train if posterior_train is not None else posterior(vae, train_images)
    entropy = fit_entropy_model(
        mean.double().numpy(),
        (0.5 * logvar).exp().double().numpy(),
        out_dir,
        {"data": spec, "split": "train", "n_images": len(train_images)},
    )
    export_onnx(vae, out_dir)
    parity = parity_check(vae, out_dir, to_float_nchw(val_images[:PARITY_IMAGES]))
    return {
        "onnx": {"opset": OPSET, "torch": torch.__version__, **parity},
        "entropy_model": {"id": entropy.id, "sha256": entropy.sha256, **entropy.fitted_on},
    }


def export_bundle(model: str | Path) -> dict[str, Any]:
    """`latentz export`: finish a bundle in place, refitting on the run's own training split."""
    path = bundle.resolve_bundle(model)
    config_path = path / bundle.TRAIN_CONFIG_FILE
    if not config_path.is_file():
        raise bundle.BundleError(
            f"{path} has no {bundle.TRAIN_CONFIG_FILE}; the entropy model is fitted on the training split"
        )
    data = load_training_data(load_train_config(config_path))
    fields = finish_bundle(load_model(path), path, data.train, data.val, data.spec)
    bundle.update_card(path, **fields)
    return fields
