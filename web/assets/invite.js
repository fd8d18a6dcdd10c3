// The invite page (#/invite/{token}): what the link grants, and "Join" — redeemed from this
// session, the invite makes the signed-in person a member of the document.

import { h, put, errorBox, fmtTime } from "./dom.js";
import { api } from "./api.js";

/** The link's payload (readable, signed by the server; the server checks the signature). */
function peek(token) {
  try {
    const body = token.split(".")[0].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(body + "===".slice((body.length + 3) % 4)));
  } catch {
    return null;
  }
}

export function renderInvite(root, ctx, token) {
  const info = peek(token);
  if (!info || !info.d) {
    put(root, h("section", { class: "card stack" }, h("h2", null, "Invite"),
      h("p", { class: "alert", role: "alert" }, "This invite link is damaged. Ask for a new one.")));
    return () => {};
  }
  const expires = new Date(info.e * 1000);
  const expired = expires.getTime() <= Date.now();
  const name = h("input", {
    id: "invite-name", type: "text", maxlength: "64", required: true,
    value: ctx.me.name || ctx.me.email || ctx.me.subject, autocomplete: "nickname",
  });
  const result = h("div", { id: "invite-result", "aria-live": "polite" });
  const join = h("button", { type: "submit", id: "invite-join", disabled: expired || undefined }, "Join");
  const form = h(
    "form",
    { class: "stack", id: "invite-form" },
    h("label", { for: "invite-name" }, "Your name in this document"),
    name,
    join,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    join.disabled = true;
    put(result);
    try {
      const joined = await api("POST", "/api/v1/invites/redeem", { token, member: name.value.trim() });
      sessionStorage.removeItem("patchwork.pendingInvite");
      form.hidden = true;
      if (joined.token) {
        // A token sign-in is not a person: the invite gave a machine token instead.
        put(result, h("p", { class: "badge ok" }, "Redeemed"),
          h("p", null, "This session signed in with a token, so the invite issued a token with its grants (shown once):"),
          h("pre", { class: "mono", id: "invite-token" }, joined.token));
      } else {
        put(result, h("p", { class: "badge ok" }, "Joined"),
          h("p", null, "You are a member of ", h("strong", null, joined.db_id), ". ",
            h("a", { href: `#/docs/${encodeURIComponent(joined.db_id)}` }, "Open it")));
      }
    } catch (e) {
      join.disabled = false;
      put(result, errorBox(e, "Could not join:"));
    }
  });
  put(
    root,
    h(
      "section",
      { class: "card stack", id: "invite" },
      h("h2", null, "You are invited"),
      h("p", null, "to the document ", h("strong", { class: "mono" }, info.d),
        info.r ? [" (room ", h("strong", null, info.r), ")"] : null, "."),
      h("p", { class: "muted" }, "It lets you: ",
        (info.s || []).map((g) => (g.resource_prefix ? `${g.action} on ${g.resource_prefix}…` : g.action)).join(", ")),
      h("p", { class: expired ? "alert" : "muted" },
        expired ? "This link has expired. Ask for a new one." : `The link works until ${fmtTime(expires.toISOString())}.`),
      form,
      result,
    ),
  );
  return () => {};
}
