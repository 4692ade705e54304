//! Sign-in: argon2id passwords, sessions kept in the store (only a hash of the cookie),
//! CSRF tokens, and the limit on failed attempts.

use std::collections::HashMap;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, PasswordHash};

use crate::service::{Result, ServiceError};
use crate::store::{Session, Store, User};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "endor_session";
/// The cookie a signed-out form (sign-in, invitation) pairs its CSRF token with.
pub const PRE_COOKIE: &str = "endor_pre";

/// Shortest and longest password accepted.
pub const MIN_PASSWORD: usize = 10;
const MAX_PASSWORD: usize = 1024;

/// A random token of 32 bytes, hex.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// What is stored for a cookie or link token (as for an API token): its SHA-256, hex.
pub use crate::service::token_hash;

/// Refuse a password that is too short or too long, with the rule in the message.
pub fn check_password(password: &str) -> Result<()> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        return Err(ServiceError::Invalid(format!(
            "a password needs at least {MIN_PASSWORD} characters"
        )));
    }
    if password.len() > MAX_PASSWORD {
        return Err(ServiceError::Invalid(format!(
            "a password may have at most {MAX_PASSWORD} bytes"
        )));
    }
    Ok(())
}

/// The argon2id PHC string of a password (a new random salt each time).
pub fn hash_password(password: &str) -> Result<String> {
    check_password(password)?;
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ServiceError::Invalid(format!("password not hashed: {e}")))
}

fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the login is unknown, so that an unknown login takes as
/// long as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_token()).expect("a random password hashes"))
}

/// `endor user password LOGIN`: set a user's password (every session of theirs ends).
pub async fn set_password(store: &dyn Store, login: &str, password: &str) -> Result<User> {
    let hash = hash_password(password)?;
    let (user, _) = store
        .user_password(login)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("user {login}")))?;
    store.set_password_hash(&user.id, Some(&hash)).await?;
    Ok(user)
}

/// The user whose login and password these are, or `None` (an unknown login and a wrong
/// password are not told apart). Runs argon2 on a blocking thread.
pub async fn check_sign_in(store: &dyn Store, login: &str, password: &str) -> Result<Option<User>> {
    let found = if login.is_empty() || login.len() > 64 {
        None
    } else {
        store.user_password(login).await?
    };
    let (user, phc) = match found {
        Some((u, Some(h))) => (Some(u), h),
        _ => (None, decoy_hash().to_string()),
    };
    let password = password.to_string();
    let ok = tokio::task::spawn_blocking(move || verify(&password, &phc))
        .await
        .unwrap_or(false);
    Ok(user.filter(|_| ok))
}

/// A new session for `user`: the cookie's value (only its hash is stored) and the session.
pub async fn start_session(
    store: &dyn Store,
    user: &User,
    ttl_ms: i64,
) -> Result<(String, Session)> {
    let cookie = random_token();
    let csrf = random_token();
    let expires_at = crate::now_ms() + ttl_ms;
    store
        .create_session(&token_hash(&cookie), &user.id, &csrf, expires_at)
        .await?;
    Ok((
        cookie,
        Session {
            user: user.clone(),
            csrf,
            expires_at,
        },
    ))
}

/// Failed sign-ins per key (a visitor address, a login) in the current minute.
pub struct Attempts {
    limit: u32,
    seen: Mutex<HashMap<String, (i64, u32)>>,
}

impl Attempts {
    pub fn new(limit: u32) -> Self {
        Self {
            limit: limit.max(1),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds to wait when any of `keys` used up its attempts this minute.
    pub fn blocked(&self, keys: &[&str], now_ms: i64) -> Option<u64> {
        let seen = self.seen.lock().expect("attempts lock");
        keys.iter()
            .filter_map(|k| seen.get(*k))
            .filter(|(start, n)| now_ms - start < 60_000 && *n >= self.limit)
            .map(|(start, _)| ((60_000 - (now_ms - start)) / 1000 + 1) as u64)
            .max()
    }

    /// Count a failed attempt against every key.
    pub fn failed(&self, keys: &[&str], now_ms: i64) {
        let mut seen = self.seen.lock().expect("attempts lock");
        if seen.len() > 100_000 {
            seen.retain(|_, (start, _)| now_ms - *start < 60_000);
        }
        for k in keys {
            let e = seen.entry(k.to_string()).or_insert((now_ms, 0));
            if now_ms - e.0 >= 60_000 {
                *e = (now_ms, 0);
            }
            e.1 += 1;
        }
    }
}

/// Constant-time equality of two tokens.
pub fn same_token(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        assert!(hash_password("short").is_err());
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse battery", &h));
        assert!(!verify("correct horse batterY", &h));
        assert!(!verify("x", "not a hash"));
        assert_ne!(h, hash_password("correct horse battery").unwrap());
    }

    #[test]
    fn attempts_are_limited_per_minute() {
        let a = Attempts::new(3);
        for _ in 0..3 {
            assert_eq!(a.blocked(&["ip:1", "login:x"], 1_000), None);
            a.failed(&["ip:1", "login:x"], 1_000);
        }
        assert!(a.blocked(&["ip:1"], 2_000).is_some());
        assert!(a.blocked(&["login:x"], 2_000).is_some());
        assert_eq!(a.blocked(&["ip:2"], 2_000), None);
        assert_eq!(a.blocked(&["ip:1"], 61_001), None);
    }
}
