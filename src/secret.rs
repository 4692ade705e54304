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
