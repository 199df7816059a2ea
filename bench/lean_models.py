"""The browser's lean networks against the bundles' own, on each model's held-out images.

    .venv/bin/python bench/lean_models.py [--models mnist-z10,...] [--results bench/results]

For each bundled model, the copies `latentz serve` hands the pages (`latentz.browser_models`,
made from the bundle's exported ONNX files exactly as the server makes them) run through ONNX
Runtime next to the originals, on the images `latentz eval` holds out (the official test set, or
the split the training held out), as the pages use them:

- explorer: the int8 encoder and int8 decoder (vector-latent models);
- receiver: the server's float32 encoder, then the float16 decoder (every model).

Per setting: file bytes (plain and gzipped, as they travel), the negative ELBO in nats per image
for Bernoulli models (one posterior sample per image from a fixed seed, the same draw for every
setting, so differences are paired: their standard error is given), PSNR of the mean
reconstruction, and how far its 8-bit pixels are from the original networks' (max, mean, share
of pixels off by more than one grey level). Also writes a picture of the explorer's look:
held-out digits, their reconstructions by the original and the int8 networks, the difference x10,
and prior samples through both decoders.

Writes bench/results/lean_models.json and lean_models.png.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DEFAULT_MODELS = "mnist-z10,mnist-z32,fashion-z10,red-cars-64,red-cars-128"
BATCH = 256


def session(model: bytes) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run(network: Any, inputs: np.ndarray) -> list[np.ndarray]:
    name = network.get_inputs()[0].name
    parts = [
        network.run(None, {name: inputs[start : start + BATCH]}) for start in range(0, len(inputs), BATCH)
    ]
    return [np.concatenate([part[index] for part in parts]) for index in range(len(parts[0]))]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float NCHW in [0, 1] -> uint8 NHWC, rounded like every image the pages and the CLI show."""
    return np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def bernoulli_nats(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """-log p(x|z) per image for grey levels x in [0, 1] under Bernoulli means p (float64)."""
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return -(x * np.log(p) + (1 - x) * np.log1p(-p)).reshape(len(x), -1).sum(axis=1)


def measure_settings(
    settings: dict[str, tuple[str, str]],
    sessions: dict[str, Any],
    images: np.ndarray,
    x: np.ndarray,
    likelihood: str,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Each (encoder, decoder) pair on the held-out images: PSNR, the -ELBO with one shared noise
    draw (Bernoulli models), and how far its pixels are from the original pair's."""
    from latentz import metrics

    noise_rng = np.random.default_rng(1)
    results: dict[str, Any] = {}
    reference: dict[str, np.ndarray] = {}
    pictures: dict[str, np.ndarray] = {}
    noise = None
    for label, (encoder_key, decoder_key) in settings.items():
        mean, logvar = run(sessions[encoder_key], x)[:2]
        shown = to_uint8(run(sessions[decoder_key], mean)[0])
        row: dict[str, Any] = {"encoder": encoder_key, "decoder": decoder_key}
        row["psnr_db"] = float(np.mean([metrics.psnr(a, b) for a, b in zip(images, shown, strict=True)]))
        if likelihood == "bernoulli":
            if noise is None:
                noise = noise_rng.standard_normal(mean.shape).astype(np.float32)
            z = mean + noise * np.exp(0.5 * logvar)
            kl = 0.5 * (np.exp(logvar) + mean**2 - 1 - logvar).reshape(len(x), -1).sum(axis=1)
            neg_elbo = bernoulli_nats(x, run(sessions[decoder_key], z)[0]) + kl
            row["neg_elbo_nats"] = float(neg_elbo.mean())
            row["kl_nats"] = float(kl.mean())
            if "neg_elbo" in reference:
                difference = neg_elbo - reference["neg_elbo"]
                row["neg_elbo_change_nats"] = float(difference.mean())
                row["neg_elbo_change_standard_error"] = float(
                    difference.std(ddof=1) / np.sqrt(len(difference))
                )
            else:
                reference["neg_elbo"] = neg_elbo
        if "shown" in reference:
            off = np.abs(shown.astype(int) - reference["shown"].astype(int))
            row["pixels_vs_original"] = {
                "max_grey_levels": int(off.max()),
                "mean_grey_levels": float(off.mean()),
                "share_off_by_more_than_1": float((off > 1).mean()),
            }
            row["psnr_change_db"] = row["psnr_db"] - results["original"]["psnr_db"]
        else:
            reference["shown"] = shown
        results[label] = row
        pictures[label] = shown
    return results, pictures


def comparison_picture(
    sessions: dict[str, Any], prior: np.ndarray, images: np.ndarray, pictures: dict[str, np.ndarray]
) -> np.ndarray:
    """Rows of 12: held-out digits, original and int8 reconstructions, their difference x10, and prior
    samples through both decoders."""
    explorer = "explorer (int8 encoder and decoder)"
    count = 12
    original_prior = to_uint8(run(sessions["decoder"], prior)[0])[:count]
    lean_prior = to_uint8(run(sessions["decoder_int8"], prior)[0])[:count]
    held_out = images[:count]
    recon, lean_recon = pictures["original"][:count], pictures[explorer][:count]
    difference = np.clip(np.abs(recon.astype(int) - lean_recon.astype(int)) * 10, 0, 255).astype(np.uint8)
    rows = [held_out, recon, lean_recon, difference, original_prior, lean_prior]
    return np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)


def measure_model(name: str, limit: int | None) -> tuple[dict[str, Any], np.ndarray | None]:
    from latentz import browser_models
    from latentz.bundle import read_bundle
    from latentz.data import load_dataset

    info = read_bundle(name)
    config = info.config
    data = load_dataset(
        info.card["data"], split="test", image_size=config.image_size, channels=config.channels, limit=limit
    )
    x = data.images.astype(np.float32).transpose(0, 3, 1, 2) / 255
    files = {
        "encoder": info.file("encoder.onnx").read_bytes(),
        "decoder": info.file("decoder.onnx").read_bytes(),
    }
    networks = {"encoder": files["encoder"], "decoder": files["decoder"]}
    networks["decoder_fp16"] = browser_models.lean_model(files["decoder"], "fp16")
    settings = {"original": ("encoder", "decoder"), "receiver (fp16 decoder)": ("encoder", "decoder_fp16")}
    if not config.fully_convolutional:
        networks["encoder_int8"] = browser_models.lean_model(files["encoder"], "int8")
        networks["decoder_int8"] = browser_models.lean_model(files["decoder"], "int8")
        settings["explorer (int8 encoder and decoder)"] = ("encoder_int8", "decoder_int8")
    sessions = {key: session(model) for key, model in networks.items()}
    sizes = {
        key: {"bytes": len(model), "gzip_bytes": len(gzip.compress(model, 6, mtime=0))}
        for key, model in networks.items()
    }

    results, pictures = measure_settings(settings, sessions, data.images, x, config.likelihood)

    prior = browser_models.probe_latents(config.latent_shape(), count=16, seed=3)
    gate = browser_models.output_error(
        files["decoder"], config.latent_shape(), lean_decoder=networks["decoder_fp16"]
    )
    report: dict[str, Any] = {
        "images": len(x),
        "data": data.spec,
        "split": data.split,
        "likelihood": config.likelihood,
        "card_metrics": {key: info.card.get("metrics", {}).get(key) for key in ("neg_elbo", "psnr")},
        "files": sizes,
        "settings": results,
        "server_check_grey_levels": {"decoder_fp16": gate["decoder"]},
    }
    picture = None
    if not config.fully_convolutional:
        checks = browser_models.output_error(
            files["decoder"],
            config.latent_shape(),
            lean_decoder=networks["decoder_int8"],
            lean_encoder=networks["encoder_int8"],
            encoder=files["encoder"],
        )
        report["server_check_grey_levels"].update({f"{key}_int8": value for key, value in checks.items()})
        picture = comparison_picture(sessions, prior, data.images, pictures)
    return report, picture


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated bundle names")
    parser.add_argument("--limit", type=int, default=None, help="at most this many held-out images per model")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "src"))
    report: dict[str, Any] = {}
    strips = []
    from latentz.data import DatasetError

    for name in [each for each in args.models.split(",") if each]:
        try:
            report[name], picture = measure_model(name, args.limit)
        except DatasetError as error:  # e.g. Fashion-MNIST not installed here
            print(f"{name:13} skipped: {error}")
            continue
        if picture is not None:
            strips.append(picture)
        for label, row in report[name]["settings"].items():
            elbo = f", -ELBO {row['neg_elbo_nats']:.3f}" if "neg_elbo_nats" in row else ""
            change = (
                f" ({row['neg_elbo_change_nats']:+.4f} ± {row['neg_elbo_change_standard_error']:.4f})"
                if "neg_elbo_change_nats" in row
                else ""
            )
            pixels = row.get("pixels_vs_original")
            off = (
                f", pixels off by max {pixels['max_grey_levels']}, mean {pixels['mean_grey_levels']:.3f}"
                if pixels
                else ""
            )
            print(f"{name:13} {label:36} PSNR {row['psnr_db']:.3f} dB{elbo}{change}{off}")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "lean_models.json").write_text(json.dumps(report, indent=2) + "\n")
    if strips:
        width = max(strip.shape[1] for strip in strips)
        padded = [np.pad(strip, ((0, 4), (0, width - strip.shape[1]), (0, 0))) for strip in strips]
        grid = np.concatenate(padded, axis=0)[:, :, 0]
        Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(
            args.results / "lean_models.png"
        )
    print(f"wrote {args.results / 'lean_models.json'}")


if __name__ == "__main__":
    main()
