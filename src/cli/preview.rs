//! `endor preview`: every preview's story — failed, waiting and destroyed ones too.

use clap::Subcommand;
use endor::config::Config;
use endor::previews::PreviewState;
use endor::previews::story::{self, Filter, PreviewLine, PreviewStory};

use super::{emit, open_store};

#[derive(Subcommand)]
pub enum PreviewCmd {
    /// Every preview, newest activity first: state, site, and why it failed.
    List {
        /// Only this repository's (owner/name, or a connection id).
        #[arg(long)]
        repo: Option<String>,
        /// Only previews in this state (queued, awaiting-approval, skipped, cloning, building,
        /// starting, ready, failed, destroying, destroyed, expired).
        #[arg(long)]
        state: Option<String>,
    },
    /// One preview's story: state, the failure's step and reason, the last run's steps, the
    /// deliveries that drove it, and what endor posted (or would post, without credentials).
    Show {
        /// REPO#NUMBER, for example acme/shop#7 (or CONNECTION_ID#NUMBER).
        preview: String,
    },
}

pub async fn run(cmd: PreviewCmd, json: bool, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    match cmd {
        PreviewCmd::List { repo, state } => {
            let state = state
                .map(|s| {
                    PreviewState::parse(&s).ok_or_else(|| {
                        anyhow::anyhow!(
                            "unknown state `{s}`; one of: {}",
                            PreviewState::ALL
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
                })
                .transpose()?;
            let filter = Filter {
                workspace: None,
                repo: repo.as_deref(),
                state,
            };
            let list = story::list(store.as_ref(), config, &filter).await?;
            emit(json, &list, |l| {
                if l.is_empty() {
                    return "no previews".into();
                }
                l.iter().map(list_line).collect::<Vec<_>>().join("\n")
            })
        }
        PreviewCmd::Show { preview } => {
            let (conn, number) = story::resolve(store.as_ref(), None, &preview).await?;
            let s = story::show(store.as_ref(), config, &conn, number).await?;
            emit(json, &s, show_text)
        }
    }
}

fn list_line(p: &PreviewLine) -> String {
    let mut why = String::new();
    if let Some(r) = &p.reason {
        match &p.failed_step {
            Some(step) => why = format!("\t{step}: {}", first_line(r)),
            None => why = format!("\t{}", first_line(r)),
        }
    }
    format!(
        "{}\t{}\t{}\t{}{why}",
        p.name,
        p.state,
        p.site,
        p.url.as_deref().unwrap_or("-")
    )
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Lines after the first, indented under a `label:  ` column.
fn indented(s: &str) -> String {
    s.trim_end().replace('\n', "\n         ")
}

fn time(ms: i64) -> String {
    endor::duration::format_utc(ms)
}

fn show_text(s: &PreviewStory) -> String {
    let p = &s.preview;
    let mut out = vec![format!("{}\t{}\tsite {}", p.name, p.state, p.site)];
    if let Some(t) = &p.title {
        out.push(format!("title:   {}", first_line(t)));
    }
    if let Some(h) = &p.head_sha {
        out.push(format!("head:    {h}"));
    }
    if let Some(r) = &p.ready_sha
        && Some(r) != p.head_sha.as_ref()
    {
        out.push(format!("serving: {r} (the last good head)"));
    }
    if let Some(u) = &p.url {
        out.push(format!("url:     {u}"));
    }
    match (&p.failed_step, &p.reason) {
        (Some(step), Some(r)) => out.push(format!("failed:  at {step}: {}", indented(r))),
        (None, Some(r)) => out.push(format!("reason:  {}", indented(r))),
        _ => {}
    }
    if let Some(e) = p.expires_at {
        out.push(format!("expires: {}", time(e)));
    }
    out.push(String::new());
    out.push("steps of the last run:".into());
    if s.steps.is_empty() {
        out.push("  (none yet)".into());
    }
    for st in &s.steps {
        let ok = match st.ok {
            Some(true) => "ok",
            Some(false) => "FAILED",
            None => "running",
        };
        let took = st
            .duration_ms
            .map(|d| format!("{d} ms"))
            .unwrap_or_else(|| "-".into());
        out.push(format!(
            "  {:<7} {:<7} {:>9}  {}",
            st.step,
            ok,
            took,
            st.detail.as_deref().unwrap_or("")
        ));
    }
    out.push(String::new());
    out.push("deliveries:".into());
    if s.deliveries.is_empty() {
        out.push("  (none)".into());
    }
    for d in &s.deliveries {
        let job = match (&d.job_state, &d.job_error) {
            (Some(st), Some(e)) if st == "failed" => format!("job failed: {}", first_line(e)),
            (Some(st), _) => format!("job {st}"),
            (None, _) => d.outcome.clone(),
        };
        out.push(format!(
            "  {}  {} {}\t{}\t{}",
            time(d.received_at),
            d.event,
            d.action.as_deref().unwrap_or("-"),
            d.delivery_key,
            job
        ));
    }
    out.push(String::new());
    out.push("posted to the forge (or would be):".into());
    if s.posts.is_empty() {
        out.push("  (nothing)".into());
    }
    for post in &s.posts {
        let state = match (post.state.as_str(), &post.note) {
            ("done", _) => "sent".to_string(),
            (_, Some(n)) if post.state == "unsent" => n.clone(),
            (st, Some(n)) => format!("{st}: {n}"),
            (st, None) => st.to_string(),
        };
        out.push(format!("  {} [{}] {}", post.kind, state, time(post.at)));
        for l in post.text.lines() {
            out.push(format!("    {l}"));
        }
    }
    out.join("\n")
}
