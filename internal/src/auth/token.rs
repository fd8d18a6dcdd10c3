//! Token secrets: minting, the per-install key, keyed BLAKE3 hashing, constant-time comparison.
//!
//! A token looks like `pw_<16 hex id>_<48 hex secret>`: the `pw_` prefix lets secret scanners
//! recognise leaked tokens, the id names the token in logs and the admin API, and the secret
//! carries 192 random bits. Only `blake3::keyed_hash(install_key, whole_token)` is stored.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::RngCore;
use subtle::ConstantTimeEq;

/// Prefix of every minted token.
pub const TOKEN_PREFIX: &str = "pw_";

/// The install's secret key (32 bytes in `secret.key`, mode 0600). Not `Debug`.
#[derive(Clone)]
pub struct InstallKey([u8; 32]);

impl InstallKey {
    /// Reads `data_dir/secret.key`, creating it (mode 0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join("secret.key");
        match fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    anyhow::anyhow!(
                        "{} must hold exactly 32 bytes (found {}); restore it from backup",
                        path.display(),
                        bytes.len()
                    )
                })?;
                let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), mode = format!("{mode:o}"),
                        "the install key is readable by other users; chmod 600 it");
                }
                Ok(Self(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                file.write_all(&key)?;
                file.sync_all()?;
                Ok(Self(key))
            }
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    #[cfg(test)]
    pub fn for_tests(byte: u8) -> Self {
        Self([byte; 32])
    }

    /// The stored form of a token.
    pub fn hash(&self, token: &str) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, token.as_bytes()).as_bytes()
    }

    /// A sub-key derived for another purpose (e.g. encrypting webhook secrets), so the token
    /// hashing key is never reused directly.
    pub fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.0)
    }
}

/// Constant-time equality of two stored hashes.
pub fn hashes_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A fresh token: `(id, plaintext)`.
pub fn mint() -> (String, String) {
    let mut rng = rand::rng();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 24];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let id = hex::encode(id);
    let token = format!("{TOKEN_PREFIX}{id}_{}", hex::encode(secret));
    (id, token)
}

/// A token id for a token given from outside (`PATCHWORK_ADMIN_TOKEN`).
pub fn new_id() -> String {
    let mut id = [0u8; 8];
    rand::rng().fill_bytes(&mut id);
    hex::encode(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_distinct_prefixed_and_long() {
        let (id1, t1) = mint();
        let (_, t2) = mint();
        assert_ne!(t1, t2);
        assert!(t1.starts_with("pw_"));
        assert!(t1.contains(&id1));
        assert!(t1.len() >= 3 + 16 + 1 + 48);
    }

    #[test]
    fn hash_is_keyed() {
        let a = InstallKey::for_tests(1);
        let b = InstallKey::for_tests(2);
        assert_eq!(a.hash("x"), a.hash("x"));
        assert_ne!(a.hash("x"), b.hash("x"));
        assert!(hashes_equal(&a.hash("x"), &a.hash("x")));
        assert!(!hashes_equal(&a.hash("x"), &a.hash("y")));
        assert!(!hashes_equal(&a.hash("x"), &[0u8; 3]));
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = InstallKey::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join("secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let k2 = InstallKey::load_or_create(dir.path()).unwrap();
        assert_eq!(k1.hash("t"), k2.hash("t"));
        fs::write(dir.path().join("secret.key"), b"short").unwrap();
        assert!(InstallKey::load_or_create(dir.path()).is_err());
    }
}
