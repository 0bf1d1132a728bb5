// allot operator console: confirmations, and the import upload with its progress bar.
// Served from /ops/assets (the Content-Security-Policy allows no inline script).
"use strict";

(function () {
  const csrfToken = () => document.body.dataset.csrf || "";
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // A form with data-confirm asks before it is sent.
  document.addEventListener("submit", (event) => {
    const question = event.target.dataset && event.target.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });

  const uploadForm = document.getElementById("import-form");
  if (uploadForm) uploadForm.addEventListener("submit", startImport);

  /** A random UUID (crypto.randomUUID needs a secure context; plain-HTTP consoles are not). */
  function uuidV4() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  const number = (n) => Number(n).toLocaleString("en");
  /** An API message as a sentence: capitalised, with a full stop. */
  const sentence = (m) => (m ? m.charAt(0).toUpperCase() + m.slice(1) + (/[.!?]$/.test(m) ? "" : ".") : "");

  function describe(imp) {
    switch (imp.state) {
      case "receiving":
        return `Receiving the file: ${number(imp.lines_read)} lines read, ${number(imp.rejected)} with problems.`;
      case "validating":
        return `Checking ${number(imp.accepted)} cards for duplicates…`;
      case "committing":
        return `Writing ${number(imp.accepted)} cards…`;
      case "committed":
        return `Committed: ${number(imp.accepted)} cards imported.`;
      case "rejected":
        return `Rejected: ${number(imp.rejected)} lines have problems; nothing was imported.`;
      default:
        return "The import failed; nothing was imported.";
    }
  }

  async function startImport(event) {
    event.preventDefault();
    const form = event.target;
    const panel = document.getElementById("import-panel");
    const bar = document.getElementById("import-progress");
    const status = document.getElementById("import-status");
    const report = document.getElementById("import-report");
    const button = form.querySelector("button[type=submit]");
    const file = form.elements.file.files[0];
    if (!file) {
      panel.hidden = false;
      status.textContent = "Choose a CSV file first.";
      return;
    }
    const [productId, denomination] = form.elements.bucket.value.split("|");
    const id = uuidV4();
    panel.hidden = false;
    bar.value = 0;
    bar.removeAttribute("data-state");
    report.hidden = true;
    report.textContent = "";
    status.textContent = `Uploading ${file.name} (${number(file.size)} bytes)…`;
    button.disabled = true;

    const show = (imp) => {
      if (!imp || imp.id !== id) return;
      if (imp.percent_done !== null && imp.percent_done !== undefined) bar.value = imp.percent_done;
      bar.dataset.state = imp.state;
      status.textContent = describe(imp);
    };
    let finished = false;
    const poll = async () => {
      while (!finished) {
        await sleep(400);
        if (finished) return;
        try {
          const res = await fetch(`/ops/imports/${id}/progress`, { headers: { accept: "application/json" } });
          if (res.ok && !finished) show(await res.json());
        } catch {
          // the next poll tries again
        }
      }
    };
    poll();

    const params = new URLSearchParams({ product_id: productId, denomination, id });
    try {
      const res = await fetch(`/ops/imports/upload?${params}`, {
        method: "POST",
        body: file,
        headers: { "x-csrf-token": csrfToken(), "content-type": "text/csv", accept: "application/json" },
      });
      const doc = await res.json().catch(() => null);
      finished = true;
      if (res.ok) {
        show(doc);
        finishReport(report, id, null);
      } else {
        const error = doc && doc.error;
        bar.dataset.state = "rejected";
        status.textContent = error ? sentence(error.message) : `The upload failed (HTTP ${res.status}).`;
        finishReport(report, error && error.details && error.details.import_id ? id : null, error && error.details);
      }
    } catch (err) {
      finished = true;
      status.textContent = `The upload did not reach the server (${err.message}); nothing was imported.`;
    } finally {
      button.disabled = false;
    }
  }

  /** The first problems, and a link to the import's page (its whole report). */
  function finishReport(report, id, details) {
    const problems = (details && details.problems) || [];
    if (problems.length) {
      const list = document.createElement("ul");
      for (const p of problems.slice(0, 10)) {
        const item = document.createElement("li");
        item.textContent = p.line ? `Line ${p.line}: ${p.problem}` : p.problem;
        list.append(item);
      }
      report.append(list);
    }
    if (id) {
      const link = document.createElement("a");
      link.href = `/ops/imports/${id}`;
      link.textContent = "Open this import";
      const p = document.createElement("p");
      p.append(link);
      report.append(p);
    }
    report.hidden = !report.childElementCount;
  }
})();
