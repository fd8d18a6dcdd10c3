// Machine tokens: create with scopes (shown once), list with last use, revoke.

import { h, put, errorBox, loading, emptyState, timeEl, relTime, confirmButton, copyText } from "./dom.js";
import { api, dbIdProblem } from "./api.js";

/** The spec's actions, grouped for the picker. */
const ACTION_GROUPS = [
  ["Query", ["query.read", "query.write", "query.admin"]],
  ["Messages", ["pub.publish", "pub.subscribe"]],
  ["Streams", ["stream.read", "stream.write"]],
  ["Webhooks", ["webhook.ingest"]],
  ["Leases", ["lease.acquire", "lease.renew", "lease.release"]],
  ["Blobs", ["blob.upload", "blob.read", "blob.claim", "blob.release", "blob.publish"]],
  ["Sync", ["sync.read", "sync.write"]],
  ["Presence", ["presence.write", "presence.read"]],
  ["Admin", ["admin.token"]],
];

const EXPIRY = [
  ["", "Never"],
  ["3600", "1 hour"],
  ["86400", "1 day"],
  ["604800", "7 days"],
  ["2592000", "30 days"],
  ["7776000", "90 days"],
  ["custom", "Pick a date…"],
];

const rfc3339 = (d) => d.toISOString().replace(/\.\d{3}Z$/, "Z");

export function renderTokens(root, ctx) {
  let alive = true;
  const listBody = h("div", { id: "token-list-body" }, loading("Loading tokens…"));
  const showRevoked = h("input", { type: "checkbox", id: "show-revoked" });
  const refresh = h("button", { type: "button", class: "small" }, "Refresh");
  const created = h("div", { id: "token-created", "aria-live": "polite" });
  let tokens = null;

  const statusOf = (t) => {
    if (t.revoked_at) return h("span", { class: "badge danger" }, "revoked");
    if (t.expires_at && Date.parse(t.expires_at) <= Date.now()) return h("span", { class: "badge warn" }, "expired");
    return h("span", { class: "badge ok" }, "active");
  };

  const drawList = () => {
    if (!tokens) return;
    const shown = showRevoked.checked ? tokens : tokens.filter((t) => !t.revoked_at);
    if (!shown.length) {
      put(listBody, emptyState("No tokens", tokens.length ? "Every token is revoked. Tick “Show revoked” to see them." : "Create one above for a script, a service or a webhook sender."));
      return;
    }
    put(
      listBody,
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { id: "token-list" },
          h(
            "thead",
            null,
            h("tr", null, h("th", null, "Label"), h("th", null, "Scopes"), h("th", { class: "hide-narrow" }, "Created"), h("th", { class: "hide-narrow" }, "Expires"), h("th", null, "Last used"), h("th", null, "State"), h("th", null, h("span", { class: "visually-hidden" }, "Actions"))),
          ),
          h(
            "tbody",
            null,
            shown.map((t) =>
              h(
                "tr",
                { dataset: { id: t.id } },
                h(
                  "td",
                  null,
                  h("div", null, t.label, ctx.me.subject === `token:${t.id}` ? h("span", { class: "badge self", title: "You signed in with this token: revoking it signs you out" }, "your session") : null),
                  h("div", { class: "xsmall muted mono" }, t.id),
                ),
                h(
                  "td",
                  null,
                  t.is_admin
                    ? h("span", { class: "badge accent" }, "admin: everything")
                    : h("div", { class: "chips" }, (t.scopes || []).map((s) => h("span", { class: "chip static" }, `${s.db_id} · ${s.action}${s.resource_prefix ? ` · ${s.resource_prefix}*` : ""}`))),
                ),
                h("td", { class: "hide-narrow nowrap" }, timeEl(t.created_at)),
                h("td", { class: "hide-narrow nowrap" }, t.expires_at ? h("time", { datetime: t.expires_at, title: t.expires_at }, relTime(t.expires_at)) : h("span", { class: "muted" }, "never")),
                h("td", { class: "nowrap" }, t.last_used_at ? h("time", { datetime: t.last_used_at, title: t.last_used_at }, relTime(t.last_used_at)) : h("span", { class: "muted" }, "never")),
                h("td", null, statusOf(t)),
                h(
                  "td",
                  null,
                  t.revoked_at
                    ? null
                    : confirmButton("Revoke", "Confirm revoke", async () => {
                      try {
                        await api("DELETE", `/api/v1/admin/tokens/${encodeURIComponent(t.id)}`);
                        await load();
                      } catch (e) {
                        put(listBody, errorBox(e, "Could not revoke:"));
                      }
                    }, { class: "danger small revoke", "aria-label": `Revoke ${t.label}` }),
                ),
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
      const r = await api("GET", "/api/v1/admin/tokens");
      if (!alive) return;
      tokens = r.tokens;
      drawList();
    } catch (e) {
      if (!alive) return;
      if (e.status === 403) {
        put(listBody, emptyState("Only admins manage tokens", "Your account cannot list or create machine tokens yet. Ask an admin for a token scoped to your documents."));
        formCard.hidden = true;
      } else {
        put(listBody, errorBox(e, "Could not list tokens:"));
      }
    } finally {
      refresh.disabled = false;
    }
  };
  showRevoked.addEventListener("change", drawList);
  refresh.addEventListener("click", load);

  const formCard = createForm(ctx, created, () => load());
  put(
    root,
    h("div", { class: "page-head" }, h("div", null, h("h1", null, "Tokens"), h("p", { class: "sub" }, "Machine tokens for scripts and services. The secret is shown once, when it is created."))),
    created,
    formCard,
    h(
      "section",
      { class: "card", "aria-labelledby": "token-list-title" },
      h("div", { class: "card-head" }, h("h2", { id: "token-list-title" }, "Existing tokens"), h("div", { class: "row" }, h("label", { class: "inline small", for: "show-revoked" }, showRevoked, "Show revoked"), refresh)),
      listBody,
    ),
  );
  load();
  return () => {
    alive = false;
  };
}

function createForm(ctx, createdBox, reload) {
  const scopes = [];
  const label = h("input", { type: "text", id: "token-label", maxlength: "120", autocomplete: "off", placeholder: "e.g. ci-deploy, github-webhooks" });
  const isAdmin = h("input", { type: "checkbox", id: "token-admin" });
  const expiry = h("select", { id: "token-expiry" }, EXPIRY.map(([v, t]) => h("option", { value: v }, t)));
  const expiryCustom = h("input", { type: "datetime-local", id: "token-expiry-custom", "aria-label": "Expiry date and time", hidden: true });
  expiry.addEventListener("change", () => {
    expiryCustom.hidden = expiry.value !== "custom";
    if (!expiryCustom.hidden) expiryCustom.focus();
  });

  const docInput = h("input", { type: "text", id: "scope-db", list: "scope-dbs", autocomplete: "off", spellcheck: "false", placeholder: "a document, or * for all" });
  const docList = h("datalist", { id: "scope-dbs" }, h("option", { value: "*" }, "every document"));
  const prefix = h("input", { type: "text", id: "scope-prefix", autocomplete: "off", spellcheck: "false", placeholder: "optional, e.g. chat/" });
  const actionBoxes = [];
  const actionsGrid = h(
    "div",
    { class: "stack" },
    ACTION_GROUPS.map(([group, actions]) =>
      h(
        "div",
        null,
        h("div", { class: "xsmall muted" }, group),
        h(
          "div",
          { class: "actions-grid" },
          actions.map((a) => {
            const box = h("input", { type: "checkbox", value: a, id: `act-${a.replace(".", "-")}` });
            actionBoxes.push(box);
            return h("label", { class: "inline", for: box.id }, box, a);
          }),
        ),
      ),
    ),
  );
  const chips = h("div", { class: "chips", id: "scope-chips" });
  const scopeErr = h("div", { "aria-live": "polite" });
  const addScope = h("button", { type: "button", class: "small", id: "scope-add" }, "Add scope");
  const out = h("div", { "aria-live": "polite", id: "token-form-result" });
  const submit = h("button", { type: "submit", class: "primary", id: "token-create" }, "Create token");
  const scopeSet = h(
    "fieldset",
    { id: "scope-picker" },
    h("legend", null, "Scopes"),
    h(
      "div",
      { class: "stack" },
      h(
        "div",
        { class: "grid-2" },
        h("div", { class: "field" }, h("label", { for: "scope-db" }, "Document"), docInput, docList),
        h("div", { class: "field" }, h("label", { for: "scope-prefix" }, "Resource prefix"), prefix, h("p", { class: "hint" }, "Topic, stream path, lease, endpoint or blob the token may touch.")),
      ),
      h("div", { class: "field" }, h("span", { class: "small" }, h("b", null, "Actions")), actionsGrid),
      h("div", { class: "row" }, addScope, scopeErr),
      chips,
    ),
  );

  const drawChips = () => {
    put(
      chips,
      scopes.length
        ? scopes.map((s, i) =>
          h(
            "span",
            { class: "chip" },
            `${s.db_id} · ${s.action}${s.resource_prefix ? ` · ${s.resource_prefix}*` : ""}`,
            h("button", { type: "button", "aria-label": `Remove scope ${s.db_id} ${s.action}`, onclick: () => { scopes.splice(i, 1); drawChips(); } }, "×"),
          ),
        )
        : h("span", { class: "muted small" }, "No scopes yet."),
    );
  };

  /** Adds what the picker holds; returns an error text or null. */
  const takePicker = (strict) => {
    const d = docInput.value.trim();
    const picked = actionBoxes.filter((b) => b.checked).map((b) => b.value);
    if (!d && !picked.length) return strict ? "Pick a document and at least one action." : null;
    if (!d) return "Pick a document (or * for all).";
    if (d !== "*" && dbIdProblem(d)) return `Document: ${dbIdProblem(d)}`;
    if (!picked.length) return "Tick at least one action.";
    const p = prefix.value.trim();
    for (const action of picked) {
      const s = { db_id: d, action };
      if (p) s.resource_prefix = p;
      if (!scopes.some((x) => x.db_id === s.db_id && x.action === s.action && x.resource_prefix === s.resource_prefix)) scopes.push(s);
    }
    actionBoxes.forEach((b) => {
      b.checked = false;
    });
    prefix.value = "";
    drawChips();
    return null;
  };
  addScope.addEventListener("click", () => {
    const problem = takePicker(true);
    put(scopeErr, problem ? h("span", { class: "alert-text small" }, problem) : null);
  });
  isAdmin.addEventListener("change", () => {
    scopeSet.disabled = isAdmin.checked;
  });

  const form = h(
    "form",
    { id: "token-form", class: "stack", novalidate: true },
    h(
      "div",
      { class: "grid-2" },
      h("div", { class: "field" }, h("label", { for: "token-label" }, "Label"), label),
      h("div", { class: "field" }, h("label", { for: "token-expiry" }, "Expires"), h("div", { class: "row" }, h("div", { class: "grow" }, expiry), expiryCustom)),
    ),
    ctx.me.is_admin ? h("label", { class: "inline", for: "token-admin" }, isAdmin, "Admin token (every action on every document; no scopes)") : null,
    scopeSet,
    h("div", { class: "row" }, submit, out),
  );

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    put(out);
    const l = label.value.trim();
    if (!l) {
      label.setAttribute("aria-invalid", "true");
      put(out, h("span", { class: "alert-text small" }, "Give the token a label, so you know later what it is for."));
      label.focus();
      return;
    }
    label.removeAttribute("aria-invalid");
    const body = { label: l };
    if (isAdmin.checked) {
      body.is_admin = true;
    } else {
      const problem = takePicker(false);
      if (problem) {
        put(scopeErr, h("span", { class: "alert-text small" }, problem));
        return;
      }
      if (!scopes.length) {
        put(out, h("span", { class: "alert-text small" }, "Add at least one scope, or make it an admin token."));
        docInput.focus();
        return;
      }
      body.scopes = scopes.map((s) => ({ ...s }));
    }
    if (expiry.value === "custom") {
      const t = Date.parse(expiryCustom.value);
      if (Number.isNaN(t)) {
        put(out, h("span", { class: "alert-text small" }, "Pick the expiry date and time."));
        expiryCustom.focus();
        return;
      }
      body.expires_at = rfc3339(new Date(t));
    } else if (expiry.value) {
      body.expires_at = rfc3339(new Date(Date.now() + Number(expiry.value) * 1000));
    }
    submit.disabled = true;
    try {
      const t = await api("POST", "/api/v1/admin/tokens", body);
      put(createdBox, createdPanel(t, createdBox));
      createdBox.querySelector("input").focus();
      createdBox.querySelector("input").select();
      label.value = "";
      scopes.length = 0;
      drawChips();
      reload();
    } catch (e) {
      put(out, errorBox(e, "Could not create the token:"));
    } finally {
      submit.disabled = false;
    }
  });

  (async () => {
    try {
      const r = await api("GET", "/api/v1/dbs");
      for (const d of r.dbs) docList.append(h("option", { value: d.db_id }));
    } catch {
      /* non-admins cannot list: the field is free text */
    }
  })();
  drawChips();
  return h("section", { class: "card", "aria-labelledby": "token-new-title", id: "token-new" }, h("h2", { id: "token-new-title" }, "New token"), form);
}

function createdPanel(t, box) {
  const value = h("input", { type: "text", readonly: true, id: "new-token-value", value: t.token, "aria-label": "The new token", spellcheck: "false" });
  const copy = h("button", { type: "button", id: "new-token-copy" }, "Copy");
  copy.addEventListener("click", () => copyText(t.token, copy));
  const firstDb = (t.scopes || []).map((s) => s.db_id).find((d) => d !== "*");
  const path = t.is_admin ? "/api/v1/dbs" : `/api/v1/db/${encodeURIComponent(firstDb || "notes")}/_status`;
  const curl = `curl -H "Authorization: Bearer ${t.token}" ${location.origin}${path}`;
  const copyCurl = h("button", { type: "button", class: "small" }, "Copy");
  copyCurl.addEventListener("click", () => copyText(curl, copyCurl));
  const done = h("button", { type: "button", class: "small", id: "new-token-done" }, "Done, I saved it");
  done.addEventListener("click", () => put(box));
  return h(
    "section",
    { class: "success stack card", "aria-labelledby": "token-made-title" },
    h("h2", { id: "token-made-title" }, `Token “${t.label}” created`),
    h("p", { class: "small" }, h("b", null, "Copy it now."), " It is shown only this once; Patchwork keeps only a hash."),
    h("div", { class: "secret" }, value, copy),
    h("div", { class: "row" }, h("pre", { class: "cmd grow", id: "new-token-curl" }, curl), copyCurl),
    h("div", { class: "row end" }, done),
  );
}
