//! The API tried from its own OpenAPI document by a third-party property-based tester
//! (schemathesis, installed by `scripts/api-tools.sh`), as a client author would: the document
//! passes a validator, and schemathesis generates requests for every operation (examples,
//! coverage, fuzzing, and the stateful phase that follows the document's links) as each of five
//! kinds of caller — owner, billing, developer, a member of another workspace, no token. Every
//! answer must not be a 5xx, must have a status the document lists for the operation, must be
//! JSON and must match the documented schema.

mod support;

use std::path::PathBuf;
use std::process::Command;

use endor::service;
use endor::sites::{Imports, Sites};
use support::TestStore;

/// Where `scripts/api-tools.sh` installs the tools (a virtualenv).
fn tool(name: &str) -> PathBuf {
    let dir = std::env::var("ENDOR_TEST_PYENV").unwrap_or_else(|_| "/var/tmp/endor/py".into());
    let p = PathBuf::from(dir).join("bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/api-tools.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Seconds schemathesis may spend per caller (`ENDOR_TEST_FUZZ_SECONDS`, default 25).
fn budget() -> String {
    std::env::var("ENDOR_TEST_FUZZ_SECONDS").unwrap_or_else(|_| "25".into())
}

#[test]
fn the_document_passes_an_openapi_validator() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, endor::api::openapi().to_string()).unwrap();
    let out = Command::new(tool("openapi-spec-validator"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And a document the validator must refuse is refused (the check can fail).
    let mut broken = endor::api::openapi();
    broken["paths"]["/api/v1/me"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] =
        serde_json::json!({"$ref": "#/components/schemas/Nope"});
    broken["openapi"] = serde_json::json!("2.0");
    std::fs::write(&path, broken.to_string()).unwrap();
    let out = Command::new(tool("openapi-spec-validator"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_for_five_kinds_of_caller() {
    let db = TestStore::sqlite().await;
    let dir = support::plain_dir();
    let config = support::config_in(&db.url, dir.path());
    let s = db.store.as_ref();
    let mut tokens = Vec::new();
    for login in ["own", "bill", "dev", "out"] {
        service::create_user(s, login, None, None).await.unwrap();
        tokens.push((
            login,
            service::issue_token(s, login, "t").await.unwrap().token,
        ));
    }
    support::acme_and_other(s).await;
    let sites = Sites::new(db.store.clone(), &config);
    for name in ["web", "web-2"] {
        sites
            .create(name, "acme", None, Imports::default())
            .await
            .unwrap();
    }
    service::connect_repo(s, &config, "acme", "github:acme/web", None, None)
        .await
        .unwrap();
    let server = support::TestServer::start_with(db, config).await;
    let spec = dir.path().join("openapi.json");
    std::fs::write(&spec, endor::api::openapi().to_string()).unwrap();
    let mut callers: Vec<(&str, Option<String>)> =
        tokens.into_iter().map(|(l, t)| (l, Some(t))).collect();
    callers.push(("anonymous", None));
    let mut failures = Vec::new();
    for (who, token) in callers {
        let report = dir.path().join(format!("report-{who}"));
        let mut cmd = tokio::process::Command::new(tool("schemathesis"));
        cmd.arg("run")
            .arg(&spec)
            .args(["--url", &server.url("")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            ])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            .args(["--max-time", &budget()])
            .args(["--max-examples", "40", "--workers", "1", "--seed", "7"])
            .args(["--generation-database", "none", "--no-color"])
            .args(["--report", "junit", "--report-dir"])
            .arg(&report)
            .env("SCHEMATHESIS_HOOKS", "")
            .kill_on_drop(true);
        if let Some(t) = &token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = cmd.output().await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("--- schemathesis as {who} ---\n{}", tail(&text, 40));
        if !out.status.success() {
            failures.push(format!(
                "as {who}:\n{}\n{}",
                tail(&text, 200),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    server.stop().await;
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
