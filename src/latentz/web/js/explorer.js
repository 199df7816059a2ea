// The latent explorer: draw, encode in the browser, move one slider per latent dimension and
// watch the decoder repaint. Everything after the model download runs locally with
// onnxruntime-web; the server only lists models and serves their ONNX files.

import {
  $,
  Progress,
  api,
  base64UrlToBytes,
  bytesToBase64Url,
  clearError,
  installErrorBanner,
  listModels,
  loadOrt,
  loadSession,
  megabytes,
  paint,
  pendingDownloads,
  requestedThreads,
  showError,
  toImageData,
  watchDownloads,
} from "./common.js";
import { preprocessDrawing } from "./digits.js";

const TIMING_WINDOW = 240;
const COPIED_FOR_MS = 2000;
const WAITING_NOTE = "Your drawing will be encoded as soon as the model is ready.";

/** Everything the page knows; exposed as window.latentzExplorer for the tests and the benchmark. */
const state = {
  ort: null,
  model: null, // the /api/models/{name} detail
  encoder: null,
  decoder: null,
  dim: 0,
  latent: new Float32Array(0),
  drawingLatent: null,
  pointA: null,
  pointB: null,
  input: null, // the preprocessed drawing, Float32Array size*size
  hasInk: false,
  dirty: false,
  busy: false,
  encodeRequested: false,
  encoding: false,
  frames: 0,
  decodeTimes: [], // ms in decoder.run per slider move
  frameTimes: [], // ms from the start of decoding to the painted canvas
  renderedLatent: null,
  loadToken: 0,
};
window.latentzExplorer = state;

const pad = $("#pad");
const padContext = pad.getContext("2d", { willReadFrequently: true });
const output = $("#output");
const inputView = $("#input");
const progress = new Progress($("#progress"));
const select = $("#model");

// -- drawing --------------------------------------------------------------------------------
let stroke = null; // {id, x, y} while a pointer is down on the pad

function padPoint(event) {
  const rect = pad.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) * pad.width) / rect.width,
    y: ((event.clientY - rect.top) * pad.height) / rect.height,
  };
}

function drawSegment(from, to) {
  padContext.strokeStyle = "#fff";
  padContext.lineWidth = pad.width * 0.075;
  padContext.lineCap = "round";
  padContext.lineJoin = "round";
  padContext.beginPath();
  padContext.moveTo(from.x, from.y);
  padContext.lineTo(to.x, to.y);
  padContext.stroke();
}

function endStroke() {
  if (!stroke) return;
  stroke = null;
  requestEncode();
}

pad.addEventListener("pointerdown", (event) => {
  if (event.pointerType === "mouse" && event.button !== 0) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId); // so the stroke ends even if the button is released outside
  const point = padPoint(event);
  stroke = { id: event.pointerId, ...point };
  drawSegment(point, point);
  state.hasInk = true;
});

pad.addEventListener("pointermove", (event) => {
  if (!stroke || event.pointerId !== stroke.id) return;
  if (event.pointerType === "mouse" && event.buttons === 0) {
    endStroke(); // the release happened where we could not see it
    return;
  }
  const events = event.getCoalescedEvents?.() ?? [event];
  for (const each of events.length ? events : [event]) {
    const point = padPoint(each);
    drawSegment(stroke, point);
    stroke.x = point.x;
    stroke.y = point.y;
  }
  requestEncode(); // live: encodes at most once per frame while drawing
});

for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
  pad.addEventListener(type, (event) => {
    if (stroke && event.pointerId === stroke.id) endStroke();
  });
}
window.addEventListener("pointerup", (event) => {
  if (stroke && event.pointerId === stroke.id) endStroke();
});
window.addEventListener("blur", endStroke);

$("#clear").addEventListener("click", () => {
  padContext.clearRect(0, 0, pad.width, pad.height);
  inputView.getContext("2d").clearRect(0, 0, inputView.width, inputView.height);
  state.hasInk = false;
  state.input = null;
  state.drawingLatent = null;
  updateButtons();
});

function padAlpha() {
  const { data } = padContext.getImageData(0, 0, pad.width, pad.height);
  const alpha = new Float32Array(pad.width * pad.height);
  for (let i = 0; i < alpha.length; i++) alpha[i] = data[4 * i + 3] / 255;
  return alpha;
}

function requestEncode() {
  state.encodeRequested = true;
  // Said beside the output, whose box has a fixed size: nothing above the pad may grow mid-stroke.
  if (!state.encoder) $("#timing").textContent = WAITING_NOTE;
}

function preprocessStyle(model) {
  return /fashion/i.test(`${model.name} ${model.data}`) ? "fill" : "mnist";
}

async function encodeDrawing() {
  const model = state.model;
  const size = model.image_size;
  const prepared = preprocessDrawing(padAlpha(), pad.width, pad.height, {
    size,
    box: Math.round((size * 20) / 28),
    style: preprocessStyle(model),
  });
  if (!prepared) return;
  state.input = prepared.image;
  state.preprocessing = { ink: prepared.ink, placed: prepared.placed, style: preprocessStyle(model) };
  paint(inputView, toImageData(prepared.image, [1, 1, size, size]));
  const channels = model.channels;
  const pixels = new Float32Array(channels * size * size);
  for (let c = 0; c < channels; c++) pixels.set(prepared.image, c * size * size);
  const encoder = state.encoder;
  const feeds = { [encoder.inputNames[0]]: new state.ort.Tensor("float32", pixels, [1, channels, size, size]) };
  const result = await encoder.run(feeds);
  if (encoder !== state.encoder) return; // the model changed meanwhile
  const mean = result.mean ?? result[encoder.outputNames[0]];
  state.drawingLatent = Float32Array.from(mean.data);
  setLatent(state.drawingLatent);
  updateButtons();
}

// -- the latent and its sliders -------------------------------------------------------------
function sliderRange(stats, index) {
  const low = stats.p1[index];
  const high = stats.p99[index];
  let span = high - low;
  if (!(span > 1e-6)) span = Math.max(6 * (stats.std?.[index] ?? 0), 1);
  return { min: low - 0.25 * span, max: high + 0.25 * span, bandLow: low, bandHigh: high };
}

function buildSliders(model) {
  const stats = model.card.latent_stats;
  const container = $("#sliders");
  container.replaceChildren();
  for (let i = 0; i < state.dim; i++) {
    const range = sliderRange(stats, i);
    const row = document.createElement("div");
    row.className = "dim";
    row.dataset.index = String(i);
    const width = range.max - range.min;
    const bandLeft = ((range.bandLow - range.min) / width) * 100;
    const bandWidth = ((range.bandHigh - range.bandLow) / width) * 100;
    const kl = stats.kl?.[i];
    row.innerHTML = `
      <label for="z-${i}">z<sub>${i}</sub></label>
      <div class="track">
        <span class="band" style="left:${bandLeft}%;width:${bandWidth}%"></span>
        <input type="range" id="z-${i}" min="${range.min}" max="${range.max}" step="${width / 1000}"
               aria-describedby="z-${i}-hint">
      </div>
      <input type="number" id="z-${i}-value" step="0.01" aria-label="z${i} value">
      <span class="hint" id="z-${i}-hint">${kl === undefined ? "" : `KL ${kl.toFixed(2)} nats`}</span>`;
    const slider = $("input[type=range]", row);
    const number = $("input[type=number]", row);
    slider.addEventListener("input", () => {
      state.latent[i] = Number(slider.value);
      syncSlider(i);
      latentChanged();
    });
    number.addEventListener("input", () => {
      const value = Number(number.value);
      if (number.value === "" || !Number.isFinite(value)) return;
      state.latent[i] = value; // may lie outside the slider: still decoded as typed
      syncSlider(i, { keepNumber: true });
      latentChanged();
    });
    container.append(row);
  }
}

function syncSlider(i, { keepNumber = false } = {}) {
  const row = $(`.dim[data-index="${i}"]`);
  if (!row) return;
  const slider = $("input[type=range]", row);
  const value = state.latent[i];
  const min = Number(slider.min);
  const max = Number(slider.max);
  const slack = (max - min) * 1e-6; // the latent is float32; the slider's ends are float64
  const outside = value < min - slack || value > max + slack;
  slider.value = String(value); // the browser clamps the thumb; the latent keeps the true value
  row.classList.toggle("outside", outside);
  slider.setAttribute("aria-valuetext", `${value.toFixed(3)}${outside ? " (outside the training range)" : ""}`);
  if (!keepNumber) $("input[type=number]", row).value = value.toFixed(3);
}

function setLatent(values) {
  state.latent.set(values);
  for (let i = 0; i < state.dim; i++) syncSlider(i);
  latentChanged();
}

function latentChanged() {
  state.dirty = true;
  const view = new DataView(new ArrayBuffer(4 * state.dim));
  state.latent.forEach((value, i) => view.setFloat32(4 * i, value, true));
  const z = bytesToBase64Url(new Uint8Array(view.buffer));
  const link = `${location.origin}/explorer#model=${encodeURIComponent(state.model.name)}&z=${z}`;
  if (link !== $("#share-link").value) {
    $("#share-link").value = link;
    resetCopyButton(); // what was copied is no longer this link
  }
}

/**
 * What a share link (`#model=NAME&z=BASE64URL`) holds: the model's name, the latent (float32,
 * little-endian) and, when the latent cannot be read, `problem`: a sentence saying why.
 */
export function readLink(hash) {
  const params = new URLSearchParams(hash.replace(/^#/, ""));
  const link = { model: params.get("model"), latent: null, problem: null };
  const z = params.get("z");
  if (z === null) return link;
  const damaged = "it may have been damaged or cut short when it was copied";
  let bytes = null;
  if (/^[A-Za-z0-9_-]*$/.test(z)) {
    try {
      bytes = base64UrlToBytes(z);
    } catch {
      bytes = null; // a length no base64 text can have
    }
  }
  if (bytes === null) {
    const shown = z.length > 24 ? `${z.slice(0, 24)}…` : z;
    link.problem = `The link's latent (z=${shown}) is not the letters, digits, “-” and “_” a share link is made of: ${damaged}.`;
  } else if (bytes.length === 0) {
    link.problem = "The link's latent (z=) is empty: " + damaged + ".";
  } else if (bytes.length % 4) {
    link.problem =
      `The link's latent is ${bytes.length} bytes long, but each latent value takes 4 bytes, ` +
      `so the link holds no whole set of values: ${damaged}.`;
  } else {
    const view = new DataView(bytes.buffer);
    const latent = Float32Array.from({ length: bytes.length / 4 }, (_, i) => view.getFloat32(4 * i, true));
    if (latent.every(Number.isFinite)) link.latent = latent;
    else link.problem = `The link's latent holds values that are not finite numbers: ${damaged}.`;
  }
  return link;
}

function linkProblem(message, shownInstead) {
  showError(`${message} The explorer shows ${shownInstead} instead.`, {
    title: "This share link cannot be shown.",
    banner: "#link-error",
  });
}

function updateButtons() {
  const ready = Boolean(state.decoder);
  $("#random").disabled = !ready;
  $("#reset").disabled = !(ready && state.drawingLatent);
  $("#set-a").disabled = !ready;
  $("#set-b").disabled = !ready;
  $("#mix").disabled = !(state.pointA && state.pointB);
  const set = (point) => (point ? "set" : "not set");
  $("#ab-state").textContent =
    state.pointA && state.pointB
      ? "A and B are set: slide between them."
      : `A is ${set(state.pointA)}, B is ${set(state.pointB)}. ` +
        "Press “Use as A” to keep the image you see, make another (draw, sample or slide), then press “Use as B”.";
}

/** The A ⟷ B slider at `t`, without moving the latent (what is on screen already is A, B or a mix). */
function setMix(t) {
  $("#mix").value = String(t);
  $("#mix-value").textContent = t.toFixed(2);
}

function gaussian() {
  const u = 1 - Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
}

$("#random").addEventListener("click", () => setLatent(Float32Array.from({ length: state.dim }, gaussian)));
$("#reset").addEventListener("click", () => state.drawingLatent && setLatent(state.drawingLatent));
// A and B are the image on screen, however it was made: drawn, sampled, slid or typed.
$("#set-a").addEventListener("click", () => {
  state.pointA = state.latent.slice();
  setMix(0);
  updateButtons();
});
$("#set-b").addEventListener("click", () => {
  state.pointB = state.latent.slice();
  setMix(state.pointA ? 1 : 0);
  updateButtons();
});
$("#mix").addEventListener("input", () => {
  const t = Number($("#mix").value);
  $("#mix-value").textContent = t.toFixed(2);
  setLatent(state.pointA.map((a, i) => (1 - t) * a + t * state.pointB[i]));
});

let copiedTimer = null;
function resetCopyButton() {
  clearTimeout(copiedTimer);
  $("#copy").textContent = "Copy";
}
$("#copy").addEventListener("click", async () => {
  $("#share-link").select();
  try {
    await navigator.clipboard.writeText($("#share-link").value);
    $("#copy").textContent = "Copied";
  } catch {
    $("#copy").textContent = "Press Ctrl+C to copy";
  }
  clearTimeout(copiedTimer);
  copiedTimer = setTimeout(resetCopyButton, COPIED_FOR_MS);
});

// -- the render loop: decode only when the latent changed, at most once per frame -----------
function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.floor(sorted.length / 2)] : NaN;
}

function frame() {
  requestAnimationFrame(frame);
  if (state.encodeRequested && state.encoder && !state.encoding && state.hasInk) {
    state.encodeRequested = false;
    state.encoding = true;
    encodeDrawing()
      .catch((error) => showError(error.message, { title: "Your drawing could not be encoded." }))
      .finally(() => {
        state.encoding = false;
      });
  }
  if (!state.dirty || state.busy || !state.decoder) return;
  state.dirty = false;
  state.busy = true;
  const decoder = state.decoder;
  const latent = state.latent.slice();
  const started = performance.now();
  decoder
    .run({ [decoder.inputNames[0]]: new state.ort.Tensor("float32", latent, [1, state.dim]) })
    .then((result) => {
      const elapsed = performance.now() - started;
      if (decoder !== state.decoder) return;
      const image = result[decoder.outputNames[0]];
      paint(output, toImageData(image.data, image.dims));
      state.renderedLatent = latent;
      state.frames += 1;
      state.decodeTimes.push(elapsed);
      state.frameTimes.push(performance.now() - started);
      if (state.decodeTimes.length > TIMING_WINDOW) state.decodeTimes.shift();
      if (state.frameTimes.length > TIMING_WINDOW) state.frameTimes.shift();
      const count = state.decodeTimes.length;
      $("#timing").textContent =
        `Decoded in ${median(state.decodeTimes).toFixed(2)} ms` + (count > 1 ? ` (median of the last ${count}).` : ".");
      $("#output-overlay").hidden = true;
      document.body.dataset.ready = "true";
    })
    .catch((error) => showError(String(error.message ?? error), { title: "The image could not be decoded." }))
    .finally(() => {
      state.busy = false;
    });
}

// -- loading --------------------------------------------------------------------------------
/** The model's mean latent stands in when a link cannot be shown, and before anything is drawn. */
function meanLatent(model) {
  return Float32Array.from(model.card.latent_stats.mean);
}

/** Show download progress for `model`: sizes known before the first figure, never going back. */
function showLoading(model, token) {
  const overlay = $("#output-overlay");
  const pending = pendingDownloads(networkUrls(model));
  if (!pending.length) {
    progress.update(null, `Loading ${model.name}…`);
    return () => {};
  }
  return watchDownloads(pending, ({ fraction, done, total }) => {
    if (token !== state.loadToken) return;
    if (fraction === null) {
      const soFar = done ? `: ${(done / 1e6).toFixed(1)} MB so far` : "…";
      progress.update(null, `Loading ${model.name}${soFar}`);
      overlay.textContent = "Loading…";
      return;
    }
    progress.update(fraction, `Loading ${model.name}: ${megabytes(done, total)}`);
    overlay.textContent = `Loading… ${Math.floor(100 * fraction + 1e-9)}%`;
  });
}

/**
 * The encoder and decoder the explorer runs: the server's int8 copies (a quarter of the bytes, the
 * same images to a few grey levels) when it offers them, else the bundle's own float32 files.
 */
function networkUrls(model) {
  return [model.files.encoder_int8 ?? model.files.encoder, model.files.decoder_int8 ?? model.files.decoder];
}

async function loadModel(name, link = null) {
  const token = ++state.loadToken;
  clearError();
  document.body.dataset.ready = "false";
  state.decoder = null;
  state.encoder = null;
  state.pointA = state.pointB = null;
  setMix(0);
  updateButtons();
  $("#output-overlay").hidden = false;
  $("#output-overlay").textContent = "Loading…";
  $("#timing").textContent = state.hasInk ? WAITING_NOTE : "";
  progress.update(null, `Loading ${name}…`);
  const model = await api(`/api/models/${encodeURIComponent(name)}`);
  if (token !== state.loadToken) return;
  if (!model.card.latent_stats) {
    // An old bundle without training-set statistics: fall back to the prior N(0, 1), and say so.
    const dims = Array.from({ length: model.latent_dim });
    model.card.latent_stats = {
      mean: dims.map(() => 0),
      std: dims.map(() => 1),
      p1: dims.map(() => -2.326),
      p99: dims.map(() => 2.326),
    };
    showError(`${model.name}'s card has no latent statistics, so the sliders span the prior N(0, 1) instead`, {
      title: "The slider ranges are a guess.",
    });
  }
  const stopWatching = showLoading(model, token);
  let encoder;
  let decoder;
  try {
    const ort = await loadOrt(requestedThreads(1));
    [encoder, decoder] = await Promise.all([
      loadSession(ort, networkUrls(model)[0]),
      loadSession(ort, networkUrls(model)[1]),
    ]);
    state.ort = ort;
  } finally {
    stopWatching();
  }
  if (token !== state.loadToken) return; // another model was picked meanwhile
  state.model = model;
  state.dim = model.latent_dim;
  state.latent = new Float32Array(state.dim);
  state.drawingLatent = null;
  buildSliders(model);
  state.encoder = encoder;
  state.decoder = decoder;
  if (link?.latent && link.latent.length !== state.dim) {
    linkProblem(
      `The link holds ${link.latent.length} latent values, but ${model.name} has ${state.dim}.`,
      `${model.name}'s average image`,
    );
    setLatent(meanLatent(model));
  } else {
    setLatent(link?.latent ?? meanLatent(model)); // never a blank output
  }
  if (state.hasInk && !link?.latent) state.encodeRequested = true;
  if (!state.hasInk) $("#timing").textContent = "";
  updateButtons();
  progress.finish(`Ready: ${model.name} runs in your browser.`);
}

/**
 * The model to show and the latent a link asks for, saying in the link banner (which stays
 * until dismissed) whatever about the link cannot be honoured.
 */
function openLink(hash, models, installed, fallback) {
  const link = readLink(hash);
  clearError("#link-error");
  let chosen = fallback;
  if (link.model && !models.some((m) => m.name === link.model)) {
    const why = installed.some((m) => m.name === link.model)
      ? `The link is for ${link.model}, which cannot be explored here: the explorer shows only models whose latent is one vector.`
      : `The link is for a model named “${link.model}”, which this server does not have ` +
        `(it has ${models.map((m) => m.name).join(", ")}).`;
    linkProblem(why, fallback.name);
    return { chosen, latent: null };
  }
  if (link.model) chosen = models.find((m) => m.name === link.model);
  if (link.problem) linkProblem(link.problem, `${chosen.name}'s average image`);
  return { chosen, latent: link.latent };
}

async function start() {
  installErrorBanner();
  updateButtons();
  requestAnimationFrame(frame);
  loadOrt(requestedThreads(1)).catch(() => {}); // start the 14 MB runtime at once; failures show in loadModel
  const installed = await listModels();
  const models = installed.filter((m) => m.exported && !m.fully_convolutional);
  if (!models.length) {
    throw new Error(
      "No installed model can be explored: the explorer needs an exported model whose latent is one vector " +
        "(`latentz models` lists what is installed)",
    );
  }
  for (const model of models) select.add(new Option(`${model.name} (${model.latent_dim}-d, ${model.image_size}px)`, model.name));
  const fallback = models.find((m) => m.name === "mnist-z10") ?? models.find((m) => /mnist/i.test(m.name)) ?? models[0];
  const { chosen, latent } = openLink(location.hash, models, installed, fallback);
  select.value = chosen.name;
  select.addEventListener("change", () => loadModel(select.value).catch(failed));
  window.addEventListener("hashchange", () => {
    const next = openLink(location.hash, models, installed, models.find((m) => m.name === select.value));
    select.value = next.chosen.name;
    loadModel(next.chosen.name, { latent: next.latent }).catch(failed);
  });
  await loadModel(chosen.name, { latent });
}

function failed(error) {
  progress.fail(`Failed: ${error.message}`);
  $("#output-overlay").textContent = "The model could not be loaded.";
  showError(error.message, { title: "The explorer could not load its model." });
}

start().catch(failed);
