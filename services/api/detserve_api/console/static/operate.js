// detserve console, operating a service: stopping-soon banner, countdown and Extend, the Logs
// tab (live while open), resource-usage charts (inline SVG), the idle stop in the deploy dialog.
// Uses app.js's globals ($, el, api, describe, duration, selectedService); loaded after it. Its
// tick also redraws the versions panel (renderVersions, versions.js): it has no timer of its own.
"use strict";

const ops = { tab: "overview", lastUsage: 0, usageFor: null, logBusy: false, usageBusy: false };

function idleFromDialog() {
  if (!$("#idle-enabled").checked) return {};
  const raw = $("#idle-minutes").value.trim();
  const minutes = Number(raw);
  if (!/^\d+$/.test(raw) || minutes < 1 || minutes > 1440) {
    throw new Error("Stop when idle must be a whole number of minutes from 1 to 1440.");
  }
  return { idle_minutes: minutes };
}

// ---- banner, countdown, Extend --------------------------------------------------------------

function renderStopping(svc) {
  const banner = $("#stopping-banner");
  const stopsAt = svc.auto_stop.stops_at;
  banner.hidden = !(svc.status === "Running" && svc.stopping_soon && stopsAt);
  if (!banner.hidden) {
    const idle = stopsAt === svc.auto_stop.idle_stop_at && stopsAt !== svc.auto_stop.stop_at;
    banner.textContent = `This service stops at ${new Date(stopsAt).toLocaleTimeString()} ` +
      (idle ? "unless a prediction comes (idle stop)." : "(auto stop). Extend it to keep it running.");
  }
  const parts = [];
  if (svc.auto_stop.enabled) {
    parts.push(svc.auto_stop.stop_at
      ? `in ${duration((new Date(svc.auto_stop.stop_at) - Date.now()) / 1000)} (${new Date(svc.auto_stop.stop_at).toLocaleTimeString()})`
      : `${svc.auto_stop.hours} h after Running`);
  }
  if (svc.auto_stop.idle_minutes) parts.push(`after ${svc.auto_stop.idle_minutes} min without a prediction`);
  $("#detail-countdown").textContent = parts.length ? parts.join("; ") : "off";
  $("#extend-box").hidden = !(svc.status === "Running" && svc.auto_stop.stop_at);
}

async function extend() {
  const svc = selectedService();
  if (!svc) return;
  $("#extend-error").textContent = "";
  try {
    const hours = Number($("#extend-hours").value);
    const updated = await api(`/v1/services/${svc.id}/extend`, { method: "POST", json: { hours } });
    Object.assign(svc, updated);
    renderStopping(svc);
  } catch (err) {
    $("#extend-error").textContent = describe(err);
  }
}

// ---- tabs and logs ----------------------------------------------------------------------------

function showTab(name) {
  ops.tab = name;
  for (const b of document.querySelectorAll("#detail-tabs .tab")) b.classList.toggle("active", b.dataset.tab === name);
  const overview = [...document.querySelectorAll("#detail > .columns"), $("#usage-panel")];
  for (const node of overview) node.hidden = name !== "overview";
  $("#logs-panel").hidden = name !== "logs";
  if (name === "logs") loadLogs();
}

function logSince() {
  const choice = document.querySelector("input[name=log-since]:checked").value;
  if (choice !== "custom") return choice;
  const raw = $("#log-custom").value;
  return raw ? new Date(raw).toISOString() : "60m";  // the input is local time; the API takes UTC
}

async function loadLogs() {
  const svc = selectedService();
  if (!svc || ops.logBusy) return;
  ops.logBusy = true;
  try {
    const q = new URLSearchParams({ since: logSince(), limit: "1000" });
    const { lines } = await api(`/v1/services/${svc.id}/logs?${q}`);
    $("#logs-error").textContent = "";
    const box = $("#log-box");
    const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
    $("#log-table tbody").replaceChildren(...lines.map((l) => el("tr", { className: l.level },
      el("td", { textContent: new Date(l.time).toLocaleTimeString() }),
      el("td", { textContent: l.component }), el("td", { textContent: l.level }),
      el("td", { textContent: l.request_id || "" }), el("td", { textContent: l.message }))));
    if (!lines.length) $("#log-table tbody").append(el("tr", {}, el("td", { colSpan: 5, textContent: "No log lines in this window." })));
    if (atBottom) box.scrollTop = box.scrollHeight;  // tail, unless the reader scrolled up
  } catch (err) {
    $("#logs-error").textContent = describe(err);
  } finally {
    ops.logBusy = false;
  }
}

// ---- usage charts -----------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svgNode(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function chart(title, points, value, unit) {
  const w = 300, h = 90, pad = 4, now = Date.now() / 1000;
  // the last hour, or since the worker's first report when that is more recent
  const start = Math.min(now - 60, Math.max(now - 3600, ...points.slice(0, 1).map((p) => p.at)));
  const svg = svgNode("svg", { class: "chart", width: w, height: h + 18, viewBox: `0 0 ${w} ${h + 18}`, role: "img" });
  const values = points.map(value).filter((v) => v != null);
  const max = Math.max(1e-9, ...values);
  const label = svgNode("text", { x: pad, y: 12, "font-size": 11, fill: "#66717d" });
  label.textContent = `${title}: ${values.length ? `${values[values.length - 1].toFixed(1)} ${unit}` : "–"} ` +
    `(max ${max.toFixed(1)}), last ${Math.round((now - start) / 60)} min`;
  svg.append(label);
  const coords = points.filter((p) => value(p) != null).map((p) => {
    const x = pad + ((p.at - start) / (now - start)) * (w - 2 * pad);
    const y = 18 + h - pad - (value(p) / max) * (h - 2 * pad);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  svg.append(svgNode("polyline", { points: coords.join(" "), fill: "none", stroke: "#0b63ce", "stroke-width": 1.5 }));
  return svg;
}

const mb = (n) => (n == null ? "–" : `${(n / 2 ** 20).toFixed(1)} MB`);

function renderUsage(workers) {
  const box = $("#usage");
  if (!workers.length) { box.replaceChildren(el("p", { className: "hint", textContent: "No worker holds this model." })); return; }
  box.replaceChildren(...workers.map((w) => {
    const facts = el("dl");
    const fact = (k, v) => facts.append(el("dt", { textContent: k }), el("dd", { textContent: v }));
    fact("Worker", `${w.worker} (pid ${w.pid}, ${w.flavor.toUpperCase()})`);
    fact("CPU time", `${w.cpu_seconds.toFixed(1)} s`);
    fact("Resident memory", mb(w.rss_bytes));
    fact("Model memory", mb(w.model_bytes) + (w.model_device_bytes ? `, device ${mb(w.model_device_bytes)}` : ""));
    if (w.gpu) fact("GPU", `${w.gpu.utilization_percent}% busy, ${mb(w.gpu.memory_used_bytes)} of ${mb(w.gpu.memory_total_bytes)}`);
    const charts = [chart("CPU", w.series, (p) => p.cpu_percent, "%"),
                    chart("Memory", w.series, (p) => p.rss_bytes / 2 ** 20, "MB")];
    if (w.gpu) charts.push(chart("GPU", w.series, (p) => p.gpu_utilization_percent, "%"));
    return el("div", { className: "usage-worker" }, facts, ...charts);
  }));
}

async function loadUsage(svc) {
  if (ops.usageBusy) return;
  ops.usageBusy = true;
  try {
    renderUsage((await api(`/v1/services/${svc.id}/usage`)).workers);
    ops.lastUsage = Date.now(); ops.usageFor = svc.id;
  } catch (err) {
    $("#usage").replaceChildren(el("p", { className: "error", textContent: describe(err) }));
  } finally {
    ops.usageBusy = false;
  }
}

// ---- wiring -----------------------------------------------------------------------------------

async function operateTick() {
  const svc = selectedService();
  if (!svc || $("#detail").hidden || $("#app").hidden) return;
  renderStopping(svc);
  renderVersions(svc);  // a change loaded or failed, or another service selected
  if (ops.tab === "logs") await loadLogs();
  else if (ops.usageFor !== svc.id || Date.now() - ops.lastUsage > 4000) await loadUsage(svc);
}

$("#extend-btn").addEventListener("click", extend);
for (const b of document.querySelectorAll("#detail-tabs .tab")) b.addEventListener("click", () => showTab(b.dataset.tab));
for (const r of document.querySelectorAll("input[name=log-since]")) {
  r.addEventListener("change", () => { $("#log-custom").disabled = r.value !== "custom"; loadLogs(); });
}
$("#log-custom").addEventListener("change", loadLogs);
$("#idle-enabled").addEventListener("change", (e) => { $("#idle-minutes").disabled = !e.target.checked; });
setInterval(() => { operateTick().catch(() => {}); }, 1500);
