//! Media room tokens over real HTTP: the LiveKit JWT's signature and every claim, who may mint
//! for which room, who may choose the identity, camera only where the document allows video,
//! and the answer of a server without LiveKit settings.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::auth::{Action, NewToken};
use crate::testing::{TestServer, scope};

const KEY: &str = "APIkey123";
const SECRET: &str = "a-livekit-secret-of-some-length-0123456789";

async fn configured() -> TestServer {
    TestServer::start_with(|c| {
        c.livekit_api_key = Some(KEY.into());
        c.livekit_api_secret = Some(crate::config::Secret::new(SECRET));
    })
    .await
}

/// Checks the HS256 signature under `secret` and returns `(header, claims)`.
pub fn verify_jwt(jwt: &str, secret: &str) -> (Value, Value) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    mac.verify_slice(&B64.decode(parts[2]).unwrap())
        .expect("signature verifies under the LiveKit secret");
    let header: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    (header, claims)
}

async fn mint_media(
    server: &TestServer,
    token: &str,
    db: &str,
    body: Value,
) -> (StatusCode, Value) {
    let r = server
        .client
        .post(server.url(&format!("/api/v1/db/{db}/media/token")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap())
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn token_is_signed_with_livekit_claims_for_the_callers_room_only() {
    let server = configured().await;
    let (meta, guest) = server
        .state
        .tokens
        .create(NewToken {
            label: "Ada Guest".into(),
            is_admin: false,
            scopes: vec![scope("club", Action::PresenceWrite, Some("lobby"))],
            expires_at: None,
        })
        .await
        .unwrap();

    let before = now();
    let (s, v) = mint_media(&server, &guest, "club", json!({"room": "lobby"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (header, claims) = verify_jwt(v["token"].as_str().unwrap(), SECRET);
    assert_eq!(header, json!({"alg": "HS256", "typ": "JWT"}));
    // A wrong secret does not verify.
    let parts: Vec<&str> = v["token"].as_str().unwrap().split('.').collect();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"wrong").unwrap();
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    assert!(mac.verify_slice(&B64.decode(parts[2]).unwrap()).is_err());

    assert_eq!(claims["iss"], KEY);
    assert_eq!(
        claims["sub"],
        meta.id.as_str(),
        "the caller is the identity"
    );
    assert_eq!(claims["name"], "Ada Guest", "the token's label is the name");
    let nbf = claims["nbf"].as_i64().unwrap();
    let exp = claims["exp"].as_i64().unwrap();
    assert!(nbf >= before && nbf <= now(), "{claims}");
    assert_eq!(exp - nbf, 3600);
    assert_eq!(
        claims["video"],
        json!({
            "roomJoin": true,
            "room": "club/lobby",
            "canPublish": true,
            "canSubscribe": true,
            "canPublishData": true,
            "canPublishSources": ["microphone"],
        })
    );
    // Exactly LiveKit's claims, nothing else.
    let mut keys: Vec<&str> = claims
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["exp", "iss", "name", "nbf", "sub", "video"]);
    assert_eq!(v["grants"], claims["video"]);
    assert_eq!(v["room"], "club/lobby");
    assert_eq!(v["identity"], meta.id.as_str());
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    // The document was not created to read its policy.
    assert!(
        !server
            .state
            .registry
            .documents_dir()
            .join("club.sqlite3")
            .exists()
    );

    // A shorter life on request; out of range is 400.
    let (s, v) = mint_media(
        &server,
        &guest,
        "club",
        json!({"room": "lobby", "ttl_secs": 120}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, c) = verify_jwt(v["token"].as_str().unwrap(), SECRET);
    assert_eq!(c["exp"].as_i64().unwrap() - c["nbf"].as_i64().unwrap(), 120);
    let (s, v) = mint_media(
        &server,
        &guest,
        "club",
        json!({"room": "lobby", "ttl_secs": 5}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );

    // Another room, another document: 403.
    let (s, v) = mint_media(&server, &guest, "club", json!({"room": "backstage"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, _) = mint_media(&server, &guest, "other", json!({"room": "lobby"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A caller without admin.token cannot pose as someone else.
    let (s, v) = mint_media(
        &server,
        &guest,
        "club",
        json!({"room": "lobby", "identity": "owner"}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, _) = mint_media(
        &server,
        &guest,
        "club",
        json!({"room": "lobby", "name": "Owner"}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // presence.read alone is not enough.
    let reader = server
        .mint(vec![scope("club", Action::PresenceRead, None)])
        .await;
    let (s, _) = mint_media(&server, &reader, "club", json!({"room": "lobby"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Bad bodies.
    let (s, v) = mint_media(&server, &guest, "club", json!({"room": ""})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_room"))
    );
    let (s, _) = mint_media(
        &server,
        &guest,
        "club",
        json!({"room": "lobby", "video": true}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "unknown fields are refused");

    // An admin.token holder may mint for someone else.
    let (s, v) = mint_media(
        &server,
        &server.admin_token,
        "club",
        json!({"room": "lobby", "identity": "svc-bot", "name": "Bot"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, c) = verify_jwt(v["token"].as_str().unwrap(), SECRET);
    assert_eq!(
        (c["sub"].as_str(), c["name"].as_str()),
        (Some("svc-bot"), Some("Bot"))
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn camera_only_where_the_document_allows_video() {
    let server = configured().await;
    let r = server
        .admin(Method::POST, "/api/v1/db/club/migrations")
        .json(
            &json!({"migrations": [{"version": 1, "name": "rooms", "sql":
            "CREATE TABLE settings (slug TEXT PRIMARY KEY, allow_video INTEGER NOT NULL DEFAULT 0);
             INSERT INTO settings VALUES ('lobby', 0), ('stage', 1);
             CREATE VIEW media_rooms AS SELECT slug AS room, allow_video FROM settings;"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let member = server
        .mint(vec![scope("club", Action::PresenceWrite, None)])
        .await;
    for (room, sources) in [
        ("lobby", json!(["microphone"])),
        ("stage", json!(["microphone", "camera"])),
        ("unlisted", json!(["microphone"])),
    ] {
        let (s, v) = mint_media(&server, &member, "club", json!({"room": room})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (_, c) = verify_jwt(v["token"].as_str().unwrap(), SECRET);
        assert_eq!(c["video"]["canPublishSources"], sources, "{room}");
        assert_eq!(c["video"]["room"], format!("club/{room}"));
    }
    // A document without the table: microphone only.
    server
        .admin(Method::POST, "/api/v1/db/plain/_open")
        .send()
        .await
        .unwrap();
    let (s, v) = mint_media(&server, &server.admin_token, "plain", json!({"room": "x"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["grants"]["canPublishSources"], json!(["microphone"]));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unconfigured_server_answers_503_in_the_error_shape() {
    let server = TestServer::start().await;
    let (s, v) = mint_media(
        &server,
        &server.admin_token,
        "club",
        json!({"room": "lobby"}),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], "media_not_configured");
    assert!(v["error"]["message"].as_str().unwrap().contains("livekit"));
    server.stop().await.unwrap();
}
