//! A real OpenID Connect provider for tests: `scripts/oidc/provider.mjs` (npm `oidc-provider`,
//! installed by `scripts/test.sh`), started once per test binary, and `login`, which drives
//! Patchwork's browser login against it without a browser.
//!
//! ```ignore
//! let op = oidc::provider().await;
//! let server = TestServer::start_with(|c| { /* c.oidc_issuer = Some(op.issuer.clone()); ... */ }).await;
//! let client = oidc::browser_client();
//! let outcome = oidc::login(&client, &server.url(""), "admin-ann", "/ui/").await;
//! assert_eq!(outcome.complete().await.status(), 302);
//! ```
//!
//! The provider accepts any login (it becomes `sub`; `admin*` logins get
//! `groups: ["patchwork-admins"]`), any `http://127.0.0.1:<port>/auth/callback` redirect URI, and
//! requires PKCE S256. Every authorization request shows its login form (no silent SSO), so one
//! client can log in as several users in turn. `provider_with_expired_id_tokens()` is the same
//! process with a second client whose ID tokens are expired when issued.
//!
//! Cookies are per host, not per port: the provider's (`_session`, `_interaction*`) also reach
//! the Patchwork server on 127.0.0.1 through the same client, and Patchwork's reach the provider.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Client, Response, StatusCode, Url};
use tokio::sync::OnceCell;

/// What a relying party needs to use the provider with one of its clients.
#[derive(Debug)]
pub struct Provider {
    /// `http://127.0.0.1:{port}`, exactly as in the ID tokens' `iss`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
}

impl Provider {
    /// Points a server's config at this provider (public URL `base`, issuer, client id and
    /// secret): what every test server that signs people in needs.
    pub fn configure(&self, c: &mut crate::config::Config, base: &str) {
        c.public_url = Some(base.to_owned());
        c.oidc_issuer = Some(self.issuer.clone());
        c.oidc_client_id = Some(self.client_id.clone());
        c.oidc_client_secret = Some(crate::config::Secret::new(self.client_secret.clone()));
    }
}

/// The client secret of both clients (`client_secret_basic`).
const CLIENT_SECRET: &str = "patchwork-test-secret";
const CLIENT_ID: &str = "patchwork";

/// The node process, kept for the life of the test binary. Its stdin is never written: when this
/// process exits the pipe closes and the provider exits too.
struct Process {
    issuer: String,
    _child: Child,
    _stdin: ChildStdin,
    log: Arc<Mutex<String>>,
}

static PROCESS: OnceCell<Process> = OnceCell::const_new();
static MAIN: OnceCell<Provider> = OnceCell::const_new();
static EXPIRED: OnceCell<Provider> = OnceCell::const_new();

/// The provider with the client `patchwork` (ID tokens valid 600 s).
pub async fn provider() -> &'static Provider {
    MAIN.get_or_init(|| async {
        Provider {
            issuer: process().await.issuer.clone(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
        }
    })
    .await
}

/// The same provider with the client `patchwork-expired`, whose ID tokens are already expired
/// (by 600 s) when issued: a relying party must refuse every login through it.
pub async fn provider_with_expired_id_tokens() -> &'static Provider {
    EXPIRED
        .get_or_init(|| async {
            Provider {
                issuer: process().await.issuer.clone(),
                client_id: format!("{CLIENT_ID}-expired"),
                client_secret: CLIENT_SECRET.into(),
            }
        })
        .await
}

/// The provider's stderr so far (its warnings and `server_error`s), for debugging a test.
pub async fn provider_log() -> String {
    process().await.log.lock().expect("log lock").clone()
}

fn oidc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/oidc")
}

async fn process() -> &'static Process {
    PROCESS.get_or_init(start).await
}

/// Spawns the provider and waits for its ready line. Its stdout and stderr are read on plain
/// threads: each `#[tokio::test]` has its own runtime, and this process outlives all of them.
async fn start() -> Process {
    let dir = oidc_dir();
    assert!(
        dir.join("node_modules/oidc-provider").is_dir(),
        "the OIDC test provider is not installed: run scripts/test.sh, or \
         `npm ci --no-audit --no-fund --prefix scripts/oidc`"
    );
    let mut child = Command::new("node")
        .arg(dir.join("provider.mjs"))
        .current_dir(&dir)
        .env("OIDC_PORT", "0")
        .env("OIDC_CLIENT_ID", CLIENT_ID)
        .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
        .env("OIDC_ID_TOKEN_TTL", "600")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn `node scripts/oidc/provider.mjs` (is Node.js installed?)");
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");

    let log = Arc::new(Mutex::new(String::new()));
    let log_writer = Arc::clone(&log);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            let mut log = log_writer.lock().expect("log lock");
            log.push_str(&String::from_utf8_lossy(&buf[..n]));
            if log.len() > 256 * 1024 {
                let cut = log.len() - 128 * 1024;
                let cut = (cut..log.len())
                    .find(|&i| log.is_char_boundary(i))
                    .unwrap_or(0);
                log.drain(..cut);
            }
        }
    });

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let ready = match lines.next() {
            Some(Ok(line)) => match line.strip_prefix("OIDC_READY ") {
                Some(issuer) => Ok(issuer.trim().to_owned()),
                None => Err(format!("unexpected first line {line:?}")),
            },
            Some(Err(e)) => Err(format!("reading its stdout: {e}")),
            None => Err("it exited before it was ready".to_owned()),
        };
        let _ = ready_tx.send(ready);
        // Keep draining (it prints nothing else, but a full pipe must never block it).
        for _ in lines {}
    });

    let failed = |why: &str| -> ! {
        // Give the stderr reader a moment to collect the reason.
        std::thread::sleep(Duration::from_millis(300));
        let log = log.lock().expect("log lock").clone();
        panic!("OIDC test provider: {why}\n{log}")
    };
    let issuer = match tokio::time::timeout(Duration::from_secs(30), ready_rx).await {
        Ok(Ok(Ok(issuer))) => issuer,
        Ok(Ok(Err(e))) => failed(&e),
        Ok(Err(_)) => failed("stdout reader gone"),
        Err(_) => failed("not ready after 30 s"),
    };
    Process {
        issuer,
        _child: child,
        _stdin: stdin,
        log,
    }
}

/// A client like a browser for `login`: cookie store on, redirects not followed.
pub fn browser_client() -> Client {
    Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// As [`browser_client`], with its cookie jar (to read the session cookie it holds).
pub fn browser_client_with_jar() -> (Client, Arc<reqwest::cookie::Jar>) {
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let client = Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client");
    (client, jar)
}

/// Where a login ended: the provider's redirect back to the relying party, not yet followed.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    /// `{base}/auth/callback?code=..&state=..&iss=..` (or `?error=..&state=..`).
    pub callback_url: String,
    client: Client,
}

impl LoginOutcome {
    /// A query parameter of the callback URL (`code`, `state`, `iss`, `error`, …).
    pub fn param(&self, name: &str) -> Option<String> {
        let url = Url::parse(&self.callback_url).expect("callback URL");
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The callback URL with `name` set to `value` (for tampering tests).
    pub fn with_param(&self, name: &str, value: &str) -> String {
        let mut url = Url::parse(&self.callback_url).expect("callback URL");
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == name {
                    value.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        url.into()
    }

    /// GETs the callback through the same client (so with the same cookies); may be called again
    /// to replay it.
    pub async fn complete(&self) -> Response {
        self.client
            .get(&self.callback_url)
            .send()
            .await
            .expect("GET the callback")
    }
}

/// Logs `login` in to the Patchwork server at `patchwork_base` through the provider, browser
/// style: `GET /auth/login?next=`, the provider's redirects, its login form; returns at the
/// provider's redirect back to Patchwork (not followed: see `LoginOutcome::complete`). `client`
/// must keep cookies and not follow redirects (`browser_client()`).
pub async fn login(client: &Client, patchwork_base: &str, login: &str, next: &str) -> LoginOutcome {
    let base = patchwork_base.trim_end_matches('/');
    let mut start = Url::parse(&format!("{base}/auth/login")).expect("patchwork base URL");
    start.query_pairs_mut().append_pair("next", next);
    let resp = client
        .get(start.clone())
        .send()
        .await
        .expect("GET /auth/login");
    let to_provider = redirect_target(&start, &resp).unwrap_or_else(|| {
        panic!(
            "GET /auth/login: expected a redirect to the provider, got {}",
            resp.status()
        )
    });
    authorize(client, to_provider, login).await
}

/// From an authorization request URL on the provider to the redirect back to the relying party:
/// follows the provider's redirects and auto-submitting forms (as a browser with JavaScript
/// would, e.g. its "log the previous user out" confirmation), submits its login form once, and
/// stops at the first redirect that leaves the provider.
pub async fn authorize(client: &Client, authorization_url: Url, login: &str) -> LoginOutcome {
    let provider_origin = authorization_url.origin();
    let mut url = authorization_url;
    let mut post: Option<Vec<(String, String)>> = None;
    let mut logged_in = false;
    for _ in 0..20 {
        let resp = match post.take() {
            None => client.get(url.clone()).send().await,
            Some(fields) => client.post(url.clone()).form(&fields).send().await,
        }
        .unwrap_or_else(|e| panic!("provider at {url}: {e}"));
        if let Some(next) = redirect_target(&url, &resp) {
            if next.origin() != provider_origin {
                return LoginOutcome {
                    callback_url: next.into(),
                    client: client.clone(),
                };
            }
            url = next;
            continue;
        }
        let status = resp.status();
        let html = resp.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::OK, "provider at {url}: {html}");
        let form = parse_form(&html).unwrap_or_else(|| panic!("no form at {url}: {html}"));
        let mut fields: Vec<(String, String)> = form
            .inputs
            .iter()
            .filter(|i| i.kind == "hidden")
            .map(|i| (i.name.clone(), i.value.clone()))
            .collect();
        if form.inputs.iter().any(|i| i.name == "login") {
            assert!(!logged_in, "provider asked for a second login: {html}");
            logged_in = true;
            fields.push(("login".into(), login.into()));
            fields.push(("password".into(), "x".into()));
        }
        url = url.join(&form.action).expect("form action URL");
        assert_eq!(
            url.origin(),
            provider_origin,
            "a form leaving the provider: {html}"
        );
        post = Some(fields);
    }
    panic!("too many steps at the provider, last {url}");
}

fn redirect_target(current: &Url, resp: &Response) -> Option<Url> {
    if !resp.status().is_redirection() {
        return None;
    }
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)?
        .to_str()
        .ok()?;
    Some(current.join(location).expect("Location URL"))
}

/// The first `<form>` of a provider page: enough HTML parsing for oidc-provider's own pages.
struct Form {
    action: String,
    inputs: Vec<Input>,
}

struct Input {
    kind: String,
    name: String,
    value: String,
}

fn parse_form(html: &str) -> Option<Form> {
    let form = &html[html.find("<form")?..];
    let form = &form[..form.find("</form>").unwrap_or(form.len())];
    let action = attr(&form[..form.find('>')?], "action")?;
    let inputs = form
        .match_indices("<input")
        .filter_map(|(i, _)| {
            let tag = &form[i..];
            let tag = &tag[..tag.find('>')?];
            Some(Input {
                kind: attr(tag, "type").unwrap_or_else(|| "text".into()),
                name: attr(tag, "name")?,
                value: attr(tag, "value").unwrap_or_default(),
            })
        })
        .collect();
    Some(Form { action, inputs })
}

/// A double-quoted attribute of a tag, unescaped.
fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let value = &tag[start..];
    let value = &value[..value.find('"')?];
    Some(
        value
            .replace("&#x2F;", "/")
            .replace("&#47;", "/")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    //! The harness against a tiny relying party: discovery, PKCE S256 + state + nonce, the login
    //! form, the code exchange.

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use serde_json::Value;
    use sha2::{Digest, Sha256};

    use super::*;

    fn random() -> String {
        B64URL.encode(rand::random::<[u8; 32]>())
    }

    struct Pkce {
        verifier: String,
        state: String,
        nonce: String,
    }

    fn authorization_url(
        discovery: &Value,
        op: &Provider,
        redirect_uri: &str,
        pkce: Option<&Pkce>,
    ) -> Url {
        let mut url = Url::parse(discovery["authorization_endpoint"].as_str().unwrap()).unwrap();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &op.client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("scope", "openid email profile groups");
            if let Some(p) = pkce {
                let challenge = B64URL.encode(Sha256::digest(p.verifier.as_bytes()));
                q.append_pair("state", &p.state)
                    .append_pair("nonce", &p.nonce)
                    .append_pair("code_challenge", &challenge)
                    .append_pair("code_challenge_method", "S256");
            }
        }
        url
    }

    async fn discovery(op: &Provider) -> Value {
        let client = browser_client();
        let d: Value = client
            .get(format!("{}/.well-known/openid-configuration", op.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(d["issuer"], op.issuer.as_str());
        assert_eq!(
            d["code_challenge_methods_supported"],
            serde_json::json!(["S256"])
        );
        d
    }

    async fn exchange(
        discovery: &Value,
        op: &Provider,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> (StatusCode, Value) {
        let resp = browser_client()
            .post(discovery["token_endpoint"].as_str().unwrap())
            .basic_auth(&op.client_id, Some(&op.client_secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    /// The claims of a JWT (signature not checked here: the relying party's job).
    fn claims(jwt: &str) -> Value {
        let payload = jwt.split('.').nth(1).expect("a JWT");
        serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap()
    }

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    #[tokio::test]
    async fn oidc_provider_code_flow_with_pkce() {
        let started = std::time::Instant::now();
        let op = provider().await;
        eprintln!(
            "provider ready after {:?}: {}",
            started.elapsed(),
            op.issuer
        );
        let d = discovery(op).await;

        // Nothing listens here: the redirect is only captured.
        let redirect_uri = "http://127.0.0.1:9/auth/callback";
        let pkce = Pkce {
            verifier: random(),
            state: random(),
            nonce: random(),
        };
        let client = browser_client();
        let outcome = authorize(
            &client,
            authorization_url(&d, op, redirect_uri, Some(&pkce)),
            "alice",
        )
        .await;
        assert!(
            outcome
                .callback_url
                .starts_with(&format!("{redirect_uri}?")),
            "{}",
            outcome.callback_url
        );
        assert_eq!(outcome.param("state").as_deref(), Some(pkce.state.as_str()));
        assert_eq!(outcome.param("iss").as_deref(), Some(op.issuer.as_str()));
        let code = outcome.param("code").expect("a code");

        // A wrong verifier is refused (and burns nothing we need: a fresh login follows).
        let (status, body) = exchange(&d, op, &code, redirect_uri, &random()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "invalid_grant");

        let outcome = authorize(
            &client,
            authorization_url(&d, op, redirect_uri, Some(&pkce)),
            "alice",
        )
        .await;
        let code = outcome.param("code").expect("a code");
        let (status, body) = exchange(&d, op, &code, redirect_uri, &pkce.verifier).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id = claims(body["id_token"].as_str().expect("an id_token"));
        assert_eq!(id["iss"], op.issuer.as_str());
        assert_eq!(id["aud"], op.client_id.as_str());
        assert_eq!(id["nonce"], pkce.nonce.as_str());
        assert_eq!(id["sub"], "alice");
        assert_eq!(id["name"], "Alice");
        assert_eq!(id["email"], "alice@example.test");
        assert_eq!(id["email_verified"], true);
        assert_eq!(id["preferred_username"], "alice");
        assert_eq!(id["groups"], serde_json::json!([]));
        assert_eq!(
            id["exp"].as_i64().unwrap() - id["iat"].as_i64().unwrap(),
            600
        );

        // The code is single-use.
        let (status, body) = exchange(&d, op, &code, redirect_uri, &pkce.verifier).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "invalid_grant");
    }

    #[tokio::test]
    async fn oidc_provider_requires_pkce_and_test_redirect_uris() {
        let op = provider().await;
        let d = discovery(op).await;
        let client = browser_client();

        // Without PKCE: an error back at the (valid) redirect URI, before any login.
        let redirect_uri = "http://127.0.0.1:9/auth/callback";
        let resp = client
            .get(authorization_url(&d, op, redirect_uri, None))
            .send()
            .await
            .unwrap();
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        assert!(location.starts_with(redirect_uri), "{location}");
        assert!(location.contains("error=invalid_request"), "{location}");

        // Other redirect URIs are refused on the provider's own page.
        let pkce = Pkce {
            verifier: random(),
            state: random(),
            nonce: random(),
        };
        for bad in [
            "http://127.0.0.1:9/other",
            "http://localhost:9/auth/callback",
            "http://127.0.0.1:9/auth/callback?x=1",
            "https://127.0.0.1:9/auth/callback",
            "http://127.0.0.1/auth/callback/",
        ] {
            let resp = client
                .get(authorization_url(&d, op, bad, Some(&pkce)))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[tokio::test]
    async fn oidc_provider_expired_id_tokens_client() {
        let op = provider_with_expired_id_tokens().await;
        assert_eq!(op.issuer, provider().await.issuer);
        let d = discovery(op).await;
        let redirect_uri = "http://127.0.0.1:9/auth/callback";
        let pkce = Pkce {
            verifier: random(),
            state: random(),
            nonce: random(),
        };
        let outcome = authorize(
            &browser_client(),
            authorization_url(&d, op, redirect_uri, Some(&pkce)),
            "bob",
        )
        .await;
        let code = outcome.param("code").expect("a code");
        let (status, body) = exchange(&d, op, &code, redirect_uri, &pkce.verifier).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id = claims(body["id_token"].as_str().unwrap());
        assert_eq!(id["aud"], op.client_id.as_str());
        assert!(id["exp"].as_i64().unwrap() < now() - 300, "{id}");
        assert!(!provider_log().await.is_empty());
    }
}
