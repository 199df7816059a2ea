"""`latentz train`: train a VAE on a data set and write a model bundle.

Settings come from three layers, later ones winning: the recipe for the kind of data (grey digits
or colour photos, `latentz.recipes`), an optional ``--config`` JSON file (a full or partial
TrainConfig), and the command-line flags.

Under torchrun (``torchrun --nproc-per-node N -m latentz train ...``) every process runs this
command; rank 0 builds the configuration (it alone may see the run folder when resuming on several
machines) and shares it, and only rank 0 prints.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from latentz.bundle import CARD_FILE, TRAIN_CONFIG_FILE
from latentz.commands import fail, user_command
from latentz.config import LIKELIHOODS, LR_SCHEDULES, ConfigError, TrainConfig
from latentz.recipes import build_codec_config, build_config, is_codec_run, read_config_file

#: What training imports beyond the base install, and what for: the base install serves and codes
#: without any of them, so a user may well have none.
TRAINING_MODULES = {
    "torch": "to train",
    "onnx": "to write the bundle's ONNX files when training ends",
    "onnxscript": "to write the bundle's ONNX files when training ends",
}
TRAIN_EXTRA_INSTALL = (
    "pip install 'latentz[train]' (from a clone of the repository: pip install -e '.[train]')"
)


def missing_training_modules(
    what: str = "latentz train", modules: dict[str, str] = TRAINING_MODULES
) -> str | None:
    """A sentence naming what cannot be imported and how to install it, or None when all can.

    The modules are imported, not just looked up, so a broken install is caught too, and before
    the first epoch: the ONNX exporter is otherwise first imported after the last one.
    """
    missing, reasons = [], []
    for name, purpose in modules.items():
        try:
            importlib.import_module(name)
        except ImportError as error:
            missing.append(f"{name} ({purpose})")
            reasons.append(str(error))
    if not missing:
        return None
    needed = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
    return (
        f"{what} needs {needed}, which cannot be imported here: {'; '.join(reasons)}. "
        f"Install what training needs with {TRAIN_EXTRA_INSTALL}"
    )


def parse_widths(text: str) -> list[int]:
    try:
        widths = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers like 32,64, but got {text!r}.") from None
    if not widths:
        raise typer.BadParameter("give at least one width, for example 32,64.")
    return widths


def register(app: typer.Typer) -> None:
    app.command("train")(user_command(train_command))


def train_command(
    data: str = typer.Option(
        None,
        "--data",
        "-d",
        help="Data set: mnist, fashion-mnist, idx:PATH, folder:DIR (photos). May come from --config instead.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder; it becomes the model bundle."),
    config_file: Path = typer.Option(
        None, "--config", help="TrainConfig JSON (full or partial); flags override it."
    ),
    arch: str = typer.Option(
        None,
        "--arch",
        help="hyperprior (the rate-distortion photo codec; the default for folders), spatial (a "
        "fully convolutional VAE, codec v1), conv (one global latent vector; sliders and sampling) or mlp.",
    ),
    image_size: int = typer.Option(
        None, "--image-size", help="Square image side the model sees (grey default 28, photos 64)."
    ),
    channels: int = typer.Option(None, "--channels", help="1 (grey) or 3 (RGB)."),
    latent_dim: int = typer.Option(
        None,
        "--latent-dim",
        help="Latent dimensions (default 10 grey); for photos latent channels per cell (32).",
    ),
    widths: str = typer.Option(
        None,
        "--widths",
        help="Conv stage channels (or MLP layer sizes), "
        "e.g. 32,64. A conv model needs image size divisible by 2^stages.",
    ),
    hidden: int = typer.Option(None, "--hidden", help="Width of the conv model's dense layer."),
    likelihood: str = typer.Option(None, "--likelihood", help=f"Pixel likelihood: {', '.join(LIKELIHOODS)}."),
    scale: float = typer.Option(
        None,
        "--scale",
        help="Pixel std (gaussian) or diversity (laplace) in "
        "[0,1] pixel units; the starting value for gaussian-learned.",
    ),
    epochs: int = typer.Option(
        None, "--epochs", help="Passes over the training split (default 30 grey, 100 photos)."
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", help="Images per optimisation step (default 128 grey, 2 photos)."
    ),
    lr: float = typer.Option(None, "--lr", help="Adam learning rate (default 1e-3)."),
    lr_schedule: str = typer.Option(
        None,
        "--lr-schedule",
        help=f"{' or '.join(LR_SCHEDULES)}: cosine "
        "decays to lr/10 over the run; constant allows extending a run.",
    ),
    beta: float = typer.Option(
        None,
        "--beta",
        help="Weight of the KL term while training. 1 = the true "
        "ELBO; <1 sharper reconstructions, blurrier samples; >1 a smoother, "
        "more disentangled latent; for a codec the rate knob (higher = smaller files; "
        "default 1, photos 2). Reported metrics always use beta = 1.",
    ),
    kl_warmup: int = typer.Option(
        None,
        "--kl-warmup",
        help="Epochs over which the KL weight ramps "
        "from 0 to beta (0 = no warm-up); helps against unused latents.",
    ),
    val_fraction: float = typer.Option(
        None, "--val-fraction", help="Share of images held out for validation (default 0.1)."
    ),
    seed: int = typer.Option(None, "--seed", help="Seed for initialisation, shuffling and noise."),
    augment: bool = typer.Option(
        None,
        "--augment/--no-augment",
        help="Random flips, small shifts, colour jitter (default on for photo folders, off for digits).",
    ),
    crop_size: int = typer.Option(
        None,
        "--crop-size",
        help="Spatial models: train on random crops of this side (validation uses whole images).",
    ),
    limit: int = typer.Option(
        None,
        "--limit",
        help="Use at most N training images (validation shrinks in proportion); quick runs.",
    ),
    init_from: Path = typer.Option(
        None,
        "--init-from",
        help="Photo codec: start from this codec bundle's weights (same sizes) on a new learning-rate "
        "cosine, to train a finished bundle further; its card's history is carried into the new card.",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --out from its checkpoint with "
        "its saved settings (--epochs may grow if it used --lr-schedule constant).",
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar or epoch lines."),
    device: str = typer.Option(
        "auto",
        "--device",
        help="auto (a CUDA GPU when there is one, else the CPU), cpu or cuda. Under torchrun each "
        "process takes the GPU of its local rank.",
    ),
) -> None:
    """Train a VAE and write a model bundle (weights, config, card, plots) into --out."""
    problem = missing_training_modules("latentz train")
    if problem:
        fail(f"{problem}. Nothing was trained.")
    run_flags = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "lr_schedule": lr_schedule,
        "beta": beta,
        "kl_warmup_epochs": kl_warmup,
        "val_fraction": val_fraction,
        "seed": seed,
        "augment": augment,
        "max_train_images": limit,
        "crop_size": crop_size,
    }
    model_flags = {
        "arch": arch,
        "image_size": image_size,
        "channels": channels,
        "latent_dim": latent_dim,
        "widths": parse_widths(widths) if widths is not None else None,
        "hidden": hidden,
        "likelihood": likelihood,
        "scale": scale,
    }

    saved_file = out / TRAIN_CONFIG_FILE
    saved = read_config_file(saved_file) if resume and saved_file.is_file() else None
    spec = data or (read_config_file(config_file).get("data") if config_file else None)
    if is_codec_run(spec, arch, saved):
        run_flags["init_from"] = str(init_from) if init_from is not None else None
        _train_codec(data, config_file, out, saved, run_flags, model_flags, resume, not no_progress)
        return
    if init_from is not None:
        fail("--init-from warm-starts the photo codec; a VAE run starts from its seed (or --resume).")

    def configure() -> TrainConfig:
        saved = out / TRAIN_CONFIG_FILE
        base = read_config_file(saved) if resume and saved.is_file() else None
        return build_config(data, config_file, run_flags, model_flags, base)

    bundle_dir = _train(configure, out, resume=resume, progress=not no_progress, device=device)
    if is_main_process():
        typer.echo(_outcome(bundle_dir, out), err=not (bundle_dir / CARD_FILE).is_file())


def _train(
    configure: Callable[[], TrainConfig], out: Path, *, resume: bool, progress: bool, device: str
) -> Path:
    """One distributed session for the whole command: rank 0 builds the configuration, then every
    process trains in it. The errors a user can act on become one line, nothing else is caught."""
    from latentz import distributed
    from latentz.data import DatasetError
    from latentz.train import TrainingError, default_command, fit

    try:
        with distributed.session(device) as context:
            config = context.run_on_main(configure)
            return fit(config, out, context, resume=resume, command=default_command(), progress=progress)
    except (ConfigError, DatasetError, TrainingError, distributed.DistributedError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail(
            f"interrupted. The last finished epoch is checkpointed: continue with "
            f"`latentz train -o {out} --resume`.",
            code=130,
        )


#: Flags that shape a VAE and mean nothing to the rate-distortion codec.
VAE_ONLY_FLAGS = {"beta": "--beta", "kl_warmup_epochs": "--kl-warmup", "augment": "--augment",
                  "lr_schedule": "--lr-schedule"}  # fmt: skip


def _train_codec(
    data: str | None,
    config_file: Path | None,
    out: Path,
    saved: dict[str, Any] | None,
    run_flags: dict[str, Any],
    model_flags: dict[str, Any],
    resume: bool,
    progress: bool,
) -> None:
    """The photo recipe: the rate-distortion codec (`latentz.train.codec`), one process."""
    from latentz.data import DatasetError
    from latentz.train import TrainingError, default_command
    from latentz.train.codec import fit_codec

    ignored = [VAE_ONLY_FLAGS[k] for k, v in run_flags.items() if v is not None and k in VAE_ONLY_FLAGS]
    ignored += ["--" + k.replace("_", "-") for k, v in model_flags.items() if v is not None and k != "arch"]
    if ignored:
        fail(
            f"{', '.join(ignored)} shape a VAE; the photo codec (the default for folders) does not use "
            f"them. Pass --arch spatial (or conv) to train a VAE, or set the codec's sizes in --config."
        )
    try:
        config = build_codec_config(data, config_file, run_flags, saved)
        bundle = fit_codec(config, out, resume=resume, command=default_command(), progress=progress)
    except (ConfigError, DatasetError, TrainingError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail(f"interrupted. The last finished epoch is checkpointed: continue with "
             f"`latentz train -o {out} --resume`.", code=130)  # fmt: skip
    card = json.loads((bundle / CARD_FILE).read_text())
    typer.echo(f"Wrote the bundle {bundle}: {card['summary']}")


def _outcome(bundle_dir: Path, out: Path) -> str:
    """The last line: the finished bundle and its figures, or where the checkpoint waits."""
    if not (bundle_dir / CARD_FILE).is_file():
        return (
            f"Stopped before the last epoch; the checkpoint is in {bundle_dir / 'checkpoint'}: continue "
            f"with `latentz train -o {out} --resume`."
        )
    return finished_sentence(bundle_dir, json.loads((bundle_dir / CARD_FILE).read_text()))


def finished_sentence(bundle_dir: Path, card: dict[str, Any]) -> str:
    """The last line of a run: where the bundle is and its held-out figures, as the epoch lines give them."""
    from latentz.evaluation import bits_per_dim

    metrics, model = card["metrics"], json.loads((bundle_dir / "config.json").read_text())
    dims = model["channels"] * model["image_size"] ** 2
    bits = bits_per_dim(metrics["neg_elbo"], dims, model["likelihood"])
    return (
        f"Wrote the bundle {bundle_dir}: on its {card['n_val']} validation images -ELBO "
        f"{metrics['neg_elbo']:,.2f} nats per image = {bits:.4f} bits/dim, PSNR {metrics['psnr']:.2f} dB. "
        f"Trained at {card['images_per_s']:,.0f} images/s in {card['wall_time_s']:,.0f} s."
    )


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process: the one that talks to the user (no torch import)."""
    return os.environ.get("RANK", "0") == "0"
