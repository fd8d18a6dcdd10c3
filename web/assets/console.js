// SQL console (query/exec, query/batch) and live watch (query/watch, SSE over POST).

import { h, put, errorBox, loading, emptyState, fmtTime, store } from "./dom.js";
import { api, db, headers, toError, readSse, unauthorized } from "./api.js";
import { resultBlock, updateTable } from "./results.js";

const isMac = /Mac|iPhone|iPad/.test(navigator.platform || "");
const runKeys = isMac ? "⌘ Enter" : "Ctrl Enter";

/** Splits a script into statements at top-level semicolons (quotes, comments, triggers kept). */
export function splitStatements(sql) {
  const out = [];
  let cur = "";
  let i = 0;
  const flush = () => {
    const stripped = cur.replace(/--[^\n]*/g, "").replace(/\/\*[\s\S]*?\*\//g, "").trim();
    if (stripped) out.push(cur.trim());
    cur = "";
  };
  while (i < sql.length) {
    const c = sql[i];
    if (c === "'" || c === '"' || c === "`" || c === "[") {
      const close = c === "[" ? "]" : c;
      let j = i + 1;
      while (j < sql.length) {
        if (sql[j] === close) {
          if (close !== "]" && sql[j + 1] === close) {
            j += 2;
            continue;
          }
          break;
        }
        j += 1;
      }
      cur += sql.slice(i, j + 1);
      i = j + 1;
      continue;
    }
    if (c === "-" && sql[i + 1] === "-") {
      const j = sql.indexOf("\n", i);
      const end = j === -1 ? sql.length : j;
      cur += sql.slice(i, end);
      i = end;
      continue;
    }
    if (c === "/" && sql[i + 1] === "*") {
      const j = sql.indexOf("*/", i + 2);
      const end = j === -1 ? sql.length : j + 2;
      cur += sql.slice(i, end);
      i = end;
      continue;
    }
    if (c === ";") {
      // Inside CREATE TRIGGER … BEGIN … END the statement ends only after END.
      const inTrigger = /^\s*CREATE\s+(TEMP\w*\s+)?TRIGGER\b/i.test(cur) && !/\bEND\s*$/i.test(cur);
      if (inTrigger) {
        cur += c;
        i += 1;
        continue;
      }
      flush();
      i += 1;
      continue;
    }
    cur += c;
    i += 1;
  }
  flush();
  return out;
}

/** "09:41:07": a status line's time of day. */
const clock = (iso) => fmtTime(iso).slice(11);

function historyKey(id) {
  return `patchwork.history.${id}`;
}

export function renderConsole(root, ctx) {
  const { id } = ctx;
  const sql = h("textarea", {
    id: "sql",
    name: "sql",
    rows: "6",
    spellcheck: "false",
    autocomplete: "off",
    placeholder: "SELECT * FROM sqlite_schema",
    "aria-describedby": "sql-hint",
  });
  const batch = h("input", { type: "checkbox", id: "batch" });
  const run = h("button", { type: "submit", class: "primary", id: "run" }, "Run");
  const runState = h("span", { class: "small" });
  const result = h("div", { id: "result", "aria-live": "polite", class: "stack" }, emptyState("No results yet", `Write a statement and press Run (${runKeys}).`));
  const historyList = h("ul", { class: "history", id: "history" });
  const clearHistory = h("button", { type: "button", class: "link small" }, "Clear");

  const drawHistory = () => {
    const items = store.get(historyKey(id), []);
    if (!items.length) {
      put(historyList, h("li", { class: "muted small" }, "Statements you run are kept here, in this browser."));
      clearHistory.hidden = true;
      return;
    }
    clearHistory.hidden = false;
    put(
      historyList,
      items.map((item) =>
        h(
          "li",
          null,
          h(
            "button",
            {
              type: "button",
              title: `${item.sql}\n(${fmtTime(item.at)}${item.batch ? ", batch" : ""})`,
              onclick: () => {
                sql.value = item.sql;
                batch.checked = Boolean(item.batch);
                sql.focus();
              },
            },
            item.sql.replace(/\s+/g, " "),
          ),
        ),
      ),
    );
  };
  clearHistory.addEventListener("click", () => {
    store.set(historyKey(id), []);
    drawHistory();
  });
  const remember = (text, isBatch) => {
    const items = store.get(historyKey(id), []).filter((x) => x.sql !== text);
    items.unshift({ sql: text, batch: isBatch, at: new Date().toISOString() });
    store.set(historyKey(id), items.slice(0, 50));
    drawHistory();
  };

  const form = h(
    "form",
    { id: "console-form", class: "stack console-editor" },
    h("div", { class: "field" }, h("label", { for: "sql" }, "SQL"), sql),
    h(
      "div",
      { class: "row" },
      run,
      h("span", { class: "kbd", id: "sql-hint", title: "Runs the statement" }, runKeys),
      runState,
      h("span", { class: "grow" }),
      h("label", { class: "inline", for: "batch" }, batch, "Batch: several statements, one transaction"),
    ),
  );

  let running = false;
  let runs = 0;
  const execute = async () => {
    if (running) return;
    const text = sql.value.trim();
    if (!text) {
      put(result, errorBox({ code: "empty_statement", message: "Write a statement first." }));
      sql.focus();
      return;
    }
    running = true;
    run.disabled = true;
    const started = performance.now();
    put(runState, loading("Running…"));
    try {
      let answers;
      if (batch.checked) {
        const statements = splitStatements(text).map((s) => ({ sql: s }));
        const body = await api("POST", `${db(id)}/query/batch`, { statements });
        answers = body.results.map((r, i) => [r, `Statement ${i + 1} of ${statements.length}: ${statements[i].sql.slice(0, 80)}`]);
      } else {
        answers = [[await api("POST", `${db(id)}/query/exec`, { sql: text }), null]];
      }
      const ms = Math.round(performance.now() - started);
      put(result, h("p", { class: "result-meta" }, `Ran in ${ms} ms`), answers.map(([r, title]) => resultBlock(r, title)));
      remember(text, batch.checked);
      if (answers.some(([r]) => r.rows_affected !== undefined)) ctx.refreshFacts();
    } catch (e) {
      let prefix = null;
      if (e.details && Number.isInteger(e.details.index)) prefix = `Statement ${e.details.index + 1}:`;
      const extra = e.code === "multiple_statements" && !batch.checked
        ? h("p", { class: "small muted" }, "Tick “Batch” to run several statements in one transaction.")
        : null;
      put(result, errorBox(e, prefix), extra);
      remember(text, batch.checked);
    } finally {
      running = false;
      run.disabled = false;
      put(runState);
      runs += 1;
      result.dataset.runs = String(runs);
    }
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    execute();
  });
  sql.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      execute();
    }
  });

  put(
    root,
    h(
      "div",
      { class: "console-layout" },
      h(
        "div",
        { class: "stack" },
        h("section", { class: "card", "aria-label": "Query" }, form),
        h("section", { class: "card", "aria-labelledby": "result-title" }, h("h2", { id: "result-title", class: "visually-hidden" }, "Result"), result),
      ),
      h(
        "aside",
        { class: "card", "aria-labelledby": "history-title" },
        h("div", { class: "card-head" }, h("h2", { id: "history-title" }, "History"), clearHistory),
        historyList,
      ),
    ),
  );
  drawHistory();
  sql.focus();
  return null;
}

export function renderWatch(root, ctx) {
  const { id } = ctx;
  const key = `patchwork.watch.${id}`;
  const sql = h("textarea", {
    id: "watch-sql",
    rows: "3",
    spellcheck: "false",
    placeholder: "SELECT * FROM items ORDER BY id",
  });
  sql.value = store.get(key, "");
  const start = h("button", { type: "submit", class: "primary", id: "watch-start" }, "Start watching");
  const stopBtn = h("button", { type: "button", id: "watch-stop", disabled: true }, "Stop");
  const status = h("p", { class: "small", id: "watch-status", "aria-live": "polite" }, h("span", { class: "dot off", "aria-hidden": "true" }), "Not watching");
  const errors = h("div", { id: "watch-error" });
  const table = h("div", { id: "watch-result" }, emptyState("Nothing watched yet", "A read-only query re-runs whenever a write touches the tables it reads; changed cells light up."));

  let ctrl = null;
  let info = { watch_id: null, seq: 0, hash: "", at: null, beat: null };
  const drawStatus = (mode, text) => {
    const dot = { live: "dot live", off: "dot off", err: "dot err", wait: "dot" }[mode];
    put(status, h("span", { class: dot, "aria-hidden": "true" }), text);
  };
  const liveText = () =>
    `Live · watch ${info.watch_id} · seq ${info.seq} · result ${info.hash.slice(0, 8)} · changed ${clock(info.at)}${info.beat ? ` · heartbeat ${clock(info.beat)}` : ""}`;

  const stop = (why) => {
    if (ctrl) ctrl.abort();
    ctrl = null;
    start.textContent = "Start watching";
    stopBtn.disabled = true;
    if (why) drawStatus("off", why);
  };

  const begin = async () => {
    const text = sql.value.trim();
    if (!text) {
      put(errors, errorBox({ code: "empty_statement", message: "Write a read-only query first." }));
      sql.focus();
      return;
    }
    stop();
    store.set(key, text);
    put(errors);
    const mine = new AbortController();
    ctrl = mine;
    start.textContent = "Restart";
    stopBtn.disabled = false;
    drawStatus("wait", "Connecting…");
    let res;
    try {
      res = await fetch(`${db(id)}/query/watch`, {
        method: "POST",
        credentials: "same-origin",
        headers: headers("POST", { "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify({ sql: text, options: { heartbeat_seconds: 15 } }),
        signal: mine.signal,
      });
    } catch (e) {
      if (mine.signal.aborted) return;
      stop();
      drawStatus("err", "Could not reach the server");
      return;
    }
    if (!res.ok) {
      const err = await toError(res);
      stop();
      drawStatus("err", "Refused");
      put(errors, errorBox(err, "The watch was refused:"));
      if (err.status === 401) unauthorized(err);
      return;
    }
    try {
      await readSse(
        res,
        (ev) => {
          if (ctrl !== mine) return;
          let data = {};
          try {
            data = JSON.parse(ev.data);
          } catch {
            return;
          }
          if (ev.event === "snapshot" || ev.event === "update") {
            info = { ...info, watch_id: data.watch_id, seq: data.seq, hash: data.result_hash || ev.id || "", at: new Date().toISOString() };
            if (ev.event === "snapshot") table.replaceChildren();
            updateTable(table, data.columns, data.rows, { id: "watch-table" });
            put(errors);
            drawStatus("live", liveText());
          } else if (ev.event === "heartbeat") {
            info.beat = new Date().toISOString();
            if (info.watch_id === null) info.watch_id = data.watch_id;
            drawStatus("live", liveText());
          } else if (ev.event === "error") {
            put(errors, errorBox({ code: data.code, message: data.message }, "The watch reported:"));
          }
        },
        mine.signal,
      );
    } catch {
      /* the connection dropped: reported below */
    }
    if (ctrl === mine) {
      stop();
      drawStatus("err", "The server closed the watch. Press Restart to watch again.");
    }
  };

  const form = h(
    "form",
    { id: "watch-form", class: "stack" },
    h("div", { class: "field" }, h("label", { for: "watch-sql" }, "Read-only query"), sql),
    h("div", { class: "row" }, start, stopBtn, h("span", { class: "kbd" }, runKeys)),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    begin();
  });
  sql.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      begin();
    }
  });
  stopBtn.addEventListener("click", () => stop("Stopped"));

  put(
    root,
    h("section", { class: "card", "aria-label": "Watch query" }, form),
    h(
      "section",
      { class: "card", "aria-labelledby": "watch-title" },
      h("div", { class: "card-head" }, h("h2", { id: "watch-title" }, "Live result"), status),
      errors,
      table,
    ),
  );
  sql.focus();
  return () => stop();
}
