// Patchwork dashboard: plain JS, no build step. The token stays in this tab's memory only.
"use strict";

async function loadStatus() {
  const res = await fetch("/status");
  const body = await res.json();
  document.getElementById("version").textContent = "v" + body.version;
  const dl = document.getElementById("status");
  dl.replaceChildren();
  for (const [k, v] of Object.entries(body)) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = String(v);
    dl.append(dt, dd);
  }
}

async function listDbs(event) {
  event.preventDefault();
  const token = document.getElementById("token").value;
  const error = document.getElementById("error");
  error.textContent = "";
  const res = await fetch("/api/v1/dbs", { headers: { Authorization: "Bearer " + token } });
  const body = await res.json();
  const tbody = document.querySelector("#dbs tbody");
  tbody.replaceChildren();
  if (!res.ok) {
    error.textContent = body.error ? body.error.message : "request failed";
    return;
  }
  for (const db of body.dbs) {
    const tr = document.createElement("tr");
    for (const v of [db.db_id, db.size_bytes + " B", db.open ? "yes" : "no"]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    tbody.append(tr);
  }
}

document.getElementById("token-form").addEventListener("submit", listDbs);
loadStatus().catch((e) => { document.getElementById("error").textContent = String(e); });
setInterval(() => loadStatus().catch(() => {}), 5000);
