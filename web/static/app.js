// Shared helpers for the dashboard's scripts. Data from the API is only ever put into the
// page with textContent or attribute values, never parsed as HTML.
"use strict";

window.Orch = (function () {
  function pollMs() {
    return parseInt(document.body.dataset.pollMs || "2000", 10);
  }

  async function getJSON(url) {
    const response = await fetch(url, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.json();
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function when(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    return isNaN(date) ? iso : date.toISOString().replace("T", " ").slice(0, 19);
  }

  function took(start, end) {
    if (!start || !end) return "";
    const seconds = (new Date(end) - new Date(start)) / 1000;
    return seconds < 1 ? Math.round(seconds * 1000) + "ms" : seconds.toFixed(2) + "s";
  }

  function statusBadge(status) {
    return el("span", { class: "status s-" + status }, status);
  }

  return { pollMs, getJSON, el, when, took, statusBadge };
})();

// Workflow page: say whether the run input is a JSON object while it is typed.
document.addEventListener("DOMContentLoaded", function () {
  const input = document.getElementById("input");
  const note = document.getElementById("input-check");
  if (!input || !note) return;
  function check() {
    try {
      const value = JSON.parse(input.value || "{}");
      const ok = value !== null && typeof value === "object" && !Array.isArray(value);
      note.textContent = ok ? "valid JSON object" : "input must be a JSON object";
      note.className = ok ? "muted" : "error-text";
    } catch (error) {
      note.textContent = "not valid JSON yet: " + error.message;
      note.className = "error-text";
    }
  }
  input.addEventListener("input", check);
  check();
});
