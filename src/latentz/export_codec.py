"""Finishing a rate-distortion (hyperprior) bundle for torch-free use: the integer half, the ONNX
transforms, measurements on the held-out photos, the card.

Files (beside ``train_config.json`` and the checkpoint)::

    weights.safetensors      the torch model (training, `latentz train --resume`)
    hyperprior.safetensors   integer tables, integer hyper-decoder, gain offsets per quality row
    encoder.onnx             image float32 (1, 3, H, W) in [0, 1] -> y (1, M, H/8, W/8), z (1, Cz, H/32, W/32)
    decoder.onnx             latent float32 (1, M, h, w)           ->  image (1, 3, 8h, 8w), unclamped
    config.json              the ModelConfig view (a spatial model with M channels per 8x8 cell)
    card.json                command, data, metrics, measured rate-distortion points; written last
"""

from __future__ import annotations

import platform
import shlex
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from latentz import bundle, files, metrics
from latentz.bundle import HYPERPRIOR_FILE
from latentz.codec import hyper
from latentz.codec.hyper_bundle import HyperpriorCoder
from latentz.config import CodecTrainConfig, ModelConfig, to_dict
from latentz.export import export_graph
from latentz.hyperprior import HyperpriorCodec

OPSET = 18
#: Quality rows beyond the trained gain levels: one this many table steps (x1.45 each) coarser
#: than the lowest λ (quality 0) and one as much finer than the highest (quality 100).
EXTENSION_STEPS = 3
QUALITIES = tuple(range(0, 101, 10))
#: One image at a time, of any height and width.
SIDES = {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}


class _Analysis(nn.Module):
    def __init__(self, model: HyperpriorCodec) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        y = self.model.analyse(image)
        return y, self.model.h_a(y)


class _Synthesis(nn.Module):
    def __init__(self, model: HyperpriorCodec) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent: Tensor) -> Tensor:
        return self.model.synthesise(latent)


def quality_rows(levels: np.ndarray) -> np.ndarray:
    """The gain offsets of quality 0..100: one coarser row, the trained levels, one finer row."""
    return np.concatenate([levels[:1] + EXTENSION_STEPS, levels, levels[-1:] - EXTENSION_STEPS])


def model_config(config: CodecTrainConfig) -> ModelConfig:
    """The bundle's ModelConfig: what every torch-free tool reads (size, channels, latent grid)."""
    codec = config.model
    return ModelConfig(
        arch="spatial",
        image_size=config.crop_size,
        channels=3,
        latent_dim=codec.latent_channels,
        widths=[*codec.widths, codec.latent_channels],
        hidden=codec.hyper_channels,
        likelihood="gaussian",
        scale=0.1,
    )


def measure(out: Path, photos: Sequence[np.ndarray]) -> list[dict[str, float]]:
    """Mean bytes, bits per pixel and PSNR of the held-out photos at their own size, through the
    finished bundle's torch-free runtime (every file decoded again)."""
    from latentz.runtime import ModelRuntime

    runtime = ModelRuntime.load(out)
    points = []
    for quality in QUALITIES:
        sizes, psnrs, bpps = [], [], []
        for photo in photos:
            data = runtime.compress(photo, quality=quality)
            decoded = runtime.decompress(data)
            sizes.append(len(data))
            psnrs.append(metrics.psnr(photo, decoded))
            bpps.append(8 * len(data) / (photo.shape[0] * photo.shape[1]))
        points.append({"quality": quality, "bytes": float(np.mean(sizes)), "bpp": float(np.mean(bpps)),
                       "psnr": float(np.mean(psnrs))})  # fmt: skip
    return points


def _plot_training(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [row["epoch"] for row in history]
    left.plot(epochs, [row["loss"] for row in history])
    left.set(xlabel="epoch", ylabel="training loss (λ·MSE + bpp)", yscale="log", title="Training")
    for level, first in enumerate(history[-1]["val"]):
        right.plot(epochs, [row["val"][level]["psnr"] for row in history], label=f"λ = {first['lambda']:g}")
    right.set(xlabel="epoch", ylabel="held-out PSNR (dB)", title="Held-out photos, each trained λ")
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_rd(points: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5, 3.6))
    axis.plot([p["bpp"] for p in points], [p["psnr"] for p in points], "o-")
    for p in points:
        axis.annotate(
            str(p["quality"]), (p["bpp"], p["psnr"]), fontsize=7, xytext=(3, -8), textcoords="offset points"
        )
    axis.set(xlabel="bits per pixel", ylabel="PSNR (dB)", title="Held-out photos at own size, quality 0-100")
    axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finish_codec_bundle(
    model: HyperpriorCodec,
    config: CodecTrainConfig,
    out: Path,
    history: list[dict[str, Any]],
    val_photos: Sequence[np.ndarray],
    command: Sequence[str] | None,
    train_s: float,
) -> Path:
    """Write every bundle file into ``out``, ``card.json`` last (a folder with a card is complete)."""
    from safetensors.torch import save_file

    model = model.cpu().eval()
    weights = out / bundle.WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    coder = HyperpriorCoder(
        z_tables=model.z_density.tables(),
        gaussian=hyper.build_gaussian_tables(),
        hyper_decoder=model.h_s.to_integer(),
        levels=quality_rows(model.integer_levels()),
    )
    tables_sha = coder.save(out / HYPERPRIOR_FILE)
    with torch.no_grad():
        image, latent = torch.rand(1, 3, 64, 96), torch.randn(1, config.model.latent_channels, 8, 12)
        export_graph(_Analysis(model), image, out / bundle.ENCODER_FILE, ["image"], ["y", "z"], SIDES)
        export_graph(_Synthesis(model), latent, out / bundle.DECODER_FILE, ["latent"], ["image"], SIDES)
    files.atomic_write_json(out / bundle.CONFIG_FILE, to_dict(model_config(config)))
    # A provisional card lets the runtime open the bundle for the measurements below (its encoder
    # prices errors with the trained λs of ``codec``).
    fingerprint = files.sha256_file(weights)
    card: dict[str, Any] = {
        "name": out.resolve().name,
        "kind": "hyperprior",
        "fingerprint": fingerprint,
        "codec": to_dict(config.model),
    }
    files.atomic_write_json(out / bundle.CARD_FILE, card)
    points = measure(out, val_photos)
    _plot_training(history, out / bundle.PLOTS_DIR / "training.png")
    _plot_rd(points, out / bundle.PLOTS_DIR / "rd.png")
    card.update(_card_fields(config, history, val_photos, command, train_s, points, model, out))
    card["entropy_model"] = {"id": int(tables_sha[:2], 16), "sha256": tables_sha, "file": HYPERPRIOR_FILE,
                             "quality_rows": coder.levels.tolist()}  # fmt: skip
    files.atomic_write_json(out / bundle.CARD_FILE, card)
    return out


def _commands(out: Path) -> list[list[str]]:
    """Every command of the run in order, as `latentz.train.codec` recorded them (a run stopped and
    resumed, or whose bundle was written by ``--resume`` after its last epoch, has several)."""
    import json

    from latentz.train.codec import COMMANDS_FILE

    path = out / COMMANDS_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def _warm_start_record(config: CodecTrainConfig) -> dict[str, Any] | None:
    """Where a warm-started run's weights came from: the source bundle's own card history, so the
    new card tells the whole training (every command, epoch and second) without the source."""
    import json

    if config.init_from is None:
        return None
    source = Path(config.init_from)
    try:
        card = json.loads((source / bundle.CARD_FILE).read_text())
    except (OSError, ValueError):
        return {"bundle": str(source)}
    keys = ("name", "fingerprint", "commands", "epochs", "wall_time_s", "codec", "initialised_from")
    return {"bundle": str(source), **{k: card[k] for k in keys if k in card}}


def _train_count(config: CodecTrainConfig) -> int:
    from latentz.data.folders import list_image_files
    from latentz.data.sets import split_indices
    from latentz.train.codec import photo_folder

    train, _ = split_indices(len(list_image_files(photo_folder(config.data))), config.val_fraction, 0)
    return len(train) if config.max_train_images is None else min(len(train), config.max_train_images)


def _card_fields(
    config: CodecTrainConfig,
    history: list[dict[str, Any]],
    val_photos: Sequence[np.ndarray],
    command: Sequence[str] | None,
    train_s: float,
    points: list[dict[str, float]],
    model: HyperpriorCodec,
    out: Path,
) -> dict[str, Any]:
    argv = list(command) if command else []
    best = max(points, key=lambda p: p["psnr"])
    middle = next(p for p in points if p["quality"] == 50)
    return {
        "data": config.data,
        "split": f"val: held-out {config.val_fraction:.0%} of the photos (seed 0), scored at their own size",
        "n_train": _train_count(config),
        "n_val": len(val_photos),
        "command": argv,
        "command_line": shlex.join(argv) if argv else "latentz.train.codec.fit_codec() called from Python",
        "commands": _commands(out),
        "epochs": history[-1]["epoch"],
        "wall_time_s": round(train_s, 1),
        "initialised_from": _warm_start_record(config),
        "codec": to_dict(config.model),
        "metrics": {
            "psnr": best["psnr"],
            "psnr_at_quality_50": middle["psnr"],
            "bpp_at_quality_50": middle["bpp"],
            "bytes_at_quality_50": middle["bytes"],
        },
        "rate_distortion": points,
        "summary": (
            f"on its {len(val_photos)} held-out photos at their own size, quality 50 gives "
            f"{middle['bytes']:,.0f} bytes ({middle['bpp']:.3f} bpp) at {middle['psnr']:.2f} dB; quality "
            f"{best['quality']} reaches {best['psnr']:.2f} dB in {best['bytes']:,.0f} bytes. Trained "
            f"{history[-1]['epoch']} epochs in {train_s:,.0f} s."
        ),
        "parameters": sum(p.numel() for p in model.parameters()),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
