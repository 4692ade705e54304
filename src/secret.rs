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

/// Seals and opens the secrets endor keeps (webhook secrets, generated basic-auth passwords,
/// backup passphrases) with XChaCha20-Poly1305 under the master key: 32 random bytes in
/// `secrets.master_key_file`, made with mode 0600 on first start. A sealed value is
/// `v2:` + the key's id (8 hex digits of its SHA-256) + `:` + base64(nonce ‖ ciphertext);
/// values sealed before key ids (`v1:` + base64) are opened by trying every key.
///
/// Rotation (`endor secrets rotate`, [`Keyring::begin_rotation`] … [`Keyring::finish_rotation`])
/// keeps every key a stored value may be sealed with on disk until nothing is sealed with it:
/// the new key is written to `FILE.next` before anything is sealed with it; the old key is
/// linked to `FILE.old` before `FILE.next` is renamed over `FILE`; `FILE.old` goes only after
/// every value was sealed again under the new key. A crash at any point leaves each value
/// readable under one of the keys found there, and the next `rotate` resumes with the same
/// new key. A process that meets a key id it does not know reads the key files again, and one
/// that seals checks first that `FILE` is still the key it holds.
pub struct Keyring {
    path: std::path::PathBuf,
    keys: std::sync::RwLock<Keys>,
}

#[derive(Clone)]
struct Keys {
    /// The key of `FILE`: what values are sealed with.
    current: (String, chacha20poly1305::Key),
    /// Every key on disk (`FILE`, `FILE.next`, `FILE.old`), by id.
    all: Vec<(String, chacha20poly1305::Key)>,
    /// `FILE`'s device and inode when read: a rename over it is seen.
    file_id: (u64, u64),
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("master key {path}: {message}")]
    Key { path: String, message: String },
    #[error(
        "a sealed secret could not be opened (not sealed with secrets.master_key_file's key, or damaged)"
    )]
    Open,
}

/// The id of a key: 8 hex digits of its SHA-256 (names the key without revealing it).
fn key_id(key: &chacha20poly1305::Key) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(key.as_slice())[..4])
}

/// Add a key to `all` unless its id is there.
fn know(all: &mut Vec<(String, chacha20poly1305::Key)>, id: String, key: chacha20poly1305::Key) {
    if !all.iter().any(|(i, _)| *i == id) {
        all.push((id, key));
    }
}

fn with_suffix(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    s.into()
}

impl Keyring {
    /// The keys of `path` (created with a fresh key when neither it nor a rotation's files
    /// exist) and of an unfinished rotation beside it.
    pub fn load(path: &std::path::Path) -> Result<Self, SealError> {
        let keys = Self::read_keys(path, true)?;
        Ok(Self {
            path: path.to_path_buf(),
            keys: std::sync::RwLock::new(keys),
        })
    }

    fn err(path: &std::path::Path, message: impl Into<String>) -> SealError {
        SealError::Key {
            path: path.display().to_string(),
            message: message.into(),
        }
    }

    /// One key file: `None` when it does not exist.
    fn read_key(path: &std::path::Path) -> Result<Option<chacha20poly1305::Key>, SealError> {
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() == 32 => Ok(Some(*chacha20poly1305::Key::from_slice(&bytes))),
            Ok(bytes) => Err(Self::err(
                path,
                format!("holds {} bytes, not 32", bytes.len()),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::err(path, e.to_string())),
        }
    }

    /// Write a fresh key to `path` unless one is there; the key the file holds.
    fn create_key(path: &std::path::Path) -> Result<chacha20poly1305::Key, SealError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(dir)
                .map_err(|e| Self::err(path, e.to_string()))?;
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        // Written whole beside the path and linked into place: a reader never sees a partial
        // key, and of two processes racing the first one's key stays (the other reads it).
        match crate::unix::create_file_atomic(path, &bytes, 0o600) {
            Ok(true) => Ok(*chacha20poly1305::Key::from_slice(&bytes)),
            Ok(false) => {
                Self::read_key(path)?.ok_or_else(|| Self::err(path, "vanished while being made"))
            }
            Err(e) => Err(Self::err(path, e.to_string())),
        }
    }

    fn read_keys(path: &std::path::Path, create: bool) -> Result<Keys, SealError> {
        let next = Self::read_key(&with_suffix(path, ".next"))?;
        let old = Self::read_key(&with_suffix(path, ".old"))?;
        let current = match Self::read_key(path)? {
            Some(k) => k,
            // A rotation's files without the key itself: never start over with a new key,
            // which would leave what they sealed unreadable.
            None if next.is_some() || old.is_some() => {
                return Err(Self::err(
                    path,
                    "missing, while a rotation's .next or .old key is there: put the key back",
                ));
            }
            None if create => Self::create_key(path)?,
            None => return Err(Self::err(path, "missing")),
        };
        let meta = std::fs::metadata(path).map_err(|e| Self::err(path, e.to_string()))?;
        let file_id = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        let mut all = vec![(key_id(&current), current)];
        for k in [next, old].into_iter().flatten() {
            know(&mut all, key_id(&k), k);
        }
        Ok(Keys {
            current: (key_id(&current), current),
            all,
            file_id,
        })
    }

    fn keys(&self) -> Keys {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Read the key files again (another process rotated). A key this process knew stays
    /// known: a value sealed with it by a process that had not seen the rotation yet still
    /// opens here.
    fn reload(&self) -> Result<Keys, SealError> {
        let mut keys = Self::read_keys(&self.path, false)?;
        let mut held = self.keys.write().unwrap_or_else(|e| e.into_inner());
        for (id, k) in &held.all {
            know(&mut keys.all, id.clone(), *k);
        }
        *held = keys.clone();
        Ok(keys)
    }

    /// Forget every key but those on disk (the end of a rotation, in the rotating process).
    fn reload_exactly(&self) -> Result<(), SealError> {
        let keys = Self::read_keys(&self.path, false)?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }

    /// The id of the key values are sealed with now.
    pub fn current_id(&self) -> String {
        self.keys().current.0
    }

    /// The ids of every key on disk.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys().all.into_iter().map(|(id, _)| id).collect()
    }

    /// Seal under the current key (`FILE`'s, read again if it was replaced).
    pub fn seal(&self, plain: &str) -> String {
        let mut keys = self.keys();
        let now = std::fs::metadata(&self.path).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        });
        if now.is_some_and(|id| id != keys.file_id)
            && let Ok(fresh) = self.reload()
        {
            keys = fresh;
        }
        seal_with(&keys.current, plain)
    }

    /// Seal under the key with id `id` (one on disk), for a rotation.
    pub fn seal_with(&self, id: &str, plain: &str) -> Result<String, SealError> {
        let keys = self.keys();
        let key = keys
            .all
            .iter()
            .find(|(i, _)| i == id)
            .ok_or_else(|| Self::err(&self.path, format!("no key with id {id}")))?;
        Ok(seal_with(key, plain))
    }

    /// The id of the key `sealed` is sealed with (`None` for a `v1:` value or plain text).
    pub fn sealed_with(sealed: &str) -> Option<&str> {
        sealed
            .strip_prefix("v2:")?
            .split_once(':')
            .map(|(id, _)| id)
    }

    /// Is `value` sealed (as opposed to text stored before sealing)?
    pub fn is_sealed(value: &str) -> bool {
        value.starts_with("v1:") || value.starts_with("v2:")
    }

    pub fn open(&self, sealed: &str) -> Result<String, SealError> {
        match self.open_with(&self.keys(), sealed) {
            Err(SealError::Open) => self.open_with(&self.reload()?, sealed),
            other => other,
        }
    }

    fn open_with(&self, keys: &Keys, sealed: &str) -> Result<String, SealError> {
        use base64::Engine;
        let decode = |b: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .ok()
                .filter(|r| r.len() > 24)
                .ok_or(SealError::Open)
        };
        if let Some(rest) = sealed.strip_prefix("v2:") {
            let (id, b64) = rest.split_once(':').ok_or(SealError::Open)?;
            let (_, key) = keys
                .all
                .iter()
                .find(|(i, _)| i == id)
                .ok_or(SealError::Open)?;
            return open_raw(key, &decode(b64)?);
        }
        let raw = decode(sealed.strip_prefix("v1:").ok_or(SealError::Open)?)?;
        keys.all
            .iter()
            .find_map(|(_, key)| open_raw(key, &raw).ok())
            .ok_or(SealError::Open)
    }

    /// Start (or resume) a rotation: the new key, written to `FILE.next`; its id.
    pub fn begin_rotation(&self) -> Result<String, SealError> {
        let next = Self::create_key(&with_suffix(&self.path, ".next"))?;
        self.reload()?;
        Ok(key_id(&next))
    }

    /// Make the new key `FILE` (the old one kept as `FILE.old` until [`finish_rotation`]).
    ///
    /// [`finish_rotation`]: Keyring::finish_rotation
    pub fn commit_rotation(&self) -> Result<(), SealError> {
        let next = with_suffix(&self.path, ".next");
        let old = with_suffix(&self.path, ".old");
        let e = |p: &std::path::Path, e: std::io::Error| Self::err(p, e.to_string());
        if next.exists() {
            if !old.exists() {
                std::fs::hard_link(&self.path, &old).map_err(|x| e(&old, x))?;
            }
            std::fs::rename(&next, &self.path).map_err(|x| e(&next, x))?;
            crate::unix::sync_parent(&self.path);
        }
        self.reload()?;
        Ok(())
    }

    /// Forget the old key: to be called once nothing is sealed with it any more.
    pub fn finish_rotation(&self) -> Result<(), SealError> {
        let old = with_suffix(&self.path, ".old");
        match std::fs::remove_file(&old) {
            Ok(()) => crate::unix::sync_parent(&old),
            Err(x) if x.kind() == std::io::ErrorKind::NotFound => {}
            Err(x) => return Err(Self::err(&old, x.to_string())),
        }
        self.reload_exactly()
    }
}

fn seal_with((id, key): &(String, chacha20poly1305::Key), plain: &str) -> String {
    use base64::Engine;
    use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
    let cipher = chacha20poly1305::XChaCha20Poly1305::new(key);
    let nonce = chacha20poly1305::XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let mut out = nonce.to_vec();
    out.extend(
        cipher
            .encrypt(&nonce, plain.as_bytes())
            .expect("XChaCha20-Poly1305 encryption of a short text cannot fail"),
    );
    format!(
        "v2:{id}:{}",
        base64::engine::general_purpose::STANDARD.encode(out)
    )
}

fn open_raw(key: &chacha20poly1305::Key, raw: &[u8]) -> Result<String, SealError> {
    use chacha20poly1305::aead::{Aead, KeyInit};
    let (nonce, ct) = raw.split_at(24);
    let cipher = chacha20poly1305::XChaCha20Poly1305::new(key);
    let plain = cipher
        .decrypt(chacha20poly1305::XNonce::from_slice(nonce), ct)
        .map_err(|_| SealError::Open)?;
    String::from_utf8(plain).map_err(|_| SealError::Open)
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
        let s = Keyring::load(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let sealed = s.seal("hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_ne!(sealed, s.seal("hunter2"), "a fresh nonce each time");
        // The same file gives the same key.
        assert_eq!(
            Keyring::load(&path).unwrap().open(&sealed).unwrap(),
            "hunter2"
        );
        let other = Keyring::load(&dir.path().join("other.key")).unwrap();
        assert!(matches!(other.open(&sealed), Err(SealError::Open)));
        // The value names its key, not the key itself.
        assert_eq!(Keyring::sealed_with(&sealed), Some(s.current_id().as_str()));
        assert!(!sealed.contains(&hex::encode(std::fs::read(&path).unwrap())));
        let mut bad = sealed.clone();
        bad.pop();
        bad.push('A');
        assert!(s.open(&bad).is_err());
        assert!(s.open("v1:").is_err());
        assert!(s.open("plain").is_err());
        std::fs::write(dir.path().join("short.key"), b"abc").unwrap();
        assert!(Keyring::load(&dir.path().join("short.key")).is_err());
        let p = generate_password();
        assert_eq!(p.len(), 24);
        assert_ne!(p, generate_password());
    }

    /// A rotation cut at each of its steps leaves every value readable, by this process and by
    /// one that starts afresh; the next rotation resumes with the same new key.
    #[test]
    fn rotation_cut_anywhere_leaves_every_value_readable() {
        for cut in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("master.key");
            let ring = Keyring::load(&path).unwrap();
            let old_id = ring.current_id();
            let before = ring.seal("before");
            // A value sealed the v1 way (no key id) still opens.
            let v1 = {
                use base64::Engine;
                let v2 = ring.seal("legacy");
                let b64 = v2.rsplit_once(':').unwrap().1.to_string();
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap();
                format!(
                    "v1:{}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            };
            let new_id = ring.begin_rotation().unwrap();
            assert_ne!(new_id, old_id);
            let under_new = ring.seal_with(&new_id, "under-new").unwrap();
            let mut sealed_late = ring.seal("late");
            if cut >= 1 {
                ring.commit_rotation().unwrap();
                assert_eq!(ring.current_id(), new_id);
                sealed_late = ring.seal("late");
            }
            if cut >= 2 {
                ring.finish_rotation().unwrap();
            }
            let fresh = Keyring::load(&path).unwrap();
            for r in [&ring, &fresh] {
                assert_eq!(r.open(&under_new).unwrap(), "under-new");
                assert_eq!(r.open(&sealed_late).unwrap(), "late");
                if cut < 2 {
                    assert_eq!(r.open(&before).unwrap(), "before");
                    assert_eq!(r.open(&v1).unwrap(), "legacy");
                } else {
                    // Finished: the old key is gone with its file.
                    assert!(r.open(&before).is_err());
                }
            }
            if cut == 0 {
                // Resumed: the same new key.
                assert_eq!(fresh.begin_rotation().unwrap(), new_id);
            }
            if cut == 3 {
                // A key file lost while a rotation's files remain is an error, not a new key.
                fresh.begin_rotation().unwrap();
                std::fs::remove_file(&path).unwrap();
                assert!(Keyring::load(&path).is_err());
            }
        }
    }

    /// A process holding the old key seals with the new one once another process has
    /// rotated, and opens what the other sealed.
    #[test]
    fn another_process_s_rotation_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let serve = Keyring::load(&path).unwrap();
        let cli = Keyring::load(&path).unwrap();
        let id = cli.begin_rotation().unwrap();
        let by_cli = cli.seal_with(&id, "x").unwrap();
        assert_eq!(serve.open(&by_cli).unwrap(), "x");
        cli.commit_rotation().unwrap();
        assert_eq!(Keyring::sealed_with(&serve.seal("y")), Some(id.as_str()));
    }

    #[test]
    fn many_first_uses_at_once_share_one_whole_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("secret.key");
            let sealed: Vec<String> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| Keyring::load(&path).unwrap().seal("x")))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            // Every caller got the one key the file holds: each sealed value opens with it.
            let key = Keyring::load(&path).unwrap();
            for v in &sealed {
                assert_eq!(key.open(v).unwrap(), "x");
            }
            assert_eq!(std::fs::read(&path).unwrap().len(), 32);
        }
    }
}
