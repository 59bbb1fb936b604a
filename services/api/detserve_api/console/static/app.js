// detserve console: plain JavaScript against the public API; no build step, nothing from a CDN.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = { token: sessionStorage.getItem("detserve.token") || "", services: [], flavors: [],
                selected: null, deployTarget: null, poll: null, result: null };

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `request failed with status ${status}`);
    this.status = status; this.code = err.code; this.fields = err.fields;
  }
}

// A 503 is our fault and passes (the broker or database is restarting): say so and try again
// after its Retry-After, a few times. Requests that would do something twice (a new service, an
// upload) are not repeated: the caller is told to try again.
const RETRIES_503 = 5;

async function api(path, { method = "GET", json, form, auth = true, retry = method !== "POST" } = {}) {
  const headers = {};
  if (auth) headers.Authorization = `Bearer ${state.token}`;
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form) body = form;
  let waiting = false;
  try {
    for (let attempt = 0; ; attempt++) {
      const resp = await fetch(path, { method, headers, body });
      if (resp.status === 204) return null;
      const data = await resp.json().catch(() => null);
      if (resp.status === 503 && retry && attempt < RETRIES_503) {
        if (!waiting) { waiting = true; unavailable(+1); }
        const wait = Math.min(10, Number(resp.headers.get("Retry-After")) || 2);
        await new Promise((done) => setTimeout(done, wait * 1000));
        continue;
      }
      if (resp.status === 503) throw new ApiError(503, { error: { code: "unavailable",
        message: "detserve is temporarily unavailable; try again in a few seconds." } });
      if (!resp.ok) throw new ApiError(resp.status, data);
      return data;
    }
  } finally {
    if (waiting) unavailable(-1);
  }
}

// Shown while any request waits to be retried after a 503.
function unavailable(change) {
  state.retrying = (state.retrying || 0) + change;
  let note = $("#unavailable");
  if (!note) {
    note = el("p", { id: "unavailable", className: "error", role: "status",
                     textContent: "detserve is temporarily unavailable, retrying…" });
    document.body.prepend(note);
  }
  note.hidden = state.retrying <= 0;
}

function describe(err) {
  if (!(err instanceof ApiError)) return String(err.message || err);
  const fields = err.fields ? Object.entries(err.fields).map(([k, v]) => `${k}: ${v.join(" ")}`) : [];
  return [err.message, ...fields].join("\n");
}

const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const c of children) node.append(c);
  return node;
};

// ---- sign in ------------------------------------------------------------------------------

async function signIn(token) {
  state.token = token;
  try {
    await api("/v1/models");
  } catch (err) {
    state.token = "";
    sessionStorage.removeItem("detserve.token");
    throw err;
  }
  sessionStorage.setItem("detserve.token", token);
  showApp();
}

function showSignIn(message = "") {
  $("#app").hidden = true; $("#signout").hidden = true; $("#signin-panel").hidden = false;
  $("#signin-error").textContent = message;
  clearInterval(state.poll);
}

async function showApp() {
  $("#signin-panel").hidden = true; $("#app").hidden = false; $("#signout").hidden = false;
  await Promise.all([loadModels(), loadServices(), loadFlavors()]);
  clearInterval(state.poll);
  state.poll = setInterval(refresh, 1500);
}

async function refresh() {
  try {
    await loadServices();
    if (state.selected) await loadDetail();
  } catch (err) {
    if (err.status === 401) showSignIn("Your session is no longer valid: sign in again.");
  }
}

// ---- models -------------------------------------------------------------------------------

async function loadModels() {
  const { models } = await api("/v1/models");
  const box = $("#models");
  box.replaceChildren();
  if (!models.length) box.append(el("p", { className: "hint", textContent: "No models yet: upload one below." }));
  const table = el("table", { id: "versions" });
  table.append(el("thead", {}, el("tr", {}, ...["Version", "Status", "Created", "Size", "Labels", ""]
    .map((t) => el("th", { textContent: t })))));
  const body = el("tbody");
  for (const model of models) {
    body.append(el("tr", {}, el("td", { colSpan: 6 }, el("strong", { textContent: model.name }))));
    const { versions } = await api(`/v1/models/${encodeURIComponent(model.name)}/versions`);
    for (const v of versions) {
      const deploy = el("button", { className: "deploy-btn", textContent: "Deploy", type: "button",
        disabled: v.status !== "Successful",
        title: v.status === "Successful" ? "Deploy as a real-time service" : `Only Successful versions deploy (this one is ${v.status})` });
      deploy.dataset.model = v.model; deploy.dataset.version = v.version;
      deploy.addEventListener("click", () => openDeploy(v));
      const row = el("tr", { className: "version-row" },
        el("td", { textContent: `v${v.version}` }),
        el("td", {}, el("span", { className: `status ${v.status}`, textContent: v.status })),
        el("td", { textContent: new Date(v.created_at).toLocaleString() }),
        el("td", { textContent: formatBytes(v.size_bytes) }),
        el("td", { textContent: v.labels.slice(0, 8).join(", ") + (v.labels.length > 8 ? ` … (${v.labels.length})` : "") }),
        el("td", {}, deploy));
      row.dataset.model = v.model; row.dataset.version = v.version;
      body.append(row);
    }
  }
  table.append(body);
  if (models.length) box.append(table);
}

function formatBytes(n) {
  return n > 1048576 ? `${(n / 1048576).toFixed(1)} MB` : `${(n / 1024).toFixed(1)} KB`;
}

async function upload(event) {
  event.preventDefault();
  $("#upload-error").textContent = "";
  const name = $("#upload-name").value.trim();
  const file = $("#upload-file").files[0];
  const form = new FormData();
  form.append("model", file);
  const config = $("#upload-config").value.trim();
  if (config) form.append("config", config);
  form.append("status", $("#upload-status").value);
  try {
    await api(`/v1/models/${encodeURIComponent(name)}/versions`, { method: "POST", form });
    $("#upload-form").reset();
    await loadModels();
  } catch (err) {
    $("#upload-error").textContent = describe(err);
  }
}

// ---- deploy -------------------------------------------------------------------------------

async function loadFlavors() {
  state.flavors = (await api("/v1/flavors")).flavors;
}

async function openDeploy(version) {
  state.deployTarget = version;
  $("#deploy-target").textContent = `${version.model} v${version.version}`;
  $("#deploy-error").textContent = "";
  await loadFlavors();
  const box = $("#flavors");
  box.replaceChildren();
  for (const f of state.flavors) {
    const input = el("input", { type: "radio", name: "flavor", value: f.id, disabled: !f.available });
    const why = f.available ? "" : ` — unavailable: no ${f.kind.toUpperCase()} worker is running`;
    box.append(el("label", {}, input, ` ${f.kind.toUpperCase()} (${f.description}), ${f.price_per_hour}/hour`,
      el("span", { className: "flavor-note", textContent: why })));
  }
  const first = box.querySelector("input:not(:disabled)");
  if (first) first.checked = true;
  $("#deploy-dialog").showModal();
}

function autoStopFromDialog() {
  const enabled = $("#autostop-enabled").checked;
  const preset = document.querySelector("input[name=autostop-preset]:checked").value;
  if (!enabled) return { enabled: false, hours: 1 };
  if (preset !== "custom") return { enabled: true, hours: Number(preset) };
  const raw = $("#autostop-custom").value.trim();
  const hours = Number(raw);
  if (!/^\d+$/.test(raw) || hours < 1 || hours > 24) {
    throw new Error("Custom auto stop must be a whole number of hours from 1 to 24.");
  }
  return { enabled: true, hours };
}

async function deploy() {
  $("#deploy-error").textContent = "";
  const flavor = document.querySelector("input[name=flavor]:checked");
  let autoStop;
  try {
    if (!flavor) throw new Error("No flavor is available: start a worker first.");
    autoStop = { ...autoStopFromDialog(), ...idleFromDialog() };  // idleFromDialog: operate.js
  } catch (err) {
    $("#deploy-error").textContent = err.message;
    return;
  }
  const v = state.deployTarget;
  try {
    const svc = await api("/v1/services", { method: "POST", json: {
      model: v.model, version: v.version, flavor: flavor.value, compute_nodes: 1, auto_stop: autoStop } });
    $("#deploy-dialog").close();
    showKey(svc, "Deployed");
    state.selected = svc.id;
    await loadServices();
    await loadDetail();
  } catch (err) {
    $("#deploy-error").textContent = describe(err);
  }
}

function showKey(svc, what) {
  const notice = $("#key-notice");
  notice.hidden = false;
  notice.textContent = `${what} ${svc.name}. Its prediction key is shown only now: ${svc.key}`;
  state.keys = state.keys || {};
  state.keys[svc.id] = svc.key;
}

// ---- services -----------------------------------------------------------------------------

function duration(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}

function autoStopText(svc) {
  if (!svc.auto_stop.enabled) return "off";
  if (!svc.auto_stop.stop_at) return `${svc.auto_stop.hours} h after Running`;
  return `in ${duration((new Date(svc.auto_stop.stop_at) - Date.now()) / 1000)}`;
}

// A deploy's step and progress, as the service JSON gives them (issue 16: deploy progress).
function setBar(bar, svc) {
  bar.setAttribute("aria-valuenow", String(svc.progress));
  bar.classList.toggle("failed", Boolean(svc.phase && svc.phase.failed));
  bar.querySelector(".bar-fill").style.width = `${svc.progress}%`;
}

function progressBar(svc) {
  const bar = el("div", { className: "bar" }, el("div", { className: "bar-fill" }));
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  setBar(bar, svc);
  bar.title = phaseText(svc);
  return bar;
}

function phaseText(svc) {
  const p = svc.phase;
  if (!p) return "";
  let text = p.label + (p.detail ? ` (${p.detail})` : "");
  if (p.bytes_total) text += `: ${formatBytes(p.bytes_done || 0)} of ${formatBytes(p.bytes_total)}`;
  text += p.failed ? " failed" : `, ${svc.progress}% · ${duration(p.elapsed_seconds)} in this step`;
  return text;
}

function engineText(engine) {
  return `TensorRT ${engine.version} engine: ${engine.precision}, batch up to ${engine.max_batch}, ` +
    `${engine.contexts} execution context${engine.contexts === 1 ? "" : "s"}`;
}

async function loadServices() {
  const { services } = await api("/v1/services");
  state.services = services;
  const body = $("#service-list");
  body.replaceChildren();
  for (const svc of services) {
    const actions = el("td");
    const button = (label, handler, enabled) => {
      const b = el("button", { type: "button", className: `secondary ${label.toLowerCase()}-btn`, textContent: label, disabled: !enabled });
      b.addEventListener("click", (e) => { e.stopPropagation(); handler(svc); });
      actions.append(b, " ");
    };
    button("Start", (s) => act(s, "start"), ["Stopped", "Failed"].includes(svc.status));
    button("Stop", (s) => act(s, "stop"), ["Running", "Deploying", "Failed"].includes(svc.status));
    button("Delete", remove, true);
    const row = el("tr", { className: svc.id === state.selected ? "selected" : "" },
      el("td", { textContent: svc.name }),
      el("td", { textContent: `${svc.model} ${splitText(svc)}` }),
      el("td", { textContent: svc.flavor.toUpperCase() }),
      el("td", {}, el("span", { className: `status ${svc.status}`, textContent: svc.status, title: svc.error || "" }),
        ...(svc.status === "Deploying" && svc.progress !== null ? [progressBar(svc)] : [])),
      el("td", { className: "time-left", textContent: autoStopText(svc) }),
      el("td", { textContent: duration(svc.running_seconds) }),
      el("td", { textContent: svc.cost.toFixed(4) }),
      actions);
    row.dataset.id = svc.id;
    row.addEventListener("click", () => { state.selected = svc.id; loadServices(); loadDetail(); });
    body.append(row);
  }
}

// The versions a service serves with their weights (its one version at 100% when none are listed).
function splitOf(svc) {
  return svc.versions || [{ version: svc.version, weight: 100 }];
}

// "v3 90% · v4 10%": a split, each version with its weight
function weightsText(versions) {
  return versions.map((v) => `v${v.version} ${v.weight}%`).join(" · ");
}

// "v3" for one version; "v3 90% · v4 10%" for a service serving several (weights)
function splitText(svc) {
  const versions = splitOf(svc);
  return versions.length === 1 ? `v${versions[0].version}` : weightsText(versions);
}

async function act(svc, action) {
  $("#services-error").textContent = "";
  try {
    await api(`/v1/services/${svc.id}/${action}`, { method: "POST", retry: true });  // idempotent
    await loadServices();
    if (state.selected === svc.id) await loadDetail();
  } catch (err) {
    $("#services-error").textContent = describe(err);
  }
}

async function remove(svc) {
  if (!confirm(`Delete service ${svc.name}? It is stopped first.`)) return;
  try {
    await api(`/v1/services/${svc.id}`, { method: "DELETE" });
    if (state.selected === svc.id) { state.selected = null; $("#detail").hidden = true; }
    await loadServices();
  } catch (err) {
    $("#services-error").textContent = describe(err);
  }
}

// ---- one service: test, snippets, events, monitoring ---------------------------------------

// The service whose detail is open, from the last list (operate.js and versions.js use it too).
function selectedService() {
  return state.services.find((s) => s.id === state.selected) || null;
}

async function loadDetail() {
  const svc = selectedService();
  if (!svc) { $("#detail").hidden = true; return; }
  $("#detail").hidden = false;
  $("#detail-name").textContent = svc.name;
  const badge = $("#detail-status");
  badge.textContent = svc.status + (svc.error ? `: ${svc.error}` : "");
  badge.className = `status ${svc.status}`;
  const deploying = svc.phase !== null && (svc.status === "Deploying" || svc.phase.failed);
  $("#deploy-progress").hidden = !deploying;
  if (deploying) {
    setBar($("#deploy-progress .bar"), svc);
    $("#deploy-phase").textContent = phaseText(svc);
  }
  $("#detail-engine").hidden = !svc.engine;
  if (svc.engine) $("#detail-engine").textContent = engineText(svc.engine);
  $("#predict-btn").disabled = svc.status !== "Running";
  $("#predict-btn").title = svc.status === "Running" ? "" : "The service must be Running to predict";
  renderSnippets(svc);
  renderVersions(svc);  // versions.js: the panel follows the service picked, not the next tick
  const [{ events }, mon] = await Promise.all([
    api(`/v1/services/${svc.id}/events`), api(`/v1/services/${svc.id}/monitoring`)]);
  $("#events").replaceChildren(...events.map((e) => el("li", {
    textContent: `${new Date(e.at).toLocaleTimeString()} ${e.from || "—"} → ${e.to} (${e.reason})` })));
  renderMonitoring(mon);
}

function renderSnippets(svc) {
  const key = (state.keys && state.keys[svc.id]) || "<service key>";
  const url = svc.predict_url;
  $("#snippet-curl").textContent = `curl -H "X-Service-Key: ${key}" -F images=@image.jpg ${url}`;
  $("#snippet-python").textContent = [
    "import requests",
    `resp = requests.post("${url}",`,
    `                     headers={"X-Service-Key": "${key}"},`,
    `                     files={"images": open("image.jpg", "rb")})`,
    "print(resp.json())  # detection_classes, detection_boxes, detection_scores",
  ].join("\n");
}

async function rotateKey() {
  const svc = selectedService();
  if (!svc || !confirm("Make a new key? The old key stops working at once.")) return;
  try {
    const { key } = await api(`/v1/services/${svc.id}/key`, { method: "POST" });
    showKey({ ...svc, key }, "New key for");
    renderSnippets(svc);
  } catch (err) {
    $("#services-error").textContent = describe(err);
  }
}

// The test area predicts once at a low threshold and filters by the slider in the page: the boxes
// kept at a higher threshold are the same (NMS keeps or drops a box only for higher-scoring ones).
const LOW_THRESHOLD = "0.01";

async function predict(event) {
  event.preventDefault();
  $("#predict-error").textContent = "";
  const file = $("#test-file").files[0];
  if (!file) { $("#predict-error").textContent = "Choose a JPG, JPEG, BMP or PNG image first."; return; }
  const form = new FormData();
  form.append("images", file);
  form.append("score_threshold", LOW_THRESHOLD);
  form.append("max_detections", "1000");
  const img = $("#test-image");
  state.result = null;
  $("#boxes").replaceChildren();
  $("#result-table tbody").replaceChildren();
  try {
    const result = await api(`/v1/services/${state.selected}/predict`, { method: "POST", form, retry: true });
    img.src = URL.createObjectURL(file);
    await img.decode().catch(() => {});
    state.result = result;
    showResult();
  } catch (err) {
    img.removeAttribute("src");
    $("#predict-error").textContent = describe(err);
  }
}

function showResult() {
  const threshold = Number($("#threshold").value);
  $("#threshold-value").textContent = threshold.toFixed(2);
  if (!state.result) return;
  const r = state.result;
  const keep = r.detection_scores.map((s, i) => (s >= threshold ? i : -1)).filter((i) => i >= 0);
  const shown = { detection_classes: keep.map((i) => r.detection_classes[i]),
    detection_boxes: keep.map((i) => r.detection_boxes[i]),
    detection_scores: keep.map((i) => r.detection_scores[i]) };
  drawBoxes(shown);
  fillTable(shown);
}

function drawBoxes(result) {
  const img = $("#test-image");
  const sx = img.clientWidth / img.naturalWidth, sy = img.clientHeight / img.naturalHeight;
  const layer = $("#boxes");
  layer.replaceChildren();
  result.detection_boxes.forEach(([y0, x0, y1, x1], i) => {
    const box = el("div", { className: "box" },
      el("span", { textContent: `${result.detection_classes[i]} ${result.detection_scores[i].toFixed(2)}` }));
    Object.assign(box.style, { left: `${x0 * sx}px`, top: `${y0 * sy}px`,
      width: `${(x1 - x0) * sx}px`, height: `${(y1 - y0) * sy}px` });
    Object.assign(box.dataset, { y0, x0, y1, x1, cls: result.detection_classes[i] });
    layer.append(box);
  });
}

function fillTable(result) {
  const body = $("#result-table tbody");
  body.replaceChildren(...result.detection_classes.map((cls, i) => el("tr", {},
    el("td", { textContent: cls }),
    el("td", { textContent: `[${result.detection_boxes[i].map((v) => v.toFixed(1)).join(", ")}]` }),
    el("td", { textContent: result.detection_scores[i].toFixed(4) }))));
  if (!result.detection_classes.length) body.append(el("tr", {}, el("td", { colSpan: 3, textContent: "No objects found." })));
}

function renderMonitoring(mon) {
  const lat = mon.latency_ms;
  const fmt = (v) => (v == null ? "–" : `${v.toFixed(1)} ms`);
  $("#monitoring-summary").textContent =
    `${mon.requests} requests, ${mon.failures} failures; latency p50 ${fmt(lat.p50)}, p95 ${fmt(lat.p95)}, p99 ${fmt(lat.p99)}` +
    ((mon.versions || []).length ? `; by version: ${mon.versions.map((v) => `v${v.version} ${v.requests} (${v.failures} failed)`).join(", ")}` : "");
  const canvas = $("#monitoring-chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 24;
  ctx.clearRect(0, 0, w, h);
  const series = mon.series;
  const maxReq = Math.max(1, ...series.map((p) => p.requests));
  const maxLat = Math.max(1, ...series.map((p) => p.p50_ms || 0));
  const bw = (w - 2 * pad) / series.length;
  series.forEach((p, i) => {
    const x = pad + i * bw;
    const rh = (p.requests / maxReq) * (h - 2 * pad), fh = (p.failures / maxReq) * (h - 2 * pad);
    ctx.fillStyle = "#9cc3f5"; ctx.fillRect(x, h - pad - rh, bw - 1, rh);
    ctx.fillStyle = "#e5534b"; ctx.fillRect(x, h - pad - fh, bw - 1, fh);
  });
  ctx.strokeStyle = "#1a7f37"; ctx.beginPath();
  series.forEach((p, i) => {
    if (p.p50_ms == null) return;
    const x = pad + (i + 0.5) * bw, y = h - pad - (p.p50_ms / maxLat) * (h - 2 * pad);
    ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#66717d"; ctx.font = "11px sans-serif";
  ctx.fillText(`requests/min (max ${maxReq})  failures  — p50 latency (max ${maxLat.toFixed(0)} ms)`, pad, 14);
  ctx.fillText("60 min ago", pad, h - 6); ctx.fillText("now", w - pad - 20, h - 6);
}

// ---- wiring -------------------------------------------------------------------------------

$("#signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try { await signIn($("#token").value.trim()); }
  catch (err) { $("#signin-error").textContent = describe(err); }
});
$("#signout").addEventListener("click", () => { sessionStorage.removeItem("detserve.token"); state.token = ""; showSignIn(); });
$("#upload-form").addEventListener("submit", upload);
$("#deploy-ok").addEventListener("click", deploy);
$("#deploy-cancel").addEventListener("click", () => $("#deploy-dialog").close());
$("#test-form").addEventListener("submit", predict);
$("#threshold").addEventListener("input", showResult);
$("#rotate-key").addEventListener("click", rotateKey);
$("#autostop-enabled").addEventListener("change", (e) => {
  for (const input of document.querySelectorAll("#autostop-options input")) input.disabled = !e.target.checked;
  if (e.target.checked) $("#autostop-custom").disabled = document.querySelector("input[name=autostop-preset]:checked").value !== "custom";
});
for (const radio of document.querySelectorAll("input[name=autostop-preset]")) {
  radio.addEventListener("change", () => { $("#autostop-custom").disabled = radio.value !== "custom" || !radio.checked; });
}

if (state.token) signIn(state.token).catch(() => showSignIn("Sign in again."));
else showSignIn();
