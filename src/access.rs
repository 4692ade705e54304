//! HTTP access control of a site at the gateway: basic auth (bcrypt hashes; generated
//! passwords also sealed so members can be shown them again) and the robots header, plus the
//! site tag rules. One service layer for the slash-commands and the CLI.
//!
//! CIDR allow/deny lists (deny wins) are checked against the visitor's address, which is
//! the peer's unless the peer is a trusted proxy (`gateway.trusted_proxies`).

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::ids::SiteId;
use crate::secret::Keyring;
use crate::store::{SiteAccess, Store, StoreError};

/// The user name of generated basic-auth credentials.
pub const GENERATED_USER: &str = "preview";

/// bcrypt cost: about 50 ms per check on this class of machine; verified credentials are
/// cached (see [`AuthCache`]), so a visitor pays it once, not per request.
const BCRYPT_COST: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Seal(#[from] crate::secret::SealError),
    #[error("hashing the password: {0}")]
    Hash(String),
}

/// What `endor site access` shows (to members).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AccessView {
    pub site: String,
    /// Does the gateway send `X-Robots-Tag: noindex, nofollow`?
    pub robots: bool,
    pub basic_auth: Option<Credentials>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl AccessChange {
    /// Does it change nothing (a look at the settings)?
    pub fn is_empty(&self) -> bool {
        self.basic_auth.is_none()
            && self.robots.is_none()
            && self.allow.is_empty()
            && self.deny.is_empty()
            && !self.clear_cidr
    }
}

impl AccessView {
    /// The settings in a few words (never the password): what a site's `endor` log says when
    /// they change.
    pub fn summary(&self) -> String {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        format!(
            "basic auth {}, robots {}, allow {}, deny {}",
            match &self.basic_auth {
                Some(c) => format!("on (user {})", c.user),
                None => "off".into(),
            },
            if self.robots { "noindex" } else { "allowed" },
            list(&self.allow),
            list(&self.deny)
        )
    }
}

pub use crate::net::parse_cidr;

fn cidr_list(stored: &Option<String>) -> Vec<ipnet::IpNet> {
    stored
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter_map(|c| parse_cidr(c).ok())
        .collect()
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.2`, what a dual-stack socket reports for an
/// IPv4 peer) as the IPv4 address it is.
pub fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The visitor's address: the peer's, unless the peer is a trusted proxy; then the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(
    peer: std::net::IpAddr,
    forwarded_for: Option<&str>,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for.unwrap_or("").rsplit(',') {
        match hop.trim().parse::<std::net::IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !is_trusted(&client) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// May `ip` see the site? Deny wins; an allow list admits only its addresses.
pub fn admitted(a: &SiteAccess, ip: std::net::IpAddr) -> bool {
    let ip = canonical(ip);
    if cidr_list(&a.deny_cidrs).iter().any(|n| n.contains(&ip)) {
        return false;
    }
    let allow = cidr_list(&a.allow_cidrs);
    allow.is_empty() || allow.iter().any(|n| n.contains(&ip))
}

/// Add allow/deny CIDRs (after clearing both lists when `clear`).
pub async fn set_cidrs(
    store: &dyn Store,
    site_id: &SiteId,
    allow: &[String],
    deny: &[String],
    clear: bool,
) -> Result<(), AccessError> {
    let mut a = current(store, site_id).await?;
    let mut lists = if clear {
        (Vec::new(), Vec::new())
    } else {
        (cidr_list(&a.allow_cidrs), cidr_list(&a.deny_cidrs))
    };
    for (given, list) in [(allow, &mut lists.0), (deny, &mut lists.1)] {
        for c in given {
            let n = parse_cidr(c).map_err(AccessError::Invalid)?;
            if !list.contains(&n) {
                list.push(n);
            }
        }
    }
    let join = |l: &[ipnet::IpNet]| {
        (!l.is_empty()).then(|| {
            l.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
    };
    a.allow_cidrs = join(&lists.0);
    a.deny_cidrs = join(&lists.1);
    a.updated_at = crate::now_ms();
    Ok(store.put_site_access(&a).await?)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Credentials {
    pub user: String,
    /// Shown only for generated passwords (a chosen one is kept as a hash only).
    pub password: Option<String>,
}

/// The bcrypt hash of a password, computed off the async threads (it takes tens of ms).
async fn hash_password(password: &str) -> Result<String, AccessError> {
    let p = password.to_string();
    tokio::task::spawn_blocking(move || bcrypt::hash(p, BCRYPT_COST))
        .await
        .map_err(|e| AccessError::Hash(e.to_string()))?
        .map_err(|e| AccessError::Hash(e.to_string()))
}

async fn current(store: &dyn Store, site_id: &SiteId) -> Result<SiteAccess, StoreError> {
    Ok(store
        .site_access(site_id)
        .await?
        .unwrap_or_else(|| SiteAccess::default_for(site_id)))
}

/// Turn basic auth on with generated credentials (a new password each time), or off.
pub async fn set_generated_password(
    store: &dyn Store,
    sealer: &Keyring,
    site_id: &SiteId,
    on: bool,
) -> Result<(), AccessError> {
    let mut a = current(store, site_id).await?;
    if on {
        let password = crate::secret::generate_password();
        let hash = hash_password(&password).await?;
        a.basic_user = Some(GENERATED_USER.into());
        a.basic_hash = Some(hash);
        a.basic_sealed = Some(sealer.seal(&password));
    } else {
        a.basic_user = None;
        a.basic_hash = None;
        a.basic_sealed = None;
    }
    a.updated_at = crate::now_ms();
    Ok(store.put_site_access(&a).await?)
}

/// Basic auth with credentials the caller chose: only the hash is kept (never shown again).
pub async fn set_chosen_password(
    store: &dyn Store,
    site_id: &SiteId,
    user: &str,
    password: &str,
) -> Result<(), AccessError> {
    if user.is_empty() || user.len() > 64 || user.chars().any(|c| c == ':' || c.is_control()) {
        return Err(AccessError::Invalid(
            "basic-auth user: 1-64 characters, no `:` or control characters".into(),
        ));
    }
    if password.len() < 8 || password.len() > 72 {
        return Err(AccessError::Invalid(
            "basic-auth password: 8-72 bytes (bcrypt reads no more than 72)".into(),
        ));
    }
    let mut a = current(store, site_id).await?;
    a.basic_hash = Some(hash_password(password).await?);
    a.basic_user = Some(user.into());
    a.basic_sealed = None;
    a.updated_at = crate::now_ms();
    Ok(store.put_site_access(&a).await?)
}

pub async fn set_robots(store: &dyn Store, site_id: &SiteId, on: bool) -> Result<(), AccessError> {
    let mut a = current(store, site_id).await?;
    a.robots = on as i64;
    a.updated_at = crate::now_ms();
    Ok(store.put_site_access(&a).await?)
}

/// A change of a site's access settings, as the CLI (`endor site access`) and the API
/// (`PATCH /api/v1/sites/{site}/access`) both give it: one place applies it.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessChange {
    /// `generate` (new credentials), `off`, or `USER:PASSWORD`.
    pub basic_auth: Option<String>,
    /// Send `X-Robots-Tag: noindex, nofollow`?
    pub robots: Option<bool>,
    /// CIDRs to admit (when any: only them).
    #[serde(default)]
    pub allow: Vec<String>,
    /// CIDRs to refuse (deny wins).
    #[serde(default)]
    pub deny: Vec<String>,
    /// Drop every allow and deny rule before adding the given ones.
    #[serde(default)]
    pub clear_cidr: bool,
}

/// Apply `change` to a site's access settings and return the settings as members see them.
/// Every CIDR is checked before anything is written.
pub async fn change(
    store: &dyn Store,
    sealer: &Keyring,
    site_name: &str,
    site_id: &SiteId,
    change: &AccessChange,
) -> Result<AccessView, AccessError> {
    for c in change.allow.iter().chain(&change.deny) {
        parse_cidr(c).map_err(AccessError::Invalid)?;
    }
    let chosen = match change.basic_auth.as_deref() {
        None | Some("generate") | Some("off") => None,
        Some(pair) => Some(pair.split_once(':').ok_or_else(|| {
            AccessError::Invalid("basic auth must be generate, off or USER:PASSWORD".into())
        })?),
    };
    match (change.basic_auth.as_deref(), chosen) {
        (_, Some((user, password))) => set_chosen_password(store, site_id, user, password).await?,
        (Some("generate"), None) => set_generated_password(store, sealer, site_id, true).await?,
        (Some("off"), None) => set_generated_password(store, sealer, site_id, false).await?,
        _ => {}
    }
    if let Some(on) = change.robots {
        set_robots(store, site_id, on).await?;
    }
    if change.clear_cidr || !change.allow.is_empty() || !change.deny.is_empty() {
        set_cidrs(
            store,
            site_id,
            &change.allow,
            &change.deny,
            change.clear_cidr,
        )
        .await?;
    }
    view(store, sealer, site_name, site_id).await
}

pub async fn view(
    store: &dyn Store,
    sealer: &Keyring,
    site_name: &str,
    site_id: &SiteId,
) -> Result<AccessView, AccessError> {
    let a = current(store, site_id).await?;
    let basic_auth = match (&a.basic_user, &a.basic_hash) {
        (Some(user), Some(_)) => Some(Credentials {
            user: user.clone(),
            password: match &a.basic_sealed {
                Some(s) => Some(sealer.open(s)?),
                None => None,
            },
        }),
        _ => None,
    };
    Ok(AccessView {
        site: site_name.into(),
        robots: a.robots != 0,
        basic_auth,
        allow: cidr_list(&a.allow_cidrs)
            .iter()
            .map(|n| n.to_string())
            .collect(),
        deny: cidr_list(&a.deny_cidrs)
            .iter()
            .map(|n| n.to_string())
            .collect(),
    })
}

/// Wrong passwords one visitor address may send in [`FAILURE_WINDOW`] before it is refused
/// without a check (429) until the window ends.
pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// What the gateway does with a request to a site with basic auth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthCheck {
    /// The credentials are right (or the site has no basic auth).
    Ok,
    /// No credentials, or wrong ones: 401.
    Refused,
    /// Too many wrong passwords from this address: 429 for this long, no bcrypt run.
    Throttled { retry_after_secs: u64 },
}

/// Verified `Authorization` headers, so a visitor does not pay bcrypt on every request. Keyed
/// by a hash of the site's password hash and the header: a new password invalidates at once.
/// A header being verified is verified once however many requests carry it at once (the others
/// wait for that one answer), and wrong passwords are limited per visitor address, so a flood
/// of them cannot take the CPU from other sites.
#[derive(Default)]
pub struct AuthCache {
    ok: Mutex<HashMap<[u8; 32], ()>>,
    inflight: Mutex<HashMap<[u8; 32], std::sync::Arc<tokio::sync::OnceCell<bool>>>>,
    failures: Mutex<HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
    verifications: std::sync::atomic::AtomicU64,
}

/// Entries kept before the cache starts again from empty.
const CACHE_MAX: usize = 10_000;

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AuthCache {
    /// Does `authorization` (the header's value) carry the user and password of `a`, for a
    /// visitor at `visitor`?
    pub async fn check(
        &self,
        a: &SiteAccess,
        authorization: Option<&str>,
        visitor: std::net::IpAddr,
    ) -> AuthCheck {
        let (Some(user), Some(hash)) = (&a.basic_user, &a.basic_hash) else {
            return AuthCheck::Ok;
        };
        // No header: the browser's first request, answered with the challenge; not a failure.
        let Some(header) = authorization else {
            return AuthCheck::Refused;
        };
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(hash.as_bytes());
        h.update([0]);
        h.update(header.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        if locked(&self.ok).contains_key(&key) {
            return AuthCheck::Ok;
        }
        if let Some(retry_after_secs) = self.throttled(visitor) {
            return AuthCheck::Throttled { retry_after_secs };
        }
        let right_user = parse_basic(header).filter(|(u, _)| {
            bool::from(subtle::ConstantTimeEq::ct_eq(u.as_bytes(), user.as_bytes()))
        });
        let Some((_, password)) = right_user else {
            self.failed(visitor);
            return AuthCheck::Refused;
        };
        // One bcrypt run per header in flight; concurrent requests with it share the answer.
        let cell = locked(&self.inflight).entry(key).or_default().clone();
        let hash = hash.clone();
        let ok = *cell
            .get_or_init(|| async move {
                self.verifications
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::spawn_blocking(move || {
                    bcrypt::verify(password, &hash).unwrap_or(false)
                })
                .await
                .unwrap_or(false)
            })
            .await;
        {
            let mut inflight = locked(&self.inflight);
            if inflight
                .get(&key)
                .is_some_and(|c| std::sync::Arc::ptr_eq(c, &cell))
            {
                inflight.remove(&key);
            }
        }
        if ok {
            let mut map = locked(&self.ok);
            if map.len() >= CACHE_MAX {
                map.clear();
            }
            map.insert(key, ());
            AuthCheck::Ok
        } else {
            self.failed(visitor);
            AuthCheck::Refused
        }
    }

    /// How many bcrypt verifications ran (for tests and metrics).
    pub fn verifications(&self) -> u64 {
        self.verifications
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Seconds until `visitor` may try again, when it is over [`MAX_FAILURES`].
    fn throttled(&self, visitor: std::net::IpAddr) -> Option<u64> {
        let map = locked(&self.failures);
        let (count, since) = map.get(&visitor)?;
        let left = FAILURE_WINDOW.checked_sub(since.elapsed())?;
        (*count >= MAX_FAILURES).then(|| left.as_secs().max(1))
    }

    fn failed(&self, visitor: std::net::IpAddr) {
        let mut map = locked(&self.failures);
        if map.len() >= CACHE_MAX {
            map.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        let entry = map.entry(visitor).or_insert((0, std::time::Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, std::time::Instant::now());
        }
        entry.0 += 1;
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        locked(&self.ok).len()
    }
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(header: &str) -> Option<(String, String)> {
    use base64::Engine;
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Site tags: 1–63 of lowercase letters, digits, `-`, `_`, `.`; never `production` or a
/// look-alike (protection is a flag, not a tag), never the reserved `endor` prefix.
pub fn validate_tag(tag: &str) -> Result<String, String> {
    let t = tag.trim().to_ascii_lowercase();
    let ok = !t.is_empty()
        && t.len() <= 63
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return Err(format!(
            "invalid tag `{}`: use 1-63 letters, digits, `-`, `_`, `.`",
            tag.escape_debug()
        ));
    }
    if t.starts_with("endor") {
        return Err(format!("tag `{t}`: the `endor` prefix is reserved"));
    }
    // The letters alone, digits and punctuation around them dropped: `Prod.`, `production-1`.
    let core: String = t.chars().filter(|c| c.is_ascii_alphabetic()).collect();
    if matches!(core.as_str(), "production" | "prod" | "prd" | "produktion")
        || core.starts_with("production")
    {
        return Err(format!(
            "tag `{t}` looks like production: production is not a tag; protect the site instead (`endor site protect SITE on`)"
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_accepted_and_refused() {
        for ok in ["qa", "demo-1", "release.2026", "team_a", "QA", "preprod-x"] {
            assert!(validate_tag(ok).is_ok(), "{ok}");
        }
        assert_eq!(validate_tag("QA").unwrap(), "qa");
        for bad in [
            "production",
            "PRODUCTION",
            "Prod.",
            "prod",
            "prd",
            "production-1",
            "-production-",
            "prod_2",
            "productionx",
            "endor",
            "Endor-internal",
            "",
            "a b",
            "../x",
            &"a".repeat(64),
        ] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
        assert!(validate_tag("prod").unwrap_err().contains("protect"));
    }

    #[test]
    fn cidrs_and_forwarded_for() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let a = SiteAccess {
            allow_cidrs: Some("127.0.0.2/32,::1/128,10.0.0.0/8".into()),
            deny_cidrs: Some("10.9.0.0/16".into()),
            ..SiteAccess::default_for(&"s".into())
        };
        assert!(admitted(&a, ip("127.0.0.2")));
        assert!(admitted(&a, ip("::ffff:127.0.0.2")));
        assert!(admitted(&a, ip("::1")));
        assert!(!admitted(&a, ip("127.0.0.3")));
        assert!(admitted(&a, ip("10.1.2.3")));
        assert!(!admitted(&a, ip("10.9.1.1")), "deny wins");
        assert!(admitted(
            &SiteAccess::default_for(&"s".into()),
            ip("8.8.8.8")
        ));
        assert!(parse_cidr("10.0.0.1/8").unwrap().to_string() == "10.0.0.0/8");
        assert!(parse_cidr("::1").is_ok() && parse_cidr("nope").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        let trusted = vec![
            parse_cidr("127.0.0.3").unwrap(),
            parse_cidr("192.168.0.0/16").unwrap(),
        ];
        // From an untrusted peer the header is ignored.
        assert_eq!(
            client_ip(ip("127.0.0.2"), Some("10.1.2.3"), &trusted),
            ip("127.0.0.2")
        );
        // From a trusted proxy: the rightmost untrusted hop.
        assert_eq!(
            client_ip(ip("127.0.0.3"), Some("6.6.6.6, 10.1.2.3"), &trusted),
            ip("10.1.2.3")
        );
        assert_eq!(
            client_ip(ip("127.0.0.3"), Some("10.1.2.3, 192.168.1.1"), &trusted),
            ip("10.1.2.3")
        );
        assert_eq!(
            client_ip(ip("127.0.0.3"), Some("garbage"), &trusted),
            ip("127.0.0.3")
        );
        assert_eq!(client_ip(ip("127.0.0.3"), None, &trusted), ip("127.0.0.3"));
    }

    /// 64 requests arriving at once with one new credential run bcrypt once; a flood of wrong
    /// passwords from one address is refused without bcrypt after [`MAX_FAILURES`], while
    /// another address is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_verification_per_credential_and_wrong_passwords_limited() {
        let a = SiteAccess {
            basic_user: Some("preview".into()),
            basic_hash: Some(bcrypt::hash("s3cret", 6).unwrap()),
            ..SiteAccess::default_for(&"s".into())
        };
        let cache = std::sync::Arc::new(AuthCache::default());
        let header = |p: &str| {
            use base64::Engine;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("preview:{p}"))
            )
        };
        let good = header("s3cret");
        let mut tasks = Vec::new();
        for i in 0..64u8 {
            let (cache, a, good) = (cache.clone(), a.clone(), good.clone());
            tasks.push(tokio::spawn(async move {
                let ip = std::net::IpAddr::from([10, 0, 0, i]);
                cache.check(&a, Some(&good), ip).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), AuthCheck::Ok);
        }
        assert_eq!(cache.verifications(), 1, "one bcrypt run for 64 requests");

        let attacker: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        for n in 0..MAX_FAILURES {
            let wrong = header(&format!("guess-{n}"));
            assert_eq!(
                cache.check(&a, Some(&wrong), attacker).await,
                AuthCheck::Refused
            );
        }
        let runs = cache.verifications();
        assert_eq!(runs, 1 + u64::from(MAX_FAILURES));
        for n in 0..100 {
            let wrong = header(&format!("more-{n}"));
            assert!(matches!(
                cache.check(&a, Some(&wrong), attacker).await,
                AuthCheck::Throttled { retry_after_secs } if (1..=60).contains(&retry_after_secs)
            ));
        }
        assert_eq!(cache.verifications(), runs, "no bcrypt run while throttled");
        // A credential not verified yet is refused to the throttled address too; another
        // address is checked as usual.
        let other_pw = SiteAccess {
            basic_hash: Some(bcrypt::hash("other", 4).unwrap()),
            ..a.clone()
        };
        assert!(matches!(
            cache
                .check(&other_pw, Some(&header("other")), attacker)
                .await,
            AuthCheck::Throttled { .. }
        ));
        let friend: std::net::IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(
            cache.check(&other_pw, Some(&header("other")), friend).await,
            AuthCheck::Ok
        );
    }

    #[tokio::test]
    async fn basic_auth_checks_and_caches() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let a = SiteAccess {
            basic_user: Some("preview".into()),
            basic_hash: Some(hash),
            ..SiteAccess::default_for(&"s".into())
        };
        let cache = AuthCache::default();
        let me: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let header = |u: &str, p: &str| {
            use base64::Engine;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        use AuthCheck::{Ok, Refused};
        assert_eq!(cache.check(&a, None, me).await, Refused);
        assert_eq!(
            cache.check(&a, Some(&header("preview", "wrong")), me).await,
            Refused
        );
        assert_eq!(
            cache.check(&a, Some(&header("other", "s3cret")), me).await,
            Refused
        );
        assert_eq!(cache.check(&a, Some("Bearer x"), me).await, Refused);
        assert_eq!(cache.check(&a, Some("Basic !!!"), me).await, Refused);
        assert_eq!(
            cache
                .check(&a, Some(&header("preview", "s3cret")), me)
                .await,
            Ok
        );
        assert_eq!(cache.cached(), 1);
        assert_eq!(
            cache
                .check(&a, Some(&header("preview", "s3cret")), me)
                .await,
            Ok
        );
        // Two bcrypt runs: the wrong password and the right one (the cached header runs none).
        assert_eq!(cache.verifications(), 2);
        // No basic auth: anyone.
        assert_eq!(
            cache
                .check(&SiteAccess::default_for(&"s".into()), None, me)
                .await,
            Ok
        );
    }
}
