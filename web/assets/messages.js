// Durable messages: live tail (EventSource on /events/stream), publish, retention rules.

import { h, put, errorBox, loading, fmtTime, b64bytes, bytesText, prettyJsonText, store } from "./dom.js";
import { api, db, toError } from "./api.js";

const MAX_FEED = 200;

function payloadEl(msg) {
  let bytes;
  try {
    bytes = b64bytes(msg.payload_base64 || "");
  } catch {
    return h("pre", null, "(undecodable payload)");
  }
  const ct = (msg.content_type || "").toLowerCase();
  const text = bytesText(bytes);
  if (text !== null && (ct.startsWith("text/") || ct.includes("json") || ct === "")) {
    return h("pre", null, ct.includes("json") ? prettyJsonText(text) : text);
  }
  return h("pre", { class: "muted" }, `${bytes.length} bytes of ${msg.content_type || "binary"} · base64 ${msg.payload_base64.slice(0, 120)}${msg.payload_base64.length > 120 ? "…" : ""}`);
}

export function renderMessages(root, ctx) {
  const { id } = ctx;
  const filtersKey = `patchwork.filters.${id}`;
  let filters = store.get(filtersKey, ["#"]);
  if (!Array.isArray(filters) || !filters.length) filters = ["#"];
  let es = null;
  let probe = null;

  // ---- live tail ----
  const chips = h("div", { class: "chips", id: "tail-filters" });
  const filterInput = h("input", { type: "text", id: "tail-filter", placeholder: "e.g. chat/# or sensors/+/temp", autocomplete: "off", spellcheck: "false" });
  const addFilter = h("button", { type: "submit", class: "small" }, "Add filter");
  const since = h(
    "select",
    { id: "tail-since", "aria-label": "Start from" },
    h("option", { value: "20" }, "Last 20, then live"),
    h("option", { value: "100" }, "Last 100, then live"),
    h("option", { value: "0" }, "New messages only"),
  );
  const status = h("p", { class: "small", id: "tail-status", "aria-live": "polite" });
  const feed = h("ul", { class: "feed", id: "tail" });
  const feedWrap = h("div", { class: "feed-scroll" }, feed);
  const clear = h("button", { type: "button", class: "small" }, "Clear");

  const drawStatus = (mode, text) => {
    put(status, h("span", { class: `dot ${mode}`, "aria-hidden": "true" }), text);
  };
  const drawChips = () => {
    put(
      chips,
      filters.map((f) =>
        h(
          "span",
          { class: "chip" },
          f,
          h("button", { type: "button", "aria-label": `Remove filter ${f}`, title: "Remove", onclick: () => {
            filters = filters.filter((x) => x !== f);
            if (!filters.length) filters = ["#"];
            store.set(filtersKey, filters);
            drawChips();
            subscribe();
          } }, "×"),
        ),
      ),
    );
  };
  const showEmpty = () => {
    if (!feed.children.length) put(feed, h("li", { class: "muted small empty" }, "No messages yet. Publish one to see it arrive here."));
  };

  const addMessage = (msg) => {
    const empty = feed.querySelector(".empty");
    if (empty) empty.remove();
    const li = h(
      "li",
      { dataset: { id: String(msg.id) } },
      h(
        "div",
        { class: "meta" },
        h("span", { class: "topic" }, msg.topic),
        h("span", null, `#${msg.id}`),
        h("time", { datetime: msg.created_at, title: msg.created_at }, fmtTime(msg.created_at)),
        h("span", null, msg.content_type || ""),
        msg.producer ? h("span", { title: "producer token id" }, `by ${msg.producer}`) : null,
      ),
      payloadEl(msg),
    );
    feed.prepend(li);
    li.classList.add("flash");
    while (feed.children.length > MAX_FEED) feed.lastElementChild.remove();
  };

  const close = () => {
    if (es) es.close();
    es = null;
    if (probe) probe.abort();
    probe = null;
  };

  const url = () => {
    const q = new URLSearchParams();
    for (const f of filters) q.append("topic", f);
    if (since.value !== "0") q.set("tail", since.value);
    return `${db(id)}/events/stream?${q}`;
  };

  const subscribe = () => {
    close();
    put(feed);
    showEmpty();
    drawStatus("", `Connecting to ${filters.join(", ")}…`);
    const src = new EventSource(url());
    es = src;
    src.addEventListener("open", () => {
      if (es === src) drawStatus("live", `Live · ${filters.join(", ")}`);
    });
    src.addEventListener("message", (ev) => {
      if (es !== src) return;
      try {
        addMessage(JSON.parse(ev.data));
      } catch {
        /* not a message */
      }
    });
    src.addEventListener("heartbeat", () => {
      if (es === src) drawStatus("live", `Live · ${filters.join(", ")} · heartbeat ${fmtTime(new Date().toISOString()).slice(11)}`);
    });
    src.addEventListener("error", async (ev) => {
      if (es !== src) return;
      if (ev.data !== undefined) {
        // The server's own `error` event (slow consumer, token revoked, …).
        let data = {};
        try {
          data = JSON.parse(ev.data);
        } catch {
          /* keep {} */
        }
        put(status, errorBox({ code: data.code || "error", message: data.message || ev.data }, "The stream reported:"));
        return;
      }
      if (src.readyState === EventSource.CONNECTING) {
        drawStatus("", "Connection lost · reconnecting…");
        return;
      }
      // Closed for good (a 4xx): ask once more with fetch to show the API's reason.
      drawStatus("err", "The stream was refused");
      probe = new AbortController();
      try {
        const res = await fetch(url(), { credentials: "same-origin", signal: probe.signal });
        if (!res.ok) {
          const err = await toError(res);
          if (es === src) put(status, errorBox(err, "The stream was refused:"));
        }
        probe.abort();
      } catch {
        /* aborted or unreachable */
      }
    });
  };

  const filterForm = h(
    "form",
    { class: "row", id: "tail-filter-form" },
    h("label", { for: "tail-filter", class: "visually-hidden" }, "Topic filter"),
    h("div", { class: "grow" }, filterInput),
    addFilter,
  );
  filterForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = filterInput.value.trim();
    if (!f) return;
    // A specific filter replaces the catch-all.
    filters = filters.filter((x) => x !== "#" && x !== f);
    filters.push(f);
    store.set(filtersKey, filters);
    filterInput.value = "";
    drawChips();
    subscribe();
  });
  since.addEventListener("change", subscribe);
  clear.addEventListener("click", () => {
    put(feed);
    showEmpty();
  });

  // ---- publish ----
  const topic = h("input", { type: "text", id: "pub-topic", required: true, autocomplete: "off", spellcheck: "false", placeholder: "chat/general" });
  const kind = h(
    "select",
    { id: "pub-kind" },
    h("option", { value: "text" }, "Text"),
    h("option", { value: "json" }, "JSON"),
    h("option", { value: "base64" }, "Base64 bytes"),
  );
  const payload = h("textarea", { id: "pub-payload", rows: "4", spellcheck: "false", placeholder: "Hello" });
  const pubOut = h("div", { id: "pub-result", "aria-live": "polite" });
  const pubBtn = h("button", { type: "submit", class: "primary", id: "pub-send" }, "Publish");
  const pubForm = h(
    "form",
    { id: "publish-form", class: "stack" },
    h("div", { class: "field" }, h("label", { for: "pub-topic" }, "Topic"), topic),
    h(
      "div",
      { class: "field" },
      h("div", { class: "row" }, h("label", { for: "pub-payload", class: "grow" }, "Payload"), h("label", { for: "pub-kind", class: "visually-hidden" }, "Payload kind"), kind),
      payload,
    ),
    h("div", { class: "row" }, pubBtn, pubOut),
  );
  const publish = async () => {
    const t = topic.value.trim();
    if (!t) {
      topic.setAttribute("aria-invalid", "true");
      put(pubOut, h("span", { class: "alert-text small" }, "Enter a topic."));
      topic.focus();
      return;
    }
    topic.removeAttribute("aria-invalid");
    const body = { topic: t };
    if (kind.value === "json") {
      try {
        body.payload = JSON.parse(payload.value);
      } catch (e) {
        put(pubOut, h("span", { class: "alert-text small" }, `Not valid JSON: ${e.message}`));
        payload.focus();
        return;
      }
    } else if (kind.value === "base64") {
      body.payload_base64 = payload.value.trim();
    } else {
      body.payload_text = payload.value;
    }
    pubBtn.disabled = true;
    put(pubOut, loading("Publishing…"));
    try {
      const r = await api("POST", `${db(id)}/messages`, body);
      put(pubOut, h("span", { class: "small" }, r.duplicate ? `Duplicate of message #${r.id}` : `Published #${r.id}`));
    } catch (e) {
      put(pubOut, errorBox(e));
    } finally {
      pubBtn.disabled = false;
    }
  };
  pubForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    publish();
  });
  payload.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      publish();
    }
  });

  put(
    root,
    h(
      "div",
      { class: "grid-2" },
      h(
        "section",
        { class: "card", "aria-labelledby": "tail-title" },
        h("div", { class: "card-head" }, h("h2", { id: "tail-title" }, "Live tail"), h("div", { class: "row" }, since, clear)),
        h("div", { class: "stack" }, filterForm, chips, status, feedWrap),
      ),
      h(
        "div",
        null,
        h("section", { class: "card", "aria-labelledby": "pub-title" }, h("h2", { id: "pub-title" }, "Publish"), pubForm),
        retentionCard(id),
      ),
    ),
  );
  drawChips();
  subscribe();
  return close;
}

function retentionCard(id) {
  const body = h("div", { class: "stack", id: "retention" }, loading("Loading rules…"));
  const out = h("div", { "aria-live": "polite" });
  let rules = [];

  const numInput = (value, label, onchange) =>
    h("input", { type: "number", min: "1", step: "1", value: value ?? "", "aria-label": label, placeholder: "—", onchange });

  const draw = () => {
    const rows = rules.map((r, i) =>
      h(
        "tr",
        null,
        h("td", null, h("input", { type: "text", value: r.topic_filter, "aria-label": `Topic filter of rule ${i + 1}`, spellcheck: "false", onchange: (ev) => { r.topic_filter = ev.target.value.trim(); } })),
        h("td", null, numInput(r.max_age_seconds, `Max age (seconds) of rule ${i + 1}`, (ev) => { r.max_age_seconds = ev.target.value === "" ? null : Number(ev.target.value); })),
        h("td", null, numInput(r.max_messages, `Max messages of rule ${i + 1}`, (ev) => { r.max_messages = ev.target.value === "" ? null : Number(ev.target.value); })),
        h("td", null, h("button", { type: "button", class: "small", "aria-label": `Remove rule ${i + 1}`, onclick: () => { rules.splice(i, 1); draw(); } }, "Remove")),
      ),
    );
    put(
      body,
      rules.length
        ? h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            null,
            h("thead", null, h("tr", null, h("th", null, "Topic filter"), h("th", null, "Max age (s)"), h("th", null, "Max messages"), h("th", null, h("span", { class: "visually-hidden" }, "Actions")))),
            h("tbody", null, rows),
          ),
        )
        : h("p", { class: "muted small" }, "No rules: every message is kept forever."),
      h(
        "div",
        { class: "row" },
        h("button", { type: "button", class: "small", onclick: () => { rules.push({ topic_filter: "#", max_age_seconds: 86400, max_messages: null }); draw(); } }, "Add rule"),
        h("button", { type: "button", class: "small primary", id: "retention-save", onclick: save }, "Save rules"),
        out,
      ),
    );
  };

  async function save() {
    const payload = rules.map((r) => {
      const rule = { topic_filter: r.topic_filter };
      if (r.max_age_seconds) rule.max_age_seconds = r.max_age_seconds;
      if (r.max_messages) rule.max_messages = r.max_messages;
      return rule;
    });
    put(out, loading("Saving…"));
    try {
      const r = await api("PUT", `${db(id)}/messages/retention`, { rules: payload });
      rules = r.rules.map((x) => ({ ...x }));
      draw();
      put(out, h("span", { class: "small" }, "Saved"));
    } catch (e) {
      put(out, errorBox(e));
    }
  }

  (async () => {
    try {
      const r = await api("GET", `${db(id)}/messages/retention`);
      rules = r.rules.map((x) => ({ ...x }));
      draw();
    } catch (e) {
      put(body, errorBox(e, "Could not load the retention rules:"));
    }
  })();

  return h(
    "section",
    { class: "card", "aria-labelledby": "retention-title" },
    h("h2", { id: "retention-title" }, "Retention"),
    h("p", { class: "muted small" }, "A sweep deletes messages past any bound of a matching rule."),
    body,
  );
}
