"""ONNX export: the encoder and decoder halves of a bundle as two single-file ONNX models.

The receiver of a .latentz file needs only ``decoder.onnx``; the browser explorer needs both.
Files are written with ``external_data=False`` because ONNX Runtime Web cannot fetch side files.

Signatures (batch dimension dynamic, named ``batch``)::

    encoder.onnx   image  float32 (batch, C, H, W) in [0, 1]  ->  mean, logvar  float32 (batch, D)
    decoder.onnx   latent float32 (batch, D)                  ->  image  float32 (batch, C, H, W) in [0, 1]
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from latentz.bundle import DECODER_FILE, ENCODER_FILE, resolve_bundle
from latentz.models import VAE, load_model

OPSET = 18


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


def _export(module: nn.Module, example: Tensor, path: Path, inputs: list[str], outputs: list[str]) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            dynamic_shapes=({0: batch},),
            input_names=inputs,
            output_names=outputs,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        program.save(str(tmp), external_data=False)
    tmp.replace(path)


def export_onnx(vae: VAE, out_dir: str | Path) -> tuple[Path, Path]:
    """Write encoder.onnx and decoder.onnx for ``vae`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vae = vae.eval()
    config = vae.config
    encoder_path, decoder_path = out_dir / ENCODER_FILE, out_dir / DECODER_FILE
    _export(_EncoderGraph(vae), torch.rand(2, *config.image_shape), encoder_path,
            ["image"], ["mean", "logvar"])
    _export(_DecoderGraph(vae), torch.randn(2, config.latent_dim), decoder_path, ["latent"], ["image"])
    return encoder_path, decoder_path


def parity_check(vae: VAE, out_dir: str | Path, images: np.ndarray) -> dict[str, float]:
    """Max absolute difference between torch and ONNX Runtime on real images (float32, NCHW)."""
    import onnxruntime as ort

    out_dir = Path(out_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    encoder = ort.InferenceSession(str(out_dir / ENCODER_FILE), options, providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(out_dir / DECODER_FILE), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        x = torch.from_numpy(images)
        mean, logvar = vae.encode(x)
        image = vae.decode_mean(mean)
    onnx_mean, onnx_logvar = encoder.run(None, {"image": images})
    (onnx_image,) = decoder.run(None, {"latent": mean.numpy()})
    return {
        "encoder_mean_max_abs_diff": float(np.abs(onnx_mean - mean.numpy()).max()),
        "encoder_logvar_max_abs_diff": float(np.abs(onnx_logvar - logvar.numpy()).max()),
        "decoder_max_abs_diff": float(np.abs(onnx_image - image.numpy()).max()),
        "parity_images": int(images.shape[0]),
    }


def export_bundle(model: str | Path) -> tuple[Path, Path]:
    """Export a bundle's ONNX files in place."""
    path = resolve_bundle(model)
    return export_onnx(load_model(path), path)
