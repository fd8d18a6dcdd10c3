// Documents: the list (GET /api/v1/dbs), a filter, and create (POST /api/v1/db/{id}/_open).

import { h, put, errorBox, loading, emptyState, fmtBytes, store, timeEl } from "./dom.js";
import { api, db, dbIdProblem } from "./api.js";

/** Documents this browser opened recently, per signed-in subject (non-admins cannot list). */
export function rememberDoc(me, id) {
  const key = `patchwork.recent.${me.subject}`;
  const list = store.get(key, []).filter((x) => x !== id);
  list.unshift(id);
  store.set(key, list.slice(0, 20));
}

function recentDocs(me) {
  return store.get(`patchwork.recent.${me.subject}`, []);
}

export const docHref = (id, tab) => `#/docs/${encodeURIComponent(id)}${tab ? `/${tab}` : ""}`;

export function renderDocuments(root, ctx) {
  let alive = true;
  const listBody = h("div", { id: "doc-list-body", class: "stack" }, loading("Loading documents…"));
  const filter = h("input", {
    type: "search",
    id: "doc-filter",
    placeholder: "Filter by name",
    "aria-label": "Filter documents by name",
    autocomplete: "off",
  });
  const refresh = h("button", { type: "button", class: "small", id: "doc-refresh" }, "Refresh");
  const count = h("span", { class: "muted small", id: "doc-count" });

  put(
    root,
    h(
      "div",
      { class: "page-head" },
      h("div", null, h("h1", null, "Documents"), h("p", { class: "sub" }, "Each document is its own SQLite database, created on first use.")),
    ),
    createCard(ctx),
    h(
      "section",
      { class: "card", "aria-labelledby": "doc-list-title" },
      h("div", { class: "card-head" }, h("h2", { id: "doc-list-title" }, ctx.me?.is_admin ? "All documents" : "Your documents"), h("div", { class: "row" }, count, refresh)),
      h("div", { class: "field" }, filter),
      h("div", { class: "field" }, listBody),
    ),
  );

  let dbs = null;
  const draw = () => {
    if (!dbs) return;
    const q = filter.value.trim().toLowerCase();
    const shown = q ? dbs.filter((d) => d.db_id.toLowerCase().includes(q)) : dbs;
    count.textContent = q ? `${shown.length} of ${dbs.length}` : `${dbs.length} document${dbs.length === 1 ? "" : "s"}`;
    if (dbs.length === 0) {
      put(listBody, emptyState("No documents yet", "Create the first one above. It is an empty SQLite database until you add tables."));
      return;
    }
    if (shown.length === 0) {
      put(listBody, emptyState("No match", `No document name contains “${filter.value.trim()}”.`));
      return;
    }
    put(
      listBody,
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "doc-list", id: "doc-list" },
          h(
            "thead",
            null,
            h(
              "tr",
              null,
              h("th", { scope: "col" }, "Document"),
              h("th", { scope: "col", class: "num" }, "Size"),
              h("th", { scope: "col" }, "State"),
              h("th", { scope: "col", class: "hide-narrow" }, "Last write"),
              h("th", { scope: "col", class: "hide-narrow" }, "Owner"),
            ),
          ),
          h(
            "tbody",
            null,
            shown.map((d) =>
              h(
                "tr",
                { dataset: { db: d.db_id } },
                h("td", null, h("a", { href: docHref(d.db_id) }, d.db_id)),
                h("td", { class: "num nowrap" }, fmtBytes(d.size_bytes)),
                h("td", { class: "nowrap" }, h("span", { class: `dot ${d.open ? "on" : "off"}`, "aria-hidden": "true" }), d.open ? "open" : "closed"),
                h("td", { class: "nowrap muted hide-narrow" }, d.last_write_at ? timeEl(d.last_write_at, true) : "—"),
                h("td", { class: "muted hide-narrow" }, d.owner ?? "—"),
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
      const body = await api("GET", "/api/v1/dbs");
      if (!alive) return;
      dbs = body.dbs;
      draw();
    } catch (e) {
      if (!alive) return;
      count.textContent = "";
      if (e.status === 403) {
        const recent = recentDocs(ctx.me);
        put(
          listBody,
          emptyState(
            "Documents you create appear here",
            "Listing every document needs an admin. Create a document above, or open one you know by name.",
          ),
          recent.length
            ? h("div", null, h("h3", null, "Opened recently in this browser"), h("ul", null, recent.map((id) => h("li", null, h("a", { href: docHref(id) }, id)))))
            : null,
        );
      } else {
        put(listBody, errorBox(e, "Could not list documents:"));
      }
    } finally {
      refresh.disabled = false;
    }
  };
  filter.addEventListener("input", draw);
  refresh.addEventListener("click", load);
  load();
  return () => {
    alive = false;
  };
}

function createCard(ctx) {
  const input = h("input", {
    type: "text",
    id: "new-doc-id",
    name: "db_id",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "e.g. notes",
    maxlength: "128",
    "aria-describedby": "new-doc-hint",
  });
  const hint = h("p", { class: "hint", id: "new-doc-hint" }, "Letters, digits, '.', '_' and '-', up to 128 characters.");
  const out = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "primary", id: "new-doc-submit" }, "Create");
  const validate = (strict) => {
    const problem = dbIdProblem(input.value.trim());
    const show = problem && (strict || input.value !== "");
    input.setAttribute("aria-invalid", show ? "true" : "false");
    hint.textContent = show ? problem : "Letters, digits, '.', '_' and '-', up to 128 characters.";
    hint.classList.toggle("alert-text", Boolean(show));
    return problem;
  };
  input.addEventListener("input", () => validate(false));
  const form = h(
    "form",
    { id: "new-doc", novalidate: true },
    h("label", { for: "new-doc-id" }, "Name"),
    h("div", { class: "row" }, h("div", { class: "grow" }, input), submit),
    hint,
    out,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const id = input.value.trim();
    if (validate(true)) {
      input.focus();
      return;
    }
    submit.disabled = true;
    put(out);
    try {
      await api("POST", `${db(id)}/_open`);
      rememberDoc(ctx.me, id);
      ctx.navigate(docHref(id));
    } catch (e) {
      put(out, errorBox(e, "Could not create it:"));
    } finally {
      submit.disabled = false;
    }
  });
  return h("section", { class: "card", "aria-labelledby": "new-doc-title" }, h("h2", { id: "new-doc-title" }, "New document"), form);
}
