// The receiver page: the server parses and entropy-decodes the .latentz file (POST /api/read);
// the model's decoder.onnx turns that latent into pixels here, in the browser. A file can also
// arrive from the codec page in this tab's sessionStorage (`/receiver#from=codec`), without
// being downloaded and picked again.

import {
  $,
  HANDOFF_HASH,
  HANDOFF_KEY,
  Progress,
  api,
  base64ToBytes,
  clearError,
  dropZone,
  formatBytes,
  installErrorBanner,
  loadOrt,
  loadSession,
  megabytes,
  paint,
  pendingDownloads,
  requestedThreads,
  sentence,
  showError,
  toImageData,
  watchDownloads,
} from "./common.js";

const progress = new Progress($("#progress"));
let fileNumber = 0;
let savedUrl = null;

const TITLES = {
  unknown_fingerprint: "This file was made by a model this server does not have.",
  model_mismatch: "This file was made by a different model.",
  unsupported_media: "This is not a .latentz file.",
  bad_request: "This .latentz file is damaged.",
  too_large: "This file is too large.",
  model_not_exported: "The model for this file is not ready.",
  busy: "The server is busy: try again in a moment.",
  network: "The server cannot be reached.",
};

/** What to tell a person about a failed file: a title and a message, both sentences. */
function explain(error, file) {
  const detected = error.body?.detected;
  if (error.code === "unsupported_media" && detected === "image") {
    return {
      title: "This is an image, not a .latentz file.",
      message: `The file ${file.name} is a picture. Encode it on the codec page to make a .latentz file from it.`,
    };
  }
  if (error.code === "unsupported_media" && detected !== "latentz") {
    return {
      title: TITLES.unsupported_media,
      message: `The file ${file.name} does not begin with “LZ”, the two bytes every .latentz file starts with.`,
    };
  }
  return { title: TITLES[error.code] ?? "This file could not be decoded.", message: sentence(error.message) };
}

async function receive(file) {
  const number = ++fileNumber;
  clearError();
  $("#result").hidden = true;
  document.body.dataset.state = "working";
  let stopWatching = () => {};
  try {
    const form = new FormData();
    form.append("file", file);
    const parsed = await api("/api/read", { method: "POST", body: form });
    const pending = pendingDownloads([parsed.decoder]);
    if (pending.length) {
      stopWatching = watchDownloads(pending, ({ fraction, done, total }) => {
        if (number !== fileNumber) return;
        const label = fraction === null ? (done ? `: ${(done / 1e6).toFixed(1)} MB so far` : "") : `: ${megabytes(done, total)}`;
        progress.update(fraction, `Loading ${parsed.model}'s decoder${label}`);
      });
    }
    const ort = await loadOrt(requestedThreads(1));
    const decoder = await loadSession(ort, parsed.decoder);
    stopWatching();
    const started = performance.now();
    const latent = new ort.Tensor("float32", Float32Array.from(parsed.latent), [1, ...parsed.latent_shape]);
    const result = await decoder.run({ [decoder.inputNames[0]]: latent });
    const elapsed = performance.now() - started;
    if (number !== fileNumber) return;
    const image = result[decoder.outputNames[0]];
    const canvas = $("#decoded");
    paint(canvas, toImageData(image.data, image.dims, parsed.width, parsed.height));
    progress.finish(`Decoded with ${parsed.model}.`);
    show(file, parsed, elapsed);
    await offerSave(canvas, file.name);
    document.body.dataset.state = "done";
    window.latentzReceiver = { ...parsed, elapsed, name: file.name }; // for the tests
  } catch (error) {
    stopWatching();
    if (number !== fileNumber) return;
    document.body.dataset.state = "failed";
    progress.root.hidden = true;
    const { title, message } = explain(error, file);
    showError(message, { title });
  }
}

/** The decoded pixels as a PNG download named after the file (message.latentz -> message.png). */
async function offerSave(canvas, name) {
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  if (savedUrl) URL.revokeObjectURL(savedUrl);
  savedUrl = URL.createObjectURL(blob);
  const link = $("#save");
  link.href = savedUrl;
  link.download = `${name.replace(/\.latentz$/i, "") || "decoded"}.png`;
}

function show(file, parsed, elapsed) {
  $("#result").hidden = false;
  $("#caption").textContent = `${parsed.width}×${parsed.height} from ${parsed.bytes.toLocaleString()} bytes`;
  $("#info-model").textContent = `${parsed.model} (fingerprint ${parsed.fingerprint}, entropy model ${parsed.entropy_model_id})`;
  $("#info-file").textContent = `${file.name}: ${formatBytes(parsed.bytes)} (${parsed.header_bytes} bytes of header and checksum)`;
  $("#info-image").textContent = `${parsed.width}×${parsed.height}, ${parsed.channels === 1 ? "grey" : "colour"}`;
  const coding = parsed.format_version === 1
    ? `quantisation step ${parsed.step_units} posterior std`
    : `quality ${parsed.quality}, format v${parsed.format_version} (rate-distortion: a step per channel)`;
  $("#info-latent").textContent = `${parsed.latent_shape.join("×")} values, ${coding}`;
  $("#info-timing").textContent = `${elapsed.toFixed(2)} ms with onnxruntime-web (entropy decoding was done by the server)`;
}

/** A file the user picked or dropped replaces any file handed over by the codec page. */
function receiveChosen(file) {
  if (location.hash === HANDOFF_HASH) history.replaceState(null, "", location.pathname + location.search);
  sessionStorage.removeItem(HANDOFF_KEY);
  receive(file);
}

/** The file the codec page left in sessionStorage; it stays there, so reloading shows it again. */
function receiveHandoff() {
  if (location.hash !== HANDOFF_HASH) return;
  const stored = sessionStorage.getItem(HANDOFF_KEY);
  if (!stored) {
    showError("Encode a photo on the codec page again, or drop its .latentz file here.", {
      title: "The file from the codec page is no longer here.",
    });
    return;
  }
  const { name, base64 } = JSON.parse(stored);
  receive(new File([base64ToBytes(base64)], name, { type: "application/x-latentz" }));
}

installErrorBanner();
$("#file").addEventListener("change", (event) => event.target.files[0] && receiveChosen(event.target.files[0]));
dropZone($("#drop"), receiveChosen);
window.addEventListener("hashchange", receiveHandoff);
receiveHandoff();
