// edgekit dashboard: sorting, filtering, labelling and live updates. Every page works
// without this file; it only polls the same server (no CDN, no framework).
"use strict";

const poll = Number(document.body.dataset.poll || 2000);
let sortKey = null;
let sortDown = false;

function applyView(table) {
  const body = table.tBodies[0];
  const filter = document.getElementById("filter");
  const words = filter ? filter.value.toLowerCase().split(/\s+/).filter(Boolean) : [];
  const rows = Array.from(body.rows);
  if (sortKey !== null) {
    const index = Array.from(table.tHead.rows[0].cells).findIndex((th) => th.dataset.key === sortKey);
    const value = (row) => (row.cells[index] ? row.cells[index].dataset.sort || "" : "");
    rows.sort((a, b) => {
      const x = value(a), y = value(b);
      const order = x !== "" && y !== "" && !isNaN(x) && !isNaN(y) ? Number(x) - Number(y) : x.localeCompare(y);
      return sortDown ? -order : order;
    });
    rows.forEach((row) => body.appendChild(row));
  }
  let shown = 0;
  rows.forEach((row) => {
    const text = (row.dataset.text || row.textContent).toLowerCase();
    const visible = words.every((word) => text.includes(word));
    row.hidden = !visible;
    shown += visible ? 1 : 0;
  });
  const count = document.getElementById("count");
  if (count && body.rows.length && body.rows[0].dataset.node) count.textContent = String(shown);
}

function setUpTables() {
  document.querySelectorAll("table.sortable").forEach((table) => {
    table.tHead.querySelectorAll("th[data-key]").forEach((th) => {
      const choose = () => {
        sortDown = sortKey === th.dataset.key ? !sortDown : false;
        sortKey = th.dataset.key;
        table.tHead.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", sortDown ? "descending" : "ascending");
        applyView(table);
      };
      th.addEventListener("click", choose);
      th.addEventListener("keydown", (event) => { if (event.key === "Enter") choose(); });
    });
  });
  const filter = document.getElementById("filter");
  if (filter) filter.addEventListener("input", () => document.querySelectorAll("table.sortable").forEach(applyView));
}

function setUpLabels(root) {
  root.querySelectorAll("form.label").forEach((form) => {
    if (form.dataset.ready) return;
    form.dataset.ready = "1";
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = new URLSearchParams(new FormData(form));
      const answer = await fetch(form.action, {method: "POST", body, headers: {Accept: "application/json"}});
      const card = form.closest("figure");
      if (answer.ok) {
        const saved = await answer.json();
        card.classList.add("labelled");
        card.dataset.label = String(saved.label);
        form.querySelector("button").textContent = "Saved";
      } else {
        card.classList.add("failed");
        form.querySelector("button").textContent = (await answer.text()).slice(0, 60);
      }
    });
  });
}

async function refresh() {
  const targets = document.querySelectorAll("[data-source]");
  for (const target of targets) {
    try {
      const answer = await fetch(target.dataset.source, {headers: {Accept: "text/html"}});
      if (!answer.ok) continue;
      const html = await answer.text();
      if (html !== target.dataset.last) {
        target.innerHTML = html;
        target.dataset.last = html;
        const table = target.closest("table.sortable");
        if (table) applyView(table);
      }
    } catch (error) {
      document.getElementById("updated").textContent = "offline: retrying";
      return;
    }
  }
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

setUpTables();
setUpLabels(document);
if (document.querySelector("[data-source]")) setInterval(refresh, poll);
