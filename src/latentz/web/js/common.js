// Shared by the three pages: API calls with readable errors, the error banner, load progress,
// onnxruntime-web sessions (loaded once per URL) and turning network outputs into pixels.

/**
 * onnxruntime-web's module: the versioned URL (cached for good) of the import map the server writes
 * into each page, or the unversioned one (revalidated) when a page has none.
 */
const ORT_MODULE_URL = (() => {
  try {
    return import.meta.resolve("onnxruntime-web");
  } catch {
    return new URL("/vendor/onnxruntime-web/ort.wasm.min.mjs", location.href).href;
  }
})();

export const $ = (selector, root = document) => root.querySelector(selector);

/** An API failure, carrying the server's JSON error (message, code, status). */
export class ApiError extends Error {
  constructor(message, { code = "error", status = 0, body = null } = {}) {
    super(message);
    this.code = code;
    this.status = status;
    this.body = body;
  }
}

/** fetch + JSON (or blob) with the server's `{error, code}` turned into an ApiError. */
export async function api(url, { method = "GET", body = undefined, as = "json" } = {}) {
  let response;
  try {
    response = await fetch(url, { method, body });
  } catch (error) {
    throw new ApiError(`Could not reach the latentz server (${error.message}). Is it still running?`, { code: "network" });
  }
  if (!response.ok) {
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      // not JSON: fall through to the status line
    }
    const message = payload?.error ?? `${response.status} ${response.statusText}`;
    throw new ApiError(message, { code: payload?.code ?? "http", status: response.status, body: payload });
  }
  if (as === "json") return response.json();
  if (as === "blob") return response.blob();
  return response;
}

// -- banner and status ------------------------------------------------------------------------
/**
 * A message as people read it: a capital first letter and a full stop ("checksum mismatch" ->
 * "Checksum mismatch."). A first word that is a name (mnist-z10, a file name) keeps its case.
 */
export function sentence(text) {
  const trimmed = String(text ?? "").trim();
  if (!trimmed) return "";
  const capital = /^[a-z]+(?=[\s,:;]|$)/.test(trimmed) ? trimmed[0].toUpperCase() + trimmed.slice(1) : trimmed;
  return /[.!?…]$/.test(capital) ? capital : `${capital}.`;
}

/**
 * Show `message` under `title` in a banner (`#error` unless `banner` names another). Both are
 * shown as sentences. A banner stays until its × is pressed or the page clears it.
 */
export function showError(message, { title = "Something went wrong.", banner = "#error" } = {}) {
  const element = $(banner);
  $(".banner-title", element).textContent = sentence(title);
  $(".banner-message", element).textContent = sentence(message);
  element.hidden = false;
}

export function clearError(banner = "#error") {
  const element = $(banner);
  if (element) element.hidden = true;
}

export function installErrorBanner() {
  for (const banner of document.querySelectorAll(".banner")) {
    $("button", banner)?.addEventListener("click", () => {
      banner.hidden = true;
    });
  }
  window.addEventListener("unhandledrejection", (event) => {
    showError(String(event.reason?.message ?? event.reason), { title: "Something unexpected went wrong." });
  });
}

/** A progress bar with a label; `update(done, total, label)`, `finish(label)`. */
export class Progress {
  constructor(root) {
    this.root = root;
    this.bar = $("progress", root);
    this.label = $(".progress-label", root);
  }
  update(fraction, label) {
    this.root.hidden = false;
    this.root.dataset.state = "loading";
    if (fraction === null) this.bar.removeAttribute("value");
    else this.bar.value = Math.max(0, Math.min(1, fraction));
    this.label.textContent = label;
  }
  finish(label) {
    this.root.hidden = false;
    this.bar.value = 1;
    this.root.dataset.state = "ready";
    this.label.textContent = label;
  }
  fail(label) {
    this.root.dataset.state = "failed";
    this.label.textContent = label;
  }
}

// -- downloads with progress ------------------------------------------------------------------
/**
 * One file being fetched: it starts at once, learns its size from the response headers and
 * counts bytes as they stream in. One Download per URL is shared by everything on the page
 * (`download(url)`), so a page can list what it waits for before any byte arrives.
 */
export class Download {
  constructor(url) {
    this.url = url;
    this.size = null; // bytes over the wire (Content-Length); null when the server did not say
    this.decodedSize = null; // bytes the body stream yields: more than `size` when it came compressed
    this.received = 0;
    this.finished = false;
    this.listeners = new Set();
    this.headersKnown = new Promise((resolve) => {
      this.#markHeaders = resolve;
    });
    this.result = this.#fetch().finally(this.#markHeaders);
    this.result.catch(() => {}); // failures are reported by whoever awaits the bytes
  }

  #markHeaders;
  #bytes = null;

  async #fetch() {
    let response;
    try {
      response = await fetch(this.url);
    } catch (error) {
      throw new ApiError(`Could not download ${this.url}: the server did not answer (${error.message}).`, {
        code: "network",
      });
    }
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        message = (await response.json()).error ?? message;
      } catch {
        // keep the status line
      }
      throw new ApiError(`Could not download ${this.url}: ${message}`, { status: response.status });
    }
    // A compressed response's Content-Length counts compressed bytes, but the stream yields
    // decompressed ones: the server says how many in X-Uncompressed-Length. Without it the
    // fraction is unknown (an indeterminate bar) rather than wrong.
    const length = Number(response.headers.get("content-length"));
    this.size = length > 0 ? length : null;
    this.compressed = Boolean(response.headers.get("content-encoding"));
    const decoded = Number(response.headers.get("x-uncompressed-length"));
    this.decodedSize = this.compressed ? (decoded > 0 ? decoded : null) : this.size;
    this.#markHeaders();
    this.#notify();
    const chunks = [];
    if (response.body) {
      const reader = response.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        chunks.push(value);
        this.received += value.length;
        this.#notify();
      }
    } else {
      chunks.push(new Uint8Array(await response.arrayBuffer()));
      this.received = chunks[0].length;
    }
    const bytes = new Uint8Array(this.received);
    let offset = 0;
    for (const chunk of chunks) {
      bytes.set(chunk, offset);
      offset += chunk.length;
    }
    this.#bytes = bytes;
    this.finished = true;
    this.#notify();
  }

  /** How much of this file is in, 0..1, or null while its size is unknown. */
  fraction() {
    if (this.finished) return 1;
    if (!this.size || !this.decodedSize) return null;
    return Math.min(this.received / this.decodedSize, 0.99);
  }

  /** The bytes, once; the Download forgets them so big files are not kept twice. */
  async take() {
    await this.result;
    const bytes = this.#bytes;
    this.#bytes = null;
    return bytes;
  }

  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  #notify() {
    for (const listener of this.listeners) listener(this);
  }
}

const downloads = new Map();

/** The shared Download of `url`, started on first use (and again after a failure). */
export function download(url) {
  if (!downloads.has(url)) {
    const started = new Download(url);
    downloads.set(url, started);
    started.result.catch(() => downloads.delete(url));
  }
  return downloads.get(url);
}

/**
 * Watch several downloads as one: `onUpdate({fraction, done, total})` gets figures only once every
 * file's size is known (so the total never grows), and the fraction never goes down. Figures count
 * bytes over the wire (compressed, as they are transferred). Before that, or for good when a
 * response came without a Content-Length (or compressed without X-Uncompressed-Length),
 * `fraction` and `total` are null (an indeterminate bar; `done` counts the decoded bytes so far).
 * Returns a function that stops watching.
 */
export function watchDownloads(list, onUpdate) {
  let sizesKnown = false;
  let shown = 0;
  const report = () => {
    if (!sizesKnown || list.some((each) => each.fraction() === null)) {
      onUpdate({ fraction: null, done: list.reduce((sum, each) => sum + each.received, 0), total: null });
      return;
    }
    const weights = list.map((each) => each.size ?? each.received);
    const total = weights.reduce((sum, weight) => sum + weight, 0) || 1;
    const done = list.reduce((sum, each, i) => sum + each.fraction() * weights[i], 0);
    shown = Math.max(shown, done / total);
    onUpdate({ fraction: shown, done: shown * total, total });
  };
  const unsubscribe = list.map((each) => each.subscribe(report));
  report();
  Promise.all(list.map((each) => each.headersKnown)).then(() => {
    sizesKnown = true;
    report();
  });
  return () => unsubscribe.forEach((stop) => stop());
}

/** "3.1 of 6.0 MB" */
export function megabytes(done, total) {
  return `${(done / 1e6).toFixed(1)} of ${(total / 1e6).toFixed(1)} MB`;
}

// -- onnxruntime-web --------------------------------------------------------------------------
export const ORT_WASM_URL = new URL("ort-wasm-simd-threaded.wasm", ORT_MODULE_URL).href;
let ortPromise = null;
let ortWasm = null; // the runtime's Download, kept so that the page's first model load counts it
let ortReady = false;
let runtimeCounted = false;
const sessions = new Map();

/** Thread count for ORT: `?threads=N` in the page URL, else 1 (best for the small decoders here). */
export function requestedThreads(fallback = 1) {
  const fromUrl = Number(new URLSearchParams(location.search).get("threads"));
  return Number.isInteger(fromUrl) && fromUrl > 0 ? fromUrl : fallback;
}

/**
 * The downloads still needed before these ONNX files (and the runtime) can run: what is already
 * loaded is left out, what is on its way is included. Calling this starts them all at once, so
 * their sizes are known before any progress is shown.
 */
export function pendingDownloads(onnxUrls) {
  const list = [];
  // The page's first load counts the runtime's binary even when it came in first (gzip makes it
  // arrive early), so that total is the same however the downloads race; later loads count it
  // only while it is still needed.
  if (!runtimeCounted || !ortReady) list.push(ortWasm ?? download(ORT_WASM_URL));
  runtimeCounted = true;
  for (const url of onnxUrls) if (!sessions.has(url) || downloads.has(url)) list.push(download(url));
  return list;
}

/** Import onnxruntime-web once, with its 14 MB WebAssembly binary fetched by us (to show progress). */
export function loadOrt(threads = 1) {
  if (!ortPromise) {
    ortPromise = (async () => {
      const wasm = download(ORT_WASM_URL);
      ortWasm = wasm;
      let ort;
      try {
        ort = await import(ORT_MODULE_URL);
      } catch (error) {
        let detail = error.message;
        try {
          const health = await api("/api/health");
          if (health.web_runtime?.error) detail = health.web_runtime.error;
        } catch {
          // keep the import error
        }
        throw new Error(`The in-browser runtime (onnxruntime-web) could not be loaded: ${detail}`);
      }
      ort.env.wasm.wasmBinary = await wasm.take();
      downloads.delete(ORT_WASM_URL);
      ort.env.wasm.numThreads = crossOriginIsolated ? threads : 1;
      ort.env.logLevel = "error";
      ortReady = true;
      return ort;
    })();
    ortPromise.catch(() => {
      ortPromise = null; // allow a retry after a failure
      ortWasm = null;
    });
  }
  return ortPromise;
}

/** One InferenceSession per ONNX URL, created once and shared by everything on the page. */
export function loadSession(ort, url) {
  if (!sessions.has(url)) {
    const promise = (async () => {
      const bytes = await download(url).take();
      downloads.delete(url);
      try {
        return await ort.InferenceSession.create(bytes, {
          executionProviders: ["wasm"],
          graphOptimizationLevel: "all",
        });
      } catch (error) {
        throw new Error(`The model file ${url} could not be opened in the browser: ${error.message ?? error}`);
      }
    })();
    sessions.set(url, promise);
    promise.catch(() => sessions.delete(url));
  }
  return sessions.get(url);
}

// -- pixels -----------------------------------------------------------------------------------
/**
 * Float NCHW network output (first image) -> RGBA ImageData, cropped to width x height.
 * NaN shows as black and values are clipped, so a bad latent never paints garbage or nothing.
 */
export function toImageData(data, dims, width = null, height = null) {
  const [, channels, fullHeight, fullWidth] = dims;
  const w = Math.min(width ?? fullWidth, fullWidth);
  const h = Math.min(height ?? fullHeight, fullHeight);
  const image = new ImageData(w, h);
  const out = image.data;
  const plane = fullHeight * fullWidth;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const source = y * fullWidth + x;
      const target = 4 * (y * w + x);
      for (let c = 0; c < 3; c++) {
        const value = data[(channels === 1 ? 0 : c) * plane + source];
        out[target + c] = Number.isNaN(value) ? 0 : Math.min(255, Math.max(0, Math.round(value * 255)));
      }
      out[target + 3] = 255;
    }
  }
  return image;
}

export function paint(canvas, imageData) {
  canvas.width = imageData.width;
  canvas.height = imageData.height;
  canvas.getContext("2d").putImageData(imageData, 0, 0);
}

// -- the codec page -> receiver hand-over ------------------------------------------------------
/** The codec page leaves its .latentz here (this tab's sessionStorage) and opens `/receiver#from=codec`. */
export const HANDOFF_KEY = "latentz.handoff";
export const HANDOFF_HASH = "#from=codec";

// -- small helpers ----------------------------------------------------------------------------
export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(2)} MiB`;
}

/**
 * How big `size` is next to `reference`, the way people say it: "210.8× smaller than",
 * "21% bigger than", "about the same size as". (A ratio alone made 6,930 bytes "1.0× smaller" than 6,722.)
 */
export function sizeComparison(size, reference) {
  const smaller = size < reference;
  const factor = smaller ? reference / size : size / reference;
  const word = smaller ? "smaller" : "bigger";
  if (factor >= 1.95) return `${factor.toFixed(1)}× ${word} than`;
  const percent = Math.round(100 * Math.abs(1 - size / reference));
  return percent === 0 ? "about the same size as" : `${percent}% ${word} than`;
}

export function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export function bytesToBase64Url(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

export function base64UrlToBytes(text) {
  const padded = text.replaceAll("-", "+").replaceAll("_", "/") + "===".slice((text.length + 3) % 4);
  return base64ToBytes(padded);
}

/** Make a drop zone out of an element: drag-over styling, and `onFile(file)` on drop. */
export function dropZone(element, onFile) {
  element.addEventListener("dragover", (event) => {
    event.preventDefault();
    element.classList.add("dragging");
  });
  element.addEventListener("dragleave", () => element.classList.remove("dragging"));
  element.addEventListener("drop", (event) => {
    event.preventDefault();
    element.classList.remove("dragging");
    const file = event.dataTransfer?.files?.[0];
    if (file) onFile(file);
  });
}

/** The model list, with a readable error if the server has none. */
export async function listModels() {
  const { models } = await api("/api/models");
  return models;
}
