"""Training a VAE into a bundle: seeded, resumable to the bit, NaN-safe, on one process or many.

The package, in the order a run meets it:

- `loop`: `train` (the whole run) and `fit` (the loop inside an open distributed session): open
  the run folder, load the images (`latentz.data.load_training_data`), then per epoch train,
  validate, snapshot; the bundle at the end.
- `run_folder`: what the folder may hold before a run, the atomic checkpoint and metrics writes,
  the bundle it becomes (weights, card; ONNX and entropy model through `latentz.export`), and
  `figures` for its plots.
- `snapshot`: model, optimiser and every RNG state, and the check that a resume continues the
  same run.
- `batches` (shuffled rows as network floats, crops, augmentation), `schedules` (KL warm-up,
  learning rate, the optimiser), `steps` (one forward pass, here or on a shard), `validation`,
  `progress` (the bar and the epoch lines), `errors`.

Reproducibility rests on three things: every random draw comes from a seeded source (the global
torch RNG for the reparameterisation noise, one ``torch.Generator`` for shuffling and
augmentation, a fresh fixed-seed generator for validation noise), batches are plain index slices
of uint8 images (no DataLoader workers), and the checkpoint stores every RNG state together with
the model and optimiser. Resuming therefore reproduces an uninterrupted run exactly. Photo
folders are read batch by batch from their memory-mapped cache (:mod:`latentz.folder_cache`), so
memory does not grow with the folder. The training objective is `latentz.objectives.elbo_terms`.
"""

from __future__ import annotations

from latentz.train.errors import TrainingError
from latentz.train.loop import default_command, fit, train

__all__ = ["TrainingError", "default_command", "fit", "train"]
