// The codec page: the server encodes (and reports the reconstruction and a WebP at the same
// byte budget); this page shows the three side by side at their own aspect ratio, zoomed and
// panned together, and offers the .latentz for download or hands it to the receiver.
//
// Model and quality start where the server's rule says (latentz.choice): "Auto" lets
// `POST /api/encode` pick the model that fits the upload, and a request without a quality is
// coded at the model's recommended quality. The slider follows the model until it is moved.

import {
  $,
  HANDOFF_KEY,
  api,
  base64ToBytes,
  clearError,
  dropZone,
  installErrorBanner,
  listModels,
  sentence,
  showError,
  sizeComparison,
} from "./common.js";

const AUTO = "auto";
const select = $("#model");
const quality = $("#quality");
let models = new Map(); // name -> the model list's summary (recommended_quality among it)
let qualityChosen = false; // the user moved the slider: send it; else the model's recommended one
let currentFile = null;
let downloadUrl = null;
let requestNumber = 0;
let qualityTimer = null;
let latestReport = null;

function pngUrl(base64, type = "image/png") {
  return `data:${type};base64,${base64}`;
}

// -- model and quality ----------------------------------------------------------------------------
/** Show the slider at `value` (null: not known until the server has picked the model). */
function showQuality(value, why) {
  if (value !== null) quality.value = String(value);
  $("#quality-value").textContent = value === null ? "auto" : String(value);
  $("#quality-why").textContent = why;
  $("#quality-reset").hidden = !qualityChosen;
}

/** Where the slider stands for the selected model while the user has not moved it. */
function followModel() {
  if (qualityChosen) return;
  const model = models.get(select.value);
  if (model) showQuality(model.recommended_quality, `recommended for ${model.name}`);
  else showQuality(null, "the recommended quality of the model that fits");
}

function encodeUrl() {
  const query = new URLSearchParams({ format: "json" });
  if (select.value !== AUTO) query.set("model", select.value);
  return `/api/encode?${query}`;
}

async function compress() {
  clearTimeout(qualityTimer); // this request carries the slider's value: no second one for it
  if (!currentFile || !select.value) return;
  const number = ++requestNumber;
  clearError();
  document.body.dataset.state = "working";
  const model = select.value === AUTO ? "the model that fits it" : select.value;
  const budget = targetBytes();
  const at = budget
    ? `the highest quality that fits in ${budget.toLocaleString()} bytes`
    : qualityChosen
      ? `quality ${quality.value}`
      : "its recommended quality";
  $("#note").textContent = `Encoding ${currentFile.name} with ${model} at ${at}…`;
  const form = new FormData();
  form.append("file", currentFile);
  if (budget) form.append("target_bytes", String(budget));
  else if (qualityChosen) form.append("quality", quality.value);
  try {
    const report = await api(encodeUrl(), { method: "POST", body: form });
    if (number !== requestNumber) return; // a newer request is on its way
    show(report);
    document.body.dataset.state = "done";
  } catch (error) {
    if (number !== requestNumber) return;
    document.body.dataset.state = "failed";
    $("#note").textContent = "";
    $("#result").hidden = true; // what is shown belongs to an earlier file or setting
    showError(...explain(error));
  }
}

/** What to tell a person about a failed upload: [message, {title}], both sentences. */
function explain(error) {
  if (error.code === "unsupported_media" && error.body?.detected === "latentz") {
    return [
      `The file ${currentFile.name} is already coded: open it on the receiver page to see the image it holds.`,
      { title: "This is a .latentz file, not an image." },
    ];
  }
  if (error.code === "unsupported_media") {
    return [
      `The file ${currentFile.name} is not a JPEG, PNG, WebP, GIF, BMP or TIFF image (judged by its content, not its name).`,
      { title: "This file is not an image the codec can read." },
    ];
  }
  const titles = {
    bad_request: "This image could not be read.",
    too_large: "This image is too large.",
    busy: "The server is busy: try again in a moment.",
    network: "The server cannot be reached.",
  };
  return [sentence(error.message), { title: titles[error.code] ?? "The photo could not be encoded." }];
}

// -- the report -----------------------------------------------------------------------------------
/** PSNR in dB; the server sends null when the decoded image is identical (infinite PSNR). */
function dB(psnr) {
  return psnr === null ? "∞ dB (identical)" : `${psnr.toFixed(2)} dB`;
}

/** `<strong>title</strong> · rest` in `element`, as text nodes (nothing the server says is HTML). */
function caption(element, title, rest) {
  const strong = document.createElement("strong");
  strong.textContent = title;
  element.replaceChildren(strong, ` · ${rest}`);
}

function showWarning(report) {
  const box = $("#warning");
  box.hidden = !report.warning;
  $("#warning-text").textContent = report.warning ?? "";
  const better = $("#use-better");
  better.hidden = !report.better_model || !models.has(report.better_model);
  better.textContent = report.better_model ? `Use ${report.better_model}` : "";
  better.dataset.model = report.better_model ?? "";
}

// "Fit in N bytes": a whole number of bytes, 1 or more, or nothing (then the quality slider rules).
function targetBytes() {
  const value = Number($("#target-bytes").value);
  return Number.isInteger(value) && value >= 1 ? value : null;
}

function showTarget(report) {
  const why = $("#target-why");
  if (!report.target) {
    why.textContent = "set a size and the highest quality that fits is used";
    return;
  }
  const got = `${report.reached.bytes.toLocaleString()} bytes at quality ${report.quality}`;
  why.textContent = report.met
    ? `fits: ${got}`
    : `even the lowest quality needs more: ${got}`;
  showQuality(report.quality, `the highest that fits in ${report.target.value.toLocaleString()} bytes`);
}

function showNotes(report) {
  const chosen = report.model_reason ? `Chosen for ${report.model_reason}.` : "";
  // A target's reason is already a sentence that names the quality ("quality 42: 2,339 bytes ...").
  const reason = (report.quality_reason ?? "").replace(/\.$/, "");
  const named = reason.startsWith(`quality ${report.quality}:`);
  const coded = !reason ? "" : named ? `Q${reason.slice(1)}.` : `Quality ${report.quality}: ${reason}.`;
  $("#choice").textContent = [chosen, coded].filter(Boolean).join(" ");
  $("#choice").hidden = !chosen && !coded;
  const list = $("#notes");
  list.replaceChildren(
    ...report.notes.map((text) => {
      const item = document.createElement("li");
      item.textContent = sentence(text);
      return item;
    }),
  );
  list.hidden = report.notes.length === 0;
}

function show(report) {
  window.latentzCodec = report; // for the tests
  latestReport = report;
  $("#result").hidden = false;
  if (!qualityChosen) showQuality(report.quality, `recommended for ${report.model}`);
  showTarget(report);
  showWarning(report);
  showNotes(report);
  compare.show(report.input.width, report.input.height, [
    pngUrl(report.input.png_base64),
    pngUrl(report.reconstruction.png_base64),
    pngUrl(report.webp.webp_base64, "image/webp"),
  ]);
  $("#input-size").textContent = `${report.input.width}×${report.input.height}, ${report.input.raw_bytes.toLocaleString()} raw bytes`;
  $("#latentz-bytes-caption").textContent = `${report.latentz.bytes.toLocaleString()} bytes, PSNR ${dB(report.reconstruction.psnr)}`;
  // Said as it is: WebP at the same budget, or (when it cannot get that small) its smallest file.
  const webp = report.webp;
  const webpWhat = webp.fits_budget
    ? "WebP at the same budget"
    : `WebP's smallest file, ${sizeComparison(webp.bytes, report.latentz.bytes)} the .latentz`;
  caption($("#webp-caption"), webpWhat, `${webp.bytes.toLocaleString()} bytes, PSNR ${dB(webp.psnr)}`);
  $("#stat-webp-title").textContent = webp.fits_budget ? "WebP at that budget" : "WebP's smallest file";
  $("#stat-original").textContent =
    `${report.original.bytes.toLocaleString()} bytes (${report.original.format}, ` +
    `${report.original.width}×${report.original.height})`;
  $("#stat-latentz").textContent =
    `${report.latentz.bytes.toLocaleString()} bytes (${report.latentz.header_bytes} of header and checksum), ` +
    `${report.bits_per_pixel.toFixed(3)} bits per pixel, latent ${report.latentz.latent_shape.join("×")}`;
  $("#stat-ratio").textContent =
    `${sizeComparison(report.latentz.bytes, report.original.bytes)} the upload, ` +
    `${sizeComparison(report.latentz.bytes, report.input.raw_bytes)} the model's raw input`;
  $("#stat-psnr").textContent = `${dB(report.reconstruction.psnr)} (against the model's input)`;
  $("#stat-webp").textContent = `${webp.bytes.toLocaleString()} bytes, PSNR ${dB(webp.psnr)}. ${sentence(webp.note)}`;
  const note = `${report.model}, quality ${report.quality}${report.note ? `: ${report.note}` : ""}`;
  $("#note").textContent = /[.!?]$/.test(note) ? note : `${note}.`; // a model's name starts it: no capital
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  downloadUrl = URL.createObjectURL(new Blob([base64ToBytes(report.latentz.base64)], { type: "application/x-latentz" }));
  const link = $("#download");
  link.href = downloadUrl;
  link.download = report.latentz.filename;
}

// -- side by side, zoomed and panned together -----------------------------------------------------
/**
 * Three images of the same size in three equal viewports, side by side (one above the other on
 * a phone). "Fit" shows the whole image as large as its column allows (whole screen pixels per
 * image pixel from 2x up, so pixels stay square);
 * 2x/4x/8x magnify that, pixelated, and the viewports scroll as one: drag with the mouse, swipe
 * on a touch screen, scroll, or use the arrow keys in any of them.
 */
const STACKED = matchMedia("(max-width: 560px)");

class Comparison {
  constructor(root) {
    this.viewports = [...root.querySelectorAll(".viewport")];
    this.images = this.viewports.map((viewport) => $("img", viewport));
    this.size = null; // [width, height] of the images, from the report (before they decode)
    this.zoom = 1;
    this.expected = new Map(); // viewport -> the scroll position this code just gave it
    this.drag = null;
    this.dragged = false;
    for (const viewport of this.viewports) {
      viewport.addEventListener("scroll", () => this.#follow(viewport));
      viewport.addEventListener("pointerdown", (event) => this.#dragStart(viewport, event));
      viewport.addEventListener("pointermove", (event) => this.#dragMove(event));
      viewport.addEventListener("pointerup", () => this.#dragEnd());
      viewport.addEventListener("pointercancel", () => this.#dragEnd());
      viewport.addEventListener("click", (event) => this.#zoomAt(event));
    }
    for (const button of document.querySelectorAll(".zoom-bar .zoom")) {
      button.addEventListener("click", () => this.setZoom(Number(button.dataset.zoom)));
    }
    // Relaid when the column width changes (a turned phone, a resized window); its height follows.
    let width = null;
    new ResizeObserver(([entry]) => {
      if (entry.contentRect.width === width) return;
      width = entry.contentRect.width;
      requestAnimationFrame(() => this.layout());
    }).observe(root);
  }

  show(width, height, urls) {
    const changed = !this.size || this.size[0] !== width || this.size[1] !== height;
    this.size = [width, height];
    urls.forEach((url, index) => {
      this.images[index].src = url;
    });
    this.layout(changed ? [0.5, 0.5] : null);
  }

  /** One above the other on a phone (style.css): each image gets the screen's width. */
  stacked() {
    return STACKED.matches;
  }

  /** The tallest a viewport gets: a whole image at Fit, a window onto it when zoomed. Stacked,
   * the three (and their captions) fit in about one screen. */
  tallest() {
    const screen = window.innerHeight;
    return this.stacked() ? Math.max(96, (screen * 0.85) / 3 - 48) : Math.max(160, Math.min(screen * 0.6, 560));
  }

  /** The largest scale at which a whole image fits its column (and `tallest`). */
  fitScale() {
    const [width, height] = this.size;
    const figure = this.viewports[0].parentElement;
    const style = getComputedStyle(figure);
    const padding = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
    const available = figure.clientWidth - padding - 2; // 2: the viewport's border
    const scale = Math.min(available / width, this.tallest() / height);
    return scale >= 2 ? Math.floor(scale) : scale;
  }

  /** Size all three; `centre` is the point of the image ([0..1, 0..1]) to keep in the middle. */
  layout(centre = null) {
    if (!this.size) return;
    const keep = centre ?? this.#centre();
    const [width, height] = this.size;
    const fit = this.fitScale();
    const raw = fit * this.zoom;
    const scale = raw >= 2 ? Math.round(raw) : raw;
    // Zoomed, a wide image's window grows taller than at Fit (up to `tallest`): more to compare.
    const windowHeight = Math.max(height * fit, Math.min(height * scale, this.tallest()));
    for (const [index, viewport] of this.viewports.entries()) {
      viewport.style.width = `${width * fit + 2}px`;
      viewport.style.height = `${windowHeight + 2}px`;
      viewport.classList.toggle("zoomed", this.zoom > 1);
      const image = this.images[index];
      image.style.width = `${width * scale}px`;
      image.style.height = `${height * scale}px`;
      image.classList.toggle("pixelated", scale >= 2);
    }
    this.scale = scale;
    const shown = scale >= 1 ? `${+scale.toFixed(2)} screen pixels per pixel` : `${Math.round(scale * 100)}% of its size`;
    $("#zoom-scale").textContent = `${width}×${height} shown at ${shown}`;
    for (const button of document.querySelectorAll(".zoom-bar .zoom")) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.zoom) === this.zoom));
    }
    this.#scrollTo(keep);
  }

  setZoom(zoom, centre = null) {
    this.zoom = zoom;
    this.layout(centre);
  }

  /** The image point in the middle of the first viewport. */
  #centre() {
    const viewport = this.viewports[0];
    const image = this.images[0];
    if (!image.offsetWidth) return [0.5, 0.5];
    const clamp = (value) => Math.min(1, Math.max(0, value));
    return [
      clamp((viewport.scrollLeft + viewport.clientWidth / 2 - image.offsetLeft) / image.offsetWidth),
      clamp((viewport.scrollTop + viewport.clientHeight / 2 - image.offsetTop) / image.offsetHeight),
    ];
  }

  #scrollTo([fx, fy]) {
    const viewport = this.viewports[0];
    const image = this.images[0];
    viewport.scrollLeft = image.offsetLeft + fx * image.offsetWidth - viewport.clientWidth / 2;
    viewport.scrollTop = image.offsetTop + fy * image.offsetHeight - viewport.clientHeight / 2;
    this.#follow(viewport, true);
  }

  /** Give the other viewports this one's scroll position (ignoring the echo of doing so). */
  #follow(leader, force = false) {
    const expected = this.expected.get(leader);
    this.expected.delete(leader);
    if (!force && expected && expected[0] === leader.scrollLeft && expected[1] === leader.scrollTop) return;
    for (const other of this.viewports) {
      if (other === leader) continue;
      other.scrollLeft = leader.scrollLeft;
      other.scrollTop = leader.scrollTop;
      this.expected.set(other, [other.scrollLeft, other.scrollTop]);
    }
  }

  #dragStart(viewport, event) {
    this.dragged = false;
    if (event.pointerType !== "mouse" || event.button !== 0 || this.zoom === 1) return;
    this.drag = { viewport, x: event.clientX, y: event.clientY, left: viewport.scrollLeft, top: viewport.scrollTop };
    viewport.setPointerCapture(event.pointerId);
    event.preventDefault(); // no image drag-and-drop, no text selection
  }

  #dragMove(event) {
    const drag = this.drag;
    if (!drag) return;
    const dx = event.clientX - drag.x;
    const dy = event.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) this.dragged = true;
    drag.viewport.scrollLeft = drag.left - dx;
    drag.viewport.scrollTop = drag.top - dy;
  }

  #dragEnd() {
    this.drag = null;
  }

  /** A click (or tap) zooms in one step there; at the closest zoom it goes back to Fit. */
  #zoomAt(event) {
    if (this.dragged) {
      this.dragged = false;
      return;
    }
    const image = event.target.closest("img");
    if (!image || !this.size) return;
    const box = image.getBoundingClientRect();
    const point = [(event.clientX - box.left) / box.width, (event.clientY - box.top) / box.height];
    const zooms = [...document.querySelectorAll(".zoom-bar .zoom")].map((button) => Number(button.dataset.zoom));
    const next = zooms.find((zoom) => zoom > this.zoom);
    this.setZoom(next ?? zooms[0], next ? point : [0.5, 0.5]);
  }
}

const compare = new Comparison($("#compare"));
window.latentzCompare = compare; // for the tests

function useFile(file) {
  currentFile = file;
  compress();
}

async function start() {
  installErrorBanner();
  const exported = (await listModels()).filter((model) => model.exported);
  if (!exported.length) throw new Error("No exported model is installed (`latentz models` lists what is installed).");
  models = new Map(exported.map((model) => [model.name, model]));
  for (const model of exported) {
    const shape = model.fully_convolutional ? "any size" : `${model.image_size}×${model.image_size}`;
    select.add(new Option(`${model.name} (${shape}, ${model.channels === 1 ? "grey" : "colour"})`, model.name));
  }
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted && models.has(wanted)) select.value = wanted;
  followModel();
  select.addEventListener("change", () => {
    followModel();
    compress();
  });
  quality.addEventListener("input", () => {
    qualityChosen = true;
    showQuality(Number(quality.value), "your choice");
    clearTimeout(qualityTimer);
    qualityTimer = setTimeout(compress, 200);
  });
  $("#target-bytes").addEventListener("change", () => compress());
  $("#quality-reset").addEventListener("click", () => {
    qualityChosen = false;
    followModel();
    compress();
  });
  $("#use-better").addEventListener("click", (event) => {
    select.value = event.currentTarget.dataset.model;
    followModel();
    compress();
  });
  // Hand the file to the receiver in this tab's sessionStorage: no download, no second upload.
  for (const type of ["click", "auxclick"]) {
    $("#open-receiver").addEventListener(type, (event) => {
      if (!latestReport) {
        event.preventDefault();
        return;
      }
      try {
        sessionStorage.setItem(
          HANDOFF_KEY,
          JSON.stringify({ name: latestReport.latentz.filename, base64: latestReport.latentz.base64 }),
        );
      } catch (error) {
        event.preventDefault();
        showError(`${error.message} Download the .latentz and drop it on the receiver page instead.`, {
          title: "The file could not be handed to the receiver.",
        });
      }
    });
  }
  $("#file").addEventListener("change", (event) => event.target.files[0] && useFile(event.target.files[0]));
  dropZone($("#drop"), useFile);
  document.body.dataset.models = "loaded";
}

start().catch((error) => showError(error.message, { title: "The codec page could not start." }));
