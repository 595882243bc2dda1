// vaekit explorer: the page over the JSON API of `vaekit serve` (docs/serve.md). No framework, no
// build step, nothing fetched from elsewhere.
//
// Requests that a user fires in bursts (slider moves, sample settings, interpolation) are debounced,
// carry a view name and a sequence number, and abort the previous fetch of the same view; the server
// answers an outdated one 204 without running the model, and a late answer is dropped here.
"use strict";

const $ = (id) => document.getElementById(id);
const CLIENT = Math.random().toString(36).slice(2, 10);
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"];
const state = { runs: [], run: null, info: null, z: null, uploads: [], map: null, sliderUnits: [], pos: [0, 0],
                selected: null };
const seqs = {};
const inflight = {};

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

function runUrl(path) { return "/api/runs/" + encodeURIComponent(state.run) + path; }

// One API call. With `view`, it supersedes the previous call of that view: null means "outdated, ignore".
async function api(url, { method = "GET", json, raw, view, query } = {}) {
  let seq = null;
  const params = new URLSearchParams(query || {});
  const options = { method, headers: {} };
  if (view) {
    seq = (seqs[view] || 0) + 1;
    seqs[view] = seq;
    if (inflight[view]) inflight[view].abort();
    inflight[view] = new AbortController();
    options.signal = inflight[view].signal;
  }
  if (json !== undefined) {
    const body = view ? { ...json, view: CLIENT + ":" + view, seq } : json;
    options.body = JSON.stringify(body);
    options.headers["Content-Type"] = "application/json";
  } else if (raw !== undefined) {
    options.body = raw;
    options.headers["Content-Type"] = raw.type || "application/octet-stream";
    if (view) { params.set("view", CLIENT + ":" + view); params.set("seq", seq); }
  }
  const qs = params.toString();
  let response;
  try {
    response = await fetch(qs ? url + "?" + qs : url, options);
  } catch (e) {
    if (e.name === "AbortError") return null;
    throw new ApiError("the server did not answer (" + e.message + ")", 0);
  }
  if (response.status === 204) return null;
  const doc = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new ApiError(doc.error || response.statusText, response.status);
  if (view && seq !== seqs[view]) return null;
  return doc;
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

function report(error) {
  const status = $("status");
  if (error) {
    status.textContent = error.message;
    status.className = "error";
  } else {
    status.textContent = "";
    status.className = "";
  }
}

// Runs an async UI action; failures are shown in the status line, never thrown into the console.
function guard(fn) {
  return (...args) => Promise.resolve().then(() => fn(...args)).then(() => {}, report);
}

function fmt(v, digits = 2) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  select.appendChild(o);
  return o;
}

function currentLabel() {
  if (!state.info || !state.info.conditional) return null;
  return Number($("class-select").value);
}

// -- runs ---------------------------------------------------------------------------------------------
async function init() {
  const doc = await api("/api/runs");
  state.runs = doc.runs;
  const select = $("run-select");
  for (const r of doc.runs) option(select, r.name, `${r.name} (${r.model}, ${r.data})`);
  const wanted = new URLSearchParams(location.hash.slice(1)).get("run");
  const first = doc.runs.find((r) => r.name === wanted) || doc.runs[0];
  select.value = first.name;
  select.addEventListener("change", guard(() => loadRun(select.value)));
  window.addEventListener("hashchange", guard(() => {  // a link or the address bar names another run
    const name = new URLSearchParams(location.hash.slice(1)).get("run");
    if (name && name !== state.run && state.runs.some((r) => r.name === name)) {
      select.value = name;
      return loadRun(name);
    }
  }));
  wire();
  await loadRun(first.name);
}

async function loadRun(name) {
  document.body.dataset.ready = "";
  state.run = name;
  history.replaceState(null, "", "#run=" + encodeURIComponent(name));
  const info = await api(runUrl(""), { view: "run" });
  if (!info) return;  // another run was chosen meanwhile
  state.info = info;
  state.uploads = [];
  state.selected = null;
  report(null);
  $("run-summary").textContent = `${info.model_class} on ${info.data.source} · data ${info.data.shape.join("×")} · ` +
    `latent ${info.latent_shape.join("×")} · ${info.examples} of ${info.data.n_test} test examples served` +
    (info.data_note ? ` · ${info.data_note}` : "");
  const classSelect = $("class-select");
  classSelect.replaceChildren();
  info.class_names.forEach((c, i) => option(classSelect, i, `${i}: ${c}`));
  $("class-picker").hidden = !info.conditional;
  $("sample-class-all").hidden = !info.conditional;
  const prior = $("prior-select");
  prior.replaceChildren();
  for (const p of info.priors) option(prior, p.name, p.label);
  const canUpload = info.upload.accepts === "image";
  $("upload-card").hidden = !canUpload;
  $("upload-size").textContent = canUpload ? `resized and centre-cropped to ${info.upload.size.join("×")} px` : "";
  $("upload-result").hidden = true;
  $("selected").hidden = true;
  $("base-index").max = Math.max(0, info.examples - 1);
  state.z = info.sliders.base.slice();
  buildSliders();
  fillInterpolationChoices();
  await Promise.all([drawSamples(), decodeNow(), drawMap(), interpolateNow()]);
  document.body.dataset.ready = name;
}

// -- samples ------------------------------------------------------------------------------------------
async function drawSamples() {
  const body = { prior: $("prior-select").value, n: Number($("sample-count").value),
                 temperature: Number($("temperature").value), seed: Number($("seed").value) || 0 };
  if (state.info.conditional && !$("sample-all-classes").checked) body.label = currentLabel();
  const doc = await api(runUrl("/samples"), { method: "POST", json: body, view: "samples" });
  if (!doc) return;
  $("samples-image").src = doc.image;
  $("samples-time").textContent = `${doc.n} samples from ${$("prior-select").selectedOptions[0].textContent} in ` +
    `${fmt(doc.sample_ms, 1)} ms`;
}

// -- sliders ------------------------------------------------------------------------------------------
function buildSliders() {
  const s = state.info.sliders;
  const box = $("sliders");
  box.replaceChildren();
  const channels = s.mode === "channels";
  $("position-controls").hidden = !channels;
  $("show-all-label").hidden = channels || s.units.length <= 10;
  if (channels) {
    for (const [id, n] of [["pos-row", s.height], ["pos-col", s.width]]) {
      const sel = $(id);
      sel.replaceChildren();
      for (let i = 0; i < n; i++) option(sel, i, i);
    }
    state.pos = [Math.floor(s.height / 2), Math.floor(s.width / 2)];
    $("pos-row").value = state.pos[0];
    $("pos-col").value = state.pos[1];
    state.sliderUnits = [];
    for (let c = 0; c < s.channels; c++) addSlider(box, `channel ${c}`, s.min[c], s.max[c], c);
  } else {
    const shown = $("show-all").checked ? s.units : s.units.slice(0, 10);
    state.sliderUnits = shown.map((u) => u.unit);
    for (const u of shown) {
      const label = u.activity === null ? `z${u.unit}` : `z${u.unit} · var ${fmt(u.activity)}`;
      addSlider(box, label, s.min, s.max, u.unit);
    }
  }
  syncSliders();
}

function latentIndex(key) {
  const s = state.info.sliders;
  if (s.mode !== "channels") return key;
  return key * s.height * s.width + state.pos[0] * s.width + state.pos[1];
}

function addSlider(box, label, min, max, key) {
  const row = document.createElement("label");
  row.className = "slider";
  const name = document.createElement("span");
  name.textContent = label;
  const input = document.createElement("input");
  Object.assign(input, { type: "range", min, max, step: (max - min) / 200 });
  input.dataset.key = key;
  const value = document.createElement("output");
  input.addEventListener("input", () => {
    state.z[latentIndex(Number(key))] = Number(input.value);
    value.textContent = fmt(input.value);
    decodeSoon();
  });
  row.append(name, input, value);
  box.appendChild(row);
}

function syncSliders() {
  for (const input of $("sliders").querySelectorAll("input")) {
    const v = state.z[latentIndex(Number(input.dataset.key))];
    input.value = v;
    input.nextElementSibling.textContent = fmt(v);
  }
}

async function decodeNow() {
  const started = performance.now();
  const body = { z: state.z };
  if (state.info.conditional) body.label = currentLabel();
  const doc = await api(runUrl("/decode"), { method: "POST", json: body, view: "slider" });
  if (!doc) return;
  $("slider-image").src = doc.image;
  $("decode-time").textContent = `decoded in ${fmt(doc.decode_ms)} ms · server ${fmt(doc.ms)} ms · round trip ` +
    `${fmt(performance.now() - started, 1)} ms`;
}
const decodeSoon = debounce(guard(decodeNow), 25);

function setBase(z) {
  state.z = z.slice();
  syncSliders();
  return decodeNow();
}

// -- uploads --------------------------------------------------------------------------------------------
async function upload(file) {
  if (!file) return;
  const query = {};
  if (state.info.conditional) query.label = currentLabel();
  const doc = await api(runUrl("/upload"), { method: "POST", raw: file, view: "upload", query });
  if (!doc) return;
  const item = { name: file.name || "upload", z: doc.z, point: doc.point, label: currentLabel() };
  state.uploads.push(item);
  $("upload-image").src = doc.image;
  $("upload-recon").src = doc.reconstruction;
  const notes = [];
  if (doc.resized) notes.push(`resized from ${doc.resized.from.join("×")} to ${doc.resized.to.join("×")} px`);
  if (state.info.conditional) notes.push(`encoded as class ${state.info.class_names[item.label]}`);
  $("upload-resized").textContent = notes.join(" · ");
  metricsTable($("upload-metrics"), doc.metrics, doc.ms);
  const anomaly = $("upload-anomaly");
  anomaly.replaceChildren();
  if (doc.anomaly && doc.anomaly.error) {
    anomaly.textContent = "anomaly score: " + doc.anomaly.error;
  } else if (doc.anomaly) {
    const flag = document.createElement("span");
    flag.className = "flag " + (doc.anomaly.flagged ? "bad" : "ok");
    flag.textContent = doc.anomaly.flagged ? "flagged as anomalous" : "within the threshold";
    anomaly.append(`anomaly score ${fmt(doc.anomaly.score, 3)} against threshold ${fmt(doc.anomaly.threshold, 3)}: `,
                   flag);
  }
  $("upload-result").hidden = false;
  fillInterpolationChoices();
  drawMapCanvas();
}

function metricsTable(table, m, ms) {
  const rows = [];
  if ("nll" in m) {
    rows.push(["ELBO (nats)", fmt(m.elbo)], ["reconstruction −log p(x|z)", fmt(m.recon)], ["KL", fmt(m.kl)],
              [`NLL, ${m.k} importance samples (nats)`, fmt(m.nll)], ["bits/dim", fmt(m.bits_per_dim, 4)]);
  } else {
    rows.push(["PSNR (dB)", fmt(m.psnr)], ["LPIPS", m.lpips === null ? (m.lpips_note || "–") : fmt(m.lpips, 4)]);
  }
  if (ms !== undefined) rows.push(["server time (ms)", fmt(ms, 1)]);
  table.replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td");
    const b = document.createElement("td");
    a.textContent = k;
    b.textContent = v;
    tr.append(a, b);
    return tr;
  }));
}

// -- interpolation ----------------------------------------------------------------------------------------
function fillInterpolationChoices() {
  for (const side of ["a", "b"]) {
    const sel = $(`interp-${side}-kind`);
    const keep = sel.value;
    sel.replaceChildren();
    if (state.info.examples > 0) option(sel, "test", "test example");
    state.uploads.forEach((u, i) => option(sel, "upload:" + i, `upload ${i + 1} (${u.name})`));
    if (state.selected) option(sel, "selected", `map example ${state.selected.index}`);
    if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
    $(`interp-${side}-index`).hidden = sel.value !== "test";
    $(`interp-${side}-index`).max = Math.max(0, state.info.examples - 1);
  }
  $("interp-card").hidden = state.info.examples === 0 && state.uploads.length === 0;
}

function endpoint(side) {
  const kind = $(`interp-${side}-kind`).value;
  if (kind === "test") return { index: Number($(`interp-${side}-index`).value) || 0 };
  if (kind === "selected") return { z: state.selected.z };
  return { z: state.uploads[Number(kind.split(":")[1])].z };
}

async function interpolateNow() {
  if (!$(`interp-a-kind`).value || !$(`interp-b-kind`).value) return;
  const body = { a: endpoint("a"), b: endpoint("b"), steps: Number($("interp-steps").value) || 8 };
  if (state.info.conditional) body.label = currentLabel();
  const doc = await api(runUrl("/interpolate"), { method: "POST", json: body, view: "interpolate" });
  if (!doc) return;
  $("interp-linear").src = doc.linear;
  $("interp-spherical").src = doc.spherical;
  $("interp-time").textContent = `${doc.steps} steps per path, decoded in ${fmt(doc.decode_ms)} ms`;
}
const interpolateSoon = debounce(guard(interpolateNow), 120);

function interpolateFrom(side, kind) {
  fillInterpolationChoices();
  $(`interp-${side}-kind`).value = kind;
  $(`interp-${side}-index`).hidden = true;
  return interpolateNow();
}

// -- the latent map -----------------------------------------------------------------------------------------
async function drawMap() {
  state.map = null;
  $("map-note").textContent = "";
  $("map-legend").replaceChildren();
  if (state.info.examples > 0) {
    state.map = await api(runUrl("/latent-map"), { view: "map" });
  } else {
    $("map-note").textContent = `no latent map: ${state.info.data_note || "the run has no test examples"}`;
  }
  const m = state.map;
  $("map-axes").textContent = m ? `posterior means of ${m.n} test examples · x: ${m.axes[0]} · y: ${m.axes[1] || "–"}` +
    " · click a point" : "";
  if (m && m.labels) {
    const seen = [...new Set(m.labels)].sort((a, b) => a - b);
    $("map-legend").replaceChildren(...seen.map((c) => {
      const s = document.createElement("span");
      const dot = document.createElement("i");
      dot.style.background = PALETTE[c % PALETTE.length];
      s.append(dot, m.class_names[c] || String(c));
      return s;
    }));
  }
  drawMapCanvas();
}

function mapFrame() {
  const m = state.map;
  const canvas = $("map-canvas");
  const pts = m.points.concat(state.uploads.filter((u) => u.point).map((u) => u.point));
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const pad = 16;
  const sx = (canvas.width - 2 * pad) / ((x1 - x0) || 1);
  const sy = (canvas.height - 2 * pad) / ((y1 - y0) || 1);
  return (p) => [pad + (p[0] - x0) * sx, canvas.height - pad - (p[1] - y0) * sy];
}

function drawMapCanvas() {
  const canvas = $("map-canvas");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const m = state.map;
  if (!m) return;
  const place = mapFrame();
  m.points.forEach((p, i) => {
    const [x, y] = place(p);
    ctx.fillStyle = m.labels ? PALETTE[m.labels[i] % PALETTE.length] : "#4c6ef5";
    ctx.globalAlpha = 0.75;
    ctx.beginPath();
    ctx.arc(x, y, 2.6, 0, 2 * Math.PI);
    ctx.fill();
  });
  ctx.globalAlpha = 1;
  const rings = state.uploads.filter((u) => u.point).map((u) => [u.point, "#000"]);
  if (state.selected) rings.push([m.points[state.selected.index], "#e03131"]);
  for (const [p, color] of rings) {
    const [x, y] = place(p);
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(x, y, 7, 0, 2 * Math.PI);
    ctx.stroke();
  }
}

async function pickOnMap(event) {
  if (!state.map) return;
  const canvas = $("map-canvas");
  const rect = canvas.getBoundingClientRect();
  const cx = (event.clientX - rect.left) * canvas.width / rect.width;
  const cy = (event.clientY - rect.top) * canvas.height / rect.height;
  const place = mapFrame();
  let best = -1;
  let bestD = 12 * 12;
  state.map.points.forEach((p, i) => {
    const [x, y] = place(p);
    const d = (x - cx) ** 2 + (y - cy) ** 2;
    if (d < bestD) { bestD = d; best = i; }
  });
  if (best >= 0) await showExample(best);
}

async function showExample(index) {
  const doc = await api(runUrl(`/examples/${index}`), { view: "example" });
  if (!doc) return;
  state.selected = doc;
  $("selected-title").textContent = `test example ${doc.index}` + (doc.class_name !== null ? ` · class ${doc.class_name}` : "");
  $("selected-image").src = doc.image;
  $("selected-recon").src = doc.reconstruction;
  metricsTable($("selected-metrics"), doc.metrics, doc.ms);
  $("selected").hidden = false;
  fillInterpolationChoices();
  drawMapCanvas();
}

// -- wiring ------------------------------------------------------------------------------------------------
function wire() {
  const samplesSoon = debounce(guard(drawSamples), 120);
  $("temperature").addEventListener("input", () => {
    $("temperature-value").textContent = fmt($("temperature").value);
    samplesSoon();
  });
  for (const id of ["prior-select", "seed", "sample-count", "sample-all-classes"]) {
    $(id).addEventListener("change", samplesSoon);
  }
  $("new-seed").addEventListener("click", () => {
    $("seed").value = Math.floor(Math.random() * 1e6);
    samplesSoon();
  });
  $("class-select").addEventListener("change", guard(() => Promise.all([drawSamples(), decodeNow(), interpolateNow()])));
  $("base-load").addEventListener("click", guard(async () => {
    const doc = await api(runUrl(`/examples/${Number($("base-index").value) || 0}`));
    await setBase(doc.z);
  }));
  $("base-zero").addEventListener("click", guard(() => setBase(state.z.map(() => 0))));
  $("show-all").addEventListener("change", buildSliders);
  for (const [id, axis] of [["pos-row", 0], ["pos-col", 1]]) {
    $(id).addEventListener("change", () => { state.pos[axis] = Number($(id).value); syncSliders(); });
  }
  $("slider-image").addEventListener("click", (event) => {
    const s = state.info.sliders;
    if (s.mode !== "channels") return;
    const rect = event.target.getBoundingClientRect();
    state.pos = [Math.min(s.height - 1, Math.floor((event.clientY - rect.top) / rect.height * s.height)),
                 Math.min(s.width - 1, Math.floor((event.clientX - rect.left) / rect.width * s.width))];
    $("pos-row").value = state.pos[0];
    $("pos-col").value = state.pos[1];
    syncSliders();
  });
  $("upload-input").addEventListener("change", guard(() => upload($("upload-input").files[0])));
  const drop = $("upload-drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", guard((e) => {
    e.preventDefault();
    drop.classList.remove("over");
    return upload(e.dataTransfer.files[0]);
  }));
  const last = () => state.uploads.length - 1;
  $("upload-explore").addEventListener("click", guard(() => setBase(state.uploads[last()].z)));
  $("upload-as-a").addEventListener("click", guard(() => interpolateFrom("a", "upload:" + last())));
  $("upload-as-b").addEventListener("click", guard(() => interpolateFrom("b", "upload:" + last())));
  $("selected-explore").addEventListener("click", guard(() => setBase(state.selected.z)));
  $("selected-as-a").addEventListener("click", guard(() => interpolateFrom("a", "selected")));
  $("selected-as-b").addEventListener("click", guard(() => interpolateFrom("b", "selected")));
  for (const side of ["a", "b"]) {
    $(`interp-${side}-kind`).addEventListener("change", () => {
      $(`interp-${side}-index`).hidden = $(`interp-${side}-kind`).value !== "test";
      interpolateSoon();
    });
    $(`interp-${side}-index`).addEventListener("input", interpolateSoon);
  }
  $("interp-steps").addEventListener("input", interpolateSoon);
  $("map-canvas").addEventListener("click", guard(pickOnMap));
}

document.addEventListener("DOMContentLoaded", guard(init));
