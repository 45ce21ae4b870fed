// Keeps / current from the JSON API, every 2 s; the page reads the same without it.
"use strict";
(() => {
  const main = document.querySelector("main[data-live='yes']");
  if (!main) return; // an older page of files stays as it is
  const SVG = "http://www.w3.org/2000/svg";
  const byId = (id) => document.getElementById(id);

  function cell(content) {
    const td = document.createElement("td");
    if (content instanceof Node) td.append(content); else td.textContent = content ?? "";
    return td;
  }
  function link(claimId, text) {
    const a = document.createElement("a");
    a.href = "/files/" + encodeURIComponent(claimId);
    a.textContent = text;
    return a;
  }
  function badge(status, partial) {
    const word = partial ? "partial" : (status || "");
    const span = document.createElement("span");
    span.className = "badge " + word.toLowerCase();
    span.textContent = word;
    return span;
  }
  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 120) return seconds + " s";
    if (seconds < 7200) return Math.floor(seconds / 60) + " min";
    return Math.floor(seconds / 3600) + " h " + Math.floor(seconds % 3600 / 60) + " min";
  }
  function rows(tbodyId, items, cells) {
    const tbody = byId(tbodyId);
    tbody.replaceChildren(...items.map((item) => {
      const tr = document.createElement("tr");
      tr.append(...cells(item).map(cell));
      return tr;
    }));
  }
  function chart(perMinute) {
    const svg = byId("chart");
    const top = Math.max(1, ...perMinute.map((m) => Math.max(m.files, m.records_failed)));
    const bars = [];
    perMinute.forEach((m, i) => {
      [[m.files, "files", 0, " files"], [m.records_failed, "failed", 2, " records failed"]]
        .forEach(([value, cls, dx, what]) => {
          if (!value) return;
          const height = Math.round(580 * value / top) / 10;
          const rect = document.createElementNS(SVG, "rect");
          rect.setAttribute("class", cls);
          rect.setAttribute("x", i * 5 + dx);
          rect.setAttribute("y", 60 - height);
          rect.setAttribute("width", 2);
          rect.setAttribute("height", height);
          const title = document.createElementNS(SVG, "title");
          title.textContent = m.minute + ": " + value + what;
          rect.append(title);
          bars.push(rect);
        });
    });
    svg.replaceChildren(...bars);
  }
  function render(status, page) {
    byId("updated").textContent = "as of " + status.generated_at.slice(0, 19).replace("T", " ") + " UTC";
    byId("instances").replaceChildren(...Object.entries(status.instances).map(([name, state]) => {
      const li = document.createElement("li");
      const b = document.createElement("b");
      b.textContent = name;
      const span = document.createElement("span");
      span.className = state === "ready" ? "ok" : "bad";
      span.textContent = state;
      li.append(b, " ", span);
      return li;
    }));
    for (const [key, n] of Object.entries(status.today)) {
      byId("today-" + key.toLowerCase()).textContent = n;
    }
    const inbox = status.inbox;
    const p = byId("inbox");
    const waiting = document.createElement("b");
    waiting.textContent = inbox.waiting;
    const uploads = document.createElement("b");
    uploads.textContent = status.uploads_in_flight;
    const oldest = inbox.waiting && inbox.oldest_seconds !== null
      ? ", oldest waiting " + ago(inbox.oldest_seconds) : "";
    p.replaceChildren(waiting, " waiting in inbox/ at the last scan" + oldest + "; ", uploads,
      " uploads in flight");
    chart(status.per_minute);
    byId("following-total").textContent = status.following_total;
    rows("following", status.following, (f) => [
      link(f.claim_id, f.file), f.instance, f.object, f.job_id, f.api_status || "…",
      ago(f.age_seconds)]);
    rows("latest", page.files, (f) => [
      (f.finished_at || "").slice(0, 19).replace("T", " "), link(f.claim_id, f.file),
      f.instance, badge(f.status, f.partial), f.records.total, f.records.failed]);
  }
  // The page's own filters (?status=, ?object=, ?instance=, ?limit=) go on applying.
  const filters = new URLSearchParams(location.search);
  filters.delete("before");
  if (!filters.has("limit")) filters.set("limit", "100");

  async function json(url, signal) {
    const answer = await fetch(url, {signal});
    if (!answer.ok) throw new Error(url + ": HTTP " + answer.status);
    return answer.json();
  }
  async function tick() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 10000);
    try {
      const [status, page] = await Promise.all([
        json("/api/status", abort.signal), json("/api/files?" + filters, abort.signal)]);
      render(status, page);
      main.dataset.updated = status.generated_at;
    } catch (error) {
      byId("updated").textContent = "the daemon does not answer (" + error.message + ")";
    } finally {
      clearTimeout(timer);
    }
  }
  // One request at a time, 2 s after the last answer; none while the tab is hidden.
  async function loop() {
    if (!document.hidden) await tick();
    setTimeout(loop, 2000);
  }
  setTimeout(loop, 2000);
})();
