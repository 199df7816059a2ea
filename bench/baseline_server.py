"""The baseline for bench/bench_web.py: a server that reloads the model on every request.

This is how the original demo backend worked: each request read the bundle from disk and built
fresh ONNX Runtime sessions (and here the entropy model too) before running them, then threw
everything away. The inference code is latentz's own runtime, so the only difference from
`latentz serve` is the reload, which is what the benchmark measures.

    .venv/bin/python -m uvicorn --app-dir bench baseline_server:app --port 8001
"""

from __future__ import annotations

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import Response

from latentz import codec, imaging
from latentz.bundle import find_by_fingerprint, read_bundle
from latentz.runtime import ModelRuntime

app = FastAPI(title="latentz baseline: reload the model on every request")


@app.post("/api/models/{name}/encode")
def encode(name: str, file: UploadFile = File(...), quality: int = Form(75)) -> Response:
    model = ModelRuntime(read_bundle(name), threads=1)  # new sessions, every time
    image = model.prepare(imaging.open_image(file.file.read())).image
    return Response(model.compress(image, quality=quality), media_type="application/x-latentz")


@app.post("/api/decode")
def decode(file: UploadFile = File(...)) -> Response:
    data = file.file.read()
    header, _ = codec.unpack(data)
    info = find_by_fingerprint(header.fingerprint)
    if info is None:
        return Response(status_code=409)
    model = ModelRuntime(info, threads=1)  # new sessions, every time
    return Response(imaging.png_bytes(model.decompress(data)), media_type="image/png")
