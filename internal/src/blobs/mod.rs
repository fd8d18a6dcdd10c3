//! Blobs: content-addressed uploads through signed URLs (whole or in parts), verification on
//! complete, references (keep, claim, publish) with per-document isolation, signed reads, public
//! objects and GC, on the local filesystem or S3 (see [`store`]).
//!
//! - `POST /blobs/init-upload` → a signed `PUT /blobs/upload/{blob_id}?expires=&sig=` on this
//!   server (the signature is the credential; with S3 a presigned S3 `PUT`), plus signed part
//!   URLs for objects over `blob_part_bytes`; or `200 complete` when the object exists.
//! - The `PUT` streams the body into the staging object `staging/{blob_id}` (never buffered
//!   whole) and insists on exactly the declared size.
//! - `POST /blobs/complete-upload` streams the staged object through BLAKE3; equal → moved to
//!   `objects/{hash[0..2]}/{hash}`, recorded complete and claimed by the document.
//! - A document references a hash when it keeps it (a row in its user-visible `blobs` table),
//!   claims it (unexpired row in `_patchwork_blob_claims`) or publishes it
//!   (`_patchwork_blob_published`). Every read checks the document's own tables: a document
//!   that does not reference a hash gets `404`, however it learned the hash.
//! - `service.db` mirrors the references (`blob_refs`) for GC and for `/o/{hash}`; see
//!   [`gc`]. A reference is added there before the document and removed after it.

pub mod gc;
pub mod store;

use std::str::FromStr;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures_util::StreamExt;
use object_store::{ObjectStoreExt, WriteMultipart};
use rand::RngCore;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Access, Action, Authorized, ResourceFrom, Route};
use crate::error::{ApiError, Json, Path, Query};
use crate::registry::DbId;
use crate::state::AppState;
pub use store::{Blobs, Signed};

/// Longest claim a client may ask for (`ttl_secs`): 30 days.
pub const MAX_CLAIM_TTL_SECS: u64 = 30 * 86_400;

/// Parts the local data plane hands to the store while a `PUT` streams in.
const PUT_CHUNK: usize = 8 * 1024 * 1024;

const fn db(action: Action) -> Access {
    Access::Db {
        actions: match action {
            Action::BlobUpload => &[Action::BlobUpload],
            Action::BlobRead => &[Action::BlobRead],
            Action::BlobClaim => &[Action::BlobClaim],
            Action::BlobRelease => &[Action::BlobRelease],
            _ => &[Action::BlobPublish],
        },
        resource: ResourceFrom::Handler,
    }
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/blobs/init-upload",
            db(Action::BlobUpload),
            post(init_upload),
        ),
        // The signature in the query is the credential (checked by the handler).
        Route::new(
            Method::PUT,
            "/api/v1/db/{db_id}/blobs/upload/{blob_id}",
            Access::Public,
            put(upload),
        ),
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/blobs/complete-upload",
            db(Action::BlobUpload),
            post(complete_upload),
        ),
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/blobs/list",
            Access::Db {
                actions: &[Action::BlobRead],
                resource: ResourceFrom::None,
            },
            get(list),
        ),
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/blobs/{hash}/read-url",
            db(Action::BlobRead),
            get(read_url),
        ),
        // `blob.read` (a token, checked by the handler) or a valid signature; GET and HEAD.
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/blobs/object/{hash}",
            Access::Public,
            get(object),
        ),
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/blobs/{hash}/claim",
            db(Action::BlobClaim),
            post(claim),
        ),
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/blobs/{hash}/release",
            db(Action::BlobRelease),
            post(release),
        ),
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/blobs/{hash}/keep",
            db(Action::BlobClaim),
            post(keep),
        ),
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/blobs/{hash}/unkeep",
            db(Action::BlobRelease),
            post(unkeep),
        ),
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/blobs/{hash}/publish",
            db(Action::BlobPublish),
            post(publish),
        ),
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/blobs/{hash}/unpublish",
            db(Action::BlobPublish),
            post(unpublish),
        ),
        // Published objects: `/o/{hash}` or `/o/{hash}.{ext}`; GET and HEAD.
        Route::new(Method::GET, "/o/{file}", Access::Public, get(public_object)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Validation

/// A BLAKE3 hash as the contract spells it: 64 lowercase hex characters.
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn validate_hash(s: &str) -> Result<(), ApiError> {
    if is_hash(s) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_hash",
            "hash must be a BLAKE3 hash: 64 lowercase hex characters",
        ))
    }
}

pub(crate) fn is_blob_id(s: &str) -> bool {
    s.len() == 35
        && s.starts_with("bu_")
        && s[3..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn new_blob_id() -> String {
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    format!("bu_{}", hex::encode(raw))
}

const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

fn validate_content_type(ct: Option<String>) -> Result<String, ApiError> {
    let Some(ct) = ct else {
        return Ok(DEFAULT_CONTENT_TYPE.to_owned());
    };
    let ok = !ct.is_empty()
        && ct.len() <= 255
        && ct.contains('/')
        && ct.bytes().all(|b| (0x20..0x7f).contains(&b))
        && HeaderValue::from_str(&ct).is_ok();
    if ok {
        Ok(ct)
    } else {
        Err(ApiError::bad_request(
            "invalid_content_type",
            "content_type must be a media type (type/subtype), printable ASCII, at most 255 bytes",
        ))
    }
}

fn not_found_blob() -> ApiError {
    ApiError::not_found("no such blob in this document")
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e)
}

/// The URL base handed to clients: `public_url`, else `http://{Host}` of this request.
pub(crate) fn base_url(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(url) = &state.config.public_url {
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| axum::http::uri::Authority::from_str(h).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_host",
                "a valid Host header is needed to build the URL (or set public_url)",
            )
        })?;
    Ok(format!("http://{host}"))
}

// ---------------------------------------------------------------------------------------------
// The document's own references

/// What one document holds for one hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DocRef {
    pub kept: bool,
    /// Milliseconds; 0 when there is no claim row.
    pub claimed_until_ms: i64,
    pub published: bool,
}

impl DocRef {
    pub fn referenced(&self, now_ms: i64) -> bool {
        self.kept || self.published || self.claimed_until_ms > now_ms
    }

    fn json(&self, hash: &str, now_ms: i64) -> Value {
        json!({
            "hash": hash,
            "kept": self.kept,
            "claimed_until": (self.claimed_until_ms > now_ms)
                .then(|| crate::time_fmt::from_unix_ms(self.claimed_until_ms)),
            "published": self.published,
        })
    }
}

pub fn doc_ref(conn: &Connection, hash: &str) -> rusqlite::Result<DocRef> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM blobs WHERE hash = ?1),
                coalesce((SELECT until_ms FROM _patchwork_blob_claims WHERE hash = ?1), 0),
                EXISTS (SELECT 1 FROM _patchwork_blob_published WHERE hash = ?1)",
    )?
    .query_row([hash], |r| {
        Ok(DocRef {
            kept: r.get(0)?,
            claimed_until_ms: r.get(1)?,
            published: r.get(2)?,
        })
    })
}

/// `404` unless the document references `hash` now.
async fn require_ref(state: &AppState, db: &DbId, hash: &str) -> Result<DocRef, ApiError> {
    let doc = state.registry.get(db).await?;
    let h = hash.to_owned();
    let r = doc.read(move |conn| Ok(doc_ref(conn, &h)?)).await?;
    if r.referenced(crate::time_fmt::now_ms()) {
        Ok(r)
    } else {
        Err(not_found_blob())
    }
}

// ---------------------------------------------------------------------------------------------
// service.db

#[derive(Debug, Clone)]
pub struct ObjectRow {
    pub size: u64,
    pub content_type: Option<String>,
}

fn object_row(conn: &Connection, hash: &str) -> rusqlite::Result<Option<ObjectRow>> {
    conn.prepare_cached("SELECT size, content_type FROM blob_objects WHERE hash = ?1")?
        .query_row([hash], |r| {
            Ok(ObjectRow {
                size: r.get::<_, i64>(0)? as u64,
                content_type: r.get(1)?,
            })
        })
        .optional()
}

async fn load_object(state: &AppState, hash: &str) -> Result<Option<ObjectRow>, ApiError> {
    let h = hash.to_owned();
    Ok(state
        .service
        .read(move |conn| Ok(object_row(conn, &h)?))
        .await?)
}

/// Adds to the service index what the document is about to hold (before the document write).
pub(crate) fn index_add(
    conn: &Connection,
    hash: &str,
    db: &str,
    add: DocRef,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO blob_refs (hash, db_id, kept, claimed_until_ms, published)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (hash, db_id) DO UPDATE SET
             kept = max(kept, excluded.kept),
             claimed_until_ms = max(claimed_until_ms, excluded.claimed_until_ms),
             published = max(published, excluded.published)",
    )?
    .execute(params![
        hash,
        db,
        add.kept,
        add.claimed_until_ms,
        add.published
    ])?;
    Ok(())
}

/// Sets the service index to what the document holds (after the document write).
fn index_set(conn: &Connection, hash: &str, db: &str, now: DocRef) -> rusqlite::Result<()> {
    if now == DocRef::default() {
        conn.prepare_cached("DELETE FROM blob_refs WHERE hash = ?1 AND db_id = ?2")?
            .execute(params![hash, db])?;
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO blob_refs (hash, db_id, kept, claimed_until_ms, published)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (hash, db_id) DO UPDATE SET kept = excluded.kept,
             claimed_until_ms = excluded.claimed_until_ms, published = excluded.published",
    )?
    .execute(params![
        hash,
        db,
        now.kept,
        now.claimed_until_ms,
        now.published
    ])?;
    Ok(())
}

fn claim_in_doc(conn: &Connection, hash: &str, until_ms: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO _patchwork_blob_claims (hash, until_ms) VALUES (?1, ?2)
         ON CONFLICT (hash) DO UPDATE SET until_ms = max(until_ms, excluded.until_ms)",
    )?
    .execute(params![hash, until_ms])?;
    Ok(())
}

/// The document claims `hash` until `until_ms` (index first, then the document, then the index
/// set to what the document holds). The caller holds the hash's lock and knows the object
/// exists.
async fn claim_for(
    state: &AppState,
    db: &DbId,
    hash: &str,
    until_ms: i64,
) -> Result<DocRef, ApiError> {
    change_ref(
        state,
        db,
        hash,
        DocRef {
            claimed_until_ms: until_ms,
            ..Default::default()
        },
        move |conn, hash| claim_in_doc(conn, hash, until_ms),
    )
    .await
}

/// Runs `change` on the document (adding `add` to the index first) and sets the index to the
/// document's resulting references.
async fn change_ref<F>(
    state: &AppState,
    db: &DbId,
    hash: &str,
    add: DocRef,
    change: F,
) -> Result<DocRef, ApiError>
where
    F: FnOnce(&Connection, &str) -> rusqlite::Result<()> + Send + 'static,
{
    let (h, d) = (hash.to_owned(), db.as_str().to_owned());
    if add != DocRef::default() {
        state
            .service
            .write(move |conn| Ok(index_add(conn, &h, &d, add)?))
            .await?;
    }
    let doc = state.registry.get(db).await?;
    let h = hash.to_owned();
    let now = doc
        .write(move |conn| {
            change(conn, &h)?;
            Ok(doc_ref(conn, &h)?)
        })
        .await?;
    let (h, d) = (hash.to_owned(), db.as_str().to_owned());
    state
        .service
        .write(move |conn| Ok(index_set(conn, &h, &d, now)?))
        .await?;
    Ok(now)
}

// ---------------------------------------------------------------------------------------------
// Upload

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = InitUploadBody)]
pub(crate) struct InitBody {
    /// BLAKE3 of the content: 64 lowercase hex characters.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    hash: String,
    /// Bytes, 0 to `blob_max_bytes`.
    #[schema(minimum = 0)]
    size: i64,
    /// A printable `type/subtype` of at most 255 bytes; default `application/octet-stream`.
    content_type: Option<String>,
}

impl InitBody {
    /// The checks `init-upload` makes before it looks at the store: the size and content type
    /// to offer.
    pub(crate) fn check(&self, config: &crate::Config) -> Result<(u64, String), ApiError> {
        validate_hash(&self.hash)?;
        let max = config.blob_max_bytes;
        let size = u64::try_from(self.size)
            .ok()
            .filter(|s| *s <= max)
            .ok_or_else(|| {
                ApiError::bad_request("invalid_size", format!("size must be 0 to {max} bytes"))
            })?;
        let content_type = validate_content_type(self.content_type.clone())?;
        Ok((size, content_type))
    }
}

#[derive(Debug)]
struct UploadRow {
    db_id: String,
    hash: String,
    size: u64,
    content_type: Option<String>,
    /// 0: offered as one `PUT` only.
    part_size: u64,
    /// S3's multipart upload id.
    multipart_id: Option<String>,
}

impl UploadRow {
    fn part_count(&self) -> u32 {
        part_count(self.size, self.part_size)
    }

    /// The byte length of part `part` (1-based), `None` when there is no such part.
    fn part_len(&self, part: u32) -> Option<u64> {
        if part == 0 || part > self.part_count() {
            return None;
        }
        let offset = u64::from(part - 1) * self.part_size;
        Some(self.part_size.min(self.size - offset))
    }
}

fn part_count(size: u64, part_size: u64) -> u32 {
    if part_size == 0 {
        0
    } else {
        u32::try_from(size.div_ceil(part_size)).unwrap_or(u32::MAX)
    }
}

fn upload_row(conn: &Connection, blob_id: &str) -> rusqlite::Result<Option<UploadRow>> {
    conn.prepare_cached(
        "SELECT db_id, hash, size, content_type, part_size, multipart_id
         FROM blob_uploads WHERE blob_id = ?1",
    )?
    .query_row([blob_id], |r| {
        Ok(UploadRow {
            db_id: r.get(0)?,
            hash: r.get(1)?,
            size: r.get::<_, i64>(2)? as u64,
            content_type: r.get(3)?,
            part_size: r.get::<_, i64>(4)? as u64,
            multipart_id: r.get(5)?,
        })
    })
    .optional()
}

/// S3's most parts in one multipart upload.
const MAX_PARTS: u64 = 10_000;

/// Drops what a multipart upload left behind: the S3 multipart upload (its parts cost storage
/// until aborted) or the local part files.
pub(crate) async fn discard_parts(
    state: &AppState,
    blob_id: &str,
    multipart_id: Option<&str>,
) -> Result<(), ApiError> {
    match multipart_id {
        Some(id) => state
            .blobs
            .abort_multipart(&Blobs::staging_path(blob_id), id)
            .await
            .map_err(internal),
        None => state
            .blobs
            .delete_prefix(&Blobs::parts_prefix(blob_id))
            .await
            .map(|_| ())
            .map_err(internal),
    }
}

async fn init_upload(
    State(state): State<AppState>,
    auth: Authorized,
    headers: HeaderMap,
    Json(body): Json<InitBody>,
) -> Result<Response, ApiError> {
    let (size, content_type) = body.check(&state.config)?;
    auth.resource(Action::BlobUpload, &body.hash)?;
    let db = auth.db()?.clone();
    let hash = body.hash;

    // An existing complete object is not uploaded twice by a document that already references
    // it: its claim is renewed. Any other document uploads the bytes like a first uploader
    // (they are verified, and only then is the existing object referenced): knowing a hash
    // (and its size) must not grant reading someone else's blob, nor reveal that it exists.
    {
        let _lock = state.blobs.lock(&hash).await;
        let referenced = {
            let doc = state.registry.get(&db).await?;
            let h = hash.clone();
            doc.read(move |conn| Ok(doc_ref(conn, &h)?))
                .await?
                .referenced(crate::time_fmt::now_ms())
        };
        if let Some(existing) = load_object(&state, &hash).await?.filter(|_| referenced) {
            if existing.size != size {
                return Err(ApiError::conflict(
                    "size_mismatch",
                    format!(
                        "this document's object with this hash has {} bytes, not {size}",
                        existing.size
                    ),
                ));
            }
            let until = crate::time_fmt::now_ms()
                + i64::try_from(state.config.blob_claim_ttl_secs * 1000).unwrap_or(i64::MAX / 2);
            claim_for(&state, &db, &hash, until).await?;
            state.metrics.blob_upload("deduplicated");
            return Ok(Json(json!({"hash": hash, "status": "complete"})).into_response());
        }
    }

    let blob_id = new_blob_id();
    let now = crate::time_fmt::now_ms();
    let ttl = i64::try_from(state.config.blob_url_ttl_secs).unwrap_or(i64::MAX / 4000);
    let expires = now / 1000 + ttl;
    let expires_ms = expires * 1000;
    // S3: a presigned PUT of the staging object (straight to the bucket); local: a signed PUT
    // on this server.
    let url = match state
        .blobs
        .presigned_put(
            &Blobs::staging_path(&blob_id),
            std::time::Duration::from_secs(state.config.blob_url_ttl_secs),
            &content_type,
        )
        .await
        .map_err(internal)?
    {
        Some(url) => url.to_string(),
        None => {
            let base = base_url(&state, &headers)?;
            let sig = state.blobs.sign(
                Signed::Put {
                    db_id: db.as_str(),
                    blob_id: &blob_id,
                },
                expires,
            );
            format!(
                "{base}/api/v1/db/{db}/blobs/upload/{blob_id}?expires={expires}&sig={sig}",
                db = db.as_str()
            )
        }
    };
    // Large objects are also offered in parts (sent in any order, in parallel, each retried
    // alone): S3 multipart with a presigned `UploadPart` per part, or signed part `PUT`s here.
    let part_size = if size > state.config.blob_part_bytes {
        state.config.blob_part_bytes.max(size.div_ceil(MAX_PARTS))
    } else {
        0
    };
    let multipart_id = if part_size > 0 {
        state
            .blobs
            .create_multipart(&Blobs::staging_path(&blob_id), &content_type)
            .await
            .map_err(internal)?
    } else {
        None
    };
    let mut parts = Vec::new();
    for part in 1..=part_count(size, part_size) {
        let offset = u64::from(part - 1) * part_size;
        let url = match &multipart_id {
            Some(id) => state
                .blobs
                .presigned_part(
                    &Blobs::staging_path(&blob_id),
                    id,
                    part,
                    std::time::Duration::from_secs(state.config.blob_url_ttl_secs),
                )
                .await
                .map_err(internal)?
                .map(|u| u.to_string())
                .unwrap_or_default(),
            None => {
                let sig = state.blobs.sign(
                    Signed::PutPart {
                        db_id: db.as_str(),
                        blob_id: &blob_id,
                        part,
                    },
                    expires,
                );
                format!(
                    "{base}/api/v1/db/{db}/blobs/upload/{blob_id}?part={part}&expires={expires}&sig={sig}",
                    base = base_url(&state, &headers)?,
                    db = db.as_str()
                )
            }
        };
        parts.push(json!({
            "part_number": part,
            "url": url,
            "method": "PUT",
            "offset": offset,
            "size": part_size.min(size - offset),
        }));
    }
    let (id, d, h, ct, mp) = (
        blob_id.clone(),
        db.as_str().to_owned(),
        hash.clone(),
        content_type.clone(),
        multipart_id.clone(),
    );
    state
        .service
        .write(move |conn| {
            conn.execute(
                "INSERT INTO blob_uploads (blob_id, db_id, hash, size, content_type, created_ms,
                     expires_ms, part_size, multipart_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    id,
                    d,
                    h,
                    size as i64,
                    ct,
                    now,
                    expires_ms,
                    part_size as i64,
                    mp
                ],
            )?;
            Ok(())
        })
        .await?;
    state.metrics.blob_upload("init");
    let mut answer = json!({
        "blob_id": blob_id,
        "upload_url": url,
        "method": "PUT",
        "headers": {"content-type": content_type},
        "expires_at": crate::time_fmt::from_unix_ms(expires_ms),
    });
    if !parts.is_empty() {
        answer["part_size"] = json!(part_size);
        answer["parts"] = Value::Array(parts);
    }
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

#[derive(Deserialize)]
struct SigQuery {
    expires: Option<String>,
    sig: Option<String>,
    /// A multipart upload's part number (1-based).
    part: Option<String>,
}

fn bad_signature() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "invalid_signature",
        "the URL's signature is invalid or has expired",
    )
}

fn check_signature(state: &AppState, what: Signed<'_>, q: &SigQuery) -> Result<(), ApiError> {
    let expires = q
        .expires
        .as_deref()
        .and_then(|e| e.parse::<i64>().ok())
        .ok_or_else(bad_signature)?;
    let sig = q.sig.as_deref().ok_or_else(bad_signature)?;
    if state.blobs.verify(what, expires, sig) {
        Ok(())
    } else {
        Err(bad_signature())
    }
}

fn size_error(size: u64) -> ApiError {
    ApiError::bad_request(
        "size_mismatch",
        format!("the body must be exactly the declared {size} bytes"),
    )
}

async fn upload(
    State(state): State<AppState>,
    Path((db_id, blob_id)): Path<(String, String)>,
    Query(q): Query<SigQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let db = DbId::parse(&db_id)?;
    if !is_blob_id(&blob_id) {
        return Err(bad_signature());
    }
    let part = match q.part.as_deref() {
        None => None,
        Some(p) => Some(
            p.parse::<u32>()
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(bad_signature)?,
        ),
    };
    let signed = match part {
        None => Signed::Put {
            db_id: db.as_str(),
            blob_id: &blob_id,
        },
        Some(part) => Signed::PutPart {
            db_id: db.as_str(),
            blob_id: &blob_id,
            part,
        },
    };
    check_signature(&state, signed, &q)?;
    let id = blob_id.clone();
    let row = state
        .service
        .read(move |conn| Ok(upload_row(conn, &id)?))
        .await?
        .filter(|r| r.db_id == db.as_str())
        .ok_or_else(|| ApiError::not_found("no such upload (completed, or cleaned up)"))?;
    let (size, target) = match part {
        None => (row.size, Blobs::staging_path(&blob_id)),
        Some(part) => (
            row.part_len(part)
                .ok_or_else(|| ApiError::not_found("no such part of this upload"))?,
            Blobs::part_path(&blob_id, part),
        ),
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len != size
    {
        state.metrics.blob_upload("size_mismatch");
        return Err(size_error(size));
    }
    stream_to(&state, &target, body, size).await?;
    // Completed (or cleaned up) while this body streamed in: what it staged is nobody's.
    let id = blob_id.clone();
    if state
        .service
        .read(move |conn| Ok(upload_row(conn, &id)?))
        .await?
        .is_none()
    {
        state.blobs.delete(&target).await.map_err(internal)?;
        return Err(ApiError::not_found(
            "no such upload (completed, or cleaned up)",
        ));
    }
    Ok(match part {
        None => {
            state.metrics.blob_upload("put");
            Json(json!({"blob_id": blob_id, "size": size})).into_response()
        }
        Some(part) => {
            state.metrics.blob_upload("part");
            // The local store does not need a part's ETag back (the parts are its own files);
            // one is answered so that clients treat both stores alike.
            let etag = format!("\"part-{part}\"");
            (
                [(header::ETAG, etag.clone())],
                Json(json!({"blob_id": blob_id, "part_number": part, "size": size, "etag": etag})),
            )
                .into_response()
        }
    })
}

/// Streams `body` into the object at `path`, insisting on exactly `size` bytes (`400` and
/// nothing written otherwise). Never holds more than a few chunks.
async fn stream_to(
    state: &AppState,
    path: &object_store::path::Path,
    body: Body,
    size: u64,
) -> Result<(), ApiError> {
    let multipart = state
        .blobs
        .store()
        .put_multipart(path)
        .await
        .map_err(internal)?;
    let mut writer = WriteMultipart::new_with_chunk_size(multipart, PUT_CHUNK);
    let mut stream = body.into_data_stream();
    let mut received = 0u64;
    let outcome: Result<(), ApiError> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request("body_error", format!("reading the body failed: {e}"))
            })?;
            received += chunk.len() as u64;
            if received > size {
                return Err(size_error(size));
            }
            writer.wait_for_capacity(2).await.map_err(internal)?;
            writer.put(chunk);
        }
        if received != size {
            return Err(size_error(size));
        }
        Ok(())
    }
    .await;
    state.metrics.blob_bytes_received.inc_by(received);
    if let Err(e) = outcome {
        if e.code == "size_mismatch" {
            state.metrics.blob_upload("size_mismatch");
        }
        let _ = writer.abort().await;
        return Err(e);
    }
    writer.finish().await.map_err(internal)?;
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CompleteUploadBody)]
pub(crate) struct CompleteBody {
    blob_id: String,
    /// Sent in parts: every part, with the `ETag` its `PUT` answered.
    parts: Option<Vec<PartBody>>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CompletedPart)]
pub(crate) struct PartBody {
    part_number: u32,
    etag: String,
}

impl CompleteBody {
    /// The check `complete-upload` makes before it looks the upload up.
    pub(crate) fn check(&self) -> Result<(), ApiError> {
        if !is_blob_id(&self.blob_id) {
            return Err(ApiError::bad_request(
                "invalid_blob_id",
                "blob_id is the one init-upload returned",
            ));
        }
        Ok(())
    }

    /// `parts` checked as they are against an upload of `size` bytes offered in parts of
    /// `part_size` (the fuzz target's way to the check that needs the upload's row).
    pub(crate) fn check_parts(self, size: u64, part_size: u64) -> Result<Vec<String>, ApiError> {
        let row = UploadRow {
            db_id: String::new(),
            hash: String::new(),
            size,
            content_type: None,
            part_size,
            multipart_id: None,
        };
        match self.parts {
            Some(parts) => part_etags(&row, parts),
            None => Ok(Vec::new()),
        }
    }
}

fn invalid_parts(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_parts", message)
}

/// Whether the store answered a request with a client error (HTTP 4xx), as object_store reports
/// it: the request was refused, the store itself is fine.
fn store_refused(e: &object_store::Error) -> bool {
    // object_store reports the store's answer in the error's text only ("… non-2xx status code:
    // 400 Bad Request: <Error><Code>InvalidPart…"). (s3s-fs answers 403 for a part it never
    // received; with bad credentials init-upload already failed.)
    e.to_string().contains("non-2xx status code: 4")
}

/// The parts' ETags in part order, checked against the upload: every part exactly once.
fn part_etags(row: &UploadRow, mut parts: Vec<PartBody>) -> Result<Vec<String>, ApiError> {
    let count = row.part_count();
    if count == 0 {
        return Err(invalid_parts(
            "this upload was not offered in parts: complete it without `parts`",
        ));
    }
    parts.sort_by_key(|p| p.part_number);
    if parts.len() != count as usize
        || parts
            .iter()
            .zip(1..)
            .any(|(p, expected)| p.part_number != expected)
    {
        return Err(invalid_parts(format!(
            "`parts` must list every part 1 to {count} exactly once"
        )));
    }
    parts
        .into_iter()
        .map(|p| {
            let ok = !p.etag.is_empty()
                && p.etag.len() <= 256
                && p.etag.bytes().all(|b| (0x20..0x7f).contains(&b));
            if ok {
                Ok(p.etag)
            } else {
                Err(invalid_parts(
                    "each etag is the ETag header its part's PUT answered",
                ))
            }
        })
        .collect()
}

async fn complete_upload(
    State(state): State<AppState>,
    auth: Authorized,
    Json(body): Json<CompleteBody>,
) -> Result<Json<Value>, ApiError> {
    body.check()?;
    let db = auth.db()?.clone();
    let id = body.blob_id.clone();
    let row = state
        .service
        .read(move |conn| Ok(upload_row(conn, &id)?))
        .await?
        .filter(|r| r.db_id == db.as_str())
        .ok_or_else(|| ApiError::not_found("no such upload in this document"))?;
    auth.resource(Action::BlobUpload, &row.hash)?;
    let missing = || {
        state.metrics.blob_upload("missing");
        ApiError::conflict(
            "upload_missing",
            "nothing has been uploaded for this blob_id",
        )
    };
    // Sent in parts: they become `staging/{blob_id}` first, then everything goes on as for a
    // single `PUT`. Sent whole: a multipart upload offered alongside is dropped.
    match body.parts {
        Some(parts) => {
            let etags = part_etags(&row, parts)?;
            let staging = Blobs::staging_path(&body.blob_id);
            match &row.multipart_id {
                Some(id) => match state.blobs.complete_multipart(&staging, id, etags).await {
                    Ok(()) => {}
                    Err(object_store::Error::NotFound { .. }) => return Err(missing()),
                    // S3 answered 4xx (a missing or too small part, a wrong ETag): the client's
                    // parts. Anything else (S3 down, 5xx after retries) is the server's problem.
                    Err(e) if store_refused(&e) => {
                        state.metrics.blob_upload("parts_refused");
                        return Err(ApiError::conflict(
                            "parts_refused",
                            format!("the object store refused the parts: {e}"),
                        ));
                    }
                    Err(e) => return Err(internal(e)),
                },
                None => {
                    if let Some(part) = state
                        .blobs
                        .assemble_parts(&body.blob_id, row.part_count())
                        .await
                        .map_err(internal)?
                    {
                        state.metrics.blob_upload("missing");
                        return Err(ApiError::conflict(
                            "upload_missing",
                            format!("part {part} has not been uploaded"),
                        ));
                    }
                    discard_parts(&state, &body.blob_id, None).await?;
                }
            }
        }
        None if row.part_count() > 0 => {
            discard_parts(&state, &body.blob_id, row.multipart_id.as_deref()).await?;
        }
        None => {}
    }
    // The staged object is first moved to a name of this request's own, so the bytes hashed
    // are exactly the bytes moved into place: a `PUT` racing this complete writes a new
    // `staging/{blob_id}` (object_store replaces files by rename, never in place).
    let mut nonce = [0u8; 8];
    rand::rng().fill_bytes(&mut nonce);
    let staging = Blobs::verifying_path(&body.blob_id, &hex::encode(nonce));
    match state
        .blobs
        .store()
        .rename(&Blobs::staging_path(&body.blob_id), &staging)
        .await
    {
        Ok(()) => {}
        Err(object_store::Error::NotFound { .. }) => return Err(missing()),
        Err(e) => return Err(internal(e)),
    }
    // Nothing is kept on a mismatch: neither the staged bytes nor the upload.
    let reject = async |reason: &'static str, error: ApiError| {
        state.blobs.delete(&staging).await.map_err(internal)?;
        let id = body.blob_id.clone();
        state
            .service
            .write(move |conn| {
                conn.execute("DELETE FROM blob_uploads WHERE blob_id = ?1", [id])?;
                Ok(())
            })
            .await?;
        state.metrics.blob_upload(reason);
        Err::<Json<Value>, _>(error)
    };
    // The size first (a presigned S3 PUT cannot bind the length): a wrong-sized object is
    // refused without reading it.
    match state.blobs.size_of(&staging).await.map_err(internal)? {
        None => return Err(missing()),
        Some(len) if len != row.size => {
            return reject(
                "size_mismatch",
                ApiError::conflict(
                    "size_mismatch",
                    format!(
                        "the uploaded object has {len} bytes, not the declared {}; nothing was kept",
                        row.size
                    ),
                )
                .with_details(json!({"expected_size": row.size, "size": len})),
            )
            .await;
        }
        Some(_) => {}
    }
    let Some((actual, len)) = state.blobs.hash_of(&staging).await.map_err(internal)? else {
        return Err(missing());
    };
    if actual != row.hash || len != row.size {
        return reject(
            "hash_mismatch",
            ApiError::conflict(
                "hash_mismatch",
                "the uploaded bytes do not have the declared hash; nothing was kept",
            )
            .with_details(json!({"expected": row.hash, "actual": actual, "size": len})),
        )
        .await;
    }
    let hash = row.hash.clone();
    let _lock = state.blobs.lock(&hash).await;
    match state
        .blobs
        .store()
        .rename(&staging, &Blobs::object_path(&hash))
        .await
    {
        Ok(()) => {}
        Err(e) => return Err(internal(e)),
    }
    let now = crate::time_fmt::now_ms();
    let until =
        now + i64::try_from(state.config.blob_claim_ttl_secs * 1000).unwrap_or(i64::MAX / 2);
    let (h, d, id, size, ct) = (
        hash.clone(),
        db.as_str().to_owned(),
        body.blob_id.clone(),
        row.size,
        row.content_type.clone(),
    );
    // Recorded complete (a re-complete refreshes `completed_ms`, so a GC pass that started
    // before never deletes it), claimed in the index, the upload done: one transaction.
    let (created, stored) = state
        .service
        .write(move |conn| {
            let existed = object_row(conn, &h)?;
            conn.prepare_cached(
                "INSERT INTO blob_objects (hash, size, content_type, completed_at, completed_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (hash) DO UPDATE SET completed_at = excluded.completed_at,
                     completed_ms = excluded.completed_ms",
            )?
            .execute(params![
                h,
                size as i64,
                ct,
                crate::time_fmt::from_unix_ms(now),
                now
            ])?;
            index_add(
                conn,
                &h,
                &d,
                DocRef {
                    claimed_until_ms: until,
                    ..Default::default()
                },
            )?;
            conn.execute("DELETE FROM blob_uploads WHERE blob_id = ?1", [id])?;
            let stored = object_row(conn, &h)?;
            Ok((existed.is_none(), stored))
        })
        .await?;
    claim_for(&state, &db, &hash, until).await?;
    drop(_lock);
    if created {
        state.metrics.blob_objects.inc();
        state
            .metrics
            .blob_bytes
            .inc_by(i64::try_from(row.size).unwrap_or(i64::MAX));
    }
    state.metrics.blob_upload("complete");
    let content_type = stored
        .and_then(|s| s.content_type)
        .or(row.content_type)
        .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned());
    Ok(Json(json!({
        "hash": hash,
        "size": row.size,
        "content_type": content_type,
        "status": "complete",
    })))
}

// ---------------------------------------------------------------------------------------------
// Listing and reading

async fn list(State(state): State<AppState>, auth: Authorized) -> Result<Json<Value>, ApiError> {
    let doc = state.registry.get(auth.db()?).await?;
    let now = crate::time_fmt::now_ms();
    let refs: Vec<(String, DocRef, Option<i64>, Option<String>)> = doc
        .read(move |conn| {
            let mut stmt = conn.prepare(
                "WITH h(hash) AS (
                     SELECT hash FROM blobs
                     UNION SELECT hash FROM _patchwork_blob_claims WHERE until_ms > ?1
                     UNION SELECT hash FROM _patchwork_blob_published)
                 SELECT h.hash,
                        EXISTS (SELECT 1 FROM blobs b WHERE b.hash = h.hash),
                        coalesce((SELECT until_ms FROM _patchwork_blob_claims c
                                  WHERE c.hash = h.hash), 0),
                        EXISTS (SELECT 1 FROM _patchwork_blob_published p WHERE p.hash = h.hash),
                        (SELECT size FROM blobs b WHERE b.hash = h.hash),
                        (SELECT content_type FROM blobs b WHERE b.hash = h.hash)
                 FROM h WHERE h.hash IS NOT NULL ORDER BY h.hash",
            )?;
            let rows = stmt.query_map([now], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    DocRef {
                        kept: r.get(1)?,
                        claimed_until_ms: r.get(2)?,
                        published: r.get(3)?,
                    },
                    r.get::<_, Option<i64>>(4).ok().flatten(),
                    r.get::<_, Option<String>>(5).ok().flatten(),
                ))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    let hashes: Vec<String> = refs.iter().map(|r| r.0.clone()).collect();
    let objects: Vec<Option<ObjectRow>> = state
        .service
        .read(move |conn| {
            Ok(hashes
                .iter()
                .map(|h| object_row(conn, h))
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    let blobs: Vec<Value> = refs
        .into_iter()
        .zip(objects)
        .map(|((hash, r, size, ct), object)| {
            let mut v = r.json(&hash, now);
            v["size"] = json!(object.as_ref().map(|o| o.size as i64).or(size));
            v["content_type"] = json!(object.and_then(|o| o.content_type).or(ct));
            v
        })
        .collect();
    Ok(Json(json!({"blobs": blobs})))
}

async fn read_url(
    State(state): State<AppState>,
    auth: Authorized,
    Path((_, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    validate_hash(&hash)?;
    auth.resource(Action::BlobRead, &hash)?;
    let db = auth.db()?.clone();
    require_ref(&state, &db, &hash).await?;
    load_object(&state, &hash)
        .await?
        .ok_or_else(not_found_blob)?;
    let ttl = i64::try_from(state.config.blob_url_ttl_secs).unwrap_or(i64::MAX / 4000);
    let expires = crate::time_fmt::now_ms() / 1000 + ttl;
    // S3: a presigned GET of the object (straight from the bucket); local: a signed GET on this
    // server.
    let url = match state
        .blobs
        .presigned_get(
            &Blobs::object_path(&hash),
            std::time::Duration::from_secs(state.config.blob_url_ttl_secs),
        )
        .await
        .map_err(internal)?
    {
        Some(url) => url.to_string(),
        None => {
            let base = base_url(&state, &headers)?;
            let sig = state.blobs.sign(
                Signed::Get {
                    db_id: db.as_str(),
                    hash: &hash,
                },
                expires,
            );
            format!(
                "{base}/api/v1/db/{}/blobs/object/{hash}?expires={expires}&sig={sig}",
                db.as_str()
            )
        }
    };
    Ok(Json(json!({
        "url": url,
        "expires_at": crate::time_fmt::from_unix_ms(expires * 1000),
    })))
}

/// `GET|HEAD /blobs/object/{hash}`: a valid signature, or a token with `blob.read` for the hash
/// (checked here: the route is declared public so that a signed URL needs no token).
async fn object(
    State(state): State<AppState>,
    Path((db_id, hash)): Path<(String, String)>,
    Query(q): Query<SigQuery>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let db = DbId::parse(&db_id)?;
    validate_hash(&hash)?;
    if q.sig.is_some() || q.expires.is_some() {
        check_signature(
            &state,
            Signed::Get {
                db_id: db.as_str(),
                hash: &hash,
            },
            &q,
        )?;
    } else {
        state.limits.check_global()?;
        let presented = crate::auth::presented_token(&headers)
            .ok_or_else(|| ApiError::from(crate::auth::AuthFailure::Missing))?;
        let token = state
            .tokens
            .authenticate(presented)
            .map_err(|(failure, _)| ApiError::from(failure))?;
        state.limits.check_token(&token.meta.id)?;
        let auth = Authorized {
            token: Some(token),
            db_id: Some(db.clone()),
            resource: None,
            web: None,
            session_id: None,
            checks: Default::default(),
        };
        auth.resource(Action::BlobRead, &hash)?;
    }
    require_ref(&state, &db, &hash).await?;
    let object = load_object(&state, &hash)
        .await?
        .ok_or_else(not_found_blob)?;
    serve(&state, &hash, &object, &method, &headers, None).await
}

/// `GET|HEAD /o/{hash}[.{ext}]`: a blob some document publishes.
async fn public_object(
    State(state): State<AppState>,
    Path(file): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (hash, ext) = match file.split_once('.') {
        Some((h, e)) => (h, Some(e)),
        None => (file.as_str(), None),
    };
    let ext_ok = ext.is_none_or(|e| {
        !e.is_empty() && e.len() <= 16 && e.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if !is_hash(hash) || !ext_ok {
        return Err(ApiError::not_found("no such public object"));
    }
    let h = hash.to_owned();
    let object = state
        .service
        .read(move |conn| {
            let published: bool = conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM blob_refs WHERE hash = ?1 AND published = 1)",
                )?
                .query_row([&h], |r| r.get(0))?;
            Ok(if published {
                object_row(conn, &h)?
            } else {
                None
            })
        })
        .await?
        .ok_or_else(|| ApiError::not_found("no such public object"))?;
    serve(
        &state,
        hash,
        &object,
        &method,
        &headers,
        Some("public, max-age=31536000, immutable"),
    )
    .await
}

/// A byte range of an object of `size` bytes, from a `Range` header (one range; several, or a
/// unit other than bytes, are ignored and the whole object is served).
enum Wanted {
    All,
    Part(std::ops::Range<u64>),
    Unsatisfiable,
}

fn parse_range(headers: &HeaderMap, size: u64) -> Wanted {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return Wanted::All;
    };
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        // The last `end` bytes.
        let Ok(n) = end.parse::<u64>() else {
            return Wanted::All;
        };
        if n == 0 || size == 0 {
            return Wanted::Unsatisfiable;
        }
        size.saturating_sub(n)..size
    } else {
        let Ok(s) = start.parse::<u64>() else {
            return Wanted::All;
        };
        let e = if end.is_empty() {
            size
        } else {
            match end.parse::<u64>() {
                Ok(e) if e >= s => e.saturating_add(1).min(size),
                _ => return Wanted::All,
            }
        };
        if s >= size {
            return Wanted::Unsatisfiable;
        }
        s..e
    };
    Wanted::Part(range)
}

async fn serve(
    state: &AppState,
    hash: &str,
    object: &ObjectRow,
    method: &Method,
    headers: &HeaderMap,
    cache_control: Option<&'static str>,
) -> Result<Response, ApiError> {
    let size = object.size;
    let etag = format!("\"{hash}\"");
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CONTENT_TYPE,
            object
                .content_type
                .as_deref()
                .unwrap_or(DEFAULT_CONTENT_TYPE),
        )
        // Uploaded bytes are never run as a page of this site (the dashboard's origin).
        .header("content-security-policy", "sandbox")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if let Some(cc) = cache_control {
        builder = builder.header(header::CACHE_CONTROL, cc);
    }
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if not_modified {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .map_err(internal);
    }
    let (status, range) = match parse_range(headers, size) {
        Wanted::All => (StatusCode::OK, 0..size),
        Wanted::Part(r) => {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", r.start, r.end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, r)
        }
        Wanted::Unsatisfiable => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .body(Body::empty())
                .map_err(internal);
        }
    };
    let len = range.end - range.start;
    builder = builder.status(status).header(header::CONTENT_LENGTH, len);
    if *method == Method::HEAD || len == 0 {
        return builder.body(Body::empty()).map_err(internal);
    }
    let stream = state
        .blobs
        .read(&Blobs::object_path(hash), Some(range))
        .await
        .map_err(internal)?
        .ok_or_else(not_found_blob)?;
    state.metrics.blob_bytes_served.inc_by(len);
    builder.body(Body::from_stream(stream)).map_err(internal)
}

// ---------------------------------------------------------------------------------------------
// References

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClaimBody {
    /// 1 to 2592000 (30 days); default `blob_claim_ttl_secs`.
    #[schema(minimum = 1, maximum = 2592000)]
    ttl_secs: Option<i64>,
}

/// The claim's length in seconds from `claim`'s optional body (default `blob_claim_ttl_secs`).
pub(crate) fn claim_ttl(body: &[u8], config: &crate::Config) -> Result<i64, ApiError> {
    let body: ClaimBody = optional_json(body)?;
    let ttl = body
        .ttl_secs
        .unwrap_or(i64::try_from(config.blob_claim_ttl_secs).unwrap_or(i64::MAX));
    if ttl < 1 || ttl as u64 > MAX_CLAIM_TTL_SECS {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!("ttl_secs must be between 1 and {MAX_CLAIM_TTL_SECS}"),
        ));
    }
    Ok(ttl)
}

/// An optional JSON body: empty is the default.
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))
}

/// The checks every reference route starts with; the hash's lock for the adding ones (held
/// until the references are written, so GC cannot delete the object in between).
async fn prepare_add<'a>(
    state: &'a AppState,
    auth: &Authorized,
    action: Action,
    hash: &str,
) -> Result<(DbId, ObjectRow, tokio::sync::MutexGuard<'a, ()>), ApiError> {
    validate_hash(hash)?;
    auth.resource(action, hash)?;
    let db = auth.db()?.clone();
    // Only what the document already references can be kept, claimed or published: knowing a
    // hash grants nothing.
    require_ref(state, &db, hash).await?;
    let lock = state.blobs.lock(hash).await;
    let object = load_object(state, hash).await?.ok_or_else(not_found_blob)?;
    Ok((db, object, lock))
}

async fn claim(
    State(state): State<AppState>,
    auth: Authorized,
    Path((_, hash)): Path<(String, String)>,
    crate::error::Bytes(body): crate::error::Bytes,
) -> Result<Json<Value>, ApiError> {
    let ttl = claim_ttl(&body, &state.config)?;
    let (db, _, _lock) = prepare_add(&state, &auth, Action::BlobClaim, &hash).await?;
    let until = crate::time_fmt::now_ms() + ttl * 1000;
    let now = claim_for(&state, &db, &hash, until).await?;
    Ok(Json(now.json(&hash, crate::time_fmt::now_ms())))
}

async fn keep(
    State(state): State<AppState>,
    auth: Authorized,
    Path((_, hash)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (db, object, _lock) = prepare_add(&state, &auth, Action::BlobClaim, &hash).await?;
    let now = change_ref(
        &state,
        &db,
        &hash,
        DocRef {
            kept: true,
            ..Default::default()
        },
        move |conn, hash| {
            conn.prepare_cached(
                "INSERT INTO blobs (hash, size, content_type, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (hash) DO NOTHING",
            )?
            .execute(params![
                hash,
                object.size as i64,
                object.content_type,
                crate::time_fmt::from_unix_ms(crate::time_fmt::now_ms())
            ])?;
            Ok(())
        },
    )
    .await?;
    Ok(Json(now.json(&hash, crate::time_fmt::now_ms())))
}

async fn publish(
    State(state): State<AppState>,
    auth: Authorized,
    Path((_, hash)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (db, _, _lock) = prepare_add(&state, &auth, Action::BlobPublish, &hash).await?;
    let now = change_ref(
        &state,
        &db,
        &hash,
        DocRef {
            published: true,
            ..Default::default()
        },
        move |conn, hash| {
            conn.prepare_cached(
                "INSERT INTO _patchwork_blob_published (hash, published_at) VALUES (?1, ?2)
                 ON CONFLICT (hash) DO NOTHING",
            )?
            .execute(params![
                hash,
                crate::time_fmt::from_unix_ms(crate::time_fmt::now_ms())
            ])?;
            Ok(())
        },
    )
    .await?;
    let mut out = now.json(&hash, crate::time_fmt::now_ms());
    out["public_path"] = json!(format!("/o/{hash}"));
    Ok(Json(out))
}

/// Release, unkeep, unpublish: the document first, then the index (`404` when the document does
/// not reference the hash at all).
async fn drop_ref(
    state: AppState,
    auth: Authorized,
    action: Action,
    hash: String,
    sql: &'static str,
) -> Result<Json<Value>, ApiError> {
    validate_hash(&hash)?;
    auth.resource(action, &hash)?;
    let db = auth.db()?.clone();
    require_ref(&state, &db, &hash).await?;
    let now = change_ref(&state, &db, &hash, DocRef::default(), move |conn, hash| {
        conn.prepare_cached(sql)?.execute([hash])?;
        Ok(())
    })
    .await?;
    Ok(Json(now.json(&hash, crate::time_fmt::now_ms())))
}

async fn release(
    State(state): State<AppState>,
    auth: Authorized,
    Path((_, hash)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    drop_ref(
        state,
        auth,
        Action::BlobRelease,
        hash,
        "DELETE FROM _patchwork_blob_claims WHERE hash = ?1",
    )
    .await
}

async fn unkeep(
    State(state): State<AppState>,
    auth: Authorized,
    Path((_, hash)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    drop_ref(
        state,
        auth,
        Action::BlobRelease,
        hash,
        "DELETE FROM blobs WHERE hash = ?1",
    )
    .await
}

async fn unpublish(
    State(state): State<AppState>,
    auth: Authorized,
    Path((_, hash)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    drop_ref(
        state,
        auth,
        Action::BlobPublish,
        hash,
        "DELETE FROM _patchwork_blob_published WHERE hash = ?1",
    )
    .await
}
