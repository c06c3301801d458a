// Runs page: keep the list live by polling the JSON API, and keep the selection for
// bulk retry/cancel across refreshes.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  const table = document.getElementById("runs-table");
  if (!table) return;
  const body = document.getElementById("runs-body");
  const form = document.getElementById("bulk-form");
  const count = document.getElementById("selected-count");
  const selectAll = document.getElementById("select-all");
  const liveState = document.getElementById("live-state");
  const selected = new Set();
  const { el, when, took, statusBadge } = window.Orch;

  function checkboxes() {
    return Array.from(body.querySelectorAll("input[name=ids]"));
  }
  function showCount() {
    count.textContent = String(selected.size);
  }
  checkboxes().forEach((box) => box.checked && selected.add(box.value));
  showCount();

  body.addEventListener("change", function (event) {
    const box = event.target;
    if (box.name !== "ids") return;
    if (box.checked) selected.add(box.value);
    else selected.delete(box.value);
    showCount();
  });
  selectAll.addEventListener("change", function () {
    checkboxes().forEach(function (box) {
      box.checked = selectAll.checked;
      if (box.checked) selected.add(box.value);
      else selected.delete(box.value);
    });
    showCount();
  });
  // Runs selected earlier but no longer shown are still sent.
  form.addEventListener("submit", function () {
    const shown = new Set(checkboxes().map((box) => box.value));
    selected.forEach(function (id) {
      if (!shown.has(id)) form.appendChild(el("input", { type: "hidden", name: "ids", value: id }));
    });
  });

  function link(template, placeholder, value, text) {
    return el("a", { href: template.replace(placeholder, encodeURIComponent(value)) }, text);
  }

  function row(run) {
    const tr = el("tr", { "data-run": run.id, "data-status": run.status });
    const box = el("input", { type: "checkbox", name: "ids", value: run.id, "aria-label": "select run" });
    box.checked = selected.has(run.id);
    const cells = [
      box,
      link(table.dataset.runUrl, "RUN_ID", run.id, run.id.slice(0, 8)),
      link(table.dataset.workflowUrl, "WORKFLOW", run.workflow, run.workflow),
      document.createTextNode(run.version || ""),
      statusBadge(run.status),
      document.createTextNode(when(run.created_at)),
      document.createTextNode(took(run.created_at, run.finished_at)),
      run.event_id
        ? el("a", { href: table.dataset.eventUrl.replace(/0$/, String(run.event_id)) }, "event " + run.event_id)
        : el("span", { class: "muted" }, "manual"),
      document.createTextNode(run.error || ""),
    ];
    const classes = { 3: "mono version-cell", 8: "error-cell" };
    cells.forEach(function (content, index) {
      const td = el("td", classes[index] ? { class: classes[index] } : {});
      td.appendChild(content);
      tr.appendChild(td);
    });
    tr.querySelector("a").classList.add("mono");
    return tr;
  }

  let busy = false;
  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const page = await window.Orch.getJSON(table.dataset.pollUrl);
      body.replaceChildren(...page.runs.map(row));
      const empty = document.getElementById("no-runs");
      if (empty) empty.hidden = page.runs.length > 0;
      liveState.textContent = "live · updated " + new Date().toLocaleTimeString();
    } catch (error) {
      liveState.textContent = "live updates paused (" + error.message + "), retrying";
    } finally {
      busy = false;
    }
  }
  if (table.dataset.live === "yes") setInterval(refresh, window.Orch.pollMs());
});
