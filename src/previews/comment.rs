//! The sticky status comment (what a preview's state shows on its PR), rendered from `templates/status_comment.md` (built in) with
//! minijinja. Every piece of text that came from outside (PR titles, branch names, error
//! messages that quote them) goes through the `md` filter, which makes it inert in Markdown and
//! HTML: no markup, no mention, no way to forge the hidden marker.

use minijinja::{Environment, context};
use serde::Serialize;

use crate::forge::markdown::{MARKER, escape_md, trim};
use crate::store::PreviewState;

const TEMPLATE: &str = include_str!("../../templates/status_comment.md");
/// The longest error text shown.
const MAX_ERROR_CHARS: usize = 1_000;

#[derive(Debug, Clone, Serialize)]
pub struct StepLine {
    pub name: String,
    pub time: String,
}

/// What the comment shows.
#[derive(Debug, Clone, Serialize)]
pub struct CommentView {
    pub state: PreviewState,
    pub title: Option<String>,
    pub site: String,
    pub url: Option<String>,
    pub head_sha: String,
    pub expires_at: Option<String>,
    /// The reaper's warning: the preview expires soon.
    pub expiring: bool,
    pub steps: Vec<StepLine>,
    pub error: Option<String>,
}

fn label(state: PreviewState) -> (&'static str, &'static str) {
    use PreviewState as S;
    match state {
        S::Ready => ("✅", "ready"),
        S::Failed => ("❌", "failed"),
        S::Destroyed | S::Destroying => ("🗑️", "destroyed"),
        S::Expired => ("⌛", "expired"),
        S::AwaitingApproval => ("✋", "awaiting approval"),
        S::Skipped => ("⏭️", "skipped (draft)"),
        S::Queued | S::Cloning | S::Building | S::Starting => ("⏳", "building"),
    }
}

fn hint(state: PreviewState) -> Option<&'static str> {
    match state {
        PreviewState::AwaitingApproval => Some(
            "This pull request comes from a fork: a member with the developer role can comment `/preview deploy` to build this commit.",
        ),
        PreviewState::Expired => {
            Some("This preview expired. Comment `/preview deploy` to bring it back.")
        }
        PreviewState::Skipped => {
            Some("Draft pull requests get no preview; mark it ready for review.")
        }
        _ => None,
    }
}

/// Render the comment body (marker first), trimmed under GitHub's limit.
pub fn render(view: &CommentView) -> String {
    let mut env = Environment::new();
    env.add_filter("md", |s: String| escape_md(&s));
    // The template is part of the binary: a failure here is a bug caught by the tests.
    env.add_template("status", TEMPLATE)
        .expect("templates/status_comment.md is valid");
    let (icon, state_label) = label(view.state);
    let error = view.error.as_ref().map(|e| {
        let mut e: String = e.chars().take(MAX_ERROR_CHARS).collect();
        if view
            .error
            .as_ref()
            .is_some_and(|x| x.chars().count() > MAX_ERROR_CHARS)
        {
            e.push('…');
        }
        e
    });
    let body = env
        .get_template("status")
        .and_then(|t| {
            t.render(context! {
                icon, state_label,
                state => view.state,
                title => view.title,
                site => view.site,
                url => view.url,
                head_sha => view.head_sha,
                head_sha_short => view.head_sha.chars().take(12).collect::<String>(),
                expires_at => view.expires_at,
                expiring => view.expiring,
                steps => view.steps,
                error,
                hint => hint(view.state),
            })
        })
        .unwrap_or_else(|e| format!("{MARKER}\nPreview {}: (rendering failed: {e})", view.state));
    let body = collapse_blank_lines(&body);
    trim(body)
}

/// The check run's title for a preview in `state`.
pub fn check_title(state: PreviewState) -> String {
    let (_, state_label) = label(state);
    format!("Preview {state_label}")
}

/// The check run's summary: what the status comment shows, without its hidden marker.
pub fn check_summary(view: &CommentView) -> String {
    let body = render(view);
    body.strip_prefix(MARKER)
        .map(|b| b.trim_start().to_string())
        .unwrap_or(body)
}

fn collapse_blank_lines(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank = 0;
    for line in s.lines() {
        if line.trim().is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::forge::markdown::MAX_COMMENT_CHARS;

    fn view(state: &str) -> CommentView {
        CommentView {
            state: PreviewState::parse(state).unwrap(),
            title: Some("Add checkout".into()),
            site: "shop-pr-7".into(),
            url: Some("http://shop-pr-7.preview.localhost:8081/".into()),
            head_sha: "a".repeat(40),
            steps: vec![StepLine {
                name: "clone".into(),
                time: "27 ms".into(),
            }],
            expires_at: None,
            expiring: false,
            error: None,
        }
    }

    #[test]
    fn the_marker_comes_first_and_states_show() {
        for state in [
            "queued",
            "building",
            "ready",
            "failed",
            "destroyed",
            "expired",
            "awaiting-approval",
            "skipped",
        ] {
            let body = render(&view(state));
            assert!(body.starts_with(MARKER), "{body}");
            assert_eq!(body.matches(MARKER).count(), 1);
            assert!(body.contains(&format!("| State | {state} |")), "{body}");
            assert!(body.contains("| clone | 27 ms |"));
        }
        assert!(
            render(&view("ready"))
                .contains("[shop-pr-7](http://shop-pr-7.preview.localhost:8081/)")
        );
        assert!(render(&view("awaiting-approval")).contains("/preview deploy"));
    }

    #[test]
    fn hostile_titles_are_inert() {
        let mut v = view("ready");
        v.title = Some(
            "<!-- endor:status --> <script>alert(1)</script> @admin **bold** [x](http://evil) | a\n# h"
                .into(),
        );
        v.error = Some("`rm -rf` <!-- x --> @team".into());
        let body = render(&v);
        assert_eq!(body.matches("<!--").count(), 1, "{body}");
        assert!(!body.contains("<script"));
        assert!(!body.contains("@admin") && !body.contains("@team"));
        assert!(body.contains("&lt;script&gt;"));
        assert!(body.contains("\\*\\*bold\\*\\*"));
        assert!(body.contains("\\[x\\]\\(http\\:"));
        assert!(
            !body.contains("| a"),
            "a pipe would break the table: {body}"
        );
        assert!(!body.contains("\n# h"));
    }

    #[test]
    fn long_bodies_are_trimmed_to_the_limit() {
        let mut v = view("failed");
        v.error = Some("x".repeat(200_000));
        let body = render(&v);
        assert!(body.chars().count() < 5_000, "errors are cut first");
        let mut v = view("ready");
        v.steps = (0..20_000)
            .map(|i| StepLine {
                name: format!("step {i}"),
                time: "1 ms".into(),
            })
            .collect();
        let body = render(&v);
        assert!(body.chars().count() <= MAX_COMMENT_CHARS);
        assert!(body.starts_with(MARKER));
        assert!(body.ends_with("(trimmed to fit the forge's comment limit)"));
    }
}
