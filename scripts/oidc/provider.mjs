// A real OpenID Connect provider for Patchwork's tests: panva's `oidc-provider` (OpenID-certified)
// with the settings our tests need. Test use only: in-memory state, dev signing keys, the built-in
// development login form. See docs in /work/shared/TESTING.md §1 and the Rust harness in
// internal/src/testing/oidc.rs.
//
// Environment:
//   OIDC_PORT             port on 127.0.0.1 (0 = a free one; the default)
//   OIDC_CLIENT_ID        the confidential client's id (default "patchwork")
//   OIDC_CLIENT_SECRET    its secret (default "patchwork-secret"; client_secret_basic)
//   OIDC_ID_TOKEN_TTL     ID-token lifetime in seconds for that client (default 600)
//
// A second client, "{OIDC_CLIENT_ID}-expired" with the same secret, gets ID tokens that are
// already expired when issued (exp = iat - OIDC_EXPIRED_BY, default 600 s), for "expired ID token"
// tests without sleeping.
//
// Users: any login/password is accepted on the login form; the login becomes `sub`. Claims:
// name, email (login@example.test), email_verified, preferred_username and `groups`
// (["patchwork-admins"] when the login starts with "admin", else []). Every authorization
// request shows the login form (no silent SSO), and consent is granted automatically, so the
// login form is the only step.
//
// Redirect URIs: besides the registered ones, any `http://127.0.0.1:<port>/auth/callback` is
// accepted (Patchwork test servers listen on random ports). PKCE S256 is required.
//
// Once listening it prints exactly one line `OIDC_READY http://127.0.0.1:{port}` to stdout (all
// other output goes to stderr). It exits when stdin closes (the parent died; set
// OIDC_EXIT_ON_STDIN_EOF=0 to run it by hand in the background) and on SIGTERM/SIGINT.

import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';

import Provider, { interactionPolicy } from 'oidc-provider';

const env = process.env;
const port = Number.parseInt(env.OIDC_PORT ?? '0', 10);
const clientId = env.OIDC_CLIENT_ID || 'patchwork';
const clientSecret = env.OIDC_CLIENT_SECRET || 'patchwork-secret';
const idTokenTtl = Number.parseInt(env.OIDC_ID_TOKEN_TTL ?? '600', 10);
const expiredBy = Number.parseInt(env.OIDC_EXPIRED_BY ?? '600', 10);
const expiredClientId = `${clientId}-expired`;

for (const [name, value] of [['OIDC_PORT', port], ['OIDC_ID_TOKEN_TTL', idTokenTtl], ['OIDC_EXPIRED_BY', expiredBy]]) {
  if (!Number.isInteger(value) || value < 0 || (name !== 'OIDC_PORT' && value < 1)) {
    console.error(`provider.mjs: bad ${name}`);
    process.exit(2);
  }
}

// Informational messages (the "unsupported runtime" and dev-feature warnings) go to stderr:
// stdout carries only the ready line.
console.log = console.error;
console.info = console.error;
console.warn = console.error;

// Any `http://127.0.0.1:<port>/auth/callback`, spelled exactly so (no query, fragment, userinfo).
const TEST_CALLBACK = /^http:\/\/127\.0\.0\.1:([1-9][0-9]{0,4})\/auth\/callback$/;
function isTestCallback(uri) {
  const m = typeof uri === 'string' ? TEST_CALLBACK.exec(uri) : null;
  return m !== null && Number(m[1]) <= 65535;
}

const GROUPS_ADMIN = 'patchwork-admins';

function account(login) {
  return {
    accountId: login,
    async claims() {
      return {
        sub: login,
        name: login.charAt(0).toUpperCase() + login.slice(1),
        email: `${login}@example.test`,
        email_verified: true,
        preferred_username: login,
        groups: login.startsWith('admin') ? [GROUPS_ADMIN] : [],
      };
    },
  };
}

// Login on every authorization request: without this, the provider's own session cookie would
// silently log the previous user in again and `login()` in the tests could not pick the user.
const policy = interactionPolicy.base();
policy.get('login').checks.add(
  new interactionPolicy.Check('always_login', 'tests log in on every request', (ctx) => (
    ctx.oidc.result?.login
      ? interactionPolicy.Check.NO_NEED_TO_PROMPT
      : interactionPolicy.Check.REQUEST_PROMPT
  )),
);

const client = (id) => ({
  client_id: id,
  client_secret: clientSecret,
  // A placeholder: the real callbacks are matched by isTestCallback below.
  redirect_uris: ['http://127.0.0.1/auth/callback'],
  response_types: ['code'],
  grant_types: ['authorization_code'],
  token_endpoint_auth_method: 'client_secret_basic',
});

const configuration = {
  clients: [client(clientId), client(expiredClientId)],
  findAccount: async (_ctx, sub) => account(sub),
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  // Profile, email and groups claims in the ID token too (not only from userinfo).
  conformIdTokenClaims: false,
  // redirect_uri must always be sent (the registered one is only a placeholder).
  allowOmittingSingleRegisteredRedirectUri: false,
  pkce: { required: () => true },
  responseTypes: ['code'],
  cookies: { keys: [randomBytes(32).toString('hex')] },
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
  },
  interactions: { policy },
  // Consent is granted automatically: the grant always holds what the request asks for.
  async loadExistingGrant(ctx) {
    const { oidc } = ctx;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
    grant ??= new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
    grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
    const claims = [...oidc.requestParamClaims];
    if (claims.length) grant.addOIDCClaims(claims);
    await grant.save();
    return grant;
  },
  ttl: {
    IdToken: (_ctx, _token, c) => (c.clientId === expiredClientId ? 60 : idTokenTtl),
    AccessToken: 600,
    AuthorizationCode: 60,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
  },
  renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><title>oidc error</title><pre>${
      Object.entries(out).map(([k, v]) => `${k}: ${String(v).replace(/[<>&]/g, '')}`).join('\n')
    }</pre>`;
  },
};

// The HTTP server first, so the issuer can carry the real port.
const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;
const provider = new Provider(issuer, configuration);

const { prototype: clientProto } = provider.Client;
const redirectUriAllowed = clientProto.redirectUriAllowed;
clientProto.redirectUriAllowed = function redirectUriAllowedForTests(value) {
  return redirectUriAllowed.call(this, value) || isTestCallback(value);
};

// The "-expired" client's ID tokens expire before they are issued.
const { prototype: idTokenProto } = provider.IdToken;
const issue = idTokenProto.issue;
idTokenProto.issue = function issueForTests(options = {}) {
  if (options.use === 'idtoken' && this.client?.clientId === expiredClientId) {
    return issue.call(this, { ...options, expiresAt: Math.floor(Date.now() / 1000) - expiredBy });
  }
  return issue.call(this, options);
};

provider.on('server_error', (_ctx, err) => console.error('oidc server_error:', err));

server.on('request', provider.callback());
process.stdout.write(`OIDC_READY ${issuer}\n`);

function shutdown() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
// The parent holds our stdin open; EOF (or an error) means it is gone.
if (env.OIDC_EXIT_ON_STDIN_EOF !== '0') {
  process.stdin.on('end', shutdown);
  process.stdin.on('close', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}
