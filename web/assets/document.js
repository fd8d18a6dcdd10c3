// One document: a status strip and tabs (console, watch, messages, webhooks, leases, status).

import { h, put, errorBox, fmtBytes, relTime } from "./dom.js";
import { api, db, dbIdProblem } from "./api.js";
import { rememberDoc, docHref } from "./documents.js";
import { renderConsole, renderWatch } from "./console.js";
import { renderMessages } from "./messages.js";
import { renderWebhooks, renderLeases, renderStatus } from "./docmisc.js";

const TABS = [
  ["console", "SQL console", renderConsole],
  ["watch", "Live watch", renderWatch],
  ["messages", "Messages", renderMessages],
  ["webhooks", "Webhooks", renderWebhooks],
  ["leases", "Leases", renderLeases],
  ["status", "Status", renderStatus],
];

export function renderDocument(root, ctx, id, tab) {
  const problem = dbIdProblem(id);
  if (problem) {
    put(root, errorBox({ code: "invalid_db_id", message: `“${id}” is not a document name. ${problem}` }), h("p", null, h("a", { href: "#/" }, "Back to documents")));
    return null;
  }
  const current = TABS.find((t) => t[0] === tab) || TABS[0];
  const facts = h("div", { class: "facts", id: "doc-facts", "aria-live": "polite" }, h("span", { class: "muted loading" }, "Loading status…"));
  const panel = h("div", { id: "tab-panel", role: "tabpanel", "aria-labelledby": `tab-${current[0]}` });
  put(
    root,
    h(
      "div",
      { class: "page-head" },
      h(
        "div",
        { class: "grow" },
        h("p", { class: "crumbs" }, h("a", { href: "#/" }, "Documents"), " / "),
        h("h1", { class: "mono", id: "doc-title" }, id),
        h("div", { class: "sub" }, facts),
      ),
    ),
    h(
      "nav",
      { class: "tabs", role: "tablist", "aria-label": "Document sections" },
      TABS.map(([key, label]) =>
        h("a", { href: docHref(id, key), role: "tab", id: `tab-${key}`, dataset: { tab: key }, "aria-selected": key === current[0] ? "true" : "false" }, label),
      ),
    ),
    panel,
  );

  let alive = true;
  const refreshFacts = async () => {
    try {
      const s = await api("GET", `${db(id)}/_status`);
      if (!alive) return s;
      put(
        facts,
        h("span", null, h("span", { class: `dot ${s.open ? "on" : "off"}`, "aria-hidden": "true" }), s.open ? "open" : "closed"),
        h("span", null, "size ", h("b", null, fmtBytes(s.size_bytes))),
        h("span", null, "WAL ", h("b", null, fmtBytes(s.wal_bytes))),
        h("span", null, "last write ", h("b", { title: s.last_write_at || "" }, s.last_write_at ? relTime(s.last_write_at) : "never")),
        h("span", null, "watches ", h("b", null, String(s.watches))),
        h("span", null, "subscribers ", h("b", null, String(s.subscribers))),
      );
      return s;
    } catch (e) {
      if (alive) put(facts, h("span", { class: "alert-text" }, `Status unavailable: ${e.message}`));
      return null;
    }
  };
  refreshFacts().then((s) => {
    if (s) rememberDoc(ctx.me, id);
  });
  const sub = { ...ctx, id, refreshFacts };
  const cleanupTab = current[2](panel, sub);
  return () => {
    alive = false;
    if (typeof cleanupTab === "function") cleanupTab();
  };
}
