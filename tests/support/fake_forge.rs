//! A fake forge for tests: one HTTP server that answers the endpoints endor uses on GitHub
//! (REST v3, at `/`), GitLab (v4, at `/api/v4`) and Gitea (at `/api/v1`), keeps their state
//! (comments, statuses, deployments, environments, reactions), records every request, checks
//! auth headers and JSON shapes, and can inject faults (5xx on every n-th call, 429 with
//! `Retry-After`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const TOKEN: &str = "fake-forge-token-0123456789";
pub const BOT: &str = "endor-bot";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub at: Instant,
    pub body: Value,
    /// The body came form-encoded (`application/x-www-form-urlencoded`): `body` holds its
    /// fields as strings, as a server reads them before it types them.
    pub form: bool,
    /// The JSON the fake answered (`Null` for none).
    pub response: Value,
}

#[derive(Debug, Clone)]
pub struct Comment {
    pub id: u64,
    /// (repo or project path, PR number)
    pub pr: (String, u64),
    pub author: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub repo: String,
    pub sha: String,
    pub state: String,
    pub context: String,
    pub target_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: u64,
    pub repo: String,
    pub sha: String,
    pub environment: String,
    /// Deployment statuses in order.
    pub states: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Environment {
    pub id: u64,
    pub project: String,
    pub name: String,
    pub external_url: Option<String>,
    pub state: String,
}

/// A repository webhook made through the forge's API.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    pub id: u64,
    pub forge: String,
    /// `owner/name`, or GitLab's project path.
    pub repo: String,
    pub url: String,
    pub secret: String,
    /// What it delivers (GitLab: the `*_events` flags that are on).
    pub events: Vec<String>,
    pub active: bool,
}

/// A GitHub check run, with every state it was set to.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRun {
    pub id: u64,
    pub repo: String,
    pub head_sha: String,
    pub name: String,
    pub external_id: String,
    pub status: String,
    pub conclusion: Option<String>,
    pub details_url: Option<String>,
    pub title: String,
    pub summary: String,
    /// The buttons' identifiers.
    pub actions: Vec<String>,
    /// `status` or `status/conclusion`, in the order they were set.
    pub history: Vec<String>,
    /// Who made it (`{slug}[bot]`).
    pub app: String,
}

#[derive(Debug, Default)]
pub struct Faults {
    /// Every n-th call (counted over all calls) answers 502.
    pub fail_every: Option<u64>,
    /// The next `count` calls answer 429 with `Retry-After: secs`.
    pub rate_limited: Option<(u32, u64)>,
    /// Every call answers 503 (the forge is down).
    pub down: bool,
    /// The next `count` calls are carried out but answered only after `delay` (a client with
    /// a shorter timeout gives up: the write happened, the answer is lost).
    pub slow: Option<(u32, std::time::Duration)>,
    /// Like `slow`, for the next `count` calls whose method, path and body
    /// (`POST /api/v4/… state=success…`) contain every `*`-separated part of the text; each
    /// entry on its own.
    pub slow_matching: Vec<(String, u32, std::time::Duration)>,
    /// Hook creation, edits and deletion answer this status (422: the forge refuses them).
    pub refuse_hooks: Option<u16>,
}

#[derive(Debug, Default)]
pub struct FakeState {
    pub requests: Vec<Recorded>,
    pub comments: BTreeMap<u64, Comment>,
    pub statuses: Vec<Status>,
    pub deployments: Vec<Deployment>,
    pub environments: Vec<Environment>,
    pub reactions: Vec<(u64, String)>,
    pub hooks: Vec<Hook>,
    pub check_runs: Vec<CheckRun>,
    /// Codes of GitHub's app-manifest flow not yet exchanged, and the app each makes.
    pub manifest_codes: BTreeMap<String, Value>,
    pub faults: Faults,
    /// GitHub App installation tokens issued: (token, valid until).
    pub installation_tokens: Vec<(String, std::time::SystemTime)>,
    /// How long an installation token the fake issues lives.
    pub token_lifetime: std::time::Duration,
    next_id: u64,
    calls: u64,
}

impl FakeState {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Comments on one PR, oldest first.
    pub fn comments_on(&self, repo: &str, number: u64) -> Vec<Comment> {
        self.comments
            .values()
            .filter(|c| c.pr == (repo.to_string(), number))
            .cloned()
            .collect()
    }

    pub fn statuses_for(&self, sha: &str) -> Vec<String> {
        self.statuses
            .iter()
            .filter(|s| s.sha == sha)
            .map(|s| s.state.clone())
            .collect()
    }

    /// Plant a comment (another user's, or a duplicate a crash left).
    pub fn plant(&mut self, repo: &str, number: u64, author: &str, body: &str) -> u64 {
        let id = self.id();
        self.comments.insert(
            id,
            Comment {
                id,
                pr: (repo.into(), number),
                author: author.into(),
                body: body.into(),
            },
        );
        id
    }
}

pub struct FakeForge {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeForge {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    pub fn github_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn gitlab_url(&self) -> String {
        format!("http://{}/api/v4", self.addr)
    }

    /// Hold every request made to `forge` (`github`, `gitea`, `gitlab`) so far, and the fake's
    /// 2xx answers, to the forge's published API description in `tests/fixtures/forge-api/`
    /// (`tests/support/conformance.py`); panics with each mismatch.
    pub fn assert_conforms(&self, forge: &str, answers_too: bool) {
        let prefix = match forge {
            "gitlab" => "/api/v4",
            "gitea" => "/api/v1",
            _ => "",
        };
        let records: Vec<Value> = self.with(|f| {
            f.requests
                .iter()
                .filter(|r| match forge {
                    "github" => !r.path.starts_with("/api/v4") && !r.path.starts_with("/api/v1"),
                    _ => r.path.starts_with(prefix),
                })
                .map(|r| {
                    json!({
                        "method": r.method,
                        "path": &r.path[prefix.len()..],
                        "body": r.body,
                        "form": r.form,
                        "status": r.status,
                        "response": if answers_too { r.response.clone() } else { Value::Null },
                    })
                })
                .collect()
        });
        assert!(!records.is_empty(), "no request was made to {forge}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("records.json");
        std::fs::write(&file, serde_json::to_vec(&records).unwrap()).unwrap();
        let py = std::path::PathBuf::from(
            std::env::var("ENDOR_TEST_PYENV").unwrap_or_else(|_| "/var/tmp/endor/py".into()),
        )
        .join("bin/python");
        assert!(
            py.exists(),
            "{} is missing: run scripts/api-tools.sh (scripts/test.sh does)",
            py.display()
        );
        let root = env!("CARGO_MANIFEST_DIR");
        let out = std::process::Command::new(py)
            .arg(format!("{root}/tests/support/conformance.py"))
            .arg(format!("{root}/tests/fixtures/forge-api/{forge}.json"))
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "requests to {forge} that its API description does not allow:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A code as GitHub's redirect carries it after the manifest made an app; the app (its id,
    /// slug, key and secrets) is what exchanging the code answers, once.
    pub fn manifest_code(&self, app_id: u64, slug: &str, pem: &str) -> (String, Value) {
        let code = format!("c{}", uuid::Uuid::new_v4().simple());
        let app = json!({
            "id": app_id,
            "slug": slug,
            "name": format!("endor {slug}"),
            "html_url": format!("https://github.com/apps/{slug}"),
            "client_id": format!("Iv1.{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
            "client_secret": uuid::Uuid::new_v4().simple().to_string(),
            "webhook_secret": format!("whsec{}", uuid::Uuid::new_v4().simple()),
            "pem": pem,
            "owner": {"login": "acme-org", "type": "Organization"},
        });
        self.with(|f| f.manifest_codes.insert(code.clone(), app.clone()));
        (code, app)
    }

    /// Point `config`'s three forges at this fake, with its token.
    pub fn point(&self, config: &mut endor::config::Config) {
        config.github.api_url = self.github_url();
        config.github.token = TOKEN.into();
        config.gitlab.api_url = self.gitlab_url();
        config.gitlab.token = TOKEN.into();
        config.gitea.api_url = self.gitea_url();
        config.gitea.token = TOKEN.into();
    }

    pub fn gitea_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The app id the fake GitHub App has; its JWTs must name it as issuer.
pub const APP_ID: u64 = 4242;
pub const APP_SLUG: &str = "endor-app";

fn authorized(st: &FakeState, forge: &str, headers: &HeaderMap, jwt_route: bool) -> bool {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    match forge {
        "gitlab" => h("private-token") == TOKEN,
        "gitea" => h("authorization") == format!("token {TOKEN}"),
        _ if jwt_route => h("authorization")
            .strip_prefix("Bearer ")
            .is_some_and(|t| jwt_issuer(t) == Some(APP_ID)),
        _ => {
            let bearer = h("authorization").strip_prefix("Bearer ").unwrap_or("");
            bearer == TOKEN
                || st
                    .installation_tokens
                    .iter()
                    .any(|(t, until)| t == bearer && *until > std::time::SystemTime::now())
        }
    }
}

/// The `iss` claim of a JWT (not verified: the fake checks shape and issuer only).
fn jwt_issuer(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64_url_decode(payload)?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    match &v["iss"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn base64_url_decode(s: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => continue,
            _ => return None,
        } as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    Some(out)
}

/// RFC 3339 (UTC) of a moment, as GitHub writes `expires_at`.
fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn handle(State(state): State<Arc<Mutex<FakeState>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, 10 << 20)
        .await
        .unwrap_or_default();
    let form = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let json: Value = if form {
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
            .map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect(),
                )
            })
            .unwrap_or(Value::Null)
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let (resp, delay, index) = {
        let mut st = state.lock().unwrap();
        st.calls += 1;
        let calls = st.calls;
        let resp = (|| {
            if st.faults.down {
                return reply(StatusCode::SERVICE_UNAVAILABLE, json!({"message": "down"}));
            }
            if let Some((n, secs)) = st.faults.rate_limited
                && n > 0
            {
                st.faults.rate_limited = Some((n - 1, secs));
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", secs.to_string())],
                    axum::Json(json!({"message": "API rate limit exceeded"})),
                )
                    .into_response();
            }
            if st.faults.fail_every.is_some_and(|n| calls % n == 0) {
                return reply(
                    StatusCode::BAD_GATEWAY,
                    json!({"message": "injected fault"}),
                );
            }
            let (forge, rest) = if let Some(r) = path.strip_prefix("/api/v4") {
                ("gitlab", r.to_string())
            } else if let Some(r) = path.strip_prefix("/api/v1") {
                ("gitea", r.to_string())
            } else {
                ("github", path.clone())
            };
            // GitLab addresses projects by their URL-encoded path (`grp%2Fsub%2Fname`).
            let decoded: Vec<String> = rest
                .trim_start_matches('/')
                .split('/')
                .map(|x| x.replace("%2F", "/").replace("%2f", "/"))
                .collect();
            let seg: Vec<&str> = decoded.iter().map(String::as_str).collect();
            // Exchanging a manifest code takes no credentials: the code is the credential.
            let open_route = forge == "github" && seg.first() == Some(&"app-manifests");
            let jwt_route = forge == "github"
                && (seg.first() == Some(&"app")
                    || (seg.len() == 4 && seg[0] == "repos" && seg[3] == "installation"));
            if !open_route && !authorized(&st, forge, &parts.headers, jwt_route) {
                return reply(
                    StatusCode::UNAUTHORIZED,
                    json!({"message": "Bad credentials"}),
                );
            }
            // Who is writing: an installation token writes as the app's bot.
            let bearer = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let actor = if bearer.starts_with("Bearer ghs_") {
                format!("{APP_SLUG}[bot]")
            } else {
                BOT.to_string()
            };
            route(&mut st, forge, &actor, &parts.method, &seg, &query, &json)
        })();
        let delay = match st.faults.slow {
            Some((n, d)) if n > 0 => {
                st.faults.slow = Some((n - 1, d));
                Some(d)
            }
            _ => None,
        };
        let call = format!(
            "{} {path} {}",
            parts.method,
            String::from_utf8_lossy(&bytes)
        );
        let delay = match st
            .faults
            .slow_matching
            .iter_mut()
            .find(|(text, n, _)| *n > 0 && text.split('*').all(|part| call.contains(part)))
        {
            Some((_, n, d)) => {
                *n -= 1;
                Some(*d)
            }
            None => delay,
        };
        let status = resp.status().as_u16();
        st.requests.push(Recorded {
            response: Value::Null,
            method: parts.method.to_string(),
            path: format!(
                "{path}{}",
                if query.is_empty() {
                    String::new()
                } else {
                    format!("?{query}")
                }
            ),
            status,
            at: Instant::now(),
            body: json,
            form,
        });
        let index = st.requests.len() - 1;
        (resp, delay, index)
    };
    // Keep what was answered, for the conformance check of the answers.
    let (rparts, rbody) = resp.into_parts();
    let mut rbytes = axum::body::to_bytes(rbody, 10 << 20)
        .await
        .unwrap_or_default();
    let is_github = !path.starts_with("/api/v4") && !path.starts_with("/api/v1");
    if is_github
        && rparts.status.is_success()
        && let Ok(v) = serde_json::from_slice::<Value>(&rbytes)
        && let Some(example) = github_example(parts.method.as_str(), &path, rparts.status.as_u16())
    {
        // Answer in the shape GitHub documents: its own example, with what this fake knows
        // (ids, bodies, authors, states) written over it.
        rbytes = Bytes::from(serde_json::to_vec(&overlay(&example, &v)).unwrap());
    }
    if let Ok(v) = serde_json::from_slice::<Value>(&rbytes) {
        let mut st = state.lock().unwrap();
        if let Some(r) = st.requests.get_mut(index) {
            r.response = v;
        }
    }
    let resp = Response::from_parts(rparts, axum::body::Body::from(rbytes));
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    resp
}

/// GitHub's documented example answer of the operation `method path` for `status`, from the
/// description cut into `tests/fixtures/forge-api/github.json`.
fn github_example(method: &str, path: &str, status: u16) -> Option<Value> {
    static DESCRIPTION: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let d = DESCRIPTION.get_or_init(|| {
        serde_json::from_str(include_str!("../fixtures/forge-api/github.json")).unwrap()
    });
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let matches = |template: &str| {
        let t: Vec<&str> = template.trim_start_matches('/').split('/').collect();
        t.len() == segs.len()
            && t.iter()
                .zip(&segs)
                .all(|(t, s)| t.starts_with('{') || t == s)
    };
    d["operations"]
        .as_array()?
        .iter()
        .filter(|o| o["method"] == method && matches(o["path"].as_str().unwrap_or("")))
        // The most literal template wins (`/issues/comments/{id}` over `/issues/{n}/comments`).
        .max_by_key(|o| {
            let t = o["path"].as_str().unwrap_or("");
            t.split('/')
                .filter(|s| !s.starts_with('{'))
                .map(str::len)
                .sum::<usize>()
        })
        .and_then(|o| o["examples"].get(status.to_string()).cloned())
}

/// `ours` written over `base`: objects merged key by key, each item of an array over the
/// base's first item.
fn overlay(base: &Value, ours: &Value) -> Value {
    match (base, ours) {
        (Value::Object(b), Value::Object(o)) => {
            let mut out = b.clone();
            for (k, v) in o {
                let merged = overlay(b.get(k).unwrap_or(&Value::Null), v);
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(b), Value::Array(o)) => Value::Array(
            o.iter()
                .map(|v| overlay(b.first().unwrap_or(&Value::Null), v))
                .collect(),
        ),
        (_, o) => o.clone(),
    }
}

/// What a hook request says: (url, secret, events, active), each when given; an error for a
/// body of the wrong shape.
type HookFields = (
    Option<String>,
    Option<String>,
    Option<Vec<String>>,
    Option<bool>,
);

/// The repository a hook path names: `repos/OWNER/NAME/…` or GitLab's `projects/PATH/…`.
/// Apply a check run request's fields, with GitHub's rules: a known status, a conclusion
/// exactly when completed, a summary of at most 65535 characters, at most three actions whose
/// label, description and identifier fit 20, 40 and 20 characters.
fn set_check(run: &mut CheckRun, body: &Value) -> Result<(), String> {
    let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    if let Some(n) = s("name") {
        run.name = n;
    }
    if let Some(x) = s("external_id") {
        run.external_id = x;
    }
    if let Some(u) = s("details_url") {
        run.details_url = Some(u);
    }
    let conclusion = s("conclusion");
    let status = match (s("status"), &conclusion) {
        (_, Some(_)) => "completed".to_string(),
        (Some(st), None) => st,
        (None, None) => run.status.clone(),
    };
    if !["queued", "in_progress", "completed"].contains(&status.as_str()) {
        return Err(format!("bad status {status}"));
    }
    if status == "completed" && conclusion.is_none() {
        return Err("conclusion is required when status is completed".into());
    }
    let ok = [
        "action_required",
        "cancelled",
        "failure",
        "neutral",
        "success",
        "skipped",
        "timed_out",
    ];
    if let Some(c) = &conclusion
        && !ok.contains(&c.as_str())
    {
        return Err(format!("bad conclusion {c}"));
    }
    if let Some(o) = body.get("output") {
        let (Some(title), Some(summary)) = (
            o.get("title").and_then(Value::as_str),
            o.get("summary").and_then(Value::as_str),
        ) else {
            return Err("output needs a title and a summary".into());
        };
        if summary.chars().count() > 65_535 {
            return Err("summary is too long".into());
        }
        run.title = title.into();
        run.summary = summary.into();
    }
    if let Some(actions) = body.get("actions").and_then(Value::as_array) {
        if actions.len() > 3 {
            return Err("at most 3 actions".into());
        }
        let mut ids = Vec::new();
        for a in actions {
            let f = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("");
            let fits = |v: &str, max: usize| !v.is_empty() && v.chars().count() <= max;
            if !fits(f("label"), 20) || !fits(f("description"), 40) || !fits(f("identifier"), 20) {
                return Err(format!("action does not fit GitHub's limits: {a}"));
            }
            ids.push(f("identifier").to_string());
        }
        run.actions = ids;
    }
    run.status = status;
    run.conclusion = conclusion;
    run.history.push(match &run.conclusion {
        Some(c) => format!("{}/{c}", run.status),
        None => run.status.clone(),
    });
    Ok(())
}

/// A query parameter's value, with `%2F` read as `/`.
fn param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .map(|v| v.replace("%2F", "/"))
}

fn check_json(c: &CheckRun) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "head_sha": c.head_sha,
        "external_id": c.external_id,
        "status": c.status,
        "conclusion": c.conclusion,
        "details_url": c.details_url,
        "output": {"title": c.title, "summary": c.summary},
    })
}

fn hook_repo(seg: &[&str]) -> String {
    if seg[0] == "projects" {
        seg[1].to_string()
    } else {
        format!("{}/{}", seg[1], seg[2])
    }
}

fn hook_of(forge: &str, body: &Value) -> Result<HookFields, String> {
    let text = |v: &Value| v.as_str().map(str::to_string);
    if forge == "gitlab" {
        // Form fields, as strings.
        let flag = |k: &str| body.get(k).and_then(Value::as_str).map(|v| v == "true");
        let events: Vec<String> = [
            "push_events",
            "merge_requests_events",
            "note_events",
            "issues_events",
            "tag_push_events",
        ]
        .iter()
        .filter(|k| flag(k).unwrap_or(**k == "push_events"))
        .map(|k| k.to_string())
        .collect();
        return Ok((
            body.get("url").and_then(text),
            body.get("token").and_then(text),
            Some(events),
            None,
        ));
    }
    let config = body.get("config").cloned().unwrap_or(Value::Null);
    if !config.is_null() && !config.is_object() {
        return Err("config must be an object".into());
    }
    if config
        .get("content_type")
        .and_then(Value::as_str)
        .is_some_and(|c| c != "json")
    {
        return Err("endor wants JSON deliveries".into());
    }
    if forge == "gitea" && body.get("type").is_some() && body["type"] != "gitea" {
        return Err("type must be gitea".into());
    }
    let events = body
        .get("events")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(text).collect::<Vec<_>>());
    Ok((
        config.get("url").and_then(text),
        config.get("secret").and_then(text),
        events,
        body.get("active").and_then(Value::as_bool),
    ))
}

fn hook_json(forge: &str, h: &Hook) -> Value {
    match forge {
        "gitlab" => json!({
            "id": h.id,
            "url": h.url,
            "project_id": 1,
            "push_events": h.events.iter().any(|e| e == "push_events"),
            "merge_requests_events": h.events.iter().any(|e| e == "merge_requests_events"),
            "note_events": h.events.iter().any(|e| e == "note_events"),
            "enable_ssl_verification": true,
            "created_at": "2026-01-01T00:00:00Z",
        }),
        "gitea" => json!({
            "id": h.id,
            "type": "gitea",
            "active": h.active,
            "events": h.events,
            "config": {"url": h.url, "content_type": "json"},
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
        }),
        // GitHub never answers the secret back.
        _ => json!({
            "id": h.id,
            "name": "web",
            "active": h.active,
            "events": h.events,
            "config": {"url": h.url, "content_type": "json", "insecure_ssl": "0"},
        }),
    }
}

fn page_of<T: Clone>(items: Vec<T>, query: &str, default_per: usize) -> Vec<T> {
    let get = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let per = get("per_page")
        .or(get("limit"))
        .unwrap_or(default_per)
        .max(1);
    let page = get("page").unwrap_or(1).max(1);
    items.into_iter().skip((page - 1) * per).take(per).collect()
}

/// A commit status as GitLab answers it (`status` is the state, `name` the context).
fn gitlab_status(id: usize, s: &Status) -> Value {
    json!({"id": id, "sha": s.sha, "status": s.state, "name": s.context, "target_url": s.target_url})
}

/// An environment as GitLab answers it.
fn environment_json(e: &Environment) -> Value {
    json!({"id": e.id, "name": e.name, "state": e.state, "external_url": e.external_url})
}

fn comment_json(forge: &str, c: &Comment) -> Value {
    match forge {
        "gitlab" => json!({"id": c.id, "body": c.body, "author": {"username": c.author}}),
        _ => json!({"id": c.id, "body": c.body, "user": {"login": c.author}}),
    }
}

fn route(
    st: &mut FakeState,
    forge: &str,
    actor: &str,
    method: &Method,
    seg: &[&str],
    query: &str,
    body: &Value,
) -> Response {
    let bad = |m: &str| reply(StatusCode::UNPROCESSABLE_ENTITY, json!({"message": m}));
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    match (method.as_str(), seg) {
        // GitHub's app-manifest flow: a code is exchanged once, for the app it made.
        ("POST", ["app-manifests", code, "conversions"]) => match st.manifest_codes.remove(*code) {
            Some(app) => reply(StatusCode::CREATED, app),
            None => reply(StatusCode::NOT_FOUND, json!({"message": "Not Found"})),
        },
        // GitHub App: installation lookup and tokens (JWT routes).
        ("GET", ["app"]) => reply(StatusCode::OK, json!({"id": APP_ID, "slug": APP_SLUG})),
        ("GET", ["repos", _, _, "installation"]) => reply(StatusCode::OK, json!({"id": 77})),
        ("POST", ["app", "installations", "77", "access_tokens"]) => {
            let n = st.id();
            let token = format!("ghs_fake{n}");
            let life = if st.token_lifetime.is_zero() {
                std::time::Duration::from_secs(3600)
            } else {
                st.token_lifetime
            };
            let until = std::time::SystemTime::now() + life;
            st.installation_tokens.push((token.clone(), until));
            reply(
                StatusCode::CREATED,
                json!({"token": token, "expires_at": rfc3339(until), "permissions": {}}),
            )
        }
        ("GET", ["user"]) if forge == "github" && !st.installation_tokens.is_empty() => reply(
            StatusCode::FORBIDDEN,
            json!({"message": "Resource not accessible by integration"}),
        ),
        ("GET", ["user"]) => match forge {
            "gitlab" => reply(StatusCode::OK, json!({"id": 1, "username": BOT})),
            _ => reply(StatusCode::OK, json!({"login": BOT})),
        },
        // Repository webhooks (GitHub and Gitea: JSON; GitLab: form fields).
        (_, ["repos", _, _, "hooks", ..] | ["projects", _, "hooks", ..])
            if st.faults.refuse_hooks.is_some() =>
        {
            let status = st.faults.refuse_hooks.unwrap_or(422);
            reply(
                StatusCode::from_u16(status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
                json!({"message": "Validation Failed", "errors": [{"message": "refused by the test"}]}),
            )
        }
        ("POST", ["repos", _, _, "hooks"] | ["projects", _, "hooks"])
        | ("PATCH", ["repos", _, _, "hooks", _])
        | ("PUT", ["projects", _, "hooks", _]) => {
            let repo = hook_repo(seg);
            let hook = match hook_of(forge, body) {
                Ok(h) => h,
                Err(m) => return bad(&m),
            };
            let editing = method != "POST";
            let id = if editing {
                let id: u64 = seg.last().and_then(|x| x.parse().ok()).unwrap_or(0);
                let Some(h) = st.hooks.iter_mut().find(|h| h.id == id && h.repo == repo) else {
                    return reply(StatusCode::NOT_FOUND, json!({"message": "Not Found"}));
                };
                let (url, secret, events, active) = hook;
                if let Some(u) = url {
                    h.url = u;
                }
                if let Some(s) = secret {
                    h.secret = s;
                }
                if let Some(e) = events {
                    h.events = e;
                }
                if let Some(a) = active {
                    h.active = a;
                }
                id
            } else {
                let (url, secret, events, active) = hook;
                let Some(url) = url else {
                    return bad("url is required");
                };
                let id = st.id();
                st.hooks.push(Hook {
                    id,
                    forge: forge.to_string(),
                    repo: repo.clone(),
                    url,
                    secret: secret.unwrap_or_default(),
                    events: events.unwrap_or_default(),
                    // GitHub's `active` defaults to true, Gitea's to false.
                    active: active.unwrap_or(forge != "gitea"),
                });
                id
            };
            let h = st.hooks.iter().find(|h| h.id == id).cloned().unwrap();
            let status = if editing {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            reply(status, hook_json(forge, &h))
        }
        ("DELETE", ["repos", _, _, "hooks", id] | ["projects", _, "hooks", id]) => {
            let repo = hook_repo(seg);
            let id: u64 = id.parse().unwrap_or(0);
            let before = st.hooks.len();
            st.hooks.retain(|h| !(h.id == id && h.repo == repo));
            if st.hooks.len() == before {
                reply(StatusCode::NOT_FOUND, json!({"message": "Not Found"}))
            } else {
                StatusCode::NO_CONTENT.into_response()
            }
        }
        // GitHub Checks: written by a GitHub App only, as GitHub documents.
        ("POST", ["repos", _, _, "check-runs"]) | ("PATCH", ["repos", _, _, "check-runs", _])
            if !actor.ends_with("[bot]") =>
        {
            reply(
                StatusCode::FORBIDDEN,
                json!({"message": "You must authenticate via a GitHub App."}),
            )
        }
        ("POST", ["repos", o, r, "check-runs"]) => {
            let (Some(name), Some(sha)) = (text("name"), text("head_sha")) else {
                return bad("name and head_sha are required");
            };
            if sha.len() != 40 {
                return bad("No commit found for SHA");
            }
            let id = st.id();
            let mut run = CheckRun {
                id,
                repo: format!("{o}/{r}"),
                head_sha: sha,
                name,
                external_id: String::new(),
                status: "queued".into(),
                conclusion: None,
                details_url: None,
                title: String::new(),
                summary: String::new(),
                actions: Vec::new(),
                history: Vec::new(),
                app: actor.to_string(),
            };
            if let Err(m) = set_check(&mut run, body) {
                return bad(&m);
            }
            let v = check_json(&run);
            st.check_runs.push(run);
            reply(StatusCode::CREATED, v)
        }
        ("PATCH", ["repos", o, r, "check-runs", id]) => {
            let repo = format!("{o}/{r}");
            let id: u64 = id.parse().unwrap_or(0);
            let Some(run) = st
                .check_runs
                .iter_mut()
                .find(|c| c.id == id && c.repo == repo)
            else {
                return reply(StatusCode::NOT_FOUND, json!({"message": "Not Found"}));
            };
            if run.app != actor {
                return reply(
                    StatusCode::FORBIDDEN,
                    json!({"message": "Invalid app_id `1` - check run can only be modified by the GitHub App that created it."}),
                );
            }
            if let Err(m) = set_check(run, body) {
                return bad(&m);
            }
            let v = check_json(run);
            reply(StatusCode::OK, v)
        }
        ("GET", ["repos", o, r, "commits", sha, "check-runs"]) => {
            let repo = format!("{o}/{r}");
            let name = param(query, "check_name");
            let runs: Vec<Value> = st
                .check_runs
                .iter()
                .rev()
                .filter(|c| c.repo == repo && c.head_sha == *sha)
                .filter(|c| name.as_ref().is_none_or(|n| *n == c.name))
                .map(check_json)
                .collect();
            let runs = page_of(runs, query, 30);
            reply(
                StatusCode::OK,
                json!({"total_count": runs.len(), "check_runs": runs}),
            )
        }
        // GitHub and Gitea: issue comments.
        ("GET", ["repos", o, r, "issues", n, "comments"]) => {
            let repo = format!("{o}/{r}");
            let all = st.comments_on(&repo, n.parse().unwrap_or(0));
            // GitHub pages this listing; Gitea's `issueGetComments` has no pagination and
            // answers every comment whatever `limit`/`page` say, as the real one does.
            let all = if forge == "gitea" {
                all
            } else {
                page_of(all, query, 30)
            };
            let items: Vec<Value> = all.iter().map(|c| comment_json(forge, c)).collect();
            reply(StatusCode::OK, Value::Array(items))
        }
        ("POST", ["repos", o, r, "issues", n, "comments"]) => {
            let Some(b) = text("body") else {
                return bad("body is required");
            };
            let id = st.plant(&format!("{o}/{r}"), n.parse().unwrap_or(0), actor, &b);
            let c = st.comments[&id].clone();
            reply(StatusCode::CREATED, comment_json(forge, &c))
        }
        ("PATCH", ["repos", _, _, "issues", "comments", id]) => {
            let Some(b) = text("body") else {
                return bad("body is required");
            };
            match st.comments.get_mut(&id.parse().unwrap_or(0)) {
                Some(c) if c.author == actor => {
                    c.body = b;
                    let c = c.clone();
                    reply(StatusCode::OK, comment_json(forge, &c))
                }
                Some(_) => reply(StatusCode::FORBIDDEN, json!({"message": "not yours"})),
                None => reply(StatusCode::NOT_FOUND, json!({"message": "Not Found"})),
            }
        }
        ("DELETE", ["repos", _, _, "issues", "comments", id]) => {
            match st.comments.get(&id.parse().unwrap_or(0)) {
                Some(c) if c.author == actor => {
                    st.comments.remove(&id.parse().unwrap_or(0));
                    StatusCode::NO_CONTENT.into_response()
                }
                Some(_) => reply(StatusCode::FORBIDDEN, json!({"message": "not yours"})),
                None => reply(StatusCode::NOT_FOUND, json!({"message": "Not Found"})),
            }
        }
        ("POST", ["repos", _, _, "issues", "comments", id, "reactions"]) => {
            let Some(c) = text("content") else {
                return bad("content is required");
            };
            st.reactions.push((id.parse().unwrap_or(0), c));
            reply(StatusCode::CREATED, json!({"id": 1}))
        }
        ("GET", ["repos", o, r, "commits", sha, "statuses"]) => {
            let repo = format!("{o}/{r}");
            let mut items: Vec<Value> = st
                .statuses
                .iter()
                .filter(|s| s.repo == repo && s.sha == *sha)
                // Gitea's CommitStatus names its state `status`; GitHub's `state`.
                .map(|s| match forge {
                    "gitea" => json!({"status": s.state, "context": s.context}),
                    _ => json!({"state": s.state, "context": s.context}),
                })
                .collect();
            // GitHub answers newest first. Gitea's order is unspecified unless `sort` says:
            // without it this fake answers oldest first, so a client must ask.
            let sort = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("sort="))
                .unwrap_or("");
            if forge == "github" || matches!(sort, "highestindex" | "recentupdate") {
                items.reverse();
            }
            reply(StatusCode::OK, Value::Array(items))
        }
        ("GET", ["projects", p, "repository", "commits", sha, "statuses"]) => {
            // As GitLab documents it: filtered by `name`, the latest status of each name
            // unless `all=true`, ordered by id ascending unless `sort=desc`, one page.
            let q = |k: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                    .map(|v| v.replace("%2F", "/"))
            };
            let name = q("name");
            let all = q("all").as_deref() == Some("true");
            let mut items: Vec<(usize, &Status)> = st
                .statuses
                .iter()
                .enumerate()
                .map(|(i, s)| (i + 1, s))
                .filter(|(_, s)| s.repo == *p && s.sha == *sha)
                .filter(|(_, s)| name.as_ref().is_none_or(|n| *n == s.context))
                .collect();
            if !all {
                let mut latest = std::collections::HashMap::new();
                for (id, s) in &items {
                    latest.insert(s.context.clone(), *id);
                }
                items.retain(|(id, s)| latest[&s.context] == *id);
            }
            if q("sort").as_deref() == Some("desc") {
                items.reverse();
            }
            let per_page: usize = q("per_page").and_then(|v| v.parse().ok()).unwrap_or(20);
            let page: usize = q("page").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
            let items: Vec<Value> = items
                .into_iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|(id, s)| gitlab_status(id, s))
                .collect();
            reply(StatusCode::OK, Value::Array(items))
        }
        ("GET", ["repos", o, r, "deployments"]) if forge == "github" => {
            let repo = format!("{o}/{r}");
            let q = |k: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                    .map(|v| v.replace("%2F", "/"))
            };
            let (sha, env) = (q("sha"), q("environment"));
            let items: Vec<Value> = st
                .deployments
                .iter()
                .rev()
                .filter(|d| {
                    d.repo == repo
                        && sha.as_deref().is_none_or(|s| s == d.sha)
                        && env.as_deref().is_none_or(|e| e == d.environment)
                })
                .map(|d| json!({"id": d.id, "sha": d.sha, "environment": d.environment}))
                .collect();
            reply(StatusCode::OK, Value::Array(items))
        }
        ("GET", ["repos", _, _, "deployments", id, "statuses"]) if forge == "github" => {
            let id: u64 = id.parse().unwrap_or(0);
            match st.deployments.iter().find(|d| d.id == id) {
                Some(d) => reply(
                    StatusCode::OK,
                    Value::Array(d.states.iter().rev().map(|s| json!({"state": s})).collect()),
                ),
                None => reply(StatusCode::NOT_FOUND, json!({"message": "Not Found"})),
            }
        }
        ("POST", ["repos", o, r, "statuses", sha]) => {
            let ok_states: &[&str] = &["pending", "success", "failure", "error", "warning"];
            let (Some(state), Some(context)) = (text("state"), text("context")) else {
                return bad("state and context are required");
            };
            if !ok_states.contains(&state.as_str()) || sha.len() != 40 {
                return bad("bad state or sha");
            }
            st.statuses.push(Status {
                repo: format!("{o}/{r}"),
                sha: sha.to_string(),
                state,
                context,
                target_url: text("target_url"),
            });
            reply(StatusCode::CREATED, json!({"id": st.statuses.len()}))
        }
        // GitHub deployments.
        ("POST", ["repos", o, r, "deployments"]) if forge == "github" => {
            let (Some(sha), Some(env)) = (text("ref"), text("environment")) else {
                return bad("ref and environment are required");
            };
            let id = st.id();
            st.deployments.push(Deployment {
                id,
                repo: format!("{o}/{r}"),
                sha,
                environment: env,
                states: Vec::new(),
            });
            reply(StatusCode::CREATED, json!({"id": id}))
        }
        ("POST", ["repos", _, _, "deployments", id, "statuses"]) if forge == "github" => {
            let Some(state) = text("state") else {
                return bad("state is required");
            };
            let valid = [
                "in_progress",
                "success",
                "failure",
                "inactive",
                "queued",
                "error",
            ];
            if !valid.contains(&state.as_str()) {
                return bad("bad deployment state");
            }
            let id: u64 = id.parse().unwrap_or(0);
            let auto_inactive = body
                .get("auto_inactive")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let Some(env) = st
                .deployments
                .iter()
                .find(|d| d.id == id)
                .map(|d| d.environment.clone())
            else {
                return reply(StatusCode::NOT_FOUND, json!({"message": "Not Found"}));
            };
            // As GitHub does: a successful deployment makes the environment's other
            // successful ones inactive (unless auto_inactive is false).
            if state == "success" && auto_inactive {
                for d in st
                    .deployments
                    .iter_mut()
                    .filter(|d| d.environment == env && d.id != id)
                {
                    if d.states.last().map(String::as_str) == Some("success") {
                        d.states.push("inactive".into());
                    }
                }
            }
            if let Some(d) = st.deployments.iter_mut().find(|d| d.id == id) {
                d.states.push(state);
            }
            reply(StatusCode::CREATED, json!({"id": 1}))
        }
        // GitLab: notes, statuses, environments.
        ("GET", ["projects", p, "merge_requests", n, "notes"]) => {
            let all = st.comments_on(p, n.parse().unwrap_or(0));
            let items: Vec<Value> = page_of(all, query, 20)
                .iter()
                .map(|c| comment_json(forge, c))
                .collect();
            reply(StatusCode::OK, Value::Array(items))
        }
        ("POST", ["projects", p, "merge_requests", n, "notes"]) => {
            let Some(b) = text("body") else {
                return bad("body is required");
            };
            let id = st.plant(p, n.parse().unwrap_or(0), actor, &b);
            let c = st.comments[&id].clone();
            reply(StatusCode::CREATED, comment_json(forge, &c))
        }
        ("PUT", ["projects", _, "merge_requests", _, "notes", id]) => {
            let Some(b) = text("body") else {
                return bad("body is required");
            };
            match st.comments.get_mut(&id.parse().unwrap_or(0)) {
                Some(c) if c.author == actor => {
                    c.body = b;
                    let c = c.clone();
                    reply(StatusCode::OK, comment_json(forge, &c))
                }
                Some(_) => reply(StatusCode::FORBIDDEN, json!({"message": "403 Forbidden"})),
                None => reply(StatusCode::NOT_FOUND, json!({"message": "404 Not found"})),
            }
        }
        ("DELETE", ["projects", _, "merge_requests", _, "notes", id]) => {
            st.comments.remove(&id.parse().unwrap_or(0));
            StatusCode::NO_CONTENT.into_response()
        }
        (
            "POST",
            [
                "projects",
                p,
                "merge_requests",
                _,
                "notes",
                id,
                "award_emoji",
            ],
        ) => {
            let _ = p;
            let Some(n) = text("name") else {
                return bad("name is required");
            };
            st.reactions.push((id.parse().unwrap_or(0), n.clone()));
            reply(
                StatusCode::CREATED,
                json!({"id": st.reactions.len(), "name": n}),
            )
        }
        ("POST", ["projects", p, "statuses", sha]) => {
            let ok_states: &[&str] = &["pending", "running", "success", "failed", "canceled"];
            let (Some(state), Some(name)) = (text("state"), text("name")) else {
                return bad("state and name are required");
            };
            if !ok_states.contains(&state.as_str()) {
                return bad("bad state");
            }
            st.statuses.push(Status {
                repo: p.to_string(),
                sha: sha.to_string(),
                state,
                context: name,
                target_url: text("target_url"),
            });
            let n = st.statuses.len();
            reply(StatusCode::CREATED, gitlab_status(n, &st.statuses[n - 1]))
        }
        ("GET", ["projects", p, "environments"]) => {
            let want = param(query, "name");
            let items: Vec<Value> = st
                .environments
                .iter()
                .filter(|e| e.project == *p && want.as_deref().is_none_or(|w| w == e.name))
                .map(environment_json)
                .collect();
            reply(StatusCode::OK, Value::Array(items))
        }
        ("POST", ["projects", p, "environments"]) => {
            let Some(name) = text("name") else {
                return bad("name is required");
            };
            if st
                .environments
                .iter()
                .any(|e| e.project == *p && e.name == name)
            {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"message": {"name": ["has already been taken"]}}),
                );
            }
            let id = st.id();
            let e = Environment {
                id,
                project: p.to_string(),
                name,
                external_url: text("external_url"),
                state: "available".into(),
            };
            let answer = environment_json(&e);
            st.environments.push(e);
            reply(StatusCode::CREATED, answer)
        }
        ("PUT", ["projects", _, "environments", id]) => {
            let id: u64 = id.parse().unwrap_or(0);
            let url = text("external_url");
            match st.environments.iter_mut().find(|e| e.id == id) {
                Some(e) => {
                    e.external_url = url;
                    e.state = "available".into();
                    reply(StatusCode::OK, environment_json(e))
                }
                None => reply(StatusCode::NOT_FOUND, json!({"message": "404 Not found"})),
            }
        }
        ("POST", ["projects", _, "environments", id, "stop"]) => {
            let id: u64 = id.parse().unwrap_or(0);
            match st.environments.iter_mut().find(|e| e.id == id) {
                Some(e) => {
                    e.state = "stopped".into();
                    reply(StatusCode::OK, environment_json(e))
                }
                None => reply(StatusCode::NOT_FOUND, json!({"message": "404 Not found"})),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"message": format!("no such endpoint: {method} {}", seg.join("/"))}),
        ),
    }
}
