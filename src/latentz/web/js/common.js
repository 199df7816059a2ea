// Shared by the three pages: API calls with readable errors, the error banner, load progress,
// onnxruntime-web sessions (loaded once per URL) and turning network outputs into pixels.

const ORT_DIR = "/vendor/onnxruntime-web/";

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
    throw new ApiError(`could not reach the latentz server (${error.message})`, { code: "network" });
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
export function showError(message, { title = "Something went wrong" } = {}) {
  const banner = $("#error");
  $("#error-title", banner).textContent = title;
  $("#error-message", banner).textContent = message;
  banner.hidden = false;
}

export function clearError() {
  $("#error").hidden = true;
}

export function installErrorBanner() {
  $("#error-close")?.addEventListener("click", clearError);
  window.addEventListener("unhandledrejection", (event) => {
    showError(String(event.reason?.message ?? event.reason), { title: "Unexpected error" });
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
/** Fetch a file as bytes, reporting (receivedBytes, totalBytes) as it streams in. */
export async function fetchBytes(url, onProgress = () => {}) {
  let response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new ApiError(`could not download ${url} (${error.message})`, { code: "network" });
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error ?? message;
    } catch {
      // keep the status line
    }
    throw new ApiError(`could not download ${url}: ${message}`, { status: response.status });
  }
  const total = Number(response.headers.get("content-length")) || 0;
  if (!response.body) {
    const buffer = new Uint8Array(await response.arrayBuffer());
    onProgress(buffer.length, total || buffer.length);
    return buffer;
  }
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    onProgress(received, total);
  }
  const bytes = new Uint8Array(received);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return bytes;
}

// -- onnxruntime-web --------------------------------------------------------------------------
let ortPromise = null;
const sessions = new Map();

/** Thread count for ORT: `?threads=N` in the page URL, else 1 (best for the small decoders here). */
export function requestedThreads(fallback = 1) {
  const fromUrl = Number(new URLSearchParams(location.search).get("threads"));
  return Number.isInteger(fromUrl) && fromUrl > 0 ? fromUrl : fallback;
}

/** Import onnxruntime-web once, with its 14 MB WebAssembly binary fetched by us (to show progress). */
export function loadOrt(onProgress = () => {}, threads = 1) {
  if (!ortPromise) {
    ortPromise = (async () => {
      let ort;
      try {
        ort = await import(`${ORT_DIR}ort.wasm.min.mjs`);
      } catch (error) {
        let detail = error.message;
        try {
          const health = await api("/api/health");
          if (health.web_runtime?.error) detail = health.web_runtime.error;
        } catch {
          // keep the import error
        }
        throw new Error(`onnxruntime-web could not be loaded: ${detail}`);
      }
      const binary = await fetchBytes(`${ORT_DIR}ort-wasm-simd-threaded.wasm`, onProgress);
      ort.env.wasm.wasmBinary = binary;
      ort.env.wasm.numThreads = crossOriginIsolated ? threads : 1;
      ort.env.logLevel = "error";
      return ort;
    })();
    ortPromise.catch(() => {
      ortPromise = null; // allow a retry after a failure
    });
  }
  return ortPromise;
}

/** One InferenceSession per ONNX URL, created once and shared by everything on the page. */
export function loadSession(ort, url, onProgress = () => {}) {
  if (!sessions.has(url)) {
    const promise = (async () => {
      const bytes = await fetchBytes(url, onProgress);
      try {
        return await ort.InferenceSession.create(bytes, {
          executionProviders: ["wasm"],
          graphOptimizationLevel: "all",
        });
      } catch (error) {
        throw new Error(`could not create an ONNX session from ${url}: ${error.message ?? error}`);
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

// -- small helpers ----------------------------------------------------------------------------
export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(2)} MiB`;
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
