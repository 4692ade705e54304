//! Secrets that cannot be printed by accident.
//!
//! `WebhookSecret` wraps `secrecy::SecretString`: its `Debug` prints `[REDACTED]`, it has no
//! `Display`, and the bytes are only reachable through `expose()`, which keeps every place that
//! reads a secret greppable.

use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

/// A shared secret used to sign (GitHub, Gitea) or authenticate (GitLab) webhook deliveries.
#[derive(Clone)]
pub struct WebhookSecret(SecretString);

impl WebhookSecret {
    /// 32 random bytes from the OS generator, hex-encoded (64 characters): long enough for
    /// HMAC-SHA256 and safe to paste into any forge's form.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(SecretString::from(hex::encode(bytes)))
    }

    pub fn from_stored(value: String) -> Self {
        Self(SecretString::from(value))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let s = WebhookSecret::generate();
        let printed = format!("{s:?}");
        assert!(!printed.contains(s.expose()));
        assert!(printed.contains("REDACTED"));
    }

    #[test]
    fn generated_secrets_are_long_and_distinct() {
        let a = WebhookSecret::generate();
        let b = WebhookSecret::generate();
        assert_eq!(a.expose().len(), 64);
        assert_ne!(a.expose(), b.expose());
    }
}

/// Seals and opens the secrets endor must be able to show again (a generated basic-auth
/// password), with XChaCha20-Poly1305 under a 32-byte key kept in a file of its own
/// (`storage.secret_key`, made with mode 0600 on first use). A sealed value is
/// `v1:` + base64(nonce ‖ ciphertext); the store never holds the plain text.
#[derive(Clone)]
pub struct Sealer {
    key: chacha20poly1305::Key,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("secret key {path}: {message}")]
    Key { path: String, message: String },
    #[error("a sealed secret could not be opened (wrong storage.secret_key, or damaged)")]
    Open,
}

impl Sealer {
    /// The key in `path`, created when the file does not exist yet.
    pub fn from_file(path: &std::path::Path) -> Result<Self, SealError> {
        let err = |message: String| SealError::Key {
            path: path.display().to_string(),
            message,
        };
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() == 32 => {
                return Ok(Self {
                    key: *chacha20poly1305::Key::from_slice(&bytes),
                });
            }
            Ok(bytes) => return Err(err(format!("holds {} bytes, not 32", bytes.len()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e.to_string())),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(dir)
                .map_err(|e| err(e.to_string()))?;
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        // Written whole beside the path and linked into place: a reader never sees a partial
        // key, and of two processes racing the first one's key stays (the other reads it).
        match crate::unix::create_file_atomic(path, &bytes, 0o600) {
            Ok(true) => Ok(Self {
                key: *chacha20poly1305::Key::from_slice(&bytes),
            }),
            Ok(false) => Self::from_file(path),
            Err(e) => Err(err(e.to_string())),
        }
    }

    pub fn seal(&self, plain: &str) -> String {
        use base64::Engine;
        use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
        let cipher = chacha20poly1305::XChaCha20Poly1305::new(&self.key);
        let nonce = chacha20poly1305::XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        out.extend(
            cipher
                .encrypt(&nonce, plain.as_bytes())
                .expect("XChaCha20-Poly1305 encryption of a short text cannot fail"),
        );
        format!(
            "v1:{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    pub fn open(&self, sealed: &str) -> Result<String, SealError> {
        use base64::Engine;
        use chacha20poly1305::aead::{Aead, KeyInit};
        let raw = sealed
            .strip_prefix("v1:")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .filter(|r| r.len() > 24)
            .ok_or(SealError::Open)?;
        let (nonce, ct) = raw.split_at(24);
        let cipher = chacha20poly1305::XChaCha20Poly1305::new(&self.key);
        let plain = cipher
            .decrypt(chacha20poly1305::XNonce::from_slice(nonce), ct)
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain).map_err(|_| SealError::Open)
    }
}

/// A password for basic auth: 24 letters and digits (about 143 bits).
pub fn generate_password() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..24)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

#[cfg(test)]
mod sealer_tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_with_their_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/secret.key");
        let s = Sealer::from_file(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let sealed = s.seal("hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_ne!(sealed, s.seal("hunter2"), "a fresh nonce each time");
        // The same file gives the same key.
        assert_eq!(
            Sealer::from_file(&path).unwrap().open(&sealed).unwrap(),
            "hunter2"
        );
        let other = Sealer::from_file(&dir.path().join("other.key")).unwrap();
        assert!(matches!(other.open(&sealed), Err(SealError::Open)));
        let mut bad = sealed.clone();
        bad.pop();
        bad.push('A');
        assert!(s.open(&bad).is_err());
        assert!(s.open("v1:").is_err());
        assert!(s.open("plain").is_err());
        std::fs::write(dir.path().join("short.key"), b"abc").unwrap();
        assert!(Sealer::from_file(&dir.path().join("short.key")).is_err());
        let p = generate_password();
        assert_eq!(p.len(), 24);
        assert_ne!(p, generate_password());
    }

    #[test]
    fn many_first_uses_at_once_share_one_whole_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("secret.key");
            let sealed: Vec<String> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| Sealer::from_file(&path).unwrap().seal("x")))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            // Every caller got the one key the file holds: each sealed value opens with it.
            let key = Sealer::from_file(&path).unwrap();
            for v in &sealed {
                assert_eq!(key.open(v).unwrap(), "x");
            }
            assert_eq!(std::fs::read(&path).unwrap().len(), 32);
        }
    }
}
