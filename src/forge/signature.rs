//! Authenticity of webhook deliveries, checked over the raw body bytes before anything is parsed.
//!
//! GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`; Gitea: `X-Gitea-Signature: <hex
//! HMAC-SHA256>`; GitLab: `X-Gitlab-Token: <secret>`. Every comparison is constant-time:
//! HMACs through `Mac::verify_slice`, GitLab tokens by comparing SHA-256 digests with `subtle`
//! (so neither the content nor the length of the secret leaks through timing).

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ForgeKind;
use crate::secret::WebhookSecret;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("malformed {0} header")]
    Malformed(&'static str),
    #[error("signature does not match")]
    Mismatch,
    /// A secret token sent as it is (GitLab's `X-Gitlab-Token`) that is not the connection's.
    #[error("{0} does not match the connection's secret")]
    TokenMismatch(&'static str),
}

/// Check a delivery against every secret currently accepted for its connection (two during a
/// rotation). Succeeds if any matches. Each forge's own check lives in its folder.
pub fn verify(
    forge: ForgeKind,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[&WebhookSecret],
) -> Result<(), SignatureError> {
    forge.verify(headers, body, secrets)
}

/// `sha256=HEX` in a `X-Hub-Signature-256` header (GitHub, newer Gitea).
pub(crate) fn verify_hub_sha256(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[&WebhookSecret],
) -> Result<(), SignatureError> {
    let sig = header(headers, "x-hub-signature-256")?;
    let hex_sig = sig
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed("X-Hub-Signature-256"))?;
    verify_hmac_hex(hex_sig, "X-Hub-Signature-256", body, secrets)
}

/// A shared token sent as is (GitLab's `X-Gitlab-Token`), compared in constant time.
pub(crate) fn verify_token(
    headers: &HeaderMap,
    name: &'static str,
    display: &'static str,
    secrets: &[&WebhookSecret],
) -> Result<(), SignatureError> {
    let token = headers
        .get(name)
        .ok_or(SignatureError::Missing(display))?
        .as_bytes();
    let given = Sha256::digest(token);
    let mut ok = subtle::Choice::from(0);
    for s in secrets {
        ok |= Sha256::digest(s.expose().as_bytes()).ct_eq(&given);
    }
    if bool::from(ok) {
        Ok(())
    } else {
        Err(SignatureError::TokenMismatch(display))
    }
}

pub(crate) fn header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<&'a str, SignatureError> {
    let v = headers
        .get(name)
        .ok_or(SignatureError::Missing(display_name(name)))?;
    v.to_str()
        .map_err(|_| SignatureError::Malformed(display_name(name)))
}

fn display_name(name: &'static str) -> &'static str {
    match name {
        "x-hub-signature-256" => "X-Hub-Signature-256",
        "x-gitea-signature" => "X-Gitea-Signature",
        _ => name,
    }
}

pub(crate) fn verify_hmac_hex(
    hex_sig: &str,
    header_name: &'static str,
    body: &[u8],
    secrets: &[&WebhookSecret],
) -> Result<(), SignatureError> {
    let mut expected = [0u8; 32];
    hex::decode_to_slice(hex_sig.trim(), &mut expected)
        .map_err(|_| SignatureError::Malformed(header_name))?;
    let mut any = false;
    for s in secrets {
        // Every secret is tried (no early exit) so timing does not tell which one matched.
        any |= hmac_sha256(s.expose().as_bytes(), body)
            .verify_slice(&expected)
            .is_ok();
    }
    if any {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn hmac_sha256(key: &[u8], body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = HmacSha256::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    mac
}

/// Hex HMAC-SHA256 of `body` under `key`: what GitHub and Gitea put in their signature headers.
/// Used by tests, the load benchmark and anyone who wants to sign a delivery by hand.
pub fn sign_hex(key: &[u8], body: &[u8]) -> String {
    hex::encode(hmac_sha256(key, body).finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn secret(s: &str) -> WebhookSecret {
        WebhookSecret::from_stored(s.to_string())
    }

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn github_documented_test_vector() {
        // docs.github.com "Validating webhook deliveries".
        let s = secret("It's a Secret to Everybody");
        let h = with(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        );
        assert_eq!(
            verify(ForgeKind::Github, &h, b"Hello, World!", &[&s]),
            Ok(())
        );
        assert_eq!(
            verify(ForgeKind::Github, &h, b"Hello, World?", &[&s]),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn github_rejects_sha1_only_and_garbage() {
        let s = secret("k");
        let sha1 = with(
            "x-hub-signature",
            "sha1=0123456789abcdef0123456789abcdef01234567",
        );
        assert_eq!(
            verify(ForgeKind::Github, &sha1, b"x", &[&s]),
            Err(SignatureError::Missing("X-Hub-Signature-256"))
        );
        let bad = with("x-hub-signature-256", "sha256=zz");
        assert_eq!(
            verify(ForgeKind::Github, &bad, b"x", &[&s]),
            Err(SignatureError::Malformed("X-Hub-Signature-256"))
        );
        let noprefix = with("x-hub-signature-256", &sign_hex(b"k", b"x"));
        assert_eq!(
            verify(ForgeKind::Github, &noprefix, b"x", &[&s]),
            Err(SignatureError::Malformed("X-Hub-Signature-256"))
        );
    }

    #[test]
    fn any_accepted_secret_verifies() {
        let old = secret("old");
        let new = secret("new");
        let h = with(
            "x-hub-signature-256",
            &format!("sha256={}", sign_hex(b"old", b"body")),
        );
        assert_eq!(
            verify(ForgeKind::Github, &h, b"body", &[&new, &old]),
            Ok(())
        );
        assert_eq!(
            verify(ForgeKind::Github, &h, b"body", &[&new]),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn gitlab_token_compare() {
        let s = secret("tok");
        assert_eq!(
            verify(
                ForgeKind::Gitlab,
                &with("x-gitlab-token", "tok"),
                b"",
                &[&s]
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                ForgeKind::Gitlab,
                &with("x-gitlab-token", "tok2"),
                b"",
                &[&s]
            ),
            Err(SignatureError::TokenMismatch("X-Gitlab-Token"))
        );
        assert_eq!(
            verify(ForgeKind::Gitlab, &with("x-gitlab-token", ""), b"", &[&s]),
            Err(SignatureError::TokenMismatch("X-Gitlab-Token"))
        );
        assert_eq!(
            verify(ForgeKind::Gitlab, &HeaderMap::new(), b"", &[&s]),
            Err(SignatureError::Missing("X-Gitlab-Token"))
        );
        // Logged as what it is: the token is not the secret (no signature is involved).
        assert_eq!(
            SignatureError::TokenMismatch("X-Gitlab-Token").to_string(),
            "X-Gitlab-Token does not match the connection's secret"
        );
    }

    #[test]
    fn gitea_bare_hex() {
        let s = secret("k");
        let h = with("x-gitea-signature", &sign_hex(b"k", b"body"));
        assert_eq!(verify(ForgeKind::Gitea, &h, b"body", &[&s]), Ok(()));
        assert_eq!(
            verify(ForgeKind::Gitea, &HeaderMap::new(), b"body", &[&s]),
            Err(SignatureError::Missing("X-Gitea-Signature"))
        );
    }
}
