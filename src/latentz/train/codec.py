"""Rate-distortion training of the photo codec (`latentz.hyperprior`): `latentz train`'s recipe for
folders of photos.

Each epoch takes one random crop of every training photo at its own size (flipped half the time),
in a shuffled order, ``batch_size`` crops per Adam step, each coded at a trained λ drawn at random.
The learning rate follows a cosine over the float epochs; then the hyper-decoder's 8-bit
activations are calibrated on training crops and the last ``integer_epochs`` fine-tune with the
integer network simulated (straight-through), so the bundle's bit-exact twin is what was trained.
A checkpoint after every epoch holds the model, Adam, the gain offsets' progress and every random
state, so ``--resume`` continues exactly where a stopped run was.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentz import bundle, files
from latentz.config import CodecTrainConfig, ConfigError, to_dict
from latentz.data.folders import load_photos
from latentz.data.runs import SPLIT_SEED
from latentz.data.specs import parse_spec
from latentz.hyperprior import HyperpriorCodec
from latentz.train.errors import TrainingError

CHECKPOINT_FILE = "checkpoint/codec.pt"
#: Every command that trained or continued the run, in order (the card lists them).
COMMANDS_FILE = "checkpoint/commands.json"
#: Gain offsets are in scale-table steps and act only once rounded; at the network's learning rate
#: they never moved a whole step in a short run, so they learn this many times faster.
GAIN_LR_SCALE = 30.0
#: The cosine ends at this fraction of the learning rate.
LR_FLOOR = 0.05
#: Held-out photos scored after each epoch (all of them are scored when the bundle is written).
EPOCH_VAL_PHOTOS = 12
CALIBRATION_CROPS = 256


@dataclass
class CodecRun:
    """What a codec run carries from epoch to epoch."""

    model: HyperpriorCodec
    optimizer: torch.optim.Optimizer
    rng: np.random.Generator
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_s: float = 0.0


def photo_folder(spec: str) -> Path:
    kind, argument = parse_spec(spec)
    if kind != "folder":
        raise ConfigError(f"the photo codec trains on a folder of photos (folder:DIR), not {spec!r}")
    return Path(argument).expanduser()


def load_split(config: CodecTrainConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Train and held-out photos at their own size, split as every bundle's split is drawn."""
    folder = photo_folder(config.data)
    train, _ = load_photos(folder, "train", config.val_fraction, SPLIT_SEED, config.max_train_images)
    val_limit = None
    if config.max_train_images is not None:
        val_limit = max(
            1, math.ceil(config.max_train_images * config.val_fraction / (1 - config.val_fraction))
        )
    val, _ = load_photos(folder, "val", config.val_fraction, SPLIT_SEED, val_limit)
    return train, val


def random_crops(
    photos: Sequence[np.ndarray], order: np.ndarray, size: int, rng: np.random.Generator
) -> torch.Tensor:
    """One random ``size`` square of each chosen photo (edge-padded if smaller), flipped half the time."""
    batch = np.empty((len(order), size, size, 3), dtype=np.uint8)
    for slot, index in enumerate(order):
        photo = photos[index]
        short = ((0, max(0, size - photo.shape[0])), (0, max(0, size - photo.shape[1])), (0, 0))
        if any(pad for _, pad in short[:2]):
            photo = np.pad(photo, short, mode="edge")
        top = rng.integers(photo.shape[0] - size + 1)
        left = rng.integers(photo.shape[1] - size + 1)
        crop = photo[top : top + size, left : left + size]
        batch[slot] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)


def padded(photo: np.ndarray, cell: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H', W') in [0, 1], H' and W' whole cells (edge pixels repeated)."""
    height, width = photo.shape[:2]
    pad = ((0, -height % cell), (0, -width % cell), (0, 0))
    return torch.from_numpy(np.pad(photo, pad, mode="edge")).permute(2, 0, 1)[None].float().div(255)


def make_optimizer(model: HyperpriorCodec, lr: float) -> torch.optim.Optimizer:
    others = [p for p in model.parameters() if p is not model.gain_offsets]
    groups = [
        {"params": others, "lr_scale": 1.0},
        {"params": [model.gain_offsets], "lr_scale": GAIN_LR_SCALE},
    ]
    return torch.optim.Adam(groups, lr=lr)


def learning_rate(config: CodecTrainConfig, progress: float) -> float:
    """Cosine from ``lr`` to ``LR_FLOOR * lr`` over the float epochs (``progress`` 0..1), then the floor.

    A warm start ramps up linearly over its first epoch: Adam's first steps move every weight by
    about ``lr`` whatever its gradient, which would knock a trained model far off its optimum.
    """
    progress = min(max(progress, 0.0), 1.0)
    cosine = config.lr * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))
    if config.init_from is None:
        return cosine
    warmup = 1 / max(1, config.epochs - config.integer_epochs)
    return cosine * min(1.0, progress / warmup)


def train_epoch(run: CodecRun, config: CodecTrainConfig, photos: Sequence[np.ndarray]) -> dict[str, float]:
    """One pass over the training photos; the mean loss, PSNR and bits per pixel of its steps."""
    model, levels = run.model, len(config.model.lambdas)
    float_epochs = config.epochs - config.integer_epochs
    order = run.rng.permutation(len(photos))
    steps = max(1, len(order) // config.batch_size)
    totals = np.zeros(3)
    model.train()
    for step in range(steps):
        lr = learning_rate(config, (run.epoch + step / steps) / float_epochs)
        for group in run.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        chosen = order[step * config.batch_size : (step + 1) * config.batch_size]
        x = random_crops(photos, chosen, config.crop_size, run.rng)
        out = model(x, torch.from_numpy(run.rng.integers(levels, size=len(chosen))))
        if not torch.isfinite(out["loss"]):
            raise TrainingError(
                f"the loss became {float(out['loss'])} in epoch {run.epoch + 1}; the checkpoint holds the "
                f"last good epoch: resume with a lower --lr"
            )
        run.optimizer.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        run.optimizer.step()
        psnr = (10 * torch.log10(255**2 / out["mse"].clamp_min(1e-6))).mean()
        totals += [float(out["loss"].detach()), float(psnr), float((out["bpp_y"] + out["bpp_z"]).mean())]
    loss, psnr, bpp = totals / steps
    return {"loss": loss, "psnr": psnr, "bpp": bpp, "lr": lr}


@torch.no_grad()
def validate(model: HyperpriorCodec, photos: Sequence[np.ndarray]) -> list[dict[str, float]]:
    """Each trained level on whole held-out photos: mean PSNR (rounded latents) and estimated bpp."""
    model.eval()
    rows = []
    for level in range(len(model.config.lambdas)):
        psnrs, bpps = [], []
        for photo in photos:
            x = padded(photo, 4 * model.config.cell)
            out = model(x, torch.tensor([level]))
            height, width = photo.shape[:2]
            psnrs.append(float(10 * torch.log10(255**2 / out["mse"].clamp_min(1e-6))))
            bpps.append(float((out["bpp_y"] + out["bpp_z"]) * x.shape[-2] * x.shape[-1] / (height * width)))
        rows.append(
            {
                "lambda": model.config.lambdas[level],
                "psnr": float(np.mean(psnrs)),
                "bpp": float(np.mean(bpps)),
            }
        )
    return rows


@torch.no_grad()
def calibrate(
    model: HyperpriorCodec, photos: Sequence[np.ndarray], config: CodecTrainConfig, rng: np.random.Generator
) -> None:
    """Fix the integer hyper-decoder's activation scales from training crops (then it simulates integers)."""
    order = rng.integers(len(photos), size=CALIBRATION_CROPS)
    y = model.analyse(random_crops(photos, order, config.crop_size, rng))
    model.h_s.calibrate(torch.floor(model.h_a(y) + 0.5), tuple(y.shape[-2:]))


def save_checkpoint(run: CodecRun, config: CodecTrainConfig, path: Path) -> None:
    state = {
        "config": to_dict(config),
        "epoch": run.epoch,
        "model": run.model.state_dict(),
        "quantized": run.model.h_s.quantized,
        "optimizer": run.optimizer.state_dict(),
        "numpy_rng": json.dumps(run.rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
        "history": json.dumps(run.history),
        "train_s": run.train_s,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)


def load_checkpoint(path: Path, config: CodecTrainConfig) -> CodecRun:
    state = torch.load(path, weights_only=True)
    if state["config"] != to_dict(config):
        raise TrainingError(f"{path} belongs to another configuration; train into a new --out folder")
    model = HyperpriorCodec(config.model)
    model.load_state_dict(state["model"])
    model.h_s.quantized = bool(state["quantized"])
    optimizer = make_optimizer(model, config.lr)
    optimizer.load_state_dict(state["optimizer"])
    rng = np.random.default_rng()
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"])
    return CodecRun(model, optimizer, rng, state["epoch"], json.loads(state["history"]), state["train_s"])


def warm_start(model: HyperpriorCodec, config: CodecTrainConfig) -> None:
    """Load the weights of the codec bundle ``config.init_from`` into ``model`` (float h_s again: the
    integer epochs calibrate it anew). The bundle must have been trained with the same sizes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    source = Path(str(config.init_from)).expanduser()
    try:
        saved = json.loads((source / bundle.TRAIN_CONFIG_FILE).read_text())
        weights = load_file(str(source / bundle.WEIGHTS_FILE))
    except (OSError, ValueError, SafetensorError) as error:
        raise TrainingError(f"--init-from {source}: not a finished codec bundle ({error})") from None
    sizes = json.loads(json.dumps(to_dict(config.model)))  # tuples as the saved JSON has them: lists
    if saved.get("kind") != "hyperprior" or saved.get("model") != sizes:
        raise TrainingError(
            f"--init-from {source}: its codec sizes {saved.get('model')} differ from this run's "
            f"{sizes}; a warm start needs the same sizes"
        )
    model.load_state_dict(weights)
    model.h_s.quantized = False


def start(config: CodecTrainConfig, out: Path, resume: bool) -> CodecRun:
    """A fresh run from the seed (or from ``init_from``'s weights), or the checkpoint in ``out``
    when resuming."""
    checkpoint = out / CHECKPOINT_FILE
    if resume and checkpoint.is_file():
        return load_checkpoint(checkpoint, config)
    if not resume and (out / "train_config.json").exists():
        raise TrainingError(f"{out} already holds a run; continue it with --resume or choose another --out")
    torch.manual_seed(config.seed)
    model = HyperpriorCodec(config.model)
    if config.init_from is not None:
        warm_start(model, config)
    return CodecRun(model, make_optimizer(model, config.lr), np.random.default_rng(config.seed))


def fit_codec(
    config: CodecTrainConfig,
    out: Path,
    *,
    resume: bool = False,
    command: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """Train (or continue) the run in ``out`` and write the bundle there when the last epoch ends."""
    out = Path(out)
    run = start(config, out, resume)
    out.mkdir(parents=True, exist_ok=True)
    files.atomic_write_json(out / "train_config.json", to_dict(config))
    history_file = out / COMMANDS_FILE
    commands = json.loads(history_file.read_text()) if resume and history_file.is_file() else []
    files.atomic_write_json(history_file, [*commands, list(command or [])])
    train_photos, val_photos = load_split(config)
    float_epochs = config.epochs - config.integer_epochs
    while run.epoch < config.epochs:
        if run.epoch >= float_epochs and not run.model.h_s.quantized:
            calibrate(run.model, train_photos, config, run.rng)
        started = time.perf_counter()
        row = train_epoch(run, config, train_photos)
        run.train_s += time.perf_counter() - started
        run.epoch += 1
        row = {"epoch": run.epoch, **row, "train_s": round(run.train_s, 1),
               "val": validate(run.model, val_photos[:EPOCH_VAL_PHOTOS])}  # fmt: skip
        run.history.append(row)
        save_checkpoint(run, config, out / CHECKPOINT_FILE)
        if progress:
            levels = "  ".join(f"{v['psnr']:.2f} dB {v['bpp']:.3f} bpp" for v in row["val"])
            print(f"epoch {run.epoch}/{config.epochs}: loss {row['loss']:.4f}, held-out {levels}, "
                  f"{run.train_s:,.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    from latentz.export_codec import finish_codec_bundle

    return finish_codec_bundle(run.model, config, out, run.history, val_photos, command, run.train_s)
