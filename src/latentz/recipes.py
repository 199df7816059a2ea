"""Training recipes as library data: the settings a run starts from, chosen by the kind of data.

Settings come in three layers, later ones winning: the recipe for the kind of data (grey digits
or colour photos), an optional config file (a full or partial `TrainConfig` as JSON), and explicit
overrides (the command line's flags). `latentz train` only calls `build_config`; Python callers
can start from `default_train_config`. Torch-free, so `latentz train --help` stays fast.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from latentz.config import CodecTrainConfig, ConfigError, TrainConfig, from_dict

#: Grey data sets (MNIST-like IDX files): small conv model, Bernoulli pixels, 28x28.
GREY_DEFAULTS: dict[str, Any] = {
    "epochs": 30,
    "batch_size": 128,
    "model": {
        "arch": "conv",
        "image_size": 28,
        "channels": 1,
        "latent_dim": 10,
        "widths": [32, 64],
        "hidden": 256,
        "likelihood": "bernoulli",
        "scale": 0.1,
    },
}
#: Photo folders: the codec recipe measured in docs/photo-models.md. A fully convolutional VAE
#: (three stride-2 stages, 32 latent channels per 8x8 pixels) with a learned Gaussian pixel scale;
#: batches of 2 because on a CPU budget the number of steps, not the batch, limits quality; beta 2
#: puts the model where it beats WebP; augmentation because a thousand photos overfit without it.
#: `--arch conv --widths 32,64,128,256 --batch-size 32` gives a global-latent model for sliders.
PHOTO_DEFAULTS: dict[str, Any] = {
    "epochs": 100,
    "batch_size": 2,
    "lr": 1e-3,
    "beta": 2.0,
    "kl_warmup_epochs": 2,
    "augment": True,
    "model": {
        "arch": "spatial",
        "image_size": 64,
        "channels": 3,
        "latent_dim": 32,
        "widths": [64, 64, 64],
        "hidden": 512,
        "likelihood": "gaussian-learned",
        "scale": 0.1,
    },
}


#: Photo folders: the rate-distortion codec (codec v2) measured in docs/photo-models.md: an 8-pixel
#: latent cell with GDN, a mean-scale hyperprior, four gain levels from small files to about 38 dB,
#: random 64x64 crops of the photos at their own size, batches of 4. About 80 minutes on 2 cores.
#: `--arch spatial` trains the VAE codec of codec v1 instead (and `--arch conv` a slider model).
CODEC_DEFAULTS: dict[str, Any] = {
    "kind": "hyperprior",
    "epochs": 300,
    "batch_size": 4,
    "crop_size": 64,
    "lr": 1e-3,
    "model": {
        "widths": [64, 64],
        "latent_channels": 96,
        "hyper_channels": 64,
        "hyper_latent_channels": 32,
        "activation": "gdn",
        "upsample": "shuffle",
        "lambdas": [0.002, 0.006, 0.018, 0.054],
    },
}


def is_codec_run(spec: str | None, arch: str | None, saved: dict[str, Any] | None) -> bool:
    """Whether `latentz train` trains the rate-distortion codec: a resumed codec run, or photos with
    no --arch (or --arch hyperprior)."""
    if saved is not None:
        return saved.get("kind") == "hyperprior"
    if arch is not None:
        return arch == "hyperprior"
    return bool(spec) and is_photo_spec(str(spec))


def build_codec_config(
    data: str | None, config_file: Path | None, run_flags: dict[str, Any], base: dict[str, Any] | None = None
) -> CodecTrainConfig:
    """The codec's recipe < config file < flags (or a resumed run's saved settings < flags)."""
    from_file = read_config_file(config_file) if config_file else {}
    defaults = copy.deepcopy(base if base is not None else CODEC_DEFAULTS)
    merged = {**defaults, **{k: v for k, v in from_file.items() if k != "model"}}
    merged["model"] = {**defaults["model"], **from_file.get("model", {})}
    merged["data"] = data or from_file.get("data") or defaults.get("data")
    if not merged["data"]:
        raise ConfigError("no data set was given: pass --data folder:DIR")
    merged.update({k: v for k, v in run_flags.items() if v is not None and k in _CODEC_RUN_KEYS})
    try:
        return from_dict(CodecTrainConfig, merged)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"the config file or the flags give an invalid configuration: {error}") from None


_CODEC_RUN_KEYS = (
    "epochs",
    "batch_size",
    "crop_size",
    "lr",
    "val_fraction",
    "seed",
    "max_train_images",
    "init_from",
)


def recipe_for(spec: str) -> dict[str, Any]:
    """The recipe for ``spec`` as a TrainConfig-shaped dict (a copy: change it freely)."""
    return copy.deepcopy(PHOTO_DEFAULTS if is_photo_spec(spec) else GREY_DEFAULTS)


def default_train_config(spec: str, model: dict[str, Any] | None = None, **run: Any) -> TrainConfig:
    """The run `latentz train --data SPEC` would start, with ``run`` and ``model`` fields changed.

    For example ``default_train_config("folder:photos", epochs=10, model={"latent_dim": 16})``.
    """
    return build_config(spec, None, run, model or {})


def is_photo_spec(spec: str) -> bool:
    """Folders of photos get colour defaults; everything else (IDX digit/fashion files) grey ones."""
    return spec.startswith("folder:") or Path(spec).expanduser().is_dir()


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"the config file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"the config file {path} is not readable JSON ({error}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("model", {}), dict):
        raise ConfigError(
            f"the config file {path} must hold a JSON object (a TrainConfig, its 'model' an object too)."
        )
    return data


def build_config(
    data: str | None,
    config_file: Path | None,
    run_flags: dict[str, Any],
    model_flags: dict[str, Any],
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Merge defaults < config file < flags into a validated TrainConfig.

    The defaults are ``base`` when given (a resumed run's saved config, so ``--resume`` needs no
    other flags) and otherwise depend on the kind of data.
    """
    from_file = read_config_file(config_file) if config_file else {}
    spec = data or from_file.get("data") or (base or {}).get("data")
    if not spec:
        raise ConfigError(
            "no data set was given: pass --data SPEC (mnist, fashion-mnist, idx:PATH or folder:DIR) or "
            "set 'data' in the --config file."
        )
    defaults = base if base is not None else recipe_for(str(spec))
    merged: dict[str, Any] = {
        **defaults,
        **{k: v for k, v in from_file.items() if k != "model"},
        "data": spec,
    }
    merged["model"] = {**defaults["model"], **from_file.get("model", {})}
    merged.update({k: v for k, v in run_flags.items() if v is not None})
    merged["model"].update({k: v for k, v in model_flags.items() if v is not None})
    try:
        return from_dict(TrainConfig, merged)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:  # a value of the wrong JSON type, e.g. "widths": "abc"
        raise ConfigError(f"the config file or the flags give an invalid configuration: {error}") from None
