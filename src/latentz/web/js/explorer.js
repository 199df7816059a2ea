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
  paint,
  requestedThreads,
  showError,
  toImageData,
} from "./common.js";
import { preprocessDrawing } from "./digits.js";

const ORT_BYTES_ESTIMATE = 14_000_000;
const TIMING_WINDOW = 240;

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
  if (!state.encoder) {
    progress.update(null, `${progress.label.textContent.replace(/ — .*$/, "")} — your drawing will be encoded as soon as the model is ready`);
  }
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
  $("#share-link").value = `${location.origin}/explorer#model=${encodeURIComponent(state.model.name)}&z=${z}`;
}

function parseShared() {
  const params = new URLSearchParams(location.hash.slice(1));
  const z = params.get("z");
  let latent = null;
  if (z) {
    const bytes = base64UrlToBytes(z);
    if (bytes.length % 4) throw new Error(`the link's latent is ${bytes.length} bytes, not whole float32 values`);
    const view = new DataView(bytes.buffer);
    latent = Float32Array.from({ length: bytes.length / 4 }, (_, i) => view.getFloat32(4 * i, true));
  }
  return { model: params.get("model"), latent };
}

function updateButtons() {
  const ready = Boolean(state.decoder);
  $("#random").disabled = !ready;
  $("#reset").disabled = !(ready && state.drawingLatent);
  $("#set-a").disabled = !(ready && state.drawingLatent);
  $("#set-b").disabled = !(ready && state.drawingLatent);
  $("#mix").disabled = !(state.pointA && state.pointB);
  $("#ab-state").textContent =
    `A: ${state.pointA ? "set" : "not set"} · B: ${state.pointB ? "set" : "not set"}` +
    (state.pointA && state.pointB ? "" : " (draw, then “Use as A”; draw again, “Use as B”)");
}

function gaussian() {
  const u = 1 - Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
}

$("#random").addEventListener("click", () => setLatent(Float32Array.from({ length: state.dim }, gaussian)));
$("#reset").addEventListener("click", () => state.drawingLatent && setLatent(state.drawingLatent));
$("#set-a").addEventListener("click", () => {
  state.pointA = state.drawingLatent.slice();
  updateButtons();
});
$("#set-b").addEventListener("click", () => {
  state.pointB = state.drawingLatent.slice();
  updateButtons();
});
$("#mix").addEventListener("input", () => {
  const t = Number($("#mix").value);
  $("#mix-value").textContent = t.toFixed(2);
  setLatent(state.pointA.map((a, i) => (1 - t) * a + t * state.pointB[i]));
});
$("#copy").addEventListener("click", async () => {
  $("#share-link").select();
  try {
    await navigator.clipboard.writeText($("#share-link").value);
    $("#copy").textContent = "Copied";
  } catch {
    $("#copy").textContent = "Select and copy";
  }
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
      .catch((error) => showError(`encoding your drawing failed: ${error.message}`))
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
      $("#timing").textContent = `decode ${median(state.decodeTimes).toFixed(2)} ms (median of the last ${state.decodeTimes.length})`;
      $("#output-overlay").hidden = true;
      document.body.dataset.ready = "true";
    })
    .catch((error) => showError(`decoding failed: ${error.message ?? error}`))
    .finally(() => {
      state.busy = false;
    });
}

// -- loading --------------------------------------------------------------------------------
async function loadModel(name, shared = null) {
  const token = ++state.loadToken;
  clearError();
  document.body.dataset.ready = "false";
  state.decoder = null;
  state.encoder = null;
  updateButtons();
  $("#output-overlay").hidden = false;
  $("#output-overlay").textContent = "Loading the model…";
  const model = await api(`/api/models/${encodeURIComponent(name)}`);
  if (!model.card.latent_stats) {
    // An old bundle without training-set statistics: fall back to the prior N(0, 1), and say so.
    const dims = Array.from({ length: model.latent_dim });
    model.card.latent_stats = {
      mean: dims.map(() => 0),
      std: dims.map(() => 1),
      p1: dims.map(() => -2.326),
      p99: dims.map(() => 2.326),
    };
    showError(`${model.name}'s card has no latent_stats, so the sliders span the prior N(0, 1) instead`, {
      title: "Slider ranges are a guess",
    });
  }
  const downloads = { runtime: [0, ORT_BYTES_ESTIMATE], encoder: [0, 0], decoder: [0, 0] };
  const report = () => {
    const done = Object.values(downloads).reduce((sum, [got]) => sum + got, 0);
    const total = Object.values(downloads).reduce((sum, [got, all]) => sum + Math.max(got, all), 0);
    const megabytes = (value) => (value / 1e6).toFixed(1);
    const waiting = state.hasInk ? " — your drawing will be encoded as soon as the model is ready" : "";
    const label = `Loading ${model.name}: ${megabytes(done)} of ${megabytes(total)} MB${waiting}`;
    progress.update(total ? done / total : null, label);
    $("#output-overlay").textContent = `Loading… ${total ? Math.round((100 * done) / total) : 0}%`;
  };
  const tracker = (key) => (got, total) => {
    downloads[key] = [got, total];
    report();
  };
  report();
  const ort = await loadOrt(tracker("runtime"), requestedThreads(1));
  const [encoder, decoder] = await Promise.all([
    loadSession(ort, model.files.encoder, tracker("encoder")),
    loadSession(ort, model.files.decoder, tracker("decoder")),
  ]);
  if (token !== state.loadToken) return; // another model was picked meanwhile
  state.ort = ort;
  state.model = model;
  state.dim = model.latent_dim;
  state.latent = new Float32Array(state.dim);
  state.drawingLatent = null;
  state.pointA = state.pointB = null;
  buildSliders(model);
  state.encoder = encoder;
  state.decoder = decoder;
  if (shared?.latent) {
    if (shared.latent.length !== state.dim) {
      showError(`the link holds ${shared.latent.length} latent values, but ${model.name} has ${state.dim}`, {
        title: "Cannot show this link",
      });
      setLatent(Float32Array.from(model.card.latent_stats.mean));
    } else {
      setLatent(shared.latent);
    }
  } else {
    setLatent(Float32Array.from(model.card.latent_stats.mean)); // never a blank output
  }
  if (state.hasInk && !shared?.latent) state.encodeRequested = true;
  updateButtons();
  progress.finish(`Ready: ${model.name}, ${state.dim} latent dimensions, decoded in your browser`);
}

async function start() {
  installErrorBanner();
  updateButtons();
  requestAnimationFrame(frame);
  let shared = { model: null, latent: null };
  try {
    shared = parseShared();
  } catch (error) {
    showError(error.message, { title: "Cannot read this link" });
  }
  const models = (await listModels()).filter((m) => m.exported && !m.fully_convolutional);
  if (!models.length) {
    throw new Error(
      "no installed model can be explored: the explorer needs an exported model with a vector latent " +
        "(see `latentz models`)",
    );
  }
  for (const model of models) select.add(new Option(`${model.name} (${model.latent_dim}-d, ${model.image_size}px)`, model.name));
  let chosen = models.find((m) => m.name === "mnist-z10") ?? models.find((m) => /mnist/i.test(m.name)) ?? models[0];
  if (shared.model) {
    const linked = models.find((m) => m.name === shared.model);
    if (linked) chosen = linked;
    else showError(`this link is for the model “${shared.model}”, which this server does not have`, { title: "Unknown model" });
  }
  select.value = chosen.name;
  select.addEventListener("change", () => loadModel(select.value).catch(failed));
  window.addEventListener("hashchange", () => {
    try {
      const next = parseShared();
      if (next.model && next.model !== state.model?.name) select.value = next.model;
      loadModel(select.value, next).catch(failed);
    } catch (error) {
      showError(error.message, { title: "Cannot read this link" });
    }
  });
  await loadModel(chosen.name, shared.model === chosen.name || !shared.model ? shared : null);
}

function failed(error) {
  progress.fail(`Failed: ${error.message}`);
  $("#output-overlay").textContent = "Could not load the model";
  showError(error.message, { title: "Could not load the explorer" });
}

start().catch(failed);
