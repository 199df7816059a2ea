// The receiver page: the server parses and entropy-decodes the .latentz file (POST /api/read);
// the model's decoder.onnx turns that latent into pixels here, in the browser.

import {
  $,
  Progress,
  api,
  clearError,
  dropZone,
  formatBytes,
  installErrorBanner,
  loadOrt,
  loadSession,
  paint,
  requestedThreads,
  showError,
  toImageData,
} from "./common.js";

const progress = new Progress($("#progress"));
let fileNumber = 0;

const TITLES = {
  unknown_fingerprint: "Made by a model this server does not have",
  model_mismatch: "Made by a different model",
  unsupported_media: "Not a .latentz file",
  bad_request: "Corrupt .latentz file",
  too_large: "File too large",
  model_not_exported: "Model not ready",
};

async function receive(file) {
  const number = ++fileNumber;
  clearError();
  $("#result").hidden = true;
  document.body.dataset.state = "working";
  try {
    const form = new FormData();
    form.append("file", file);
    const parsed = await api("/api/read", { method: "POST", body: form });
    const downloads = { runtime: [0, 14_000_000], decoder: [0, 0] };
    const report = () => {
      const done = downloads.runtime[0] + downloads.decoder[0];
      const total = Math.max(...downloads.runtime) + Math.max(...downloads.decoder);
      progress.update(done / total, `Loading ${parsed.model}'s decoder: ${(done / 1e6).toFixed(1)} of ${(total / 1e6).toFixed(1)} MB`);
    };
    const ort = await loadOrt((got, total) => {
      downloads.runtime = [got, total];
      report();
    }, requestedThreads(1));
    const decoder = await loadSession(ort, parsed.decoder, (got, total) => {
      downloads.decoder = [got, total];
      report();
    });
    const started = performance.now();
    const latent = new ort.Tensor("float32", Float32Array.from(parsed.latent), [1, ...parsed.latent_shape]);
    const result = await decoder.run({ [decoder.inputNames[0]]: latent });
    const elapsed = performance.now() - started;
    if (number !== fileNumber) return;
    const image = result[decoder.outputNames[0]];
    const canvas = $("#decoded");
    paint(canvas, toImageData(image.data, image.dims, parsed.width, parsed.height));
    progress.finish(`Decoded with ${parsed.model}`);
    show(file, parsed, elapsed);
    document.body.dataset.state = "done";
    window.latentzReceiver = { ...parsed, elapsed }; // for the tests
  } catch (error) {
    if (number !== fileNumber) return;
    document.body.dataset.state = "failed";
    progress.root.hidden = true;
    showError(error.message, { title: TITLES[error.code] ?? "Could not decode this file" });
  }
}

function show(file, parsed, elapsed) {
  $("#result").hidden = false;
  $("#caption").textContent = `${parsed.width}×${parsed.height} from ${parsed.bytes} bytes`;
  $("#info-model").textContent = `${parsed.model} (fingerprint ${parsed.fingerprint}, entropy model ${parsed.entropy_model_id})`;
  $("#info-file").textContent = `${file.name}: ${formatBytes(parsed.bytes)} (${parsed.header_bytes} bytes of header and checksum)`;
  $("#info-image").textContent = `${parsed.width}×${parsed.height}, ${parsed.channels === 1 ? "grey" : "colour"}`;
  $("#info-latent").textContent = `${parsed.latent_shape.join("×")} values, quantisation step ${parsed.step_units} posterior std`;
  $("#info-timing").textContent = `${elapsed.toFixed(2)} ms with onnxruntime-web (entropy decoding was done by the server)`;
}

installErrorBanner();
$("#file").addEventListener("change", (event) => event.target.files[0] && receive(event.target.files[0]));
dropZone($("#drop"), receive);
