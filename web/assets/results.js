// Query results as tables, with each value's type shown (null / integer / real / text / blob /
// int64 beyond ±2^53).

import { h, b64bytes, bytesText } from "./dom.js";

export function kindOf(v) {
  if (v === null || v === undefined) return "null";
  if (typeof v === "number") return Number.isInteger(v) ? "integer" : "real";
  if (typeof v === "boolean") return "bool";
  if (typeof v === "string") return "text";
  if (typeof v === "object" && typeof v.$base64 === "string") return "blob";
  if (typeof v === "object" && typeof v.$int === "string") return "int64";
  return "json";
}

const TEXT_CAP = 2000;

/** One cell's content. */
export function valueEl(v) {
  const kind = kindOf(v);
  switch (kind) {
    case "null":
      return h("span", { class: "v-null", title: "NULL" }, "NULL");
    case "integer":
    case "real":
      return h("span", { class: "v-num", title: kind }, String(v));
    case "bool":
      return h("span", { class: "v-bool", title: "boolean" }, String(v));
    case "int64":
      return h("span", { class: "v-int", title: "integer beyond ±2^53 ({\"$int\"})" }, v.$int);
    case "blob": {
      let size = 0;
      let preview = "";
      try {
        const bytes = b64bytes(v.$base64);
        size = bytes.length;
        const text = bytesText(bytes.slice(0, 64));
        preview = text !== null && !/[\x00-\x08\x0e-\x1f]/.test(text)
          ? JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}…` : text)
          : Array.from(bytes.slice(0, 12), (b) => b.toString(16).padStart(2, "0")).join(" ") + (size > 12 ? " …" : "");
      } catch {
        preview = "(invalid base64)";
      }
      return h("span", { class: "v-blob", title: `blob, ${size} bytes ({"$base64"})` }, `blob · ${size} B `, h("span", { class: "muted" }, preview));
    }
    case "text": {
      const s = v.length > TEXT_CAP ? `${v.slice(0, TEXT_CAP)}… (${v.length} characters)` : v;
      return h("span", { class: "v-text", title: "text" }, s);
    }
    default:
      return h("span", { title: "json" }, JSON.stringify(v));
  }
}

/** The distinct kinds in each column, e.g. ["integer", "text | null"]. */
export function columnTypes(columns, rows) {
  return columns.map((_, i) => {
    const kinds = new Set();
    for (const r of rows) kinds.add(kindOf(r[i]));
    if (kinds.size === 0) return "";
    const order = ["integer", "int64", "real", "text", "blob", "bool", "json", "null"];
    return order.filter((k) => kinds.has(k)).join(" | ");
  });
}

function headRow(columns, rows) {
  const types = columnTypes(columns, rows);
  return h(
    "tr",
    null,
    columns.map((c, i) => h("th", { scope: "col" }, c, types[i] ? h("span", { class: "types" }, types[i]) : null)),
  );
}

function rowEl(row) {
  return h("tr", null, row.map((v) => h("td", null, valueEl(v))));
}

/** A result table (read answer). */
export function resultTable(columns, rows, attrs = {}) {
  const table = h(
    "table",
    { class: "result-table", ...attrs },
    h("thead", null, headRow(columns, rows)),
    h("tbody", null, rows.map(rowEl)),
  );
  return h("div", { class: "table-wrap" }, table);
}

/**
 * Updates a live table in place: cells whose value changed and new rows flash; removed rows go.
 * `wrap` is what resultTable returned (or an empty container to start one).
 */
export function updateTable(wrap, columns, rows, attrs = {}) {
  let table = wrap.querySelector("table");
  const sameHead = table && table.dataset.columns === JSON.stringify(columns);
  if (!table || !sameHead) {
    wrap.replaceChildren(resultTable(columns, rows, attrs).firstChild);
    table = wrap.querySelector("table");
    table.dataset.columns = JSON.stringify(columns);
    Array.from(table.tBodies[0].rows).forEach((tr, i) => {
      tr.dataset.key = JSON.stringify(rows[i]);
    });
    wrap.classList.add("table-wrap");
    return;
  }
  table.tHead.replaceChildren(headRow(columns, rows));
  const tbody = table.tBodies[0];
  const old = Array.from(tbody.rows);
  rows.forEach((row, i) => {
    const key = JSON.stringify(row);
    let tr = old[i];
    if (!tr) {
      tr = rowEl(row);
      tr.dataset.key = key;
      tbody.append(tr);
      flash(tr);
      return;
    }
    if (tr.dataset.key === key) return;
    const prev = tr.dataset.key ? JSON.parse(tr.dataset.key) : [];
    tr.dataset.key = key;
    row.forEach((v, j) => {
      let td = tr.cells[j];
      if (!td) {
        td = h("td");
        tr.append(td);
      }
      if (JSON.stringify(prev[j]) !== JSON.stringify(v)) {
        td.replaceChildren(valueEl(v));
        flash(td);
      }
    });
    while (tr.cells.length > row.length) tr.deleteCell(-1);
  });
  for (let i = rows.length; i < old.length; i += 1) old[i].remove();
}

function flash(el) {
  el.classList.remove("flash");
  // Restart the animation.
  void el.offsetWidth;
  el.classList.add("flash");
}

/** An exec answer (read, write, or both) as a block. */
export function resultBlock(result, title) {
  const parts = [];
  if (title) parts.push(h("h3", null, title));
  const meta = [];
  if (Array.isArray(result.columns)) {
    meta.push(`${result.row_count ?? result.rows.length} row${(result.row_count ?? result.rows.length) === 1 ? "" : "s"}`);
    if (result.truncated) meta.push("truncated (raise max_rows or add a LIMIT)");
  }
  if (result.rows_affected !== undefined) {
    meta.push(`${result.rows_affected} row${result.rows_affected === 1 ? "" : "s"} affected`);
    if (result.last_insert_id !== null && result.last_insert_id !== undefined) meta.push(`last_insert_id ${typeof result.last_insert_id === "object" ? result.last_insert_id.$int : result.last_insert_id}`);
  }
  if (meta.length) parts.push(h("p", { class: "result-meta" }, meta.join(" · ")));
  if (Array.isArray(result.columns)) {
    if (result.rows.length === 0) {
      parts.push(h("div", { class: "table-wrap" }, h("table", { class: "result-table" }, h("thead", null, headRow(result.columns, [])))), h("p", { class: "muted small" }, "No rows."));
    } else {
      parts.push(resultTable(result.columns, result.rows));
    }
  }
  return h("div", { class: "result-block stack" }, parts);
}
