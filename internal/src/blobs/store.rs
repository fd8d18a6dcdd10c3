//! The object store behind the blob routes, reached only through `object_store`'s
//! [`ObjectStore`] trait: the local filesystem (default) or an S3-compatible service
//! (`blob_store = "s3"`), plus URL signing (HMAC for the local data plane, SigV4 presigned URLs
//! for S3), per-hash locks, the staging → final moves.
//!
//! With S3, clients `PUT` and `GET` the bucket directly through presigned URLs signed for
//! `s3_public_endpoint` (the host is part of a SigV4 signature), while the server itself talks to
//! `s3_endpoint`. A presigned `PUT` binds the method, key, expiry and `Content-Type`, but not the
//! length (S3 query signing cannot bind `Content-Length`): the size is enforced at
//! `complete-upload`, which streams the staged object, checks its length and BLAKE3 hash, and
//! deletes it on a mismatch. On S3 a "move" is a server-side copy then a delete.
//!
//! Layout inside the store: complete objects at `objects/{hash[0..2]}/{hash}`, uploads in
//! progress at `staging/{blob_id}` (on the local store, the parts of a multipart upload at
//! `parts/{blob_id}/{part:05}`, concatenated into `staging/{blob_id}` at `complete-upload`; on S3
//! the multipart upload targets `staging/{blob_id}` itself). The local store is `{data_dir}/blobs/` with fsync on: a
//! staged object is written to a temporary file, `sync_all`ed and renamed into place with its
//! directory fsynced, and the move to `objects/` fsyncs the directory again, so an acknowledged
//! `PUT` or `complete-upload` survives a crash.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use hmac::{Hmac, Mac};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::{HeaderName, HeaderValue, Method, SignedUrlOptions, Signer, Url};
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, WriteMultipart,
};
use sha2::Sha256;
use tokio::sync::{Mutex, MutexGuard};

use crate::config::{BlobStore, Config};

/// Stripes of the per-hash lock (GC deleting an object vs. a complete or a new reference).
const LOCK_STRIPES: usize = 64;

/// Chunks read from a local file for a response or for hashing.
const READ_CHUNK: usize = 1024 * 1024;

/// The blob store.
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// S3 only: the same client as `store`, for the multipart calls `ObjectStore` lacks.
    s3: Option<Arc<AmazonS3>>,
    /// Local store only: its root directory (emptied part directories are removed).
    local_root: Option<std::path::PathBuf>,
    /// S3 only: signs the presigned URLs handed to clients (built on `s3_public_endpoint` when
    /// set, else the same client as `store`).
    presigner: Option<Arc<AmazonS3>>,
    sign_key: [u8; 32],
    locks: Vec<Mutex<()>>,
    /// GC passes run since start (the orphan sweep runs every so many).
    pub gc_passes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("store", &self.store.to_string())
            .finish_non_exhaustive()
    }
}

/// What a signature covers: the method, the document and the blob (upload id or hash).
#[derive(Clone, Copy)]
pub enum Signed<'a> {
    Put {
        db_id: &'a str,
        blob_id: &'a str,
    },
    /// One part (1-based) of a multipart upload.
    PutPart {
        db_id: &'a str,
        blob_id: &'a str,
        part: u32,
    },
    Get {
        db_id: &'a str,
        hash: &'a str,
    },
}

impl Blobs {
    /// The configured store: the local filesystem under `{data_dir}/blobs/` (fsync on), or S3.
    pub fn open(config: &Config, sign_key: [u8; 32]) -> anyhow::Result<Self> {
        if config.blob_store == BlobStore::S3 {
            let store = Arc::new(s3_client(config, config.s3_endpoint.as_deref())?);
            let presigner = match config.s3_public_endpoint.as_deref() {
                Some(public) => Arc::new(s3_client(config, Some(public))?),
                None => store.clone(),
            };
            let mut blobs = Self::with_store(store.clone(), sign_key);
            blobs.s3 = Some(store);
            blobs.presigner = Some(presigner);
            return Ok(blobs);
        }
        let root = config.blobs_dir();
        std::fs::create_dir_all(&root)?;
        let store = LocalFileSystem::new_with_prefix(&root)?.with_fsync(true);
        let mut blobs = Self::with_store(Arc::new(store), sign_key);
        blobs.local_root = Some(root);
        Ok(blobs)
    }

    pub fn with_store(store: Arc<dyn ObjectStore>, sign_key: [u8; 32]) -> Self {
        Self {
            store,
            s3: None,
            local_root: None,
            presigner: None,
            sign_key,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            gc_passes: Default::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Whether clients reach the bytes through presigned S3 URLs (else through this server).
    pub fn presigns(&self) -> bool {
        self.presigner.is_some()
    }

    /// A presigned S3 `PUT` of `path` valid `ttl` that binds `content_type` (the client must send
    /// exactly that `Content-Type`). `None` for the local store.
    pub async fn presigned_put(
        &self,
        path: &Path,
        ttl: std::time::Duration,
        content_type: &str,
    ) -> object_store::Result<Option<Url>> {
        let Some(signer) = &self.presigner else {
            return Ok(None);
        };
        let value =
            HeaderValue::from_str(content_type).map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        let options = SignedUrlOptions::new()
            .with_signed_header(HeaderName::from_static("content-type"), value);
        signer
            .signed_url_opts(Method::PUT, path, ttl, &options)
            .await
            .map(Some)
    }

    /// A presigned S3 `GET` of `path` valid `ttl`. `None` for the local store.
    pub async fn presigned_get(
        &self,
        path: &Path,
        ttl: std::time::Duration,
    ) -> object_store::Result<Option<Url>> {
        let Some(signer) = &self.presigner else {
            return Ok(None);
        };
        signer.signed_url(Method::GET, path, ttl).await.map(Some)
    }

    /// S3: starts a multipart upload of `path` whose object will have `content_type`; its
    /// upload id. `None` for the local store (parts are files under [`Self::parts_prefix`]).
    pub async fn create_multipart(
        &self,
        path: &Path,
        content_type: &str,
    ) -> object_store::Result<Option<String>> {
        let Some(s3) = &self.s3 else {
            return Ok(None);
        };
        let options = PutMultipartOptions {
            attributes: Attributes::from_iter([(Attribute::ContentType, content_type.to_owned())]),
            ..Default::default()
        };
        s3.create_multipart_opts(path, options).await.map(Some)
    }

    /// A presigned S3 `UploadPart` (`part` is 1-based) of multipart upload `upload_id`.
    pub async fn presigned_part(
        &self,
        path: &Path,
        upload_id: &str,
        part: u32,
        ttl: std::time::Duration,
    ) -> object_store::Result<Option<Url>> {
        let Some(signer) = &self.presigner else {
            return Ok(None);
        };
        let options = SignedUrlOptions::new().with_query([
            ("partNumber", part.to_string()),
            ("uploadId", upload_id.to_owned()),
        ]);
        signer
            .signed_url_opts(Method::PUT, path, ttl, &options)
            .await
            .map(Some)
    }

    /// S3: completes multipart upload `upload_id` of `path` from the parts' ETags in order.
    pub async fn complete_multipart(
        &self,
        path: &Path,
        upload_id: &str,
        etags: Vec<String>,
    ) -> object_store::Result<()> {
        let Some(s3) = &self.s3 else {
            return Err(object_store::Error::NotImplemented {
                operation: "complete_multipart on the local store".into(),
                implementer: "Blobs".into(),
            });
        };
        let parts = etags
            .into_iter()
            .map(|content_id| PartId { content_id })
            .collect();
        s3.complete_multipart(path, &upload_id.to_owned(), parts)
            .await
            .map(|_| ())
    }

    /// S3: abandons multipart upload `upload_id` (its parts stop costing storage). An upload
    /// already gone is not an error.
    pub async fn abort_multipart(&self, path: &Path, upload_id: &str) -> object_store::Result<()> {
        let Some(s3) = &self.s3 else {
            return Ok(());
        };
        match s3.abort_multipart(path, &upload_id.to_owned()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Local store: where part `part` (1-based) of upload `blob_id` is staged.
    pub fn part_path(blob_id: &str, part: u32) -> Path {
        Path::from(format!("parts/{blob_id}/{part:05}"))
    }

    pub fn parts_prefix(blob_id: &str) -> Path {
        Path::from(format!("parts/{blob_id}"))
    }

    /// Local store: concatenates parts `1..=count` of `blob_id` into `staging/{blob_id}`,
    /// streaming (nothing held whole). `Ok(Some(n))`: part `n` is missing and nothing was
    /// written.
    pub async fn assemble_parts(
        &self,
        blob_id: &str,
        count: u32,
    ) -> object_store::Result<Option<u32>> {
        for part in 1..=count {
            if self
                .size_of(&Self::part_path(blob_id, part))
                .await?
                .is_none()
            {
                return Ok(Some(part));
            }
        }
        let upload = self
            .store
            .put_multipart(&Self::staging_path(blob_id))
            .await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 * READ_CHUNK);
        for part in 1..=count {
            let Some(mut chunks) = self.read(&Self::part_path(blob_id, part), None).await? else {
                writer.abort().await?;
                return Ok(Some(part));
            };
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| object_store::Error::Generic {
                    store: "parts",
                    source: Box::new(e),
                })?;
                writer.wait_for_capacity(2).await?;
                writer.put(chunk);
            }
        }
        writer.finish().await?;
        Ok(None)
    }

    /// Deletes every object under `prefix` (in batches; see [`Self::delete_many`]), and on the
    /// local store the then empty directory.
    pub async fn delete_prefix(&self, prefix: &Path) -> object_store::Result<usize> {
        let paths: Vec<Path> = self
            .store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?;
        let deleted = self.delete_many(paths).await?;
        self.remove_empty_dir(prefix).await;
        Ok(deleted)
    }

    /// Local store: removes the directory `prefix` if it is empty (a part that arrived
    /// meanwhile keeps it; the orphan sweep gets it later). Nothing on S3.
    pub async fn remove_empty_dir(&self, prefix: &Path) {
        if let Some(root) = &self.local_root {
            let _ = tokio::fs::remove_dir(root.join(prefix.as_ref())).await;
        }
    }

    /// Deletes `paths` through the store's batch delete (S3 `DeleteObjects`, up to 1,000 keys
    /// a request; stores without one, like the local filesystem, delete them one by one a few
    /// at a time). Objects already gone are not an error. The number deleted.
    pub async fn delete_many(&self, paths: Vec<Path>) -> object_store::Result<usize> {
        if paths.is_empty() {
            return Ok(0);
        }
        let locations = futures_util::stream::iter(paths.into_iter().map(Ok)).boxed();
        let mut results = self.store.delete_stream(locations);
        let mut deleted = 0;
        while let Some(result) = results.next().await {
            match result {
                Ok(_) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    pub fn object_path(hash: &str) -> Path {
        Path::from(format!("objects/{}/{hash}", &hash[..2]))
    }

    pub fn staging_path(blob_id: &str) -> Path {
        Path::from(format!("staging/{blob_id}"))
    }

    /// Where `complete-upload` moves a staged object while it verifies it.
    pub fn verifying_path(blob_id: &str, nonce: &str) -> Path {
        Path::from(format!("staging/{blob_id}.{nonce}"))
    }

    /// Serializes, per hash, GC's delete against a complete or a new reference to that hash.
    pub async fn lock(&self, hash: &str) -> MutexGuard<'_, ()> {
        self.lock_stripe(Self::stripe(hash)).await
    }

    /// The lock stripe of `hash`: GC takes one stripe for a whole batch of its hashes.
    pub fn stripe(hash: &str) -> usize {
        usize::from_str_radix(&hash[..2], 16).unwrap_or(0) % LOCK_STRIPES
    }

    pub async fn lock_stripe(&self, stripe: usize) -> MutexGuard<'_, ()> {
        self.locks[stripe % LOCK_STRIPES].lock().await
    }

    fn mac(&self, what: Signed<'_>, expires: i64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.sign_key)
            .expect("HMAC takes any key length");
        let text = match what {
            Signed::Put { db_id, blob_id } => format!("PUT\n{db_id}\n{blob_id}\n{expires}"),
            Signed::PutPart {
                db_id,
                blob_id,
                part,
            } => format!("PUTPART\n{db_id}\n{blob_id}\n{part}\n{expires}"),
            Signed::Get { db_id, hash } => format!("GET\n{db_id}\n{hash}\n{expires}"),
        };
        mac.update(text.as_bytes());
        mac
    }

    /// The hex signature of `what` valid until `expires` (Unix seconds).
    pub fn sign(&self, what: Signed<'_>, expires: i64) -> String {
        hex::encode(self.mac(what, expires).finalize().into_bytes())
    }

    /// Whether `sig` signs `what` until `expires` and `expires` has not passed (the MAC is
    /// compared in constant time).
    pub fn verify(&self, what: Signed<'_>, expires: i64, sig: &str) -> bool {
        let now = crate::time_fmt::now_ms() / 1000;
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        // Checked after the MAC (same work for every refusal).
        let valid = self.mac(what, expires).verify_slice(&sig).is_ok();
        valid && expires > now
    }

    /// The size of the object at `path`, or `None` when there is none.
    pub async fn size_of(&self, path: &Path) -> object_store::Result<Option<u64>> {
        match self.store.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes `path`; an object already gone is not an error.
    pub async fn delete(&self, path: &Path) -> object_store::Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The BLAKE3 hash (hex) and length of the object at `path`, streamed (a local file is read
    /// in 1 MiB chunks on a blocking thread; nothing is held whole). `None`: no such object.
    pub async fn hash_of(&self, path: &Path) -> object_store::Result<Option<(String, u64)>> {
        let got = match self.store.get(path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match got.payload {
            GetResultPayload::File(file, path) => {
                let hashed = tokio::task::spawn_blocking(move || {
                    use std::io::Read;
                    let mut file = file;
                    let mut hasher = blake3::Hasher::new();
                    let mut buf = vec![0u8; READ_CHUNK];
                    let mut total = 0u64;
                    loop {
                        let n = file.read(&mut buf)?;
                        if n == 0 {
                            break;
                        }
                        hasher.update(&buf[..n]);
                        total += n as u64;
                    }
                    Ok::<_, std::io::Error>((hasher.finalize().to_hex().to_string(), total))
                })
                .await
                .map_err(|e| object_store::Error::Generic {
                    store: "hash",
                    source: Box::new(e),
                })?;
                hashed.map(Some).map_err(|e| object_store::Error::Generic {
                    store: "hash",
                    source: format!("reading {}: {e}", path.display()).into(),
                })
            }
            GetResultPayload::Stream(mut stream) => {
                let mut hasher = blake3::Hasher::new();
                let mut total = 0u64;
                while let Some(chunk) = stream.try_next().await? {
                    hasher.update(&chunk);
                    total += chunk.len() as u64;
                }
                Ok(Some((hasher.finalize().to_hex().to_string(), total)))
            }
        }
    }

    /// `range` (or all) of the object at `path` as a stream of chunks. `None`: no such object.
    pub async fn read(
        &self,
        path: &Path,
        range: Option<Range<u64>>,
    ) -> object_store::Result<Option<BoxStream<'static, std::io::Result<Bytes>>>> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let got = match self.store.get_opts(path, options).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let range = got.range.clone();
        Ok(Some(match got.payload {
            GetResultPayload::File(file, _) => file_stream(file, range),
            GetResultPayload::Stream(stream) => stream.map_err(std::io::Error::other).boxed(),
        }))
    }
}

/// An S3 client for `endpoint` (unset: AWS for the region) with the configured bucket,
/// credentials and addressing style.
fn s3_client(config: &Config, endpoint: Option<&str>) -> anyhow::Result<AmazonS3> {
    let bucket = config.s3_bucket.clone().unwrap_or_default();
    let mut builder = AmazonS3Builder::new()
        .with_region(config.s3_region.clone().unwrap_or_default())
        .with_bucket_name(&bucket)
        .with_access_key_id(config.s3_access_key_id.clone().unwrap_or_default())
        .with_secret_access_key(
            config
                .s3_secret_access_key
                .as_ref()
                .map(|s| s.expose().to_owned())
                .unwrap_or_default(),
        )
        .with_virtual_hosted_style_request(!config.s3_path_style);
    if let Some(endpoint) = endpoint {
        let endpoint = endpoint.trim_end_matches('/');
        builder = builder
            .with_allow_http(endpoint.starts_with("http://"))
            .with_endpoint(if config.s3_path_style {
                endpoint.to_owned()
            } else {
                virtual_hosted(endpoint, &bucket)
            });
    }
    Ok(builder.build()?)
}

/// `https://host…` → `https://{bucket}.host…` (object_store wants a virtual-hosted endpoint to
/// name the bucket already).
fn virtual_hosted(endpoint: &str, bucket: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{bucket}.{rest}"),
        None => format!("{bucket}.{endpoint}"),
    }
}

/// `range` of `file` in [`READ_CHUNK`] pieces, each read on a blocking thread.
fn file_stream(
    file: std::fs::File,
    range: Range<u64>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    futures_util::stream::try_unfold(
        (Some(file), range.start, range.end),
        |(file, pos, end)| async move {
            let Some(file) = file else {
                return Ok(None);
            };
            if pos >= end {
                return Ok(None);
            }
            let want = usize::try_from((end - pos).min(READ_CHUNK as u64)).unwrap_or(READ_CHUNK);
            let (file, chunk) = tokio::task::spawn_blocking(move || {
                use std::io::{Read, Seek, SeekFrom};
                let mut file = file;
                file.seek(SeekFrom::Start(pos))?;
                let mut buf = vec![0u8; want];
                let mut filled = 0;
                while filled < want {
                    let n = file.read(&mut buf[filled..])?;
                    if n == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the object is shorter than its size",
                        ));
                    }
                    filled += n;
                }
                Ok::<_, std::io::Error>((file, Bytes::from(buf)))
            })
            .await
            .map_err(std::io::Error::other)??;
            let next = pos + chunk.len() as u64;
            Ok(Some((chunk, (Some(file), next, end))))
        },
    )
    .boxed()
}
