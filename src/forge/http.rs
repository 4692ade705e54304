//! The HTTP stack of the Gitea client: reqwest (rustls), one auth header, the
//! per-API limiter, and answers classified like GitHub's.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::client::{ForgeError, Limiter, classify_status};

/// endor's HTTP client for a forge's API: rustls, the request timeout, endor's user agent.
pub fn client(timeout: Duration) -> Result<reqwest::Client, ForgeError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("endor/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ForgeError::Permanent(format!("http client: {e}")))
}

/// An API's root URL without its trailing `/`; only http(s).
pub fn api_root(url: &str) -> Result<&str, ForgeError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ForgeError::Permanent(format!("bad API URL {url}")));
    }
    Ok(url.trim_end_matches('/'))
}

pub struct RawClient {
    client: reqwest::Client,
    base: String,
    auth: (&'static str, String),
    limiter: Arc<Limiter>,
    /// The account the token writes as, read once from `/user`.
    login: tokio::sync::OnceCell<String>,
}

impl RawClient {
    pub fn new(
        base: &str,
        auth: (&'static str, String),
        timeout: Duration,
        limiter: Arc<Limiter>,
    ) -> Result<Self, ForgeError> {
        Ok(Self {
            client: client(timeout)?,
            base: api_root(base)?.to_string(),
            auth,
            limiter,
            login: tokio::sync::OnceCell::new(),
        })
    }

    /// The token's account: `/user`'s `field` (`login` on Gitea, `username` on GitLab).
    pub async fn me(&self, field: &str) -> Result<String, ForgeError> {
        self.login
            .get_or_try_init(|| async {
                let v = self.call(Method::GET, "/user", None).await?;
                v[field].as_str().map(str::to_string).ok_or_else(|| {
                    ForgeError::Permanent(format!("the forge's /user has no {field}"))
                })
            })
            .await
            .cloned()
    }

    /// One request after the limiter; the answer's JSON (Null when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ForgeError> {
        self.limiter.acquire().await;
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(self.auth.0, &self.auth.1);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ForgeError::lost(format!("request failed: {e}")))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .map_err(|e| ForgeError::lost(format!("reading the answer: {e}")))?;
        if let Some(err) = classify_status(status, &headers, &text, &self.limiter) {
            return Err(err);
        }
        Ok(if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        })
    }
}
