// The landing page: links to the three pages and the installed models.

import { $, installErrorBanner, listModels, showError } from "./common.js";

async function start() {
  installErrorBanner();
  const models = await listModels();
  const rows = models.map((model) => {
    const row = document.createElement("tr");
    const size = model.fully_convolutional ? "any size" : `${model.image_size}×${model.image_size}`;
    const cells = [
      model.name + (model.exported ? "" : " (not exported)"),
      `${size}, ${model.channels === 1 ? "grey" : "colour"}`,
      model.latent_shape.join("×"),
      model.data,
    ];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  });
  if (!rows.length) {
    const row = document.createElement("tr");
    row.innerHTML = '<td colspan="4">No models installed: train one with <code>latentz train</code>.</td>';
    rows.push(row);
  }
  $("#models").replaceChildren(...rows);
}

start().catch((error) => showError(error.message, { title: "Could not list the models" }));
