//! Proofs for `docs/security-checklist.md` that no other test makes: the pages' response
//! headers, and tokens and sessions stored as keyed hashes only.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::testing::TestServer;

/// The dashboard, an app and the API reference are served with a restrictive CSP, no
/// cross-origin Referer, no framing and no sniffing.
#[tokio::test]
async fn pages_carry_their_security_headers() {
    let server = TestServer::start().await;
    for path in ["/ui/", "/apps/hearth/", "/apps/shared/pow.js", "/docs"] {
        let r = server.anon(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        // No inline or evaluated script anywhere (`/docs` has one inline stylesheet and no
        // script at all).
        assert!(!csp.contains("unsafe-eval"), "{path}: {csp}");
        let script = csp
            .split(';')
            .find(|d| d.trim().starts_with("script-src"))
            .unwrap_or("");
        assert!(!script.contains("unsafe"), "{path}: {csp}");
        assert_eq!(h["referrer-policy"], "same-origin", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        if path != "/docs" {
            assert_eq!(h["x-frame-options"], "DENY", "{path}");
        }
    }
}

/// `service.db` holds no token and no session id in the clear: only their keyed hashes.
#[tokio::test]
async fn tokens_and_session_ids_are_stored_as_keyed_hashes_only() {
    let server = TestServer::start().await;
    let r = server
        .admin(Method::POST, "/api/v1/admin/tokens")
        .json(&json!({"label": "bot", "scopes": [{"db_id": "a", "action": "query.read"}]}))
        .send()
        .await
        .unwrap();
    let created: Value = r.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let secret = token.rsplit('_').next().unwrap().to_owned();
    let r = server
        .anon(Method::POST, "/auth/token-login")
        .json(&json!({"token": server.admin_token}))
        .send()
        .await
        .unwrap();
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();
    let dump: String = server
        .state
        .service
        .read(|c| {
            let mut out = String::new();
            for table in ["tokens", "sessions", "audit_log"] {
                let Ok(mut stmt) = c.prepare(&format!("SELECT * FROM {table}")) else {
                    continue;
                };
                let n = stmt.column_count();
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    for i in 0..n {
                        match row.get_ref(i)? {
                            rusqlite::types::ValueRef::Text(t) => {
                                out.push_str(&String::from_utf8_lossy(t))
                            }
                            rusqlite::types::ValueRef::Blob(b) => {
                                out.push_str(&String::from_utf8_lossy(b));
                                out.push_str(&hex::encode(b));
                            }
                            other => out.push_str(&format!("{other:?}")),
                        }
                        out.push('\n');
                    }
                }
            }
            Ok(out)
        })
        .await
        .unwrap();
    assert!(
        dump.contains(created["id"].as_str().unwrap()),
        "the id is kept"
    );
    for plain in [
        token.as_str(),
        secret.as_str(),
        server.admin_token.as_str(),
        &cookie,
    ] {
        assert!(!dump.contains(plain), "{plain} is stored in the clear");
    }
}
