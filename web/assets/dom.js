// DOM helpers. Every piece of text goes in through textContent / attributes: never innerHTML.

/**
 * h("div", {class: "x", onclick: fn, "aria-label": "y"}, "text", child, [more]) → element.
 * Props starting with "on" are listeners; `dataset` is an object; booleans set/omit attributes;
 * `value`/`checked` are set as properties.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") {
        el.addEventListener(k.slice(2), v);
      } else if (k === "dataset") {
        Object.assign(el.dataset, v);
      } else if (k === "value" || k === "checked" || k === "selected") {
        el[k] = v;
      } else if (v === true) {
        el.setAttribute(k, "");
      } else {
        el.setAttribute(k, String(v));
      }
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.append(c);
    else el.append(document.createTextNode(String(c)));
  }
}

/** Replaces el's children. */
export function put(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** "2024-05-01 12:03:04" in local time (with the ISO string as a tooltip via `timeEl`). */
export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const p = (x) => String(x).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** "3 min ago" / "in 2 h". */
export function relTime(iso, now = Date.now()) {
  if (!iso) return "never";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return String(iso);
  const s = Math.round((t - now) / 1000);
  const a = Math.abs(s);
  let text;
  if (a < 5) return "just now";
  if (a < 60) text = `${a} s`;
  else if (a < 3600) text = `${Math.round(a / 60)} min`;
  else if (a < 86400) text = `${Math.round(a / 3600)} h`;
  else text = `${Math.round(a / 86400)} d`;
  return s < 0 ? `${text} ago` : `in ${text}`;
}

export function timeEl(iso, rel = false) {
  if (!iso) return h("span", { class: "muted" }, rel ? "never" : "—");
  return h("time", { datetime: iso, title: iso }, rel ? relTime(iso) : fmtTime(iso));
}

/** "1:02:03" / "42 s" for a countdown. */
export function fmtCountdown(ms) {
  if (ms <= 0) return "expired";
  const s = Math.ceil(ms / 1000);
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  if (hh > 0) return `${hh} h ${mm} min`;
  if (mm > 0) return `${mm} min ${String(ss).padStart(2, "0")} s`;
  return `${ss} s`;
}

/** An empty/info state block. */
export function emptyState(title, text, ...extra) {
  return h("div", { class: "state" }, h("strong", null, title), text ? h("p", null, text) : null, ...extra);
}

export function loading(text = "Loading…") {
  return h("p", { class: "muted loading", role: "status" }, text);
}

/** The error box: code + message (+ details), the API's own words. */
export function errorBox(err, prefix) {
  const code = err && err.code ? err.code : "error";
  const message = err && err.message ? err.message : String(err);
  const details = err && err.details && Object.keys(err.details).length ? err.details : null;
  return h(
    "div",
    { class: "alert", role: "alert" },
    prefix ? h("span", null, prefix + " ") : null,
    err && err.status ? h("span", { class: "code" }, `${err.status} ${code}`) : h("span", { class: "code" }, code),
    h("span", { class: "message" }, message),
    details ? h("div", { class: "xsmall mono" }, JSON.stringify(details)) : null,
  );
}

/** base64 → Uint8Array. */
export function b64bytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i += 1) out[i] = bin.charCodeAt(i);
  return out;
}

/** Best-effort text of a payload: UTF-8 if it decodes, else null. */
export function bytesText(bytes) {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
}

export function prettyJsonText(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

/** A button that asks "Sure?" on the first click and acts on the second (no modal dialogs). */
export function confirmButton(label, confirmLabel, action, props = {}) {
  let armed = false;
  let timer = null;
  const btn = h("button", { type: "button", class: "danger small", ...props }, label);
  btn.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      btn.classList.add("confirming");
      btn.textContent = confirmLabel;
      timer = setTimeout(() => {
        armed = false;
        btn.classList.remove("confirming");
        btn.textContent = label;
      }, 4000);
      return;
    }
    clearTimeout(timer);
    btn.disabled = true;
    try {
      await action();
    } finally {
      btn.disabled = false;
      armed = false;
      btn.classList.remove("confirming");
      btn.textContent = label;
    }
  });
  return btn;
}

export async function copyText(text, button) {
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch {
    // Non-secure contexts have no clipboard API: select the text so Ctrl+C works.
    const ta = h("textarea", { class: "visually-hidden" });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
    ta.remove();
  }
  if (button) {
    const before = button.textContent;
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => {
      button.textContent = before;
    }, 1500);
  }
  return ok;
}

/** localStorage that never throws (private modes, quotas). */
export const store = {
  get(key, fallback) {
    try {
      const v = localStorage.getItem(key);
      return v === null ? fallback : JSON.parse(v);
    } catch {
      return fallback;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch {
      /* ignore */
    }
  },
};
