// Audit log (admins): GET /api/v1/admin/audit?limit=100, rendered when the server has it.

import { h, put, errorBox, loading, emptyState, timeEl } from "./dom.js";
import { api } from "./api.js";

function detailText(detail) {
  if (detail === null || detail === undefined || detail === "") return "";
  return typeof detail === "string" ? detail : JSON.stringify(detail);
}

export function renderAudit(root) {
  let alive = true;
  const body = h("div", { id: "audit-body" }, loading("Loading the audit log…"));
  const filter = h("input", { type: "search", id: "audit-filter", placeholder: "Filter by actor, action or target", "aria-label": "Filter audit events" });
  const refresh = h("button", { type: "button", class: "small" }, "Refresh");
  let events = null;

  const draw = () => {
    if (!events) return;
    const q = filter.value.trim().toLowerCase();
    const shown = q
      ? events.filter((e) => [e.actor, e.action, e.target, detailText(e.detail)].some((x) => String(x ?? "").toLowerCase().includes(q)))
      : events;
    if (!events.length) {
      put(body, emptyState("Nothing recorded yet", "Sign-ins, token changes, document creation and webhook configuration changes appear here."));
      return;
    }
    if (!shown.length) {
      put(body, emptyState("No match", "No event matches the filter."));
      return;
    }
    put(
      body,
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { id: "audit-table" },
          h("thead", null, h("tr", null, h("th", null, "When"), h("th", null, "Actor"), h("th", null, "Action"), h("th", null, "Target"), h("th", { class: "hide-narrow" }, "Detail"))),
          h(
            "tbody",
            null,
            shown.map((e) =>
              h(
                "tr",
                null,
                h("td", { class: "nowrap" }, timeEl(e.at)),
                h("td", { class: "mono small" }, e.actor ?? ""),
                h("td", null, h("span", { class: "badge" }, e.action ?? "")),
                h("td", { class: "mono small" }, e.target ?? ""),
                h("td", { class: "hide-narrow mono xsmall" }, detailText(e.detail)),
              ),
            ),
          ),
        ),
      ),
    );
  };

  const load = async () => {
    refresh.disabled = true;
    try {
      const r = await api("GET", "/api/v1/admin/audit?limit=100");
      if (!alive) return;
      events = Array.isArray(r.events) ? r.events : [];
      draw();
    } catch (e) {
      if (!alive) return;
      if (e.status === 404 || e.status === 405 || e.status === 501) {
        put(body, emptyState("The audit log is not available", "This server does not keep an audit log yet (GET /api/v1/admin/audit answered " + e.status + ")."));
      } else if (e.status === 403) {
        put(body, emptyState("Admins only", "Only admins can read the audit log."));
      } else {
        put(body, errorBox(e, "Could not load the audit log:"));
      }
    } finally {
      refresh.disabled = false;
    }
  };
  filter.addEventListener("input", draw);
  refresh.addEventListener("click", load);
  put(
    root,
    h("div", { class: "page-head" }, h("div", null, h("h1", null, "Audit log"), h("p", { class: "sub" }, "The latest 100 security-relevant events."))),
    h(
      "section",
      { class: "card", "aria-label": "Audit events" },
      h("div", { class: "stack" }, h("div", { class: "row" }, h("div", { class: "grow" }, filter), refresh), body),
    ),
  );
  load();
  return () => {
    alive = false;
  };
}
