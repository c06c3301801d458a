// Run page: poll the JSON API; when the run or a step changed, fetch this page again and
// swap in its live sections (parsed with DOMParser, so no script in them can run).
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  const root = document.getElementById("run-root");
  if (!root) return;
  const FINAL = ["succeeded", "failed", "cancelled"];

  function pageSignature() {
    const status = document.getElementById("run-status").dataset.status;
    const steps = Array.from(document.querySelectorAll("#run-steps [data-step]")).map(
      (step) => step.dataset.step + "=" + step.dataset.status + "/" + step.dataset.attempts +
        "/" + step.dataset.progress,
    );
    return status + "|" + steps.join(",");
  }

  function apiSignature(run) {
    // A map's progress counts too: its node stays `running` while its items end.
    const steps = run.steps.map(
      (step) => step.name + "=" + step.status + "/" + step.attempt_count + "/" +
        (step.map ? step.map.done + "-" + step.map.failed : ""),
    );
    return run.status + "|" + steps.join(",");
  }

  async function swapLiveSections() {
    const response = await fetch(window.location.href, {
      headers: { Accept: "text/html" },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    document.querySelectorAll("[data-live]").forEach(function (section) {
      const replacement = fresh.getElementById(section.id);
      if (!replacement) return;
      // The same approvals still waiting: keep their forms (and a comment being typed).
      if (section.dataset.steps !== undefined && section.dataset.steps === replacement.dataset.steps) return;
      section.replaceWith(document.importNode(replacement, true));
    });
  }

  async function tick() {
    let delay = window.Orch.pollMs() / 2;
    try {
      const run = await window.Orch.getJSON(root.dataset.apiUrl);
      if (apiSignature(run) !== pageSignature()) await swapLiveSections();
      if (FINAL.includes(run.status)) delay = window.Orch.pollMs() * 2;
    } catch (error) {
      delay = window.Orch.pollMs() * 2;
    }
    window.setTimeout(tick, delay);
  }
  window.setTimeout(tick, window.Orch.pollMs() / 2);
});
