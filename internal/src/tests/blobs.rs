//! Blobs over real HTTP (local store): signed upload and read URLs, verification, size bounds,
//! ranges, isolation between documents, publishing, GC, scopes.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auth::Action;
use crate::blobs::Signed;
use crate::testing::{TestServer, scope};

fn hash_of(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn post(server: &TestServer, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let r = server
        .anon(Method::POST, path)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get_json(server: &TestServer, token: &str, path: &str) -> (StatusCode, Value) {
    let r = server
        .anon(Method::GET, path)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `init-upload`: the created upload's `(blob_id, upload_url)`.
async fn init(server: &TestServer, db: &str, bytes: &[u8], ct: &str) -> (String, String) {
    let (status, body) = post(
        server,
        &server.admin_token,
        &format!("/api/v1/db/{db}/blobs/init-upload"),
        json!({"hash": hash_of(bytes), "size": bytes.len(), "content_type": ct}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["method"], "PUT");
    assert_eq!(body["headers"]["content-type"], ct);
    assert!(body["expires_at"].is_string());
    (
        body["blob_id"].as_str().unwrap().to_owned(),
        body["upload_url"].as_str().unwrap().to_owned(),
    )
}

/// Uploads and completes `bytes` in `db` (admin token for the control plane, none for the PUT).
async fn upload(server: &TestServer, db: &str, bytes: &[u8], ct: &str) -> String {
    let (blob_id, url) = init(server, db, bytes, ct).await;
    let put = reqwest::Client::new()
        .put(&url)
        .header("content-type", ct)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.status(),
        StatusCode::OK,
        "{}",
        put.text().await.unwrap()
    );
    let (status, done) = post(
        server,
        &server.admin_token,
        &format!("/api/v1/db/{db}/blobs/complete-upload"),
        json!({"blob_id": blob_id}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let hash = hash_of(bytes);
    assert_eq!(
        done,
        json!({"hash": hash, "size": bytes.len(), "content_type": ct, "status": "complete"})
    );
    hash
}

async fn read_url(server: &TestServer, db: &str, hash: &str) -> (StatusCode, Value) {
    get_json(
        server,
        &server.admin_token,
        &format!("/api/v1/db/{db}/blobs/{hash}/read-url"),
    )
    .await
}

async fn op(server: &TestServer, db: &str, hash: &str, what: &str) -> (StatusCode, Value) {
    post(
        server,
        &server.admin_token,
        &format!("/api/v1/db/{db}/blobs/{hash}/{what}"),
        json!({}),
    )
    .await
}

#[tokio::test]
async fn signed_put_then_get_over_plain_http() {
    let server = TestServer::start().await;
    let bytes = payload(300_000, 7);
    let hash = upload(&server, "b1", &bytes, "image/png").await;
    // The object is in place under the data dir, the staging area is empty.
    let on_disk = server
        .dir
        .path()
        .join("blobs/objects")
        .join(&hash[..2])
        .join(&hash);
    assert_eq!(std::fs::read(&on_disk).unwrap(), bytes);
    let staging: Vec<_> = std::fs::read_dir(server.dir.path().join("blobs/staging"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(staging.is_empty(), "{staging:?}");

    // A signed read URL works with no token at all.
    let (status, signed) = read_url(&server, "b1", &hash).await;
    assert_eq!(status, StatusCode::OK, "{signed}");
    let url = signed["url"].as_str().unwrap();
    assert!(url.contains("/api/v1/db/b1/blobs/object/"), "{url}");
    let r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let headers = r.headers().clone();
    assert_eq!(headers["etag"], format!("\"{hash}\"").as_str());
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(headers["content-length"], bytes.len().to_string().as_str());
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());
    // HEAD: the headers without the bytes.
    let head = reqwest::Client::new().head(url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"],
        bytes.len().to_string().as_str()
    );
    // With a token instead of a signature.
    let path = format!("/api/v1/db/b1/blobs/object/{hash}");
    let r = server
        .anon(Method::GET, &path)
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), bytes.len());
    // Neither: 401. A conditional GET: 304.
    let r = server.anon(Method::GET, &path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = reqwest::Client::new()
        .get(url)
        .header("if-none-match", format!("\"{hash}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    // Listed as claimed (complete-upload claims).
    let (status, list) = get_json(&server, &server.admin_token, "/api/v1/db/b1/blobs/list").await;
    assert_eq!(status, StatusCode::OK);
    let listed = &list["blobs"][0];
    assert_eq!(listed["hash"], hash.as_str());
    assert_eq!(listed["size"], bytes.len());
    assert_eq!(listed["content_type"], "image/png");
    assert_eq!(listed["kept"], false);
    assert_eq!(listed["published"], false);
    assert!(listed["claimed_until"].is_string());

    // The same bytes again: not uploaded twice.
    let (status, again) = post(
        &server,
        &server.admin_token,
        "/api/v1/db/b1/blobs/init-upload",
        json!({"hash": hash, "size": bytes.len()}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, json!({"hash": hash, "status": "complete"}));
    assert!(server.metrics().await.contains("patchwork_blob_objects 1"));
}

#[tokio::test]
async fn tampered_or_expired_urls_are_refused() {
    let server = TestServer::start().await;
    let bytes = payload(1000, 1);
    let (blob_id, url) = init(&server, "b2", &bytes, "text/plain").await;
    let client = reqwest::Client::new();
    let put = |u: String| client.put(u).body(bytes.clone()).send();
    // A changed signature, a changed expiry, another blob id, another document, none at all.
    let sig = url.rsplit_once("sig=").unwrap().1.to_owned();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        &sig[1..]
    );
    let expires: i64 = url
        .split("expires=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    for bad in [
        url.replace(&sig, &flipped),
        url.replace(
            &format!("expires={expires}"),
            &format!("expires={}", expires + 1),
        ),
        url.replace(&blob_id, "bu_00000000000000000000000000000000"),
        url.replace("/db/b2/", "/db/other/"),
        url.split('?').next().unwrap().to_owned(),
    ] {
        let r = put(bad.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_signature");
    }
    // A correctly signed URL that has expired.
    let past = crate::time_fmt::now_ms() / 1000 - 1;
    let sig = server.state.blobs.sign(
        Signed::Put {
            db_id: "b2",
            blob_id: &blob_id,
        },
        past,
    );
    let expired = server.url(&format!(
        "/api/v1/db/b2/blobs/upload/{blob_id}?expires={past}&sig={sig}"
    ));
    assert_eq!(put(expired).await.unwrap().status(), StatusCode::FORBIDDEN);
    // Nothing was staged by the refused requests.
    let (status, body) = post(
        &server,
        &server.admin_token,
        "/api/v1/db/b2/blobs/complete-upload",
        json!({"blob_id": blob_id}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "upload_missing");
    // The real URL still works; then read URLs: tampered and expired ones are refused too.
    assert_eq!(put(url).await.unwrap().status(), StatusCode::OK);
    let (status, _) = post(
        &server,
        &server.admin_token,
        "/api/v1/db/b2/blobs/complete-upload",
        json!({"blob_id": blob_id}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let hash = hash_of(&bytes);
    let (_, signed) = read_url(&server, "b2", &hash).await;
    let good = signed["url"].as_str().unwrap().to_owned();
    let sig = good.rsplit_once("sig=").unwrap().1.to_owned();
    let tampered = good.replace(&sig, &sig.chars().rev().collect::<String>());
    assert_eq!(
        reqwest::get(&tampered).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let sig = server.state.blobs.sign(
        Signed::Get {
            db_id: "b2",
            hash: &hash,
        },
        past,
    );
    let expired = server.url(&format!(
        "/api/v1/db/b2/blobs/object/{hash}?expires={past}&sig={sig}"
    ));
    assert_eq!(
        reqwest::get(&expired).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(reqwest::get(&good).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn size_bound_is_enforced() {
    let server = TestServer::start_with(|c| c.blob_max_bytes = 1_000_000).await;
    // Over the configured maximum, negative, bad hashes and content types: 400.
    for (body, code) in [
        (
            json!({"hash": hash_of(b"x"), "size": 1_000_001}),
            "invalid_size",
        ),
        (json!({"hash": hash_of(b"x"), "size": -1}), "invalid_size"),
        (json!({"hash": "ABC", "size": 1}), "invalid_hash"),
        (
            json!({"hash": hash_of(b"x").to_uppercase(), "size": 1}),
            "invalid_hash",
        ),
        (
            json!({"hash": hash_of(b"x"), "size": 1, "content_type": "nope"}),
            "invalid_content_type",
        ),
    ] {
        let (status, answer) = post(
            &server,
            &server.admin_token,
            "/api/v1/db/b3/blobs/init-upload",
            body,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"]["code"], code);
    }
    let bytes = payload(100_000, 3);
    let (blob_id, url) = init(&server, "b3", &bytes, "application/octet-stream").await;
    let client = reqwest::Client::new();
    // Shorter and longer bodies (with Content-Length), and a longer streamed body without one.
    for body in [bytes[..99_999].to_vec(), [bytes.clone(), vec![0]].concat()] {
        let r = client.put(&url).body(body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "size_mismatch");
    }
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(bytes.clone()), Ok(vec![1, 2, 3])];
    let r = client
        .put(&url)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let short: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(bytes[..10].to_vec())];
    let r = client
        .put(&url)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            short,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Nothing was kept from the refused bodies.
    let (status, body) = post(
        &server,
        &server.admin_token,
        "/api/v1/db/b3/blobs/complete-upload",
        json!({"blob_id": blob_id}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "upload_missing");
}

#[tokio::test]
async fn hash_mismatch_is_409_and_nothing_is_kept() {
    let server = TestServer::start().await;
    let declared = payload(50_000, 4);
    let (blob_id, url) = init(&server, "b4", &declared, "text/plain").await;
    let mut other = declared.clone();
    other[123] ^= 1;
    let r = reqwest::Client::new()
        .put(&url)
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, body) = post(
        &server,
        &server.admin_token,
        "/api/v1/db/b4/blobs/complete-upload",
        json!({"blob_id": blob_id}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "hash_mismatch");
    assert_eq!(body["error"]["details"]["actual"], hash_of(&other).as_str());
    // Nothing kept: no staged bytes, no object, the upload is gone, nothing to read.
    let blobs_dir = server.dir.path().join("blobs");
    let mut files = Vec::new();
    for sub in ["staging", "objects"] {
        if let Ok(dir) = std::fs::read_dir(blobs_dir.join(sub)) {
            files.extend(dir.map(|e| e.unwrap().path()));
        }
    }
    assert!(files.is_empty(), "{files:?}");
    let (status, _) = post(
        &server,
        &server.admin_token,
        "/api/v1/db/b4/blobs/complete-upload",
        json!({"blob_id": blob_id}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = read_url(&server, "b4", &hash_of(&declared)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = read_url(&server, "b4", &hash_of(&other)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = get_json(&server, &server.admin_token, "/api/v1/db/b4/blobs/list").await;
    assert_eq!(list, json!({"blobs": []}));
    // Bad blob ids.
    let (status, body) = post(
        &server,
        &server.admin_token,
        "/api/v1/db/b4/blobs/complete-upload",
        json!({"blob_id": "../../x"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn range_reads() {
    let server = TestServer::start().await;
    let bytes = payload(10_000, 5);
    let hash = upload(&server, "b5", &bytes, "application/octet-stream").await;
    let (_, signed) = read_url(&server, "b5", &hash).await;
    let url = signed["url"].as_str().unwrap();
    let client = reqwest::Client::new();
    for (range, want, content_range) in [
        ("bytes=0-9", &bytes[0..10], "bytes 0-9/10000"),
        ("bytes=9990-", &bytes[9990..], "bytes 9990-9999/10000"),
        ("bytes=-5", &bytes[9995..], "bytes 9995-9999/10000"),
        ("bytes=100-199999", &bytes[100..], "bytes 100-9999/10000"),
    ] {
        let r = client.get(url).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(r.headers()["content-range"], content_range);
        assert_eq!(r.bytes().await.unwrap().as_ref(), want, "{range}");
    }
    let r = client
        .get(url)
        .header("range", "bytes=10000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */10000");
    // Several ranges: the whole object.
    let r = client
        .get(url)
        .header("range", "bytes=0-1,5-6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), bytes.len());
}

#[tokio::test]
async fn another_document_cannot_read_the_blob() {
    let server = TestServer::start().await;
    let bytes = payload(2_000, 6);
    let hash = upload(&server, "owner", &bytes, "text/plain").await;
    let (_, signed) = read_url(&server, "owner", &hash).await;
    let url = signed["url"].as_str().unwrap().to_owned();
    // The other document, even with an admin token and the hash: 404 everywhere.
    let (status, _) = read_url(&server, "intruder", &hash).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let r = server
        .anon(
            Method::GET,
            &format!("/api/v1/db/intruder/blobs/object/{hash}"),
        )
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    for what in ["keep", "claim", "publish", "release", "unkeep", "unpublish"] {
        let (status, body) = op(&server, "intruder", &hash, what).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{what}: {body}");
    }
    // The owner's signed URL moved to the other document: the signature does not cover it.
    let moved = url.replace("/db/owner/", "/db/intruder/");
    assert_eq!(
        reqwest::get(&moved).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    // A token for the other document with blob.read cannot use the owner's path either.
    let token = server
        .mint(vec![scope("intruder", Action::BlobRead, None)])
        .await;
    let r = server
        .anon(
            Method::GET,
            &format!("/api/v1/db/owner/blobs/object/{hash}"),
        )
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Not published: not public.
    let r = server
        .anon(Method::GET, &format!("/o/{hash}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Once the owner lets go of it, its own signed URL stops working too.
    let (status, _) = op(&server, "owner", &hash, "release").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        reqwest::get(&url).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn publish_and_unpublish_control_public_visibility() {
    let server = TestServer::start().await;
    let bytes = payload(4_000, 8);
    let hash = upload(&server, "pub", &bytes, "image/png").await;
    let public = |path: String| {
        let client = server.client.clone();
        let url = server.url(&path);
        async move { client.get(url).send().await.unwrap() }
    };
    assert_eq!(
        public(format!("/o/{hash}")).await.status(),
        StatusCode::NOT_FOUND
    );
    let (status, body) = op(&server, "pub", &hash, "publish").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["published"], true);
    for path in [format!("/o/{hash}"), format!("/o/{hash}.png")] {
        let r = public(path.clone()).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(r.headers()["content-type"], "image/png");
        assert_eq!(r.headers()["etag"], format!("\"{hash}\"").as_str());
        assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());
    }
    let r = server
        .client
        .get(server.url(&format!("/o/{hash}.png")))
        .header("range", "bytes=1-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[1..3]);
    let head = server
        .client
        .head(server.url(&format!("/o/{hash}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    for bad in [
        format!("/o/{}", &hash[..63]),
        format!("/o/{hash}."),
        format!("/o/{hash}.a/b"),
        format!("/o/{}", hash.to_uppercase()),
    ] {
        assert_eq!(
            public(bad.clone()).await.status(),
            StatusCode::NOT_FOUND,
            "{bad}"
        );
    }
    let (status, body) = op(&server, "pub", &hash, "unpublish").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["published"], false);
    assert_eq!(
        public(format!("/o/{hash}")).await.status(),
        StatusCode::NOT_FOUND
    );
    // Keep and unkeep write the document's `blobs` table, which SQL reads.
    let (status, body) = op(&server, "pub", &hash, "keep").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["kept"], true);
    let (_, rows) = post(
        &server,
        &server.admin_token,
        "/api/v1/db/pub/query/exec",
        json!({"sql": "SELECT hash, size, content_type FROM blobs"}),
    )
    .await;
    assert_eq!(rows["rows"], json!([[hash, 4000, "image/png"]]), "{rows}");
    let (status, body) = op(&server, "pub", &hash, "unkeep").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["kept"], false);
}

#[tokio::test]
async fn gc_keeps_referenced_claimed_published_and_young_objects() {
    let server = TestServer::start_with(|c| c.blob_gc_grace_secs = 3600).await;
    let db = "gc";
    let mut hashes = Vec::new();
    for seed in 0..6u8 {
        hashes.push(upload(&server, db, &payload(1000 + usize::from(seed), seed), "x/y").await);
    }
    let [kept, claimed, published, young, released, expired] =
        <[String; 6]>::try_from(hashes).unwrap();
    assert_eq!(op(&server, db, &kept, "keep").await.0, StatusCode::OK);
    assert_eq!(op(&server, db, &kept, "release").await.0, StatusCode::OK);
    assert_eq!(
        op(&server, db, &published, "publish").await.0,
        StatusCode::OK
    );
    assert_eq!(
        op(&server, db, &published, "release").await.0,
        StatusCode::OK
    );
    let (status, body) = post(
        &server,
        &server.admin_token,
        &format!("/api/v1/db/{db}/blobs/{claimed}/claim"),
        json!({"ttl_secs": 600}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(op(&server, db, &young, "release").await.0, StatusCode::OK);
    assert_eq!(
        op(&server, db, &released, "release").await.0,
        StatusCode::OK
    );
    // `expired` keeps its claim from complete-upload, which we let expire.
    let (e, d) = (expired.clone(), db.to_owned());
    let doc = server
        .state
        .registry
        .get(&crate::registry::DbId::parse(db).unwrap())
        .await
        .unwrap();
    doc.write(move |c| {
        c.execute(
            "UPDATE _patchwork_blob_claims SET until_ms = 1 WHERE hash = ?1",
            [&e],
        )?;
        Ok(())
    })
    .await
    .unwrap();
    drop(doc);
    let e = expired.clone();
    let young_hash = young.clone();
    server
        .state
        .service
        .write(move |c| {
            c.execute(
                "UPDATE blob_refs SET claimed_until_ms = 1 WHERE hash = ?1 AND db_id = ?2",
                rusqlite::params![e, d],
            )?;
            // Every object but `young` completed long ago.
            c.execute(
                "UPDATE blob_objects SET completed_ms = 1 WHERE hash != ?1",
                [young_hash],
            )?;
            Ok(())
        })
        .await
        .unwrap();

    let report = crate::blobs::gc::run_once(&server.state).await.unwrap();
    assert_eq!(report.deleted, 2, "{report:?}");
    let exists = |h: &str| {
        server
            .dir
            .path()
            .join("blobs/objects")
            .join(&h[..2])
            .join(h)
            .exists()
    };
    for h in [&kept, &claimed, &published, &young] {
        assert!(exists(h), "kept {h}");
    }
    for h in [&released, &expired] {
        assert!(!exists(h), "deleted {h}");
    }
    // Still readable where referenced; the published one still public.
    let (status, _) = read_url(&server, db, &kept).await;
    assert_eq!(status, StatusCode::OK);
    let r = server
        .anon(Method::GET, &format!("/o/{published}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A deleted object is uploaded afresh (not deduplicated against what is gone).
    let bytes = payload(1004, 4);
    assert_eq!(hash_of(&bytes), released);
    upload(&server, db, &bytes, "x/y").await;
    assert!(exists(&released));
    // A second pass deletes nothing more; the metrics saw the pass.
    let report = crate::blobs::gc::run_once(&server.state).await.unwrap();
    assert_eq!(report.deleted, 0, "{report:?}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("patchwork_blob_gc_runs_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains("patchwork_blob_gc_deleted_total 2"));
    assert!(metrics.contains("patchwork_blob_objects 5"));
}

#[tokio::test]
async fn stale_uploads_are_cleaned_up() {
    let server = TestServer::start_with(|c| c.blob_url_ttl_secs = 1).await;
    let bytes = payload(100, 9);
    let (blob_id, url) = init(&server, "stale", &bytes, "x/y").await;
    let r = reqwest::Client::new()
        .put(&url)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let staged = server.dir.path().join("blobs/staging").join(&blob_id);
    assert!(staged.exists());
    let id = blob_id.clone();
    server
        .state
        .service
        .write(move |c| {
            c.execute(
                "UPDATE blob_uploads SET expires_ms = 1 WHERE blob_id = ?1",
                [id],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let report = crate::blobs::gc::run_once(&server.state).await.unwrap();
    assert_eq!(report.stale_uploads, 1);
    assert!(!staged.exists());
    // The URL no longer uploads: `404` (no such upload), or `403` when its one-second signature
    // (`expires` is whole seconds) has run out by now.
    let status = reqwest::Client::new()
        .put(&url)
        .body(bytes)
        .send()
        .await
        .unwrap()
        .status();
    assert!(
        status == StatusCode::NOT_FOUND || status == StatusCode::FORBIDDEN,
        "{status}"
    );
    assert!(!staged.exists());
}

#[tokio::test]
async fn scopes_decide_who_uploads_reads_claims_and_publishes() {
    let server = TestServer::start().await;
    let bytes = payload(500, 10);
    let hash = upload(&server, "s", &bytes, "x/y").await;
    let reader = server.mint(vec![scope("s", Action::BlobRead, None)]).await;
    let uploader = server
        .mint(vec![scope("s", Action::BlobUpload, Some(&hash[..4]))])
        .await;
    let claimer = server.mint(vec![scope("s", Action::BlobClaim, None)]).await;
    // The reader reads, but cannot upload, claim or publish.
    let (status, _) = get_json(
        &server,
        &reader,
        &format!("/api/v1/db/s/blobs/{hash}/read-url"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get_json(&server, &reader, "/api/v1/db/s/blobs/list").await;
    assert_eq!(status, StatusCode::OK);
    for what in ["claim", "keep", "publish", "release"] {
        let (status, _) = post(
            &server,
            &reader,
            &format!("/api/v1/db/s/blobs/{hash}/{what}"),
            json!({}),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
    }
    // The uploader's resource prefix is the hash: other hashes are refused.
    let other = payload(10, 11);
    let (status, _) = post(
        &server,
        &uploader,
        "/api/v1/db/s/blobs/init-upload",
        json!({"hash": hash_of(&other), "size": 10}),
    )
    .await;
    let expected = if hash_of(&other).starts_with(&hash[..4]) {
        StatusCode::CREATED
    } else {
        StatusCode::FORBIDDEN
    };
    assert_eq!(status, expected);
    let (status, _) = post(
        &server,
        &uploader,
        "/api/v1/db/s/blobs/init-upload",
        json!({"hash": hash, "size": 500}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The claimer keeps, but cannot read or release.
    let (status, _) = post(
        &server,
        &claimer,
        &format!("/api/v1/db/s/blobs/{hash}/keep"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(
        &server,
        &claimer,
        &format!("/api/v1/db/s/blobs/{hash}/unkeep"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let r = server
        .anon(Method::GET, &format!("/api/v1/db/s/blobs/object/{hash}"))
        .bearer_auth(&claimer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Claim TTLs are validated.
    for ttl in [0, -1, crate::blobs::MAX_CLAIM_TTL_SECS as i64 + 1] {
        let (status, body) = post(
            &server,
            &claimer,
            &format!("/api/v1/db/s/blobs/{hash}/claim"),
            json!({"ttl_secs": ttl}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{ttl}");
        assert_eq!(body["error"]["code"], "invalid_ttl");
    }
}

#[tokio::test]
async fn knowing_a_hash_does_not_let_another_document_skip_the_upload() {
    let server = TestServer::start().await;
    let bytes = b"tenant a's secret file".to_vec();
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let (status, init) = post(
        &server,
        &server.admin_token,
        "/api/v1/db/tenant-a/blobs/init-upload",
        json!({"hash": hash, "size": bytes.len()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{init}");
    let put = server
        .client
        .put(init["upload_url"].as_str().unwrap())
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let (status, done) = post(
        &server,
        &server.admin_token,
        "/api/v1/db/tenant-a/blobs/complete-upload",
        json!({"blob_id": init["blob_id"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    // Tenant b knows the hash and size: it gets an upload to do, not the object, and no hint
    // that the object exists (a wrong size is not a size_mismatch either).
    for size in [bytes.len(), bytes.len() + 1] {
        let (status, answer) = post(
            &server,
            &server.admin_token,
            "/api/v1/db/tenant-b/blobs/init-upload",
            json!({"hash": hash, "size": size}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        assert!(answer["upload_url"].is_string());
    }
    let r = server
        .admin(
            Method::GET,
            &format!("/api/v1/db/tenant-b/blobs/object/{hash}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn gc_racing_completes_never_loses_an_object() {
    // No grace at all: only the claim a complete makes protects a fresh object.
    let server = TestServer::start_with(|c| c.blob_gc_grace_secs = 0).await;
    let db = "race";
    let gc = {
        let state = server.state.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                crate::blobs::gc::run_once(&state).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut hashes = Vec::new();
    for i in 0..40 {
        let bytes = format!("object number {i} raced against the collector").into_bytes();
        hashes.push(upload(&server, db, &bytes, "text/plain").await);
    }
    gc.await.unwrap();
    crate::blobs::gc::run_once(&server.state).await.unwrap();
    for hash in &hashes {
        let r = server
            .admin(Method::GET, &format!("/api/v1/db/{db}/blobs/object/{hash}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{hash}");
        let body = r.bytes().await.unwrap();
        assert_eq!(blake3::hash(&body).to_hex().to_string(), *hash);
    }
}

#[tokio::test]
async fn a_blob_kept_by_sql_alone_is_not_collected() {
    let server = TestServer::start_with(|c| {
        c.blob_gc_grace_secs = 0;
        c.blob_claim_ttl_secs = 1;
    })
    .await;
    let db = "sqlkeep";
    let hash = upload(&server, db, b"kept by a plain INSERT", "text/plain").await;
    // Kept through SQL, not through the keep route; then the upload's claim runs out.
    let r = server
        .admin(Method::POST, &format!("/api/v1/db/{db}/query/exec"))
        .json(&json!({"sql": "INSERT INTO blobs (hash, size, content_type, created_at) VALUES (?, 22, 'text/plain', 'now')", "args": [hash]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    crate::blobs::gc::run_once(&server.state).await.unwrap();
    let r = server
        .admin(Method::GET, &format!("/api/v1/db/{db}/blobs/object/{hash}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // And once the row goes, the next pass collects it.
    let r = server
        .admin(
            Method::POST,
            &format!("/api/v1/db/{db}/blobs/{hash}/unkeep"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let report = crate::blobs::gc::run_once(&server.state).await.unwrap();
    assert_eq!(report.deleted, 1, "{report:?}");
}

#[tokio::test]
async fn gc_rescans_only_documents_that_changed() {
    let server = TestServer::start().await;
    for db in ["inc-a", "inc-b", "inc-c"] {
        let r = server
            .admin(Method::POST, &format!("/api/v1/db/{db}/_open"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let first = crate::blobs::gc::run_once(&server.state).await.unwrap();
    assert!(first.rescanned >= 3, "{first:?}");
    // Nothing changed: the next pass opens no document.
    let quiet = crate::blobs::gc::run_once(&server.state).await.unwrap();
    assert_eq!(quiet.rescanned, 0, "{quiet:?}");
    let r = server
        .admin(Method::POST, "/api/v1/db/inc-b/query/exec")
        .json(&json!({"sql": "CREATE TABLE touched (x)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let after = crate::blobs::gc::run_once(&server.state).await.unwrap();
    assert_eq!(after.rescanned, 1, "{after:?}");
}
