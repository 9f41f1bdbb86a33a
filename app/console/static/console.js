// Tessera console: plain JavaScript over the public API, no build step, no third-party code.
// Every value from the server or the user reaches the page through textContent (never innerHTML).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "tessera-api-key"; // sessionStorage: gone when the tab closes
const PAGES = ["search", "embeddings", "classify", "models", "collections"];
const FILTER_OPS = ["$eq", "$gt", "$gte", "$lt", "$lte", "$in"];
const UPLOAD_CHUNK = 64;
const state = { models: [], collections: [], defaultModel: null, queryImage: null, uploadModel: null };

// --- the API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const STATUS_HINTS = {
  401: "Enter a valid API key at the top right.",
  403: "This key is not allowed to do that (a read-only key, or a read-only server).",
  413: "The request is too large for this server.",
};

async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  const started = performance.now();
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, `The server did not answer (${err.message}).`);
  }
  const ms = performance.now() - started;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!response.ok) {
    const detail = data && data.error && data.error.message ? data.error.message : String(data || response.statusText);
    let hint = STATUS_HINTS[response.status] || "";
    if (response.status === 429) hint = `Too many requests: try again in ${response.headers.get("Retry-After") || "a few"} s.`;
    throw new ApiError(response.status, `${response.status}: ${detail}${hint ? `\n${hint}` : ""}`);
  }
  return { data, ms };
}

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind === "info" ? "info" : "";
  box.hidden = false;
}

function clearMessage() {
  $("message").hidden = true;
}

// Run an async action; any error becomes a readable message instead of a blank page.
async function guarded(action, status) {
  clearMessage();
  try {
    return await action();
  } catch (err) {
    showMessage(err instanceof ApiError ? err.message : `Error: ${err.message}`);
    if (status) status.textContent = "";
    return undefined;
  }
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function fillSelect(select, options, chosen) {
  select.replaceChildren(...options.map(([value, label]) => el("option", { value, text: label })));
  if (chosen !== undefined && options.some(([value]) => value === chosen)) select.value = chosen;
}

function readDataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

const fmt = (x, digits = 4) => (typeof x === "number" ? x.toFixed(digits) : "–");
const modelById = (id) => state.models.find((m) => m.id === id);
const canEmbedImages = (model) => Boolean(model && model.capabilities.includes("embed:image"));

// --- shared data ---------------------------------------------------------------------------

async function refresh() {
  const [models, collections] = await Promise.all([api("/v1/models"), api("/indexes")]);
  state.models = models.data.data;
  state.defaultModel = models.data.default;
  state.collections = collections.data.indexes;
  const names = state.collections.map((c) => [c.name, `${c.name} (${c.size}, ${c.model})`]);
  fillSelect($("search-collection"), names, $("search-collection").value);
  fillSelect($("upload-collection"), names, $("upload-collection").value);
  const rerankers = state.models.filter((m) => m.capabilities.includes("score"));
  fillSelect($("search-reranker"), rerankers.map((m) => [m.id, `${m.id} (${m.kind})`]));
  $("search-rerank").disabled = rerankers.length === 0;
  $("search-reranker").disabled = rerankers.length === 0;
  const embedders = state.models.filter((m) => m.capabilities.some((c) => c.startsWith("embed:")));
  const embedderOptions = embedders.map((m) => [m.id, `${m.id} (${m.kind}, ${m.dim}d)`]);
  fillSelect($("emb-model"), embedderOptions, $("emb-model").value || state.defaultModel);
  fillSelect($("upload-model"), embedderOptions, state.uploadModel || state.defaultModel);
  const clips = state.models.filter((m) => m.kind === "clip");
  fillSelect($("cls-model"), clips.map((m) => [m.id, m.id]));
  document.querySelector('nav a[data-page="classify"]').hidden = clips.length === 0;
  onCollectionChange();
  onEmbeddingModelChange();
  syncUploadModel();
  return true;
}

// --- search --------------------------------------------------------------------------------

function onCollectionChange() {
  const collection = state.collections.find((c) => c.name === $("search-collection").value);
  const images = canEmbedImages(collection && modelById(collection.model));
  $("search-image-zone").hidden = !images;
  if (!images) setQueryImage(null);
}

function setQueryImage(dataUri) {
  state.queryImage = dataUri;
  const preview = $("search-image-preview");
  preview.hidden = !dataUri;
  if (dataUri) preview.src = dataUri;
  else {
    preview.removeAttribute("src");
    $("search-image").value = "";
  }
}

function addFilterRow(key = "", op = "$eq", value = "") {
  const row = el("div", { class: "filter-row" });
  const keyInput = el("input", { "aria-label": "metadata key", placeholder: "key" });
  keyInput.value = key;
  const opSelect = el("select", { "aria-label": "operator" });
  fillSelect(opSelect, FILTER_OPS.map((o) => [o, o]), op);
  const valueInput = el("input", { "aria-label": "value", placeholder: "value (JSON or text)" });
  valueInput.value = value;
  const remove = el("button", { type: "button", class: "secondary", "aria-label": "remove condition", text: "×" });
  remove.addEventListener("click", () => {
    row.remove();
    writeFilterJson();
  });
  for (const input of [keyInput, opSelect, valueInput]) input.addEventListener("input", writeFilterJson);
  row.append(keyInput, opSelect, valueInput, remove);
  $("filter-rows").append(row);
  return row;
}

function parseValue(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text; // a bare word is a string
  }
}

// The rows as one filter: {key: value}, {key: {op: value}}, several rows joined with $and.
function filterFromRows() {
  const conditions = [];
  for (const row of $("filter-rows").children) {
    const [keyInput, opSelect, valueInput] = row.querySelectorAll("input, select");
    const key = keyInput.value.trim();
    if (!key) continue;
    const op = opSelect.value;
    let value = parseValue(valueInput.value.trim());
    if (op === "$in") value = Array.isArray(value) ? value : valueInput.value.split(",").map((v) => parseValue(v.trim()));
    conditions.push(op === "$eq" ? { [key]: value } : { [key]: { [op]: value } });
  }
  if (conditions.length === 0) return null;
  return conditions.length === 1 ? conditions[0] : { $and: conditions };
}

function writeFilterJson() {
  const filter = filterFromRows();
  $("filter-json").value = filter ? JSON.stringify(filter) : "";
}

const STOPWORDS = new Set("the and for with from that this are was were has have not but its into than then".split(" "));

// The query's words marked where a word of the text starts with them ("layer" marks "layers"),
// words of 3+ letters that are not stopwords, so "on" does not light up inside "equations".
function highlight(text, query) {
  const words = ((query || "").toLowerCase().match(/[\p{L}\p{N}]{3,}/gu) || []).filter((w) => !STOPWORDS.has(w));
  if (words.length === 0) return [document.createTextNode(text)];
  const escaped = [...new Set(words)].map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const pattern = new RegExp(`(?<![\\p{L}\\p{N}])(${escaped.join("|")})`, "giu");
  return text.split(pattern).map((part, i) => (i % 2 === 1 ? el("mark", { text: part }) : document.createTextNode(part)));
}

function renderHit(hit, rank, query) {
  const side = el("div", {}, el("span", { class: "rank", text: `${rank}.` }));
  if (hit.thumbnail) side.append(el("img", { src: hit.thumbnail, alt: `thumbnail of ${hit.id}` }));
  const scores = [`score ${fmt(hit.score)}`];
  if (hit.first_stage_score != null) scores.push(`first stage ${fmt(hit.first_stage_score)}`);
  if (hit.dense_score != null) scores.push(`dense ${fmt(hit.dense_score)}`);
  if (hit.keyword_score != null) scores.push(`keyword ${fmt(hit.keyword_score)}`);
  const body = el("div", {}, el("strong", { text: hit.id }), el("div", { class: "scores", text: scores.join(" · ") }));
  if (hit.document) body.append(el("div", { class: "text" }, ...highlight(hit.document, query)));
  if (hit.image) body.append(el("div", { class: "meta", text: `image: ${hit.image}` }));
  if (hit.metadata && Object.keys(hit.metadata).length) body.append(el("div", { class: "meta", text: JSON.stringify(hit.metadata) }));
  return el("li", { class: "hit" }, side, body);
}

function curlFor(name, body) {
  const shown = body.image ? { ...body, image: "<base64 of the image>" } : body;
  const json = JSON.stringify(shown).replace(/'/g, "'\\''");
  return [
    `curl -s ${location.origin}/indexes/${encodeURIComponent(name)}/search \\`,
    `  -H 'Content-Type: application/json' -H "Authorization: Bearer $TESSERA_API_KEY" \\`,
    `  -d '${json}'`,
  ].join("\n");
}

async function runSearch(event) {
  event.preventDefault();
  const status = $("search-status");
  await guarded(async () => {
    const name = $("search-collection").value;
    if (!name) throw new Error("there is no collection to search yet (Collections: upload one)");
    const body = {
      top_k: Number($("search-topk").value) || 10,
      mode: $("search-mode").value,
      include: ["document", "metadata", "image", "thumbnail"],
    };
    const query = $("search-query").value.trim();
    if (state.queryImage) body.image = state.queryImage;
    else if (query) body.query = query;
    else throw new Error("type a query (or give an image)");
    const filterText = $("filter-json").value.trim();
    if (filterText) {
      try {
        body.filter = JSON.parse(filterText);
      } catch {
        throw new Error("the filter is not valid JSON");
      }
    }
    if ($("search-rerank").checked && $("search-reranker").value) body.rerank = { model: $("search-reranker").value };
    $("search-curl").textContent = curlFor(name, body);
    status.textContent = "searching…";
    const { data, ms } = await api(`/indexes/${encodeURIComponent(name)}/search`, { method: "POST", body });
    const words = body.image ? "" : query;
    $("search-results").replaceChildren(...data.hits.map((hit, i) => renderHit(hit, i + 1, words)));
    status.textContent = `${data.hits.length} hits · ${fmt(data.took_ms, 1)} ms in the server · ${ms.toFixed(0)} ms round trip · index ${data.index_type}${body.rerank ? ` · reranked by ${body.rerank.model}` : ""}`;
  }, status);
}

function wireImageZone() {
  const zone = $("search-image-zone");
  const take = async (file) => {
    if (file && file.type.startsWith("image/")) setQueryImage(await readDataUri(file));
  };
  $("search-image").addEventListener("change", (e) => guarded(() => take(e.target.files[0])));
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    guarded(() => take(e.dataTransfer.files[0]));
  });
  document.addEventListener("paste", (e) => {
    if (zone.hidden || $("page-search").hidden) return;
    const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((i) => i.type.startsWith("image/"));
    if (item) guarded(() => take(item.getAsFile()));
  });
  $("search-query").addEventListener("input", () => {
    if ($("search-query").value) setQueryImage(null); // typing a query replaces the image
  });
}

// --- embeddings ----------------------------------------------------------------------------

function onEmbeddingModelChange() {
  $("emb-images-label").hidden = !canEmbedImages(modelById($("emb-model").value));
}

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / (Math.sqrt(na * nb) || 1);
}

function renderMatrix(labels, vectors) {
  const head = el("tr", {}, el("th", { text: "" }), ...labels.map((l, i) => el("th", { scope: "col", title: l, text: `${i + 1}` })));
  const rows = vectors.map((v, i) => {
    const cells = vectors.map((w) => {
      const sim = cosine(v, w);
      const light = 100 - 55 * Math.max(0, Math.min(1, sim));
      return el("td", { style: `background: hsl(213 80% ${light}%); color: ${light < 62 ? "#fff" : "#1b1f24"}`, text: sim.toFixed(3) });
    });
    return el("tr", {}, el("th", { scope: "row", title: labels[i], text: `${i + 1}. ${labels[i].slice(0, 32)}` }), ...cells);
  });
  return el("table", { class: "matrix" }, el("thead", {}, head), el("tbody", {}, ...rows));
}

async function runEmbeddings(event) {
  event.preventDefault();
  const status = $("emb-status");
  await guarded(async () => {
    const texts = $("emb-texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
    const files = $("emb-images-label").hidden ? [] : [...$("emb-images").files];
    const images = await Promise.all(files.map(readDataUri));
    if (texts.length + images.length < 2) throw new Error("give at least two texts or images to compare");
    const body = { model: $("emb-model").value, input: [...texts, ...images.map((image) => ({ image }))] };
    const dims = Number($("emb-dims").value);
    if (dims) body.dimensions = dims;
    status.textContent = "embedding…";
    const { data, ms } = await api("/v1/embeddings", { method: "POST", body });
    const vectors = data.data.map((d) => d.embedding);
    const labels = [...texts, ...files.map((f) => `image: ${f.name}`)];
    $("emb-matrix").replaceChildren(renderMatrix(labels, vectors));
    status.textContent = `${vectors.length} inputs · ${vectors[0].length} dimensions · ${ms.toFixed(0)} ms · cosine similarity`;
  }, status);
}

// --- classify ------------------------------------------------------------------------------

async function runClassify(event) {
  event.preventDefault();
  const status = $("cls-status");
  await guarded(async () => {
    const file = $("cls-image").files[0];
    if (!file) throw new Error("choose an image");
    const labels = $("cls-labels").value.split(",").map((l) => l.trim()).filter(Boolean);
    const body = { model: $("cls-model").value || undefined, images: [await readDataUri(file)], labels };
    status.textContent = "classifying…";
    const { data, ms } = await api("/v1/classify", { method: "POST", body });
    const bars = data.data[0].labels.map((l) =>
      el("div", { class: "bar" }, el("span", { text: l.label }), el("div", { class: "fill", style: `width: ${Math.max(1, 60 * l.probability)}%` }), el("span", { text: `${(100 * l.probability).toFixed(1)}%` })),
    );
    $("cls-bars").replaceChildren(...bars);
    status.textContent = `${data.model} · ${ms.toFixed(0)} ms`;
  }, status);
}

// --- models and collections ----------------------------------------------------------------

function table(columns, rows) {
  const head = el("tr", {}, ...columns.map((c) => el("th", { scope: "col", text: c })));
  const body = rows.map((cells) => el("tr", {}, ...cells.map((c) => (c instanceof Node ? el("td", {}, c) : el("td", { text: String(c) })))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

function renderModels() {
  const rows = state.models.map((m) => [
    m.id + (m.id === state.defaultModel ? " (default)" : ""),
    m.kind,
    m.dim ?? "–",
    m.backend,
    m.precision,
    m.parity ? `min cos ${fmt(m.parity.min_cosine)}` : "–",
    Object.entries(m.eval_scores || {}).slice(0, 6).map(([k, v]) => `${k} ${typeof v === "number" ? fmt(v, 3) : v}`).join("; ") || "–",
  ]);
  $("models-table").replaceChildren(table(["model", "kind", "dim", "backend", "precision", "parity", "eval scores"], rows));
}

function collectionStatus(c) {
  if (c.optimizing) return "optimizing…";
  if (c.last_build_error) return `last build failed: ${c.last_build_error}`;
  return "ready";
}

function renderCollections() {
  const rows = state.collections.map((c) => {
    const button = el("button", { type: "button", class: "secondary", text: "Optimize", "aria-label": `optimize ${c.name}` });
    button.disabled = c.optimizing;
    button.addEventListener("click", () => optimize(c.name));
    const remove = el("button", { type: "button", class: "danger", text: "Delete", "aria-label": `delete ${c.name}` });
    remove.addEventListener("click", () => deleteCollection(c));
    const recall = c.last_build && c.last_build.recall_at_10 != null ? fmt(c.last_build.recall_at_10, 3) : "–";
    const actions = el("span", { class: "row" }, button, remove);
    return [c.name, c.model, c.size, c.index_type, `${(c.memory_bytes / 1048576).toFixed(2)} MiB`, recall, collectionStatus(c), actions];
  });
  $("col-table").replaceChildren(table(["collection", "model", "documents", "index", "memory", "recall@10", "status", ""], rows));
}

async function optimize(name) {
  await guarded(async () => {
    await api(`/indexes/${encodeURIComponent(name)}/optimize`, { method: "POST", body: {} });
    showMessage(`Optimizing ${name}…`, "info");
    for (;;) {
      await refresh();
      renderCollections();
      const c = state.collections.find((x) => x.name === name);
      if (!c || !c.optimizing) break;
      await new Promise((r) => setTimeout(r, 1000));
    }
    const c = state.collections.find((x) => x.name === name);
    showMessage(c && c.last_build_error ? `Optimize ${name} failed: ${c.last_build_error}` : `Optimized ${name}: ${c ? c.index_type : ""}`, c && c.last_build_error ? "error" : "info");
  });
}

// Deleting drops every document and the index on the server: the browser asks first.
async function deleteCollection(c) {
  if (!window.confirm(`Delete collection ${c.name} and its ${c.size} documents? This cannot be undone.`)) return;
  await guarded(async () => {
    await api(`/indexes/${encodeURIComponent(c.name)}`, { method: "DELETE" });
    await refresh();
    renderCollections();
    showMessage(`Deleted ${c.name}.`, "info");
  });
}

// CSV with a header row; quoted fields may hold commas, quotes ("") and newlines.
function parseCsv(text) {
  const rows = [];
  let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (ch === '"') quoted = false;
      else field += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ",") { row.push(field); field = ""; }
    else if (ch === "\n" || ch === "\r") {
      if (ch === "\r" && text[i + 1] === "\n") i++;
      row.push(field); rows.push(row); row = []; field = "";
    } else field += ch;
  }
  if (field || row.length) { row.push(field); rows.push(row); }
  return rows.filter((r) => r.some((f) => f.trim()));
}

function documentsFrom(name, text) {
  if (/\.csv$/i.test(name)) {
    const [header, ...rows] = parseCsv(text);
    if (!header || !header.includes("text")) throw new Error(`${name}: the CSV header needs a "text" column`);
    return rows.map((cells, i) => {
      const doc = { id: `${name}-${i + 1}`, metadata: {} };
      header.forEach((column, j) => {
        const value = cells[j] ?? "";
        if (column === "id" && value) doc.id = value;
        else if (column === "text") doc.text = value;
        else if (column) doc.metadata[column] = value !== "" && !Number.isNaN(Number(value)) ? Number(value) : value;
      });
      return doc;
    });
  }
  return text.split("\n").map((line, i) => [line.trim(), i + 1]).filter(([line]) => line).map(([line, n]) => {
    let doc;
    try {
      doc = JSON.parse(line);
    } catch {
      throw new Error(`${name}: line ${n} is not JSON`);
    }
    if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw new Error(`${name}: line ${n} is not a JSON object`);
    return { id: String(doc.id ?? doc._id ?? `${name}-${n}`), text: doc.text, metadata: doc.metadata || {}, ...(doc.image ? { image: doc.image } : {}) };
  });
}

// A collection keeps the model it was created with: the picker chooses only for a new one, and
// otherwise shows (disabled) the model the chosen collection embeds with.
function syncUploadModel() {
  const picker = $("upload-model");
  const creating = $("upload-new").value.trim() !== "";
  const existing = state.collections.find((c) => c.name === $("upload-collection").value);
  picker.disabled = !creating;
  if (creating) picker.value = state.uploadModel || state.defaultModel;
  else if (existing) picker.value = existing.model;
}

async function runUpload(event) {
  event.preventDefault();
  const status = $("upload-status");
  const bar = $("upload-progress");
  await guarded(async () => {
    const file = $("upload-file").files[0];
    if (!file) throw new Error("choose a file");
    const documents = documentsFrom(file.name, await file.text());
    if (documents.length === 0) throw new Error(`${file.name}: no documents in it`);
    let name = $("upload-new").value.trim();
    if (name) await api("/indexes", { method: "POST", body: { name, model: $("upload-model").value || undefined } });
    else name = $("upload-collection").value;
    if (!name) throw new Error("choose a collection or name a new one");
    bar.hidden = false;
    bar.max = documents.length;
    bar.value = 0;
    let size = 0;
    for (let start = 0; start < documents.length; start += UPLOAD_CHUNK) {
      const chunk = documents.slice(start, start + UPLOAD_CHUNK);
      try {
        ({ size } = (await api(`/indexes/${encodeURIComponent(name)}/documents`, { method: "PUT", body: { documents: chunk } })).data);
      } catch (err) {
        err.message = `documents ${start + 1}-${start + chunk.length} of ${documents.length}: ${err.message}`;
        throw err;
      }
      bar.value = start + chunk.length;
      status.textContent = `uploaded ${start + chunk.length} of ${documents.length}…`;
    }
    $("upload-new").value = "";
    await refresh();
    renderCollections();
    // said last: when it reads "uploaded", the table already shows the collection
    status.textContent = `uploaded ${documents.length} documents into ${name} (now ${size})`;
  }, status);
}

// --- pages and start -----------------------------------------------------------------------

const ON_SHOW = { models: renderModels, collections: renderCollections };

function route() {
  const wanted = location.hash.replace(/^#\//, "");
  const page = PAGES.includes(wanted) ? wanted : "search";
  for (const name of PAGES) $(`page-${name}`).hidden = name !== page;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (ON_SHOW[page]) ON_SHOW[page]();
}

async function start() {
  $("key-input").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = $("key-input").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    if (await guarded(refresh)) {
      showMessage(key ? "Key accepted." : "Key cleared.", "info");
      route();
    }
  });
  $("search-form").addEventListener("submit", runSearch);
  $("search-collection").addEventListener("change", onCollectionChange);
  $("filter-add").addEventListener("click", () => addFilterRow().querySelector("input").focus());
  $("search-copy").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText($("search-curl").textContent));
  $("emb-form").addEventListener("submit", runEmbeddings);
  $("emb-model").addEventListener("change", onEmbeddingModelChange);
  $("cls-form").addEventListener("submit", runClassify);
  $("upload-form").addEventListener("submit", runUpload);
  $("upload-new").addEventListener("input", syncUploadModel);
  $("upload-collection").addEventListener("change", syncUploadModel);
  $("upload-model").addEventListener("change", () => { state.uploadModel = $("upload-model").value; });
  wireImageZone();
  window.addEventListener("hashchange", route);
  route();
  await guarded(refresh);
  route();
}

start();
