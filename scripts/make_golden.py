"""Regenerate the codec's golden files: run only when the format or a bundled model changes ON PURPOSE.

    .venv/bin/python scripts/make_golden.py

For each bundle below it encodes a fixed committed image at a fixed quality and writes, under
tests/golden/: the .latentz file, a JSON of what decoding it must give (symbols, latent, file
hash) and the decoded PNG. tests/test_golden.py then checks that today's code reproduces them
bit for bit. A diff in these files in review means the bitstream changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from latentz import imaging, runtime
from latentz.codec import entropy

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"
CASES = {
    "mnist-z10": ("digit.png", 75),
    "mnist-z32": ("digit.png", 30),
    "red-cars-64": ("test-card.png", 50),  # a spatial latent at a size that is not whole cells
}


def main() -> None:
    for model_name, (image_name, quality) in CASES.items():
        model = runtime.load(model_name)
        image = imaging.load_array(GOLDEN / image_name, None, model.config.channels)
        data = model.compress(image, quality=quality)
        header, latent = model.read(data)
        symbols = entropy.decode_symbols(model.entropy, codec_payload(data), header.latent_shape, header.step)
        stem = f"{model_name}-q{quality}"
        (GOLDEN / f"{stem}.latentz").write_bytes(data)
        (GOLDEN / f"{stem}.png").write_bytes(imaging.png_bytes(model.decompress(data)))
        expected = {
            "model": model_name,
            "fingerprint": model.fingerprint,
            "image": image_name,
            "quality": quality,
            "file_sha256": hashlib.sha256(data).hexdigest(),
            "file_bytes": len(data),
            "step": header.step,
            "symbols": np.asarray(symbols).ravel().tolist(),
            "latent": [float(v) for v in np.asarray(latent, dtype=np.float32).ravel()],
        }
        (GOLDEN / f"{stem}.json").write_text(json.dumps(expected, indent=1) + "\n")
        print(f"{stem}: {len(data)} bytes, sha256 {expected['file_sha256'][:16]}")


#: Formats 2 and 3 (the rate-distortion codec's two payloads), pinned in tests/golden/v2/: a test
#: card (version 2, hyperprior) and a flat grey image (version 3, planar).
V2_CASES = (("red-cars-hp", "test-card.png", 50), ("red-cars-hp", "flat-grey.png", 50))


def symbols_digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.asarray(array, dtype="<i8").tobytes())
    return digest.hexdigest()


def make_v2() -> None:
    folder = GOLDEN / "v2"
    folder.mkdir(exist_ok=True)
    for model_name, image_name, quality in V2_CASES:
        model = runtime.load(model_name)
        image = imaging.load_array(GOLDEN / image_name, None, 3)
        data = model.compress(image, quality=quality)
        header, payload = codec_unpack(data)
        z, symbols = model.coder.file_symbols(payload, header.latent_shape, header.quality, header.version)
        _, latent = model.read(data)
        stem = (
            f"{model_name}-q{quality}"
            if image_name == "test-card.png"
            else f"{model_name}-{Path(image_name).stem}-q{quality}"
        )
        (folder / f"{stem}.latentz").write_bytes(data)
        (folder / f"{stem}.png").write_bytes(imaging.png_bytes(model.decompress(data)))
        expected = {
            "model": model_name,
            "fingerprint": model.fingerprint,
            "image": image_name,
            "quality": quality,
            "version": header.version,
            "file_sha256": hashlib.sha256(data).hexdigest(),
            "file_bytes": len(data),
            "z_shape": list(z.shape),
            "symbols_sha256": symbols_digest(z, symbols),
            "nonzero_y_symbols": int(np.count_nonzero(symbols)),
            "latent_sha256": hashlib.sha256(np.asarray(latent, dtype="<f4").tobytes()).hexdigest(),
        }
        (folder / f"{stem}.json").write_text(json.dumps(expected, indent=1) + "\n")
        print(f"v2/{stem}: {len(data)} bytes, sha256 {expected['file_sha256'][:16]}")


def codec_unpack(data: bytes):
    from latentz.codec import unpack

    return unpack(data)


def codec_payload(data: bytes) -> bytes:
    from latentz.codec import unpack

    return unpack(data)[1]


if __name__ == "__main__":
    import sys

    if "--v2-only" not in sys.argv:
        main()
    make_v2()
