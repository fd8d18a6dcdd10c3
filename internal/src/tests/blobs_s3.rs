//! Blobs on an S3-compatible store (s3s-fs, started once per test binary; see `testing::s3`):
//! presigned S3 upload and read URLs used with plain HTTP, SigV4 refusing tampered or expired
//! URLs, the size and hash checks of `complete-upload`, ranges streamed from S3, isolation, GC.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::testing::{TestServer, s3};

pub(super) fn hash_of(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

/// A server whose blob store is a fresh bucket of the shared s3s-fs.
async fn start(tweak: impl FnOnce(&mut crate::Config)) -> (TestServer, &'static s3::S3, String) {
    let s3 = s3::server().await;
    let bucket = s3.new_bucket();
    let b = bucket.clone();
    let server = TestServer::start_with(move |c| {
        s3.configure(c, &b);
        tweak(c);
    })
    .await;
    (server, s3, bucket)
}

/// A POST with the admin token: status and JSON answer.
pub(super) async fn post(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    let r = server
        .anon(Method::POST, path)
        .bearer_auth(&server.admin_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `init-upload` of `bytes` declared as `(hash, size)`: `(blob_id, presigned PUT URL)`.
async fn init_as(
    server: &TestServer,
    db: &str,
    hash: &str,
    size: usize,
    ct: &str,
) -> (String, String) {
    let (status, body) = post(
        server,
        &format!("/api/v1/db/{db}/blobs/init-upload"),
        json!({"hash": hash, "size": size, "content_type": ct}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["method"], "PUT");
    assert_eq!(body["headers"]["content-type"], ct);
    (
        body["blob_id"].as_str().unwrap().to_owned(),
        body["upload_url"].as_str().unwrap().to_owned(),
    )
}

/// A plain `PUT` (no credentials but the URL's).
async fn put(url: &str, ct: &str, bytes: &[u8]) -> reqwest::Response {
    reqwest::Client::new()
        .put(url)
        .header("content-type", ct)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

async fn complete(server: &TestServer, db: &str, blob_id: &str) -> (StatusCode, Value) {
    post(
        server,
        &format!("/api/v1/db/{db}/blobs/complete-upload"),
        json!({"blob_id": blob_id}),
    )
    .await
}

/// Uploads `bytes` to `db` through a presigned PUT and completes it; the hash.
async fn upload(server: &TestServer, db: &str, bytes: &[u8], ct: &str) -> String {
    let hash = hash_of(bytes);
    let (blob_id, url) = init_as(server, db, &hash, bytes.len(), ct).await;
    let r = put(&url, ct, bytes).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let (status, body) = complete(server, db, &blob_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "complete");
    hash
}

async fn read_url(server: &TestServer, db: &str, hash: &str) -> (StatusCode, Value) {
    let r = server
        .admin(
            Method::GET,
            &format!("/api/v1/db/{db}/blobs/{hash}/read-url"),
        )
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn object_key(hash: &str) -> String {
    format!("objects/{}/{hash}", &hash[..2])
}

#[tokio::test]
async fn presigned_put_then_presigned_get_over_plain_http() {
    let (server, s3, bucket) = start(|_| {}).await;
    let bytes = payload(300_000, 3);
    let hash = hash_of(&bytes);
    let (blob_id, url) = init_as(&server, "s1", &hash, bytes.len(), "image/png").await;
    // A SigV4 presigned URL for the staging key, straight to the bucket.
    assert!(
        url.starts_with(&format!("{}/{bucket}/staging/{blob_id}?", s3.endpoint)),
        "{url}"
    );
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let r = put(&url, "image/png", &bytes).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    assert_eq!(s3.keys(&bucket), vec![format!("staging/{blob_id}")]);
    let (status, body) = complete(&server, "s1", &blob_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["hash"], hash);
    assert_eq!(body["size"], 300_000);
    assert_eq!(body["content_type"], "image/png");
    // Moved (copy, then delete) to its final key; nothing left in staging.
    assert_eq!(s3.keys(&bucket), vec![object_key(&hash)]);

    // The read URL is a presigned S3 GET that works with no credentials.
    let (status, body) = read_url(&server, "s1", &hash).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let get_url = body["url"].as_str().unwrap();
    assert!(
        get_url.starts_with(&format!("{}/{bucket}/{}?", s3.endpoint, object_key(&hash))),
        "{get_url}"
    );
    let r = reqwest::get(get_url).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), bytes);

    // The token route streams the same bytes from S3.
    let r = server
        .admin(Method::GET, &format!("/api/v1/db/s1/blobs/object/{hash}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["etag"], format!("\"{hash}\"").as_str());
    assert_eq!(r.bytes().await.unwrap(), bytes);

    // An existing object the document references is not uploaded twice.
    let (status, body) = post(
        &server,
        "/api/v1/db/s1/blobs/init-upload",
        json!({"hash": hash, "size": bytes.len()}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "complete");
}

#[tokio::test]
async fn tampered_presigned_urls_are_refused_by_s3() {
    let (server, s3, bucket) = start(|_| {}).await;
    let bytes = payload(1000, 5);
    let hash = hash_of(&bytes);
    let (blob_id, url) = init_as(&server, "t1", &hash, bytes.len(), "text/plain").await;

    // Another key, another signature, another content type: all refused by SigV4.
    let other_key = url.replace(&blob_id, "bu_00000000000000000000000000000000");
    let tampered_sig = {
        let (head, sig) = url.rsplit_once("X-Amz-Signature=").unwrap();
        let mut sig = sig.to_owned();
        let flipped = if sig.starts_with('0') { "1" } else { "0" };
        sig.replace_range(0..1, flipped);
        format!("{head}X-Amz-Signature={sig}")
    };
    for (what, url, ct) in [
        ("other key", other_key.as_str(), "text/plain"),
        ("tampered signature", tampered_sig.as_str(), "text/plain"),
        ("other content type", url.as_str(), "text/html"),
    ] {
        let r = put(url, ct, &bytes).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{what}");
    }
    assert!(s3.keys(&bucket).is_empty(), "{:?}", s3.keys(&bucket));

    // The genuine URL works; a tampered read URL does not.
    assert_eq!(
        put(&url, "text/plain", &bytes).await.status(),
        StatusCode::OK
    );
    assert_eq!(complete(&server, "t1", &blob_id).await.0, StatusCode::OK);
    let (_, body) = read_url(&server, "t1", &hash).await;
    let get_url = body["url"].as_str().unwrap();
    let r = reqwest::get(get_url.replace("X-Amz-Expires=900", "X-Amz-Expires=9000"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = reqwest::get(get_url.replace(&hash[..8], "00000000"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        reqwest::get(get_url).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn wrong_size_is_refused_at_complete_and_nothing_is_kept() {
    let (server, s3, bucket) = start(|_| {}).await;
    let bytes = payload(5000, 9);
    let hash = hash_of(&bytes);
    // A presigned S3 PUT cannot bind the length: S3 takes a longer (or shorter) body ...
    for body in [
        [bytes.as_slice(), b"extra"].concat(),
        bytes[..4000].to_vec(),
    ] {
        let (blob_id, url) = init_as(&server, "w1", &hash, bytes.len(), "x/y").await;
        assert_eq!(put(&url, "x/y", &body).await.status(), StatusCode::OK);
        // ... and complete-upload refuses it, deleting the staged object and the upload.
        let (status, err) = complete(&server, "w1", &blob_id).await;
        assert_eq!(status, StatusCode::CONFLICT, "{err}");
        assert_eq!(err["error"]["code"], "size_mismatch", "{err}");
        assert!(s3.keys(&bucket).is_empty(), "{:?}", s3.keys(&bucket));
        assert_eq!(
            complete(&server, "w1", &blob_id).await.0,
            StatusCode::NOT_FOUND
        );
    }
    let (status, _) = read_url(&server, "w1", &hash).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn hash_mismatch_is_409_and_nothing_is_kept() {
    let (server, s3, bucket) = start(|_| {}).await;
    let bytes = payload(5000, 11);
    let hash = hash_of(&bytes);
    let (blob_id, url) = init_as(&server, "h1", &hash, bytes.len(), "x/y").await;
    let other = payload(5000, 12);
    assert_eq!(put(&url, "x/y", &other).await.status(), StatusCode::OK);
    let (status, err) = complete(&server, "h1", &blob_id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error"]["code"], "hash_mismatch", "{err}");
    assert!(s3.keys(&bucket).is_empty(), "{:?}", s3.keys(&bucket));
    assert_eq!(
        complete(&server, "h1", &blob_id).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = read_url(&server, "h1", &hash).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn range_reads_stream_from_s3() {
    let (server, _, _) = start(|_| {}).await;
    let bytes = payload(100_000, 13);
    let hash = upload(&server, "r1", &bytes, "application/octet-stream").await;
    let path = format!("/api/v1/db/r1/blobs/object/{hash}");
    for (range, want) in [
        ("bytes=10-19", 10..20),
        ("bytes=99990-", 99_990..100_000),
        ("bytes=-5", 99_995..100_000),
        ("bytes=50000-200000", 50_000..100_000),
    ] {
        let r = server
            .admin(Method::GET, &path)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {}-{}/100000", want.start, want.end - 1).as_str()
        );
        assert_eq!(r.bytes().await.unwrap(), bytes[want].to_vec(), "{range}");
    }
    let r = server
        .admin(Method::GET, &path)
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // Published: `/o/` streams ranges from S3 too.
    assert_eq!(
        post(
            &server,
            &format!("/api/v1/db/r1/blobs/{hash}/publish"),
            json!({})
        )
        .await
        .0,
        StatusCode::OK
    );
    let r = server
        .anon(Method::GET, &format!("/o/{hash}.bin"))
        .header("range", "bytes=1-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), bytes[1..4].to_vec());
}

#[tokio::test]
async fn another_document_cannot_read_it() {
    let (server, _, _) = start(|_| {}).await;
    let bytes = payload(2000, 17);
    let hash = upload(&server, "owner", &bytes, "x/y").await;
    assert_eq!(read_url(&server, "owner", &hash).await.0, StatusCode::OK);
    assert_eq!(
        read_url(&server, "stranger", &hash).await.0,
        StatusCode::NOT_FOUND
    );
    let r = server
        .admin(
            Method::GET,
            &format!("/api/v1/db/stranger/blobs/object/{hash}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        post(
            &server,
            &format!("/api/v1/db/stranger/blobs/{hash}/keep"),
            json!({})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    // Knowing the hash does not skip the upload either: a presigned PUT is handed out.
    let (status, body) = post(
        &server,
        "/api/v1/db/stranger/blobs/init-upload",
        json!({"hash": hash, "size": bytes.len()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn gc_deletes_unreferenced_objects_in_s3() {
    let (server, s3, bucket) = start(|c| c.blob_gc_grace_secs = 0).await;
    let kept = upload(&server, "g1", &payload(1500, 21), "x/y").await;
    let dropped = upload(&server, "g1", &payload(1500, 22), "x/y").await;
    for (hash, what) in [(&kept, "keep"), (&kept, "release"), (&dropped, "release")] {
        let (status, body) = post(
            &server,
            &format!("/api/v1/db/g1/blobs/{hash}/{what}"),
            json!({}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{what}: {body}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let report = crate::blobs::gc::run_once(&server.state).await.unwrap();
    assert_eq!(report.deleted, 1, "{report:?}");
    assert_eq!(s3.keys(&bucket), vec![object_key(&kept)]);
    assert_eq!(read_url(&server, "g1", &kept).await.0, StatusCode::OK);
    assert_eq!(
        read_url(&server, "g1", &dropped).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn presigned_urls_use_the_public_endpoint() {
    let s3 = s3::server().await;
    // `localhost` instead of `127.0.0.1`: the same server under the name clients use; the host
    // is part of the signature, so URLs must be signed for it.
    let public = s3.endpoint.replace("127.0.0.1", "localhost");
    let (server, _, bucket) = start(|c| c.s3_public_endpoint = Some(public.clone())).await;
    let bytes = payload(4000, 23);
    let hash = hash_of(&bytes);
    let (blob_id, url) = init_as(&server, "p1", &hash, bytes.len(), "x/y").await;
    assert!(
        url.starts_with(&format!("{public}/{bucket}/staging/{blob_id}?")),
        "{url}"
    );
    assert_eq!(put(&url, "x/y", &bytes).await.status(), StatusCode::OK);
    assert_eq!(complete(&server, "p1", &blob_id).await.0, StatusCode::OK);
    let (_, body) = read_url(&server, "p1", &hash).await;
    let get_url = body["url"].as_str().unwrap();
    assert!(get_url.starts_with(&public), "{get_url}");
    let r = reqwest::get(get_url).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), bytes);
    // Signed for the public host, the URL does not verify under another one.
    let r = reqwest::get(get_url.replace("localhost", "127.0.0.1"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn expired_presigned_urls_are_refused_by_s3() {
    let (server, s3, bucket) = start(|_| {}).await;
    let bytes = payload(3000, 27);
    let hash = upload(&server, "e1", &bytes, "x/y").await;
    let short = std::time::Duration::from_secs(1);
    let get = server
        .state
        .blobs
        .presigned_get(&crate::blobs::Blobs::object_path(&hash), short)
        .await
        .unwrap()
        .unwrap();
    let put_url = server
        .state
        .blobs
        .presigned_put(&crate::blobs::Blobs::staging_path("bu_late"), short, "x/y")
        .await
        .unwrap()
        .unwrap();
    assert!(get.as_str().contains("X-Amz-Expires=1&"), "{get}");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = reqwest::get(get.as_str()).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = put(put_url.as_str(), "x/y", &bytes).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(s3.keys(&bucket), vec![object_key(&hash)]);
}

#[tokio::test]
async fn a_large_object_goes_to_s3_in_presigned_parts() {
    const MIB: usize = 1024 * 1024;
    let (server, s3, bucket) = start(|c| c.blob_part_bytes = 5 * MIB as u64).await;
    let bytes = payload(11 * MIB + 7, 31);
    let hash = hash_of(&bytes);
    let (status, init) = post(
        &server,
        "/api/v1/db/m1/blobs/init-upload",
        json!({"hash": hash, "size": bytes.len(), "content_type": "video/webm"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{init}");
    let blob_id = init["blob_id"].as_str().unwrap().to_owned();
    let parts = init["parts"].as_array().unwrap().clone();
    assert_eq!(parts.len(), 3);
    // Presigned `UploadPart`s of one multipart upload of the staging key.
    for p in &parts {
        let url = p["url"].as_str().unwrap();
        assert!(
            url.starts_with(&format!("{}/{bucket}/staging/{blob_id}?", s3.endpoint)),
            "{url}"
        );
        assert!(
            url.contains("uploadId=") && url.contains("partNumber="),
            "{url}"
        );
    }

    // A part URL does not sign another part number (a small body: S3 answers before reading).
    let url1 = parts[0]["url"].as_str().unwrap();
    let forged = url1.replace("partNumber=1", "partNumber=2");
    let r = reqwest::Client::new()
        .put(&forged)
        .body(vec![0u8; 16])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // The parts, concurrently, with plain HTTP and no credentials; their ETags go to complete.
    let mut sends = Vec::new();
    for p in parts.iter().rev() {
        let url = p["url"].as_str().unwrap().to_owned();
        let offset = p["offset"].as_u64().unwrap() as usize;
        let size = p["size"].as_u64().unwrap() as usize;
        let n = p["part_number"].as_u64().unwrap();
        let chunk = bytes[offset..offset + size].to_vec();
        sends.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .put(&url)
                .body(chunk)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let etag = r.headers()["etag"].to_str().unwrap().to_owned();
            json!({"part_number": n, "etag": etag})
        }));
    }
    let mut etags = Vec::new();
    for send in sends {
        etags.push(send.await.unwrap());
    }
    // Nothing is an object before complete: the parts are S3's.
    assert!(s3.keys(&bucket).is_empty(), "{:?}", s3.keys(&bucket));
    let (status, body) = post(
        &server,
        "/api/v1/db/m1/blobs/complete-upload",
        json!({"blob_id": blob_id, "parts": etags}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["size"], bytes.len());
    assert_eq!(s3.keys(&bucket), vec![object_key(&hash)]);

    let (status, body) = read_url(&server, "m1", &hash).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r = reqwest::get(body["url"].as_str().unwrap()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "video/webm");
    assert!(r.bytes().await.unwrap() == bytes);

    // Completing with a part S3 never received: `409`, nothing kept. (s3s-fs does not compare
    // ETags, so a missing part is what is refused here; AWS refuses a wrong ETag the same way.)
    let other = payload(6 * MIB, 32);
    let (status, init) = post(
        &server,
        "/api/v1/db/m1/blobs/init-upload",
        json!({"hash": hash_of(&other), "size": other.len()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{init}");
    for p in init["parts"].as_array().unwrap().iter().take(1) {
        let offset = p["offset"].as_u64().unwrap() as usize;
        let size = p["size"].as_u64().unwrap() as usize;
        let r = reqwest::Client::new()
            .put(p["url"].as_str().unwrap())
            .body(other[offset..offset + size].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let (status, body) = post(
        &server,
        "/api/v1/db/m1/blobs/complete-upload",
        json!({"blob_id": init["blob_id"], "parts": [
            {"part_number": 1, "etag": "\"0123\""}, {"part_number": 2, "etag": "\"4567\""}
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "parts_refused", "{body}");
    assert_eq!(s3.keys(&bucket), vec![object_key(&hash)]);
}

#[tokio::test]
async fn a_stale_multipart_upload_is_aborted() {
    const MIB: usize = 1024 * 1024;
    let (server, s3, bucket) = start(|c| c.blob_part_bytes = 5 * MIB as u64).await;
    let bytes = payload(6 * MIB, 33);
    let (status, init) = post(
        &server,
        "/api/v1/db/m2/blobs/init-upload",
        json!({"hash": hash_of(&bytes), "size": bytes.len()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{init}");
    let part1 = init["parts"][0]["url"].as_str().unwrap().to_owned();
    let part2 = init["parts"][1]["url"].as_str().unwrap().to_owned();
    let r = reqwest::Client::new()
        .put(&part1)
        .body(bytes[..5 * MIB].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let id = init["blob_id"].as_str().unwrap().to_owned();
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
    assert_eq!(report.stale_uploads, 1, "{report:?}");
    // Aborted: its URLs no longer take parts, and nothing is left in the bucket.
    // (AWS answers 404 NoSuchUpload; s3s-fs 403 for an upload id it no longer knows, and may
    // answer before reading the body and close the connection: then sending the body fails.)
    match reqwest::Client::new()
        .put(&part2)
        .body(bytes[5 * MIB..].to_vec())
        .send()
        .await
    {
        Ok(r) => assert!(r.status().is_client_error(), "{}", r.status()),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    assert!(s3.keys(&bucket).is_empty(), "{:?}", s3.keys(&bucket));
}
