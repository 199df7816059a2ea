"""Benchmark: latentz's MNIST recipe against the PyTorch examples VAE, same data, same time budget.

    .venv/bin/python bench/train_vs_examples.py [--epochs 60] [--threads 1]

1. latentz trains its digit recipe (`latentz train` defaults for grey digits: conv VAE, z = 10,
   Bernoulli pixels, batch 128, cosine schedule) for ``--epochs`` epochs on the training split.
2. The examples VAE (bench/examples_vae.py: MLP 784-400-20, BCE + KL summed, Adam 1e-3, batch 128)
   trains on the same images for the same wall-clock time, whole epochs, as its script would. Its
   held-out ELBO is also taken after every epoch (outside the budget), and the epoch that scored
   best is reported too: a generous row for the baseline, since choosing it looks at the test set.
3. Both are evaluated by the same code (`latentz.evaluation.evaluate`: one-sample negative ELBO,
   IWAE bound with K = 100, PSNR of the mean reconstruction) on the same held-out digits.

Writes bench/results/train_vs_examples.json and prints a Markdown table. Wall-clock figures are
from a shared 2-core machine: compare the two rows of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from examples_vae import ExamplesVAE, loss_function

from latentz.config import ModelConfig, TrainConfig
from latentz.data import load_dataset
from latentz.evaluation import evaluate
from latentz.models import VAE, load_model
from latentz.recipes import GREY_DEFAULTS
from latentz.train import train

REPO = Path(__file__).resolve().parents[1]
DATA = f"idx:{REPO.parent / 'shared' / 'data' / 'mnist' / 'mnist9k-images-idx3-ubyte.gz'}"
RESULTS = REPO / "bench" / "results" / "train_vs_examples.json"
IWAE_SAMPLES = 100
ORIGINAL_DEMO_NATS = 126.0  # the course demo's conv VAE (10-d latent, KL weighted 1/128), as reported


class ExamplesAsVAE(nn.Module):
    """The examples network seen through latentz's VAE interface, so one evaluator measures both.

    Its decoder's pre-sigmoid output is exactly the Bernoulli logits latentz uses, and
    `VAE.log_likelihood` on logits equals the examples' BCE on probabilities.
    """

    def __init__(self, net: ExamplesVAE) -> None:
        super().__init__()
        self.net = net
        self.config = ModelConfig(arch="mlp", latent_dim=20, widths=[400], likelihood="bernoulli")
        self.register_buffer("log_scale", torch.zeros(1))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.net.encode(x.reshape(-1, 784))

    def decode(self, z: Tensor) -> Tensor:
        return self.net.fc4(F.relu(self.net.fc3(z))).view(-1, 1, 28, 28)

    def decode_mean(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.decode(z))

    log_likelihood = VAE.log_likelihood
    kl_divergence = staticmethod(VAE.kl_divergence)


@torch.no_grad()
def held_out_neg_elbo(net: ExamplesVAE, held_out: Tensor) -> float:
    """One-sample negative ELBO per image with fixed noise: cheap enough to take after every epoch.

    The noise is drawn inside a forked RNG so that watching leaves the training run's own random
    stream (batch order, reparameterisation noise) exactly as it would be without it.
    """
    net.eval()
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        recon, mu, logvar = net(held_out)
    loss, _, _ = loss_function(recon, held_out, mu, logvar)
    return float(loss) / len(held_out)


def train_examples(
    images: np.ndarray, held_out: np.ndarray, budget_s: float, seed: int
) -> tuple[ExamplesVAE, ExamplesVAE, dict]:
    """The examples' loop: shuffled batches of 128, summed loss, Adam 1e-3, until the budget is spent.

    Also returns the network as it was at the epoch with the best held-out ELBO (measured outside
    the timed budget). Choosing that epoch looks at the held-out digits, so it flatters the baseline:
    it bounds what early stopping could have given it.
    """
    torch.manual_seed(seed)
    net = ExamplesVAE()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    data = torch.from_numpy(images).float().div_(255).view(-1, 784)
    watch = torch.from_numpy(held_out).float().div_(255).view(-1, 784)
    elapsed, epochs, seen = 0.0, 0, 0
    best_score, best_epoch, best_state = float("inf"), 0, copy.deepcopy(net.state_dict())
    while elapsed < budget_s:
        started = time.perf_counter()
        net.train()
        for batch in torch.randperm(len(data)).split(128):
            x = data[batch]
            recon, mu, logvar = net(x)
            loss, _, _ = loss_function(recon, x, mu, logvar)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(x)
        elapsed += time.perf_counter() - started
        epochs += 1
        score = held_out_neg_elbo(net, watch)
        if score < best_score:
            best_score, best_epoch, best_state = score, epochs, copy.deepcopy(net.state_dict())
    best = ExamplesVAE()
    best.load_state_dict(best_state)
    run = {"epochs": epochs, "train_s": elapsed, "images_per_s": seen / elapsed, "best_epoch": best_epoch}
    return net.eval(), best.eval(), run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60, help="latentz epochs (sets the time budget)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/latentz-bench-mnist"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    defaults = GREY_DEFAULTS
    config = TrainConfig(
        data=DATA,
        model=ModelConfig(**defaults["model"]),
        epochs=args.epochs,
        batch_size=defaults["batch_size"],
    )
    held_out = load_dataset(DATA, split="val", val_fraction=config.val_fraction).images
    train_images = load_dataset(DATA, split="train", val_fraction=config.val_fraction).images[:, :, :, 0]

    out = args.out / f"latentz-{int(time.time())}"
    started = time.perf_counter()
    train(config, out, command=["bench/train_vs_examples.py"], progress=False)
    card = json.loads((out / "card.json").read_text())
    ours_train_s = card["n_train"] * card["epochs"] / card["images_per_s"]  # optimisation time only
    print(
        f"latentz: {card['epochs']} epochs, {ours_train_s:.0f} s training, "
        f"{time.perf_counter() - started:.0f} s with validation and bundle writing"
    )

    examples, examples_best, examples_run = train_examples(
        train_images, held_out[:, :, :, 0], budget_s=ours_train_s, seed=0
    )
    print(
        f"examples: {examples_run['epochs']} epochs in {examples_run['train_s']:.0f} s "
        f"(best held-out epoch {examples_run['best_epoch']})"
    )

    rows = {}
    for name, model, run in (
        (
            "latentz conv z=10",
            load_model(out),
            {"epochs": card["epochs"], "train_s": ours_train_s, "images_per_s": card["images_per_s"]},
        ),
        ("PyTorch examples MLP z=20", ExamplesAsVAE(examples), examples_run),
        (
            "PyTorch examples MLP z=20, best held-out epoch",
            ExamplesAsVAE(examples_best),
            {**examples_run, "epochs": examples_run["best_epoch"]},
        ),
    ):
        metrics = evaluate(model, held_out, iwae_samples=IWAE_SAMPLES, seed=0)  # type: ignore[arg-type]
        rows[name] = {
            **run,
            "neg_elbo_nats": metrics["neg_elbo_nats"],
            "iwae_nats": metrics["iwae_nats"],
            "psnr_db": metrics["psnr_db"],
            "active_units": metrics["active_units"],
            "latent_dim": metrics["latent_dim"],
        }
    result = {
        "benchmark": "latentz digit recipe vs PyTorch examples VAE, same data and wall-clock budget",
        "data": DATA.replace(str(REPO.parent), ".."),
        "n_train": len(train_images),
        "n_held_out": len(held_out),
        "pixels": "8-bit grey levels in [0, 1] (not binarized), Bernoulli likelihood for both",
        "iwae_samples": IWAE_SAMPLES,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), shared 2-core VM",
        "original_demo_nats": ORIGINAL_DEMO_NATS,
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| model | epochs | train images/s | held-out -ELBO (nats) | IWAE-100 (nats) | PSNR (dB) |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['epochs']} | {row['images_per_s']:.0f} | {row['neg_elbo_nats']:.2f} | "
            f"{row['iwae_nats']:.2f} | {row['psnr_db']:.2f} |"
        )
    ours, theirs, theirs_best = rows.values()
    print(
        f"\nlatentz -ELBO is {theirs['neg_elbo_nats'] - ours['neg_elbo_nats']:.1f} nats lower than the "
        f"examples' and {ORIGINAL_DEMO_NATS - ours['neg_elbo_nats']:.1f} lower than the original demo's "
        f"~{ORIGINAL_DEMO_NATS:.0f}; {theirs_best['neg_elbo_nats'] - ours['neg_elbo_nats']:.1f} lower "
        f"than the examples' at their best held-out epoch"
    )


if __name__ == "__main__":
    main()
