// Document tabs: webhook inbox + signature config, leases, status.

import { h, put, errorBox, loading, emptyState, fmtTime, fmtCountdown, fmtBytes, timeEl, b64bytes, bytesText, prettyJsonText, copyText } from "./dom.js";
import { api, db } from "./api.js";

const INBOX_SQL =
  "SELECT id, endpoint, received_at, method, query_string, headers_json, content_type, payload, signature_valid, delivery_id FROM webhook_inbox ORDER BY id DESC LIMIT 50";
const CONFIGS_SQL =
  "SELECT endpoint, scheme, enforce, signature_header, publish_topic FROM _patchwork_webhook_config ORDER BY endpoint";

const endpointPath = (ep) => ep.split("/").map(encodeURIComponent).join("/");

function rowsAsObjects(result) {
  return result.rows.map((r) => Object.fromEntries(result.columns.map((c, i) => [c, r[i]])));
}

export function renderWebhooks(root, ctx) {
  const { id } = ctx;
  let alive = true;
  const origin = location.origin;
  const inbox = h("div", { id: "webhook-inbox", class: "stack" }, loading("Loading the inbox…"));
  const refresh = h("button", { type: "button", class: "small" }, "Refresh");
  const endpoints = h("datalist", { id: "webhook-endpoints" });
  const configList = h("div", { id: "webhook-configs" });
  const example = `${origin}/api/v1/db/${encodeURIComponent(id)}/webhooks/github/push?access_token=…`;

  const loadInbox = async () => {
    refresh.disabled = true;
    try {
      const r = await api("POST", `${db(id)}/query/exec`, { sql: INBOX_SQL });
      if (!alive) return;
      const items = rowsAsObjects(r);
      const names = new Set(items.map((x) => x.endpoint));
      put(endpoints, Array.from(names).map((n) => h("option", { value: n })));
      if (!items.length) {
        put(inbox, emptyState("No deliveries yet", "Point a sender at the URL above; each delivery is stored here as it arrives."));
        return;
      }
      put(
        inbox,
        h(
          "ul",
          { class: "feed" },
          items.map((d) => {
            let payload = "";
            let size = 0;
            const b64 = d.payload && d.payload.$base64 !== undefined ? d.payload.$base64 : null;
            if (b64 !== null) {
              const bytes = b64bytes(b64);
              size = bytes.length;
              const text = bytesText(bytes);
              payload = text === null ? `${size} bytes · base64 ${b64.slice(0, 200)}` : prettyJsonText(text);
            } else if (typeof d.payload === "string") {
              payload = d.payload;
              size = d.payload.length;
            }
            const sig = d.signature_valid === null ? h("span", { class: "badge" }, "no check")
              : d.signature_valid === 1 ? h("span", { class: "badge ok" }, "signature valid")
                : h("span", { class: "badge danger" }, "signature invalid");
            return h(
              "li",
              null,
              h(
                "div",
                { class: "meta" },
                h("span", { class: "topic" }, d.endpoint),
                h("span", null, `#${d.id}`),
                h("span", null, d.method),
                h("time", { datetime: d.received_at, title: d.received_at }, fmtTime(d.received_at)),
                h("span", null, d.content_type || "no content type"),
                h("span", null, fmtBytes(size)),
                sig,
                d.delivery_id ? h("span", { class: "mono" }, d.delivery_id) : null,
              ),
              h(
                "details",
                null,
                h("summary", null, "Headers and body"),
                d.query_string ? h("p", { class: "small mono" }, `?${d.query_string}`) : null,
                h("pre", { class: "payload" }, prettyJsonText(d.headers_json || "{}")),
                h("pre", { class: "payload" }, payload || "(empty body)"),
              ),
            );
          }),
        ),
      );
    } catch (e) {
      if (alive) put(inbox, errorBox(e, "Could not read webhook_inbox:"));
    } finally {
      refresh.disabled = false;
    }
  };

  const loadConfigs = async () => {
    try {
      const r = await api("POST", `${db(id)}/query/exec`, { sql: CONFIGS_SQL });
      if (!alive) return;
      const items = rowsAsObjects(r);
      for (const c of items) {
        if (!endpoints.querySelector(`option[value="${CSS.escape(c.endpoint)}"]`)) endpoints.append(h("option", { value: c.endpoint }));
      }
      put(
        configList,
        items.length
          ? h(
            "div",
            { class: "table-wrap" },
            h(
              "table",
              null,
              h("thead", null, h("tr", null, h("th", null, "Endpoint"), h("th", null, "Scheme"), h("th", null, "Enforced"), h("th", { class: "hide-narrow" }, "Publishes to"))),
              h(
                "tbody",
                null,
                items.map((c) =>
                  h(
                    "tr",
                    null,
                    h("td", null, h("button", { type: "button", class: "link mono", onclick: () => { epInput.value = c.endpoint; loadConfig(); } }, c.endpoint)),
                    h("td", null, c.scheme),
                    h("td", null, c.enforce ? "yes" : "no"),
                    h("td", { class: "hide-narrow mono" }, c.publish_topic || "—"),
                  ),
                ),
              ),
            ),
          )
          : h("p", { class: "muted small" }, "No endpoint checks signatures yet."),
      );
    } catch {
      // Reading the config table is a convenience; the form below works without it.
      put(configList);
    }
  };

  // ---- signature config form ----
  const epInput = h("input", { type: "text", id: "wh-endpoint", list: "webhook-endpoints", autocomplete: "off", spellcheck: "false", placeholder: "github/push" });
  const scheme = h("select", { id: "wh-scheme" }, h("option", { value: "github" }, "GitHub (X-Hub-Signature-256)"), h("option", { value: "stripe" }, "Stripe (Stripe-Signature)"), h("option", { value: "hmac-sha256" }, "Generic HMAC-SHA256"));
  const secret = h("input", { type: "password", id: "wh-secret", autocomplete: "new-password" });
  const enforce = h("input", { type: "checkbox", id: "wh-enforce" });
  const sigHeader = h("input", { type: "text", id: "wh-header", placeholder: "X-Signature", spellcheck: "false" });
  const headerField = h("div", { class: "field" }, h("label", { for: "wh-header" }, "Signature header"), sigHeader);
  const publishTopic = h("input", { type: "text", id: "wh-topic", placeholder: "optional, e.g. webhooks/github", spellcheck: "false" });
  const cfgOut = h("div", { "aria-live": "polite", id: "wh-result" });
  const load = h("button", { type: "button", class: "small" }, "Load");
  const save = h("button", { type: "submit", class: "primary" }, "Save");
  const del = h("button", { type: "button", class: "danger" }, "Remove check");
  const syncScheme = () => {
    headerField.hidden = scheme.value !== "hmac-sha256";
  };
  scheme.addEventListener("change", syncScheme);
  syncScheme();

  const endpointOk = () => {
    const ep = epInput.value.trim();
    if (!ep) {
      put(cfgOut, h("span", { class: "alert-text small" }, "Enter an endpoint name."));
      epInput.focus();
      return null;
    }
    return ep;
  };
  async function loadConfig() {
    const ep = endpointOk();
    if (!ep) return;
    put(cfgOut, loading());
    try {
      const c = await api("GET", `${db(id)}/webhooks/_config/${endpointPath(ep)}`);
      scheme.value = c.scheme;
      enforce.checked = Boolean(c.enforce);
      sigHeader.value = c.signature_header || "";
      publishTopic.value = c.publish_topic || "";
      secret.value = "";
      syncScheme();
      put(cfgOut, h("span", { class: "small" }, `Loaded. The secret is never shown; enter it again to save changes.`));
    } catch (e) {
      if (e.status === 404) put(cfgOut, h("span", { class: "small muted" }, `“${ep}” has no signature check.`));
      else put(cfgOut, errorBox(e));
    }
  }
  load.addEventListener("click", loadConfig);
  del.addEventListener("click", async () => {
    const ep = endpointOk();
    if (!ep) return;
    try {
      await api("DELETE", `${db(id)}/webhooks/_config/${endpointPath(ep)}`);
      put(cfgOut, h("span", { class: "small" }, `Removed the check of “${ep}”.`));
      loadConfigs();
    } catch (e) {
      put(cfgOut, errorBox(e));
    }
  });
  const cfgForm = h(
    "form",
    { class: "stack", id: "webhook-config-form" },
    h("div", { class: "field" }, h("label", { for: "wh-endpoint" }, "Endpoint"), h("div", { class: "row" }, h("div", { class: "grow" }, epInput), load)),
    h("div", { class: "field" }, h("label", { for: "wh-scheme" }, "Scheme"), scheme),
    h("div", { class: "field" }, h("label", { for: "wh-secret" }, "Secret"), secret),
    headerField,
    h("div", { class: "field" }, h("label", { for: "wh-topic" }, "Publish a message on each delivery to"), publishTopic),
    h("label", { class: "inline", for: "wh-enforce" }, enforce, "Refuse deliveries with a bad or missing signature (401)"),
    h("div", { class: "row" }, save, del),
    cfgOut,
  );
  cfgForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const ep = endpointOk();
    if (!ep) return;
    if (!secret.value) {
      put(cfgOut, h("span", { class: "alert-text small" }, "Enter the shared secret."));
      secret.focus();
      return;
    }
    const body = { scheme: scheme.value, secret: secret.value, enforce: enforce.checked };
    if (scheme.value === "hmac-sha256" && sigHeader.value.trim()) body.signature_header = sigHeader.value.trim();
    if (publishTopic.value.trim()) body.publish_topic = publishTopic.value.trim();
    save.disabled = true;
    try {
      await api("PUT", `${db(id)}/webhooks/_config/${endpointPath(ep)}`, body);
      secret.value = "";
      put(cfgOut, h("span", { class: "small" }, `Saved the check of “${ep}”.`));
      loadConfigs();
    } catch (e) {
      put(cfgOut, errorBox(e));
    } finally {
      save.disabled = false;
    }
  });

  const copyBtn = h("button", { type: "button", class: "small" }, "Copy");
  copyBtn.addEventListener("click", () => copyText(example, copyBtn));
  refresh.addEventListener("click", loadInbox);

  put(
    root,
    endpoints,
    h(
      "section",
      { class: "card", "aria-labelledby": "wh-url-title" },
      h("h2", { id: "wh-url-title" }, "Receiving webhooks"),
      h("p", { class: "small muted" }, "Senders post to any endpoint name under this URL. The token needs ", h("code", null, "webhook.ingest"), " (create one on the ", h("a", { href: "#/tokens" }, "Tokens"), " page); it is removed from what is stored."),
      h("div", { class: "row" }, h("pre", { class: "cmd grow" }, example), copyBtn),
    ),
    h(
      "div",
      { class: "grid-2" },
      h(
        "section",
        { class: "card", "aria-labelledby": "wh-inbox-title" },
        h("div", { class: "card-head" }, h("h2", { id: "wh-inbox-title" }, "Inbox · latest 50"), refresh),
        inbox,
      ),
      h(
        "section",
        { class: "card", "aria-labelledby": "wh-cfg-title" },
        h("h2", { id: "wh-cfg-title" }, "Signature checks"),
        h("div", { class: "stack" }, configList, cfgForm),
      ),
    ),
  );
  loadInbox().then(loadConfigs);
  return () => {
    alive = false;
  };
}

export function renderLeases(root, ctx) {
  const { id } = ctx;
  let alive = true;
  let leases = [];
  const body = h("div", { id: "leases" }, loading("Loading leases…"));
  const refresh = h("button", { type: "button", class: "small" }, "Refresh");
  const countdowns = [];

  const draw = () => {
    countdowns.length = 0;
    if (!leases.length) {
      put(body, emptyState("No leases", "Clients take one with POST …/leases/acquire; holders, fences and expiry show up here."));
      return;
    }
    put(
      body,
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { id: "lease-table" },
          h("thead", null, h("tr", null, h("th", null, "Resource"), h("th", null, "Holder"), h("th", { class: "num" }, "Fence"), h("th", null, "Expires"))),
          h(
            "tbody",
            null,
            leases.map((l) => {
              const cd = h("span", { class: "badge" });
              countdowns.push([cd, Date.parse(l.expires_at)]);
              return h(
                "tr",
                null,
                h("td", { class: "mono" }, l.resource),
                h("td", { class: "mono" }, l.owner),
                h("td", { class: "num mono" }, String(l.fence)),
                h("td", null, cd, " ", h("span", { class: "muted small hide-narrow" }, timeEl(l.expires_at))),
              );
            }),
          ),
        ),
      ),
    );
    tick();
  };
  const tick = () => {
    const now = Date.now();
    for (const [el, t] of countdowns) {
      const left = t - now;
      el.textContent = fmtCountdown(left);
      el.className = left <= 0 ? "badge" : left < 10000 ? "badge warn" : "badge ok";
    }
  };
  const load = async () => {
    refresh.disabled = true;
    try {
      const r = await api("GET", `${db(id)}/leases`);
      if (!alive) return;
      leases = r.leases;
      draw();
    } catch (e) {
      if (alive) put(body, errorBox(e, "Could not list leases:"));
    } finally {
      refresh.disabled = false;
    }
  };
  refresh.addEventListener("click", load);
  const ticker = setInterval(tick, 1000);
  const poll = setInterval(load, 10000);
  put(
    root,
    h(
      "section",
      { class: "card", "aria-labelledby": "leases-title" },
      h("div", { class: "card-head" }, h("h2", { id: "leases-title" }, "Leases"), refresh),
      h("p", { class: "muted small" }, "Fences only grow; a write carrying an older fence (Patch-Fence) is refused."),
      body,
    ),
  );
  load();
  return () => {
    alive = false;
    clearInterval(ticker);
    clearInterval(poll);
  };
}

export function renderStatus(root, ctx) {
  const { id } = ctx;
  let alive = true;
  const body = h("div", { id: "doc-status" }, loading("Loading status…"));
  const refresh = h("button", { type: "button", class: "small" }, "Refresh");
  const labels = {
    db_id: "Document",
    open: "Open",
    size_bytes: "Size",
    wal_bytes: "WAL size",
    page_count: "Pages",
    watches: "Live watches",
    subscribers: "Subscribers",
    last_write_at: "Last write",
  };
  const load = async () => {
    refresh.disabled = true;
    try {
      const s = await api("GET", `${db(id)}/_status`);
      if (!alive) return;
      put(
        body,
        h(
          "dl",
          { class: "kv" },
          Object.entries(s).flatMap(([k, v]) => {
            let shown = v === null ? "—" : String(v);
            if (k === "size_bytes" || k === "wal_bytes") shown = `${fmtBytes(v)} (${v} bytes)`;
            if (k === "last_write_at") shown = v ? `${fmtTime(v)} (${v})` : "never";
            if (k === "open") shown = v ? "yes" : "no";
            return [h("dt", null, labels[k] || k), h("dd", null, shown)];
          }),
        ),
      );
    } catch (e) {
      if (alive) put(body, errorBox(e, "Could not load the status:"));
    } finally {
      refresh.disabled = false;
    }
  };
  refresh.addEventListener("click", load);
  put(
    root,
    h(
      "section",
      { class: "card", "aria-labelledby": "status-title" },
      h("div", { class: "card-head" }, h("h2", { id: "status-title" }, "Status"), refresh),
      body,
    ),
  );
  load();
  return () => {
    alive = false;
  };
}
