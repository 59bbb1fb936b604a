// detserve console, a service's versions and traffic weights: what serves now, a change being
// loaded (or one that failed), and a small form to change them (PATCH /v1/services/{id}).
// Uses app.js's globals ($, el, api, describe, selectedService, splitOf, splitText, weightsText);
// loaded after it. operateTick (operate.js) redraws the panel with the rest of the detail.
"use strict";

const vers = { editingFor: null };

function renderVersions(svc) {
  $("#versions-current").textContent = splitText(svc);
  const pending = svc.pending_versions;
  const note = $("#versions-pending");
  note.hidden = !pending;
  if (pending) {
    const asked = weightsText(pending.versions);
    note.className = pending.state === "failed" ? "error" : "hint";
    note.textContent = pending.state === "failed"
      ? `The change to ${asked} failed; the versions above keep serving. ${pending.error || ""}`
      : `Loading ${asked}; the versions above serve until it is ready.`;
  }
  if (vers.editingFor && vers.editingFor !== svc.id) closeForm();
}

function versionRow(version = "", weight = "") {
  const remove = el("button", { type: "button", className: "secondary", textContent: "Remove" });
  const row = el("tr", {},
    el("td", {}, el("input", { type: "number", min: 1, step: 1, value: version, className: "v-version",
                               ariaLabel: "version" })),
    el("td", {}, el("input", { type: "number", min: 0, max: 100, step: 1, value: weight,
                               className: "v-weight", ariaLabel: "weight" })),
    el("td", {}, remove));
  remove.addEventListener("click", () => { row.remove(); showSum(); });
  row.addEventListener("input", showSum);
  return row;
}

function formItems() {
  return [...document.querySelectorAll("#versions-table tbody tr")].map((row) => ({
    version: Number($(".v-version", row).value), weight: Number($(".v-weight", row).value) }));
}

function showSum() {
  const items = formItems();
  const total = items.reduce((sum, i) => sum + (Number.isFinite(i.weight) ? i.weight : 0), 0);
  $("#versions-sum").textContent = `${items.length} of 3 versions; weights add up to ${total} (must be 100)`;
  $("#versions-add").disabled = items.length >= 3;
}

function openForm() {
  const svc = selectedService();
  if (!svc) return;
  vers.editingFor = svc.id;
  const current = splitOf(svc);
  $("#versions-table tbody").replaceChildren(...current.map((v) => versionRow(v.version, v.weight)));
  $("#versions-error").textContent = "";
  $("#versions-form").hidden = false;
  showSum();
}

function closeForm() {
  vers.editingFor = null;
  $("#versions-form").hidden = true;
}

async function saveVersions(event) {
  event.preventDefault();
  const svc = selectedService();
  if (!svc) return;
  $("#versions-error").textContent = "";
  try {
    // the API checks the split (sum 100, 1-3 versions, each a Successful version) and says why not
    const updated = await api(`/v1/services/${svc.id}`, { method: "PATCH", json: { versions: formItems() } });
    Object.assign(svc, updated);
    closeForm();
    renderVersions(svc);
  } catch (err) {
    $("#versions-error").textContent = describe(err);
  }
}

$("#versions-edit").addEventListener("click", openForm);
$("#versions-cancel").addEventListener("click", closeForm);
$("#versions-add").addEventListener("click", () => {
  $("#versions-table tbody").append(versionRow("", 0));
  showSum();
});
$("#versions-form").addEventListener("submit", saveVersions);
