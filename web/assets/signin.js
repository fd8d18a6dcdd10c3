// Sign-in: the provider's login when OIDC is on, else the admin-token form
// (POST /auth/token-login). GET /auth/methods says which, without starting anything.

import { h, put, errorBox, loading } from "./dom.js";
import { api, toError } from "./api.js";

/** "oidc", "token", or an ApiError (e.g. the server is unreachable). */
async function probe() {
  let res;
  try {
    res = await fetch("/auth/methods", { credentials: "same-origin" });
  } catch {
    return { mode: "error", error: { code: "network_error", message: "Could not reach the Patchwork server." } };
  }
  if (!res.ok) return { mode: "error", error: await toError(res) };
  const methods = await res.json();
  return { mode: methods.oidc ? "oidc" : "token" };
}

export function renderSignIn(root, { notice, onSignedIn }) {
  let alive = true;
  const body = h("div", { class: "stack", id: "signin-body" }, loading("Checking how to sign in…"));
  const card = h(
    "div",
    { class: "card" },
    h("h1", null, "Sign in"),
    h("p", { class: "lead" }, "Patchwork keeps every document as its own SQLite database. Sign in to manage documents, tokens and live data."),
    notice ? h("p", { class: "notice small", role: "status", id: "signin-notice" }, notice) : null,
    body,
  );
  put(root, h("section", { class: "signin", id: "signin", "aria-labelledby": "signin-title" }, card));
  card.querySelector("h1").id = "signin-title";

  const show = async () => {
    const p = await probe();
    if (!alive) return;
    if (p.mode === "oidc") {
      const next = `/ui/${location.hash || "#/"}`;
      const link = h(
        "a",
        { class: "button primary", id: "oidc-login", href: `/auth/login?next=${encodeURIComponent(next)}` },
        "Sign in with your provider",
      );
      put(body, p.warning ? errorBox(p.warning, "The identity provider is not answering right now:") : null, link);
      link.focus();
      return;
    }
    if (p.mode === "error") {
      put(body, errorBox(p.error, "Cannot start sign-in:"), h("button", { type: "button", onclick: () => { put(body, loading()); show(); } }, "Try again"));
      return;
    }
    put(body, tokenForm(onSignedIn));
    body.querySelector("input").focus();
  };
  show();
  return () => {
    alive = false;
  };
}

function tokenForm(onSignedIn) {
  const input = h("input", {
    type: "password",
    name: "token",
    id: "token-input",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "pw_…",
    "aria-describedby": "token-hint",
  });
  const submit = h("button", { type: "submit", class: "primary", id: "token-submit" }, "Sign in");
  const out = h("div", { "aria-live": "polite" });
  const form = h(
    "form",
    { id: "token-login", class: "stack", novalidate: true },
    h(
      "div",
      { class: "field" },
      h("label", { for: "token-input" }, "Admin token"),
      input,
      h(
        "p",
        { class: "hint", id: "token-hint" },
        "The token ", h("code", null, "patchwork serve"), " printed on first start, or one from ",
        h("code", null, "patchwork token create --admin"), ". It is exchanged for a session cookie; the browser does not keep it.",
      ),
    ),
    out,
    submit,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = input.value.trim();
    if (!token) {
      input.setAttribute("aria-invalid", "true");
      put(out, errorBox({ code: "missing_token", message: "Paste an admin token first." }));
      input.focus();
      return;
    }
    input.removeAttribute("aria-invalid");
    submit.disabled = true;
    submit.textContent = "Signing in…";
    put(out);
    try {
      await api("POST", "/auth/token-login", { token }, { quiet401: true });
      await onSignedIn();
    } catch (e) {
      submit.disabled = false;
      submit.textContent = "Sign in";
      input.setAttribute("aria-invalid", "true");
      put(out, errorBox(e, e.status === 401 ? "That token was not accepted:" : "Sign-in failed:"));
      input.select();
    }
  });
  return form;
}
