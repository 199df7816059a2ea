// The codec page: the server encodes (and reports the reconstruction and a WebP at the same
// byte budget); this page shows the comparison and offers the .latentz for download.

import {
  $,
  HANDOFF_KEY,
  api,
  base64ToBytes,
  clearError,
  dropZone,
  formatBytes,
  installErrorBanner,
  listModels,
  sentence,
  showError,
  sizeComparison,
} from "./common.js";

const select = $("#model");
const quality = $("#quality");
let currentFile = null;
let originalUrl = null;
let downloadUrl = null;
let requestNumber = 0;
let qualityTimer = null;
let latestReport = null;

function pngUrl(base64, type = "image/png") {
  return `data:${type};base64,${base64}`;
}

async function compress() {
  if (!currentFile || !select.value) return;
  const number = ++requestNumber;
  clearError();
  document.body.dataset.state = "working";
  $("#note").textContent = `Encoding ${currentFile.name} with ${select.value} at quality ${quality.value}…`;
  const form = new FormData();
  form.append("file", currentFile);
  form.append("quality", quality.value);
  try {
    const report = await api(`/api/models/${encodeURIComponent(select.value)}/encode?format=json`, {
      method: "POST",
      body: form,
    });
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

/** PSNR in dB; the server sends null when the decoded image is identical (infinite PSNR). */
function dB(psnr) {
  return psnr === null ? "∞ dB (identical)" : `${psnr.toFixed(2)} dB`;
}

function show(report) {
  window.latentzCodec = report; // for the tests
  latestReport = report;
  $("#result").hidden = false;
  $("#original").src = originalUrl;
  $("#original-bytes").textContent = `${report.original.width}×${report.original.height}, ${formatBytes(report.original.bytes)}`;
  $("#input-view").src = pngUrl(report.input.png_base64);
  $("#input-size").textContent = `${report.input.width}×${report.input.height}, ${report.input.raw_bytes} raw bytes`;
  $("#reconstruction").src = pngUrl(report.reconstruction.png_base64);
  $("#latentz-bytes-caption").textContent = `${report.latentz.bytes} bytes, PSNR ${dB(report.reconstruction.psnr)}`;
  $("#webp").src = pngUrl(report.webp.webp_base64, "image/webp");
  // Said as it is: WebP at the same budget, or (when it cannot get that small) its smallest file.
  const webp = report.webp;
  const webpWhat = webp.fits_budget
    ? "WebP at the same budget"
    : `WebP's smallest file, ${sizeComparison(webp.bytes, report.latentz.bytes)} the .latentz`;
  $("#webp-caption").textContent = `${webpWhat} · ${webp.bytes} bytes, PSNR ${dB(webp.psnr)}`;
  $("#stat-webp-title").textContent = webp.fits_budget ? "WebP at that budget" : "WebP's smallest file";
  $("#stat-original").textContent = `${report.original.bytes.toLocaleString()} bytes (${report.original.format})`;
  $("#stat-latentz").textContent =
    `${report.latentz.bytes} bytes (${report.latentz.header_bytes} of header and checksum), ` +
    `${report.bits_per_pixel.toFixed(3)} bits per pixel, latent ${report.latentz.latent_shape.join("×")}`;
  $("#stat-ratio").textContent =
    `${sizeComparison(report.latentz.bytes, report.original.bytes)} the upload, ` +
    `${sizeComparison(report.latentz.bytes, report.input.raw_bytes)} the model's raw input`;
  $("#stat-psnr").textContent = `${dB(report.reconstruction.psnr)} (against the model's input)`;
  $("#stat-webp").textContent = `${webp.bytes} bytes, PSNR ${dB(webp.psnr)}. ${sentence(webp.note)}`;
  const note = `${report.model}, quality ${report.quality}${report.note ? `: ${report.note}` : ""}`;
  $("#note").textContent = /[.!?]$/.test(note) ? note : `${note}.`; // a model's name starts it: no capital
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  downloadUrl = URL.createObjectURL(new Blob([base64ToBytes(report.latentz.base64)], { type: "application/x-latentz" }));
  const link = $("#download");
  link.href = downloadUrl;
  link.download = report.latentz.filename;
}

function useFile(file) {
  currentFile = file;
  if (originalUrl) URL.revokeObjectURL(originalUrl);
  originalUrl = URL.createObjectURL(file);
  compress();
}

async function start() {
  installErrorBanner();
  const models = (await listModels()).filter((model) => model.exported);
  if (!models.length) throw new Error("No exported model is installed (`latentz models` lists what is installed).");
  for (const model of models) {
    const shape = model.fully_convolutional ? "any size" : `${model.image_size}×${model.image_size}`;
    select.add(new Option(`${model.name} (${shape}, ${model.channels === 1 ? "grey" : "colour"})`, model.name));
  }
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted && models.some((m) => m.name === wanted)) select.value = wanted;
  select.addEventListener("change", compress);
  quality.addEventListener("input", () => {
    $("#quality-value").textContent = quality.value;
    clearTimeout(qualityTimer);
    qualityTimer = setTimeout(compress, 200);
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
