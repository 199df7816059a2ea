"""Train one configuration of the hyperprior photo codec (latentz.hyperprior) on the red cars and
measure it with real bytes at the held-out cars' own size against WebP and AVIF, in one run.

    nice -n 15 .venv/bin/python scripts/hyperprior_experiment.py --name base --cpu-budget 900

Everything is one process on one thread (the machine is shared). The split is the bundles':
``folder:../shared/data/red-cars``, 10% held out with seed 0 (1,190 / 132). Training uses random
crops of the training photos at their own size; evaluation codes every held-out photo whole,
padded at the right and bottom to whole latent cells and cropped back. Bytes are the range-coded
payload (`latentz.codec.hyper.encode_latents`, ẑ and y in one stream) plus the header a v2 file
would carry (`v2_header_bytes`); every payload is decoded again and must give the same symbols.
Results (JSON) and the checkpoint go to ``runs/hyperprior/NAME/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from pathlib import Path

# One BLAS thread, like torch: the machine is shared, and OpenBLAS's thread pool on busy cores made
# the integer hyper-decoder's tiny products 6x slower (41 ms against 6.4 ms of CPU per photo).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import torch
from PIL import Image

from latentz import data, imaging, metrics, rd
from latentz.codec import hyper
from latentz.hyperprior import HyperpriorCodec, HyperpriorConfig
from latentz.train.codec import padded

REPO = Path(__file__).resolve().parents[1]
CARS = "../shared/data/red-cars"
WEBP_QUALITIES = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
AVIF_QUALITIES = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
GREY_QUALITIES = (0, 25, 50, 75, 100)
#: Gain offsets are in table steps and only matter once rounded: at the network's learning rate
#: they never moved a whole step in a short run (run A ended with its initial offsets).
GAIN_LR_SCALE = 30.0


# -- data -----------------------------------------------------------------------------------------
def load_split() -> tuple[list[np.ndarray], list[np.ndarray], list[Path]]:
    """Train and held-out photos at their own size, split exactly as `latentz.data` splits bundles."""
    directory = (REPO / CARS).resolve()
    files = data.list_image_files(directory)
    train_indices, val_indices = data.split_indices(len(files), 0.1, 0)
    val_files = [files[i] for i in val_indices]
    reference = data.load_dataset(f"folder:{directory}", split="val", image_size=64, channels=3)
    assert [p.name for p in reference.files] == [p.name for p in val_files], "split differs from bundles'"
    load = lambda path: imaging.load_array(path, None, 3)  # noqa: E731
    return [load(files[i]) for i in train_indices], [load(p) for p in val_files], val_files


def flat_patch(size: int, rng: np.random.Generator) -> np.ndarray:
    """A flat colour or a gentle linear gradient: what an empty sky or wall looks like, and what the
    hyperprior must learn to code for almost nothing."""
    colour = rng.uniform(0, 255, 3)
    if rng.random() < 0.5:
        return np.broadcast_to(colour.astype(np.uint8), (size, size, 3)).copy()
    ramp = np.linspace(-1, 1, size)
    direction = rng.normal(size=2) * rng.uniform(0, 20)
    field = direction[0] * ramp[:, None] + direction[1] * ramp[None, :]
    return np.clip(colour + field[..., None], 0, 255).astype(np.uint8)


def random_crops(
    images: list[np.ndarray], count: int, size: int, rng: np.random.Generator, flat_fraction: float = 0.0
) -> torch.Tensor:
    batch = np.empty((count, size, size, 3), dtype=np.uint8)
    for slot in range(count):
        if flat_fraction and rng.random() < flat_fraction:
            batch[slot] = flat_patch(size, rng)
            continue
        image = images[rng.integers(len(images))]
        top = rng.integers(image.shape[0] - size + 1)
        left = rng.integers(image.shape[1] - size + 1)
        crop = image[top : top + size, left : left + size]
        batch[slot] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)


# -- training -------------------------------------------------------------------------------------
def train(model: HyperpriorCodec, train_images: list[np.ndarray], args: argparse.Namespace) -> dict:
    """Adam on random crops, each at a random trained λ, for ``args.cpu_budget`` CPU seconds of
    this process (so configurations compare at equal compute whatever the machine's load): a cosine
    learning rate over the first 95%, then h_s is calibrated and the last 5% fine-tune with the
    integer network simulated."""
    rng = np.random.default_rng(args.seed)
    others = [p for p in model.parameters() if p is not model.gain_offsets]
    groups = [{"params": others}, {"params": [model.gain_offsets], "lr_scale": GAIN_LR_SCALE}]
    optimiser = torch.optim.Adam(groups, lr=args.lr)
    levels = len(model.config.lambdas)
    log, started, cpu_started = [], time.perf_counter(), time.process_time()
    budget, qat_from = args.cpu_budget, 0.95 * args.cpu_budget
    step = 0
    while (used := time.process_time() - cpu_started) < budget:
        if used >= qat_from and not model.h_s.quantized:
            calibrate(model, train_images, rng, args)
            log.append({"step": step, "event": "calibrated h_s; fine-tuning with the integer net simulated"})
        progress = min(used / qat_from, 1.0)
        lr = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimiser.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        x = random_crops(train_images, args.batch, args.crop, rng, args.flat_fraction)
        chosen = torch.from_numpy(rng.integers(levels, size=args.batch))
        out = model(x, chosen)
        optimiser.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        if step % args.log_every == 0:
            entry = {
                "step": step,
                "seconds": round(time.perf_counter() - started, 1),
                "cpu_seconds": round(used, 1),
                "loss": round(float(out["loss"].detach()), 4),
                "psnr": round(float((10 * torch.log10(255**2 / out["mse"])).mean()), 2),
                "bpp": round(float((out["bpp_y"] + out["bpp_z"]).mean()), 4),
                "bpp_z": round(float(out["bpp_z"].mean()), 4),
                "lr": round(lr, 6),
            }
            log.append(entry)
            print(json.dumps(entry), flush=True)
        step += 1
    return {
        "steps": step,
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "log": log,
    }


@torch.no_grad()
def calibrate(model: HyperpriorCodec, images: list[np.ndarray], rng: np.random.Generator, args) -> None:
    x = random_crops(images, 256, args.crop, rng)
    y = model.analyse(x)
    model.h_s.calibrate(torch.floor(model.h_a(y) + 0.5), tuple(y.shape[-2:]))


# -- the codec, end to end ------------------------------------------------------------------------
def v2_header_bytes(height: int, width: int) -> int:
    """Bytes a v2 header would spend: magic 2, version 1, fingerprint 4, entropy id 1, height and
    width (LEB128), quality 1, CRC-16 2 (the latent shapes follow from the image size)."""
    leb = lambda value: max(1, math.ceil(value.bit_length() / 7))  # noqa: E731
    return 11 + leb(height) + leb(width)


class Exported:
    """What a v2 bundle would carry: integer tables, the integer h_s and the integer gain levels."""

    def __init__(self, model: HyperpriorCodec) -> None:
        self.model = model.eval()
        self.gaussian = hyper.build_gaussian_tables()
        self.z_tables = model.z_density.tables()
        self.hyper_decoder = model.h_s.to_integer()
        self.levels = model.integer_levels()

    @torch.no_grad()
    def analyse(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = self.model.analyse(padded(image, self.model.config.cell))
        z = torch.floor(self.model.h_a(y) + 0.5)
        return y[0].numpy(), z[0].long().numpy()

    def code(
        self, image: np.ndarray, y: np.ndarray, z: np.ndarray, offsets: np.ndarray
    ) -> tuple[int, np.ndarray]:
        """Encode, decode, check the symbols, synthesise: (file bytes, decoded uint8 image)."""
        latent_size = y.shape[1:]
        raw, mean = self.hyper_decoder(z, latent_size)
        steps = hyper.step_sizes(offsets)
        symbols = hyper.quantize(y, mean, steps)
        payload = hyper.encode_latents(
            z, symbols, hyper.scale_indices(raw, offsets), self.z_tables, self.gaussian
        )
        decoded_mean: list[np.ndarray] = []

        def indices_for(z_hat: np.ndarray) -> np.ndarray:
            raw_index, mean_again = self.hyper_decoder(z_hat, latent_size)
            decoded_mean.append(mean_again)
            return hyper.scale_indices(raw_index, offsets)

        z_back, y_back = hyper.decode_latents(
            payload, z.shape, symbols.shape, self.z_tables, self.gaussian, indices_for
        )
        assert np.array_equal(z_back, z) and np.array_equal(y_back, symbols), "round trip failed"
        return v2_header_bytes(*image.shape[:2]) + len(payload), self.synthesise(
            hyper.dequantize(y_back, decoded_mean[0], steps), image.shape[:2]
        )

    @torch.no_grad()
    def synthesise(self, latent: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        x_hat = self.model.synthesise(torch.from_numpy(latent)[None])[0, :, : size[0], : size[1]]
        return (x_hat.clamp(0, 1) * 255 + 0.5).floor().byte().permute(1, 2, 0).numpy()


def offset_rows(levels: np.ndarray, extend: int) -> list[tuple[str, np.ndarray]]:
    """Every trained level, the integer midpoint between neighbours, and ``extend`` rows beyond each
    end (steps x1.45 coarser below, finer above, per row)."""
    rows = []
    for index in range(len(levels)):
        rows.append((f"level {index}", levels[index]))
        if index + 1 < len(levels):
            rows.append((f"level {index}.5", (levels[index] + levels[index + 1] + 1) // 2))
    for extra in range(1, extend + 1):
        rows.insert(0, (f"below {extra}", levels[0] + 3 * extra))
        rows.append((f"above {extra}", levels[-1] - 3 * extra))
    return rows


def measure_ours(exported: Exported, images: list[np.ndarray], extend: int) -> list[dict]:
    analysed = [exported.analyse(image) for image in images]
    points = []
    for label, offsets in offset_rows(exported.levels, extend):
        sizes, scores, started = [], [], time.perf_counter()
        for image, (y, z) in zip(images, analysed, strict=True):
            size, decoded = exported.code(image, y, z, offsets)
            sizes.append(size)
            scores.append(metrics.psnr(image, decoded))
        point = {
            "setting": label,
            "bytes": float(np.mean(sizes)),
            "psnr": float(np.mean(scores)),
            "code_ms_per_image": round(1000 * (time.perf_counter() - started) / len(images), 1),
        }
        points.append(point)
        print(json.dumps(point), flush=True)
    return points


def classic_bytes(image: np.ndarray, fmt: str, quality: int) -> tuple[int, np.ndarray]:
    if fmt == "webp":
        encoded = imaging.encode_with(image, "webp", quality)
    else:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="AVIF", quality=quality, speed=4)
        encoded = buffer.getvalue()
    decoded = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    return len(encoded), decoded


def measure_classic(images: list[np.ndarray], fmt: str, qualities: tuple[int, ...]) -> list[dict]:
    points = []
    for quality in qualities:
        pairs = [classic_bytes(image, fmt, quality) for image in images]
        scores = [metrics.psnr(image, decoded) for image, (_, decoded) in zip(images, pairs, strict=True)]
        points.append({"setting": f"q{quality}", "bytes": float(np.mean([n for n, _ in pairs])),
                       "psnr": float(np.mean(scores))})  # fmt: skip
    return points


def classic_curves(images: list[np.ndarray], files: list[Path]) -> dict[str, list[dict]]:
    """WebP and AVIF curves of these photos, cached in runs/hyperprior/classic.json (every run codes
    the same held-out photos, and AVIF at speed 4 is the slowest part of an evaluation)."""
    cache = REPO / "runs" / "hyperprior" / "classic.json"
    key = json.dumps([[p.name for p in files], WEBP_QUALITIES, AVIF_QUALITIES, Image.__version__])
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    if stored.get("key") != key:
        stored = {"key": key, "webp": measure_classic(images, "webp", WEBP_QUALITIES),
                  "avif": measure_classic(images, "avif", AVIF_QUALITIES)}  # fmt: skip
        cache.write_text(json.dumps(stored))
    return {"webp": stored["webp"], "avif": stored["avif"]}


def measure_baseline(images: list[np.ndarray], name: str = "red-cars-128") -> list[dict]:
    """Today's v1 bundle at the same own sizes, through the torch-free runtime, for calibration."""
    from latentz import runtime

    model = runtime.load(name)
    points = []
    for quality in rd.LATENTZ_QUALITIES:
        files = [model.compress(model.prepare(image).image, quality=quality) for image in images]
        decoded = [model.decompress(f) for f in files]
        scores = [metrics.psnr(a, b) for a, b in zip(images, decoded, strict=True)]
        points.append({"setting": f"q{quality}", "bytes": float(np.mean([len(f) for f in files])),
                       "psnr": float(np.mean(scores))})  # fmt: skip
    return points


def bd(anchor: list[dict], test: list[dict]) -> float | None:
    return rd.bd_rate([p["bytes"] for p in anchor], [p["psnr"] for p in anchor],
                      [p["bytes"] for p in test], [p["psnr"] for p in test])  # fmt: skip


def encode_once(exported: Exported, image: np.ndarray, offsets: np.ndarray) -> tuple[bytes, tuple, tuple]:
    y, z = exported.analyse(image)
    raw, mean = exported.hyper_decoder(z, y.shape[1:])
    symbols = hyper.quantize(y, mean, hyper.step_sizes(offsets))
    indices = hyper.scale_indices(raw, offsets)
    return hyper.encode_latents(z, symbols, indices, exported.z_tables, exported.gaussian), z.shape, y.shape


def decode_once(exported: Exported, coded: tuple[bytes, tuple, tuple], size: tuple, offsets) -> np.ndarray:
    payload, z_shape, y_shape = coded
    means: list[np.ndarray] = []

    def indices_for(z_hat: np.ndarray) -> np.ndarray:
        raw, mean = exported.hyper_decoder(z_hat, y_shape[1:])
        means.append(mean)
        return hyper.scale_indices(raw, offsets)

    _, y = hyper.decode_latents(payload, z_shape, y_shape, exported.z_tables, exported.gaussian, indices_for)
    return exported.synthesise(hyper.dequantize(y, means[0], hyper.step_sizes(offsets)), size)


def cpu_ms(timings: dict[str, list[float]], name: str, work, *args) -> object:
    started = time.process_time()
    result = work(*args)
    timings.setdefault(name, []).append(1000 * (time.process_time() - started))
    return result


def measure_speed(exported: Exported, images: list[np.ndarray], offsets: np.ndarray) -> dict:
    """Median CPU milliseconds per image (this process, one thread, so the machine's load does not
    count): our encode (g_a, h_a, integer h_s, range coding with optimal termination) and decode
    (range decoding, integer h_s, g_s in torch), and Pillow's WebP (method 6) and AVIF (speed 4)
    at quality 50 on the same photos."""
    timings: dict[str, list[float]] = {}
    for image in images:
        coded = cpu_ms(timings, "ours_encode", encode_once, exported, image, offsets)
        cpu_ms(timings, "ours_decode", decode_once, exported, coded, image.shape[:2], offsets)
        for fmt in ("webp", "avif"):
            cpu_ms(timings, f"{fmt}_encode_and_decode", classic_bytes, image, fmt, 50)
    return {name: round(float(np.median(values)), 2) for name, values in timings.items()}


def table_bits(tables: hyper.IntegerTables, table_ids: np.ndarray, values: np.ndarray) -> float:
    """Ideal code length of ``values`` under the integer tables (escape overshoots not counted)."""
    total = 0.0
    for table in np.unique(table_ids):
        chosen = values[table_ids == table] - tables.offsets[table]
        pmf = tables.pmfs[table]
        entries = np.where((chosen < 0) | (chosen >= len(pmf) - 1), len(pmf) - 1, chosen)
        total += float(np.sum(hyper.PMF_BITS - np.log2(pmf[entries])))
    return total


@torch.no_grad()
def integer_penalty(exported: Exported, images: list[np.ndarray], offsets: np.ndarray) -> dict:
    """What the bit-exact path costs, on the same symbols: their ideal length under the float h_s
    (weights unquantised, continuous scale, no tables), under the integer h_s and the integer
    tables, and the real payload. Mean bytes per image."""
    from latentz.hyperprior import LOG_RATIO, LOG_SCALE_MIN, gaussian_likelihood

    h_s = exported.model.h_s
    totals = {"float_ideal": 0.0, "integer_ideal": 0.0, "payload": 0.0}
    for image in images:
        y, z = exported.analyse(image)
        raw, mean = exported.hyper_decoder(z, y.shape[1:])
        symbols = hyper.quantize(y, mean, hyper.step_sizes(offsets))
        indices = hyper.scale_indices(raw, offsets)
        quantized, h_s.quantized = h_s.quantized, False
        _, float_index = h_s(torch.from_numpy(z)[None].float(), y.shape[1:])
        h_s.quantized = quantized
        shift = torch.from_numpy(offsets).view(1, -1, 1, 1).float()
        log_scale = LOG_SCALE_MIN + (float_index - shift).clamp(0, hyper.SCALE_LEVELS - 1) * LOG_RATIO
        p = gaussian_likelihood(torch.from_numpy(symbols)[None].double(), log_scale.double())
        z_tables = np.broadcast_to(np.arange(len(z))[:, None, None], z.shape)
        z_bits = table_bits(exported.z_tables, z_tables, z)
        totals["float_ideal"] += (float(-torch.log2(p).sum()) + z_bits) / 8
        y_bits = table_bits(exported.gaussian, indices, symbols)
        totals["integer_ideal"] += (y_bits + z_bits) / 8
        payload = hyper.encode_latents(z, symbols, indices, exported.z_tables, exported.gaussian)
        totals["payload"] += len(payload)
    return {name: round(value / len(images), 1) for name, value in totals.items()}


def flat_grey(exported: Exported, extend: int) -> list[dict]:
    """A flat grey 300x200 photo at our settings against WebP at each of GREY_QUALITIES."""
    grey = np.full((200, 300, 3), 128, dtype=np.uint8)
    y, z = exported.analyse(grey)
    ours = []
    for label, offsets in offset_rows(exported.levels, extend):
        size, decoded = exported.code(grey, y, z, offsets)
        ours.append({"setting": label, "bytes": size, "psnr": metrics.psnr(grey, decoded)})
    webp = [{"setting": f"q{q}", "bytes": len(imaging.encode_with(grey, "webp", q))} for q in GREY_QUALITIES]
    return [{"ours": ours, "webp": webp}]


def summary() -> None:
    """One Markdown row per finished run under runs/hyperprior/ (the docs table)."""
    header = "| run | steps | CPU s | wall s | best dB | bytes | vs WebP | vs AVIF | grey ours / WebP |"
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path in sorted((REPO / "runs" / "hyperprior").glob("*/results.json")):
        r = json.loads(path.read_text())
        best = max(r["ours"], key=lambda p: p["psnr"])
        grey = r["flat_grey"][0]
        ours_grey = [o["bytes"] for o in grey["ours"]]
        webp_grey = [w["bytes"] for w in grey["webp"]]
        pct = lambda v: "n/a" if v is None else f"{v:+.1f}%"  # noqa: E731
        t = r["training"]
        print(f"| {r['name']} | {t.get('steps', '?')} | {t['cpu_seconds']:.0f} | {t['seconds']:.0f} | "
              f"{best['psnr']:.2f} | {best['bytes']:.0f} | {pct(r['bd_rate']['webp'])} | "
              f"{pct(r['bd_rate']['avif'])} | {min(ours_grey)}-{max(ours_grey)} / "
              f"{min(webp_grey)}-{max(webp_grey)} |")  # fmt: skip


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name")
    parser.add_argument("--summary", action="store_true", help="print the table of finished runs")
    parser.add_argument("--widths", default="64,64")
    parser.add_argument("--latent", type=int, default=96)
    parser.add_argument("--hyper", type=int, default=64)
    parser.add_argument("--hyper-latent", type=int, default=32)
    parser.add_argument("--activation", default="leaky")
    parser.add_argument("--upsample", default="shuffle")
    parser.add_argument("--lambdas", default="0.003,0.0067,0.015,0.033,0.075")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--cpu-budget", type=float, default=180.0, help="training CPU seconds")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--flat-fraction", type=float, default=0.0, help="share of flat/gradient crops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=250)
    parser.add_argument("--extend", type=int, default=2, help="extra offset rows beyond each trained end")
    parser.add_argument("--val-limit", type=int, default=None, help="first N held-out photos (smoke runs)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate runs/hyperprior/NAME/model.pt")
    parser.add_argument("--baseline", action="store_true", help="also measure red-cars-128 at own size")
    parser.add_argument("--speed", action="store_true", help="also time encode and decode (CPU ms)")
    return parser


def main() -> None:
    parser = argument_parser()
    args = parser.parse_args()
    if args.summary:
        return summary()
    if not args.name:
        parser.error("--name is required")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    out = REPO / "runs" / "hyperprior" / args.name
    out.mkdir(parents=True, exist_ok=True)
    train_images, val_images, val_files = load_split()
    val_images = val_images[: args.val_limit]
    config = HyperpriorConfig(
        widths=tuple(int(w) for w in args.widths.split(",")),
        latent_channels=args.latent,
        hyper_channels=args.hyper,
        hyper_latent_channels=args.hyper_latent,
        activation=args.activation,
        upsample=args.upsample,
        lambdas=tuple(float(v) for v in args.lambdas.split(",")),
    )
    model = HyperpriorCodec(config)
    results: dict = {"name": args.name, "config": config.to_json(), "args": vars(args),
                     "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    if args.eval_only:
        state = torch.load(out / "model.pt")
        model.load_state_dict(state["model"])
        model.h_s.quantized = bool(state["quantized"])
        results["training"] = json.loads((out / "results.json").read_text()).get("training")
    else:
        results["training"] = train(model, train_images, args)
        torch.save({"model": model.state_dict(), "quantized": model.h_s.quantized}, out / "model.pt")
    exported = Exported(model)
    started = time.perf_counter()
    results["levels"] = exported.levels.tolist()
    results["ours"] = measure_ours(exported, val_images, args.extend)
    results.update(classic_curves(val_images, val_files[: args.val_limit]))
    if args.baseline:
        results["red-cars-128"] = measure_baseline(val_images)
    results["bd_rate"] = {
        codec: bd(results[codec], results["ours"])
        for codec in ("webp", "avif", "red-cars-128")
        if codec in results
    }
    if args.baseline:
        results["bd_rate_red_cars_128_vs"] = {
            c: bd(results[c], results["red-cars-128"]) for c in ("webp", "avif")
        }
    results["best_psnr"] = max(p["psnr"] for p in results["ours"])
    results["flat_grey"] = flat_grey(exported, args.extend)
    if args.speed:
        middle = exported.levels[len(exported.levels) // 2]
        results["speed_cpu_ms"] = measure_speed(exported, val_images[:20], middle)
        results["integer_penalty"] = integer_penalty(exported, val_images[:20], middle)
    results["evaluation_seconds"] = round(time.perf_counter() - started, 1)
    results["n_val"] = len(val_images)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: results[k] for k in ("bd_rate", "best_psnr", "evaluation_seconds")}))


if __name__ == "__main__":
    main()
