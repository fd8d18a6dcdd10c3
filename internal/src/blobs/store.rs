//! The object store behind the blob routes, reached only through `object_store`'s
//! [`ObjectStore`] trait (so an S3-compatible store plugs in by configuration later), plus what
//! the local data plane needs: URL signing, per-hash locks, the staging → final moves.
//!
//! Layout inside the store: complete objects at `objects/{hash[0..2]}/{hash}`, uploads in
//! progress at `staging/{blob_id}`. The local store is `{data_dir}/blobs/` with fsync on: a
//! staged object is written to a temporary file, `sync_all`ed and renamed into place with its
//! directory fsynced, and the move to `objects/` fsyncs the directory again, so an acknowledged
//! `PUT` or `complete-upload` survives a crash.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use hmac::{Hmac, Mac};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt};
use sha2::Sha256;
use tokio::sync::{Mutex, MutexGuard};

use crate::config::Config;

/// Stripes of the per-hash lock (GC deleting an object vs. a complete or a new reference).
const LOCK_STRIPES: usize = 64;

/// Chunks read from a local file for a response or for hashing.
const READ_CHUNK: usize = 1024 * 1024;

/// The blob store.
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    sign_key: [u8; 32],
    locks: Vec<Mutex<()>>,
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
    Put { db_id: &'a str, blob_id: &'a str },
    Get { db_id: &'a str, hash: &'a str },
}

impl Blobs {
    /// The local filesystem store under `{data_dir}/blobs/`, fsync on.
    pub fn open(config: &Config, sign_key: [u8; 32]) -> anyhow::Result<Self> {
        let root = config.blobs_dir();
        std::fs::create_dir_all(&root)?;
        let store = LocalFileSystem::new_with_prefix(&root)?.with_fsync(true);
        Ok(Self::with_store(Arc::new(store), sign_key))
    }

    pub fn with_store(store: Arc<dyn ObjectStore>, sign_key: [u8; 32]) -> Self {
        Self {
            store,
            sign_key,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
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
        let stripe = usize::from_str_radix(&hash[..2], 16).unwrap_or(0) % LOCK_STRIPES;
        self.locks[stripe].lock().await
    }

    fn mac(&self, what: Signed<'_>, expires: i64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.sign_key)
            .expect("HMAC takes any key length");
        let text = match what {
            Signed::Put { db_id, blob_id } => format!("PUT\n{db_id}\n{blob_id}\n{expires}"),
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
