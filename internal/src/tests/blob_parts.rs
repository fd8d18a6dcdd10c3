//! Blobs sent in parts on the local store (signed part `PUT`s, any order, assembled and verified
//! at `complete-upload`), and the GC's orphan sweep and batched deletes.

use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::blobs_s3::{hash_of, post};
use crate::testing::TestServer;

const MIB: usize = 1024 * 1024;

/// Bytes that differ from one MiB to the next (so swapped parts change the hash).
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(37)
                .wrapping_add(seed ^ (i >> 20) as u8)
        })
        .collect()
}

async fn start() -> TestServer {
    TestServer::start_with(|c| c.blob_part_bytes = 5 * MIB as u64).await
}

/// `init-upload` of `bytes`: the whole answer.
async fn init(server: &TestServer, db: &str, hash: &str, size: usize) -> Value {
    let (status, body) = post(
        server,
        &format!("/api/v1/db/{db}/blobs/init-upload"),
        json!({"hash": hash, "size": size, "content_type": "video/mp4"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn put_part(url: &str, bytes: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .put(url)
        .body(bytes)
        .send()
        .await
        .unwrap()
}

/// Part `n`'s `(url, offset, size)` from an `init-upload` answer.
fn part(init: &Value, n: usize) -> (String, usize, usize) {
    let p = &init["parts"][n - 1];
    assert_eq!(p["part_number"], n);
    assert_eq!(p["method"], "PUT");
    (
        p["url"].as_str().unwrap().to_owned(),
        p["offset"].as_u64().unwrap() as usize,
        p["size"].as_u64().unwrap() as usize,
    )
}

#[tokio::test]
async fn a_large_object_is_sent_in_parts_in_any_order() {
    let server = start().await;
    let bytes = payload(12 * MIB + 123, 1);
    let hash = hash_of(&bytes);
    let init = init(&server, "parts", &hash, bytes.len()).await;
    // The single PUT stays on offer next to the parts.
    assert!(init["upload_url"].is_string());
    assert_eq!(init["part_size"], 5 * MIB);
    assert_eq!(init["parts"].as_array().unwrap().len(), 3);
    assert_eq!(part(&init, 3).1, 10 * MIB);
    assert_eq!(part(&init, 3).2, 2 * MIB + 123);
    let blob_id = init["blob_id"].as_str().unwrap();

    // Completing before every part is there: 409, and nothing is lost (the parts sent stay).
    let (url, offset, size) = part(&init, 3);
    let r = put_part(&url, bytes[offset..offset + size].to_vec()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "\"part-3\"");
    let etags = json!([
        {"part_number": 1, "etag": "a"}, {"part_number": 2, "etag": "b"},
        {"part_number": 3, "etag": "c"}
    ]);
    let complete = "/api/v1/db/parts/blobs/complete-upload";
    let (status, body) = post(
        &server,
        complete,
        json!({"blob_id": blob_id, "parts": etags}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "upload_missing");

    // A part of the wrong size is refused; a part's signature does not sign another part.
    let (url1, _, size1) = part(&init, 1);
    let r = put_part(&url1, vec![0; size1 - 1]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let forged = url1.replace("part=1", "part=2");
    assert_eq!(
        put_part(&forged, vec![0; size1]).await.status(),
        StatusCode::FORBIDDEN
    );
    let beyond = part(&init, 3).0.replace("part=3", "part=4");
    assert_eq!(
        put_part(&beyond, vec![0; 1]).await.status(),
        StatusCode::FORBIDDEN
    );

    // The rest, concurrently, in reverse order.
    let mut sends = Vec::new();
    for n in [2, 1] {
        let (url, offset, size) = part(&init, n);
        let chunk = bytes[offset..offset + size].to_vec();
        sends.push(tokio::spawn(async move { put_part(&url, chunk).await }));
    }
    for send in sends {
        assert_eq!(send.await.unwrap().status(), StatusCode::OK);
    }

    // `parts` must name every part once.
    for wrong in [
        json!([{"part_number": 1, "etag": "a"}, {"part_number": 2, "etag": "b"}]),
        json!([{"part_number": 1, "etag": "a"}, {"part_number": 1, "etag": "b"},
               {"part_number": 3, "etag": "c"}]),
        json!([{"part_number": 1, "etag": ""}, {"part_number": 2, "etag": "b"},
               {"part_number": 3, "etag": "c"}]),
    ] {
        let (status, body) = post(
            &server,
            complete,
            json!({"blob_id": blob_id, "parts": wrong}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "invalid_parts");
    }

    let (status, body) = post(
        &server,
        complete,
        json!({"blob_id": blob_id, "parts": etags}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["hash"], hash);
    assert_eq!(body["size"], bytes.len());
    assert!(
        !server.dir.path().join("blobs/parts").join(blob_id).exists(),
        "the parts are gone once assembled"
    );

    let got = server
        .admin(
            Method::GET,
            &format!("/api/v1/db/parts/blobs/object/{hash}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()["content-type"], "video/mp4");
    assert!(got.bytes().await.unwrap() == bytes);
}

#[tokio::test]
async fn parts_in_the_wrong_slots_are_a_hash_mismatch_and_nothing_is_kept() {
    let server = start().await;
    let bytes = payload(10 * MIB, 2);
    let hash = hash_of(&bytes);
    let init = init(&server, "swap", &hash, bytes.len()).await;
    let blob_id = init["blob_id"].as_str().unwrap();
    // Two equal-sized parts, each sent to the other's URL.
    let (url1, _, _) = part(&init, 1);
    let (url2, _, _) = part(&init, 2);
    assert_eq!(
        put_part(&url1, bytes[5 * MIB..].to_vec()).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        put_part(&url2, bytes[..5 * MIB].to_vec()).await.status(),
        StatusCode::OK
    );
    let (status, body) = post(
        &server,
        "/api/v1/db/swap/blobs/complete-upload",
        json!({"blob_id": blob_id, "parts": [
            {"part_number": 1, "etag": "x"}, {"part_number": 2, "etag": "y"}
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "hash_mismatch");
    let blobs = server.dir.path().join("blobs");
    assert!(!blobs.join("parts").join(blob_id).exists());
    assert!(!blobs.join("staging").join(blob_id).exists());
    assert!(!blobs.join("objects").join(&hash[..2]).join(&hash).exists());
}

#[tokio::test]
async fn the_single_put_still_works_when_parts_are_offered() {
    let server = start().await;
    let bytes = payload(6 * MIB, 3);
    let hash = hash_of(&bytes);
    let whole = init(&server, "whole", &hash, bytes.len()).await;
    assert_eq!(whole["parts"].as_array().unwrap().len(), 2);
    let r = reqwest::Client::new()
        .put(whole["upload_url"].as_str().unwrap())
        .header("content-type", "video/mp4")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, body) = post(
        &server,
        "/api/v1/db/whole/blobs/complete-upload",
        json!({"blob_id": whole["blob_id"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Small objects are offered whole only.
    let small = payload(1000, 4);
    let offer = init(&server, "whole", &hash_of(&small), small.len()).await;
    assert!(offer.get("parts").is_none(), "{offer}");
    let (status, body) = post(
        &server,
        "/api/v1/db/whole/blobs/complete-upload",
        json!({"blob_id": offer["blob_id"], "parts": [{"part_number": 1, "etag": "e"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_parts");
}

fn age(path: &std::path::Path, by: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - by).unwrap();
}

#[tokio::test]
async fn the_orphan_sweep_deletes_files_without_rows_and_nothing_else() {
    let server = TestServer::start_with(|c| {
        c.blob_part_bytes = 5 * MIB as u64;
        c.blob_url_ttl_secs = 60;
    })
    .await;
    let blobs = server.dir.path().join("blobs");
    // A kept object, and an upload in progress with a staged body and a part.
    let kept = payload(100, 5);
    let kept_hash = hash_of(&kept);
    let init_small = init(&server, "orphans", &kept_hash, kept.len()).await;
    assert_eq!(
        reqwest::Client::new()
            .put(init_small["upload_url"].as_str().unwrap())
            .header("content-type", "video/mp4")
            .body(kept.clone())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let (status, _) = post(
        &server,
        "/api/v1/db/orphans/blobs/complete-upload",
        json!({"blob_id": init_small["blob_id"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let big = payload(6 * MIB, 6);
    let live = init(&server, "orphans", &hash_of(&big), big.len()).await;
    let live_id = live["blob_id"].as_str().unwrap();
    let (url, _, size) = part(&live, 2);
    assert_eq!(
        put_part(&url, big[5 * MIB..5 * MIB + size].to_vec())
            .await
            .status(),
        StatusCode::OK
    );
    let live_part = blobs.join("parts").join(live_id).join("00002");
    age(&live_part, Duration::from_secs(3600));

    // Orphans: an object with no row (a crash between GC's row delete and its file delete),
    // an old staged upload and an old part with no upload row, and a young staged file.
    let lost = payload(50, 7);
    let lost_hash = hash_of(&lost);
    let lost_path = blobs.join("objects").join(&lost_hash[..2]).join(&lost_hash);
    std::fs::create_dir_all(lost_path.parent().unwrap()).unwrap();
    std::fs::write(&lost_path, &lost).unwrap();
    let gone_id = format!("bu_{}", "ab".repeat(16));
    let old_staged = blobs.join("staging").join(&gone_id);
    std::fs::write(&old_staged, b"x").unwrap();
    age(&old_staged, Duration::from_secs(3600));
    let old_part = blobs.join("parts").join(&gone_id).join("00001");
    std::fs::create_dir_all(old_part.parent().unwrap()).unwrap();
    std::fs::write(&old_part, b"y").unwrap();
    age(&old_part, Duration::from_secs(3600));
    let young_id = format!("bu_{}", "cd".repeat(16));
    let young_staged = blobs.join("staging").join(&young_id);
    std::fs::write(&young_staged, b"z").unwrap();

    let deleted = crate::blobs::gc::sweep_orphans(&server.state)
        .await
        .unwrap();
    assert_eq!(deleted, 3);
    assert!(!lost_path.exists());
    assert!(!old_staged.exists());
    assert!(!old_part.exists());
    assert!(
        !old_part.parent().unwrap().exists(),
        "its emptied directory too"
    );
    assert!(
        young_staged.exists(),
        "younger than an upload URL's lifetime"
    );
    assert!(live_part.exists(), "its upload is still open");
    assert!(
        blobs
            .join("objects")
            .join(&kept_hash[..2])
            .join(&kept_hash)
            .exists()
    );
    assert_eq!(
        crate::blobs::gc::sweep_orphans(&server.state)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn gc_deletes_many_objects_in_batches() {
    let server = TestServer::start_with(|c| c.blob_gc_grace_secs = 0).await;
    let mut hashes = Vec::new();
    for i in 0..150u32 {
        let bytes = format!("object {i}").into_bytes();
        let hash = hash_of(&bytes);
        let offer = init(&server, "many", &hash, bytes.len()).await;
        let r = reqwest::Client::new()
            .put(offer["upload_url"].as_str().unwrap())
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let (status, _) = post(
            &server,
            "/api/v1/db/many/blobs/complete-upload",
            json!({"blob_id": offer["blob_id"]}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        // Released at once: nothing references it any more.
        let (status, _) = post(
            &server,
            &format!("/api/v1/db/many/blobs/{hash}/release"),
            json!({}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        hashes.push(hash);
    }
    let report = crate::blobs::gc::run_once(&server.state).await.unwrap();
    assert_eq!(report.deleted, 150, "{report:?}");
    let objects = server.dir.path().join("blobs/objects");
    for hash in &hashes {
        assert!(!objects.join(&hash[..2]).join(hash).exists());
    }
}
