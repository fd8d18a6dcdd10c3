// Patchwork dashboard: plain ES modules, no build step. Talks only to the public HTTP API with
// the session cookie; hash routes (#/…) so every deep link works.

import { h, put, errorBox, loading } from "./dom.js";
import { api, setCsrf, onUnauthorized } from "./api.js";
import { renderSignIn } from "./signin.js";
import { renderDocuments } from "./documents.js";
import { renderDocument } from "./document.js";
import { renderTokens } from "./tokens.js";
import { renderAudit } from "./audit.js";
import { renderInvite } from "./invite.js";

const state = {
  me: null,
  /** Undoes the current page (closes streams, stops timers). */
  cleanup: null,
  /** Shown once on the sign-in page (e.g. "your session ended"). */
  notice: null,
  booted: false,
};

const app = document.getElementById("app");
const nav = document.getElementById("nav");
const who = document.getElementById("who");

export function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function parseRoute() {
  const raw = location.hash.replace(/^#/, "") || "/";
  let parts;
  try {
    parts = raw.split("?")[0].split("/").filter(Boolean).map(decodeURIComponent);
  } catch {
    parts = [];
  }
  if (parts[0] === "docs" && parts[1]) return { page: "doc", id: parts[1], tab: parts[2] || "console" };
  if (parts[0] === "tokens") return { page: "tokens" };
  if (parts[0] === "audit") return { page: "audit" };
  if (parts[0] === "invite" && parts[1]) {
    // Kept across a sign-in (which comes back to /ui/ without the hash).
    sessionStorage.setItem("patchwork.pendingInvite", parts[1]);
    return { page: "invite", token: parts[1] };
  }
  return { page: "docs" };
}

function routeKey() {
  const r = parseRoute();
  return `${r.page}/${r.id || ""}`;
}

function renderChrome(route) {
  if (!state.me) {
    put(nav);
    put(who);
    return;
  }
  const link = (href, text, current) =>
    h("a", { href, "aria-current": current ? "page" : undefined }, text);
  put(
    nav,
    link("#/", "Documents", route.page === "docs" || route.page === "doc"),
    link("#/tokens", "Tokens", route.page === "tokens"),
    state.me.is_admin ? link("#/audit", "Audit log", route.page === "audit") : null,
  );
  const me = state.me;
  const display = me.name || me.email || me.subject;
  const signOut = h("button", { type: "button", class: "small", id: "signout" }, "Sign out");
  signOut.addEventListener("click", async () => {
    signOut.disabled = true;
    try {
      await api("POST", "/auth/logout", undefined, { quiet401: true });
    } catch (e) {
      // A session that is already gone is signed out too.
      if (e.status !== 401) {
        signOut.disabled = false;
        put(app, errorBox(e, "Sign-out failed:"));
        return;
      }
    }
    signedOut("You are signed out.");
  });
  put(
    who,
    h(
      "span",
      { class: "who-name", id: "whoami", title: `${me.subject}${me.email ? ` · ${me.email}` : ""} · session ends ${me.expires_at}` },
      display,
    ),
    me.is_admin ? h("span", { class: "badge accent", id: "admin-badge" }, "admin") : null,
    signOut,
  );
}

function signedOut(notice) {
  state.me = null;
  setCsrf(null);
  state.notice = notice || null;
  render();
}

async function signedIn() {
  state.me = await api("GET", "/auth/me", undefined, { quiet401: true });
  setCsrf(state.me.csrf_token);
  state.notice = null;
  render();
}

function render() {
  if (state.cleanup) {
    try {
      state.cleanup();
    } catch {
      /* a page's cleanup must never break navigation */
    }
    state.cleanup = null;
  }
  const route = parseRoute();
  renderChrome(route);
  app.replaceChildren();
  if (!state.me) {
    document.title = "Sign in · Patchwork";
    state.cleanup = renderSignIn(app, { notice: state.notice, onSignedIn: signedIn });
    return;
  }
  const ctx = { me: state.me, navigate };
  switch (route.page) {
    case "doc":
      document.title = `${route.id} · Patchwork`;
      state.cleanup = renderDocument(app, ctx, route.id, route.tab);
      break;
    case "tokens":
      document.title = "Tokens · Patchwork";
      state.cleanup = renderTokens(app, ctx);
      break;
    case "audit":
      document.title = "Audit log · Patchwork";
      state.cleanup = renderAudit(app, ctx);
      break;
    case "invite":
      document.title = "Invite · Patchwork";
      state.cleanup = renderInvite(app, ctx, route.token);
      break;
    default:
      document.title = "Documents · Patchwork";
      state.cleanup = renderDocuments(app, ctx);
  }
}

async function boot() {
  put(app, loading());
  try {
    state.me = await api("GET", "/auth/me", undefined, { quiet401: true });
    setCsrf(state.me.csrf_token);
  } catch (e) {
    if (e.status !== 401) {
      const retry = h("button", { type: "button", onclick: boot }, "Try again");
      put(app, h("div", { class: "stack" }, errorBox(e, "Could not load your session:"), retry));
      return;
    }
    state.me = null;
  }
  // Back from signing in with an invite still to accept.
  const pending = sessionStorage.getItem("patchwork.pendingInvite");
  if (state.me && pending && !location.hash.startsWith("#/invite/")) {
    location.hash = `#/invite/${pending}`;
  }
  if (!state.booted) {
    state.booted = true;
    let last = routeKey();
    window.addEventListener("hashchange", () => {
      render();
      // A new page (not a new tab of the same page) takes the focus, as a page load would.
      const now = routeKey();
      if (now !== last) app.focus({ preventScroll: true });
      last = now;
    });
  }
  render();
}

onUnauthorized(() => {
  if (state.me) signedOut("Your session ended. Sign in again to continue.");
});

boot();
