//! Slash-commands in PR comments: the grammar (`grammar.rs`, pure), which commands of a
//! comment to run and what to reply (this file, pure), and the effects (`effects.rs`: the
//! comment job, the role check, one function per verb calling the previews' public API).
//!
//! Which commands run: a comment's commands run once each (the store records each one as it
//! ends, so a retried job skips them); an edit runs only the commands its edit added (neither
//! in the body before the edit, where the forge sends it, nor already run for that comment);
//! a deleted comment runs nothing; comments by endor itself or by bot accounts are ignored.

mod effects;
pub mod grammar;

pub use effects::CommentRunner;

use grammar::{Command, Parsed, SyncWhat};

impl Command {
    /// One canonical text per command (what the store records as "ran").
    pub fn canonical(&self) -> String {
        match self {
            Command::Deploy => "deploy".into(),
            Command::Destroy => "destroy".into(),
            Command::Extend(d) => format!("extend {}", crate::duration::HumanDuration(*d)),
            Command::Sync(w) => format!(
                "sync {}",
                match w {
                    SyncWhat::Files => "files",
                    SyncWhat::Db => "db",
                    SyncWhat::All => "all",
                }
            ),
            Command::TagAdd(t) => format!("tag add {t}"),
            Command::TagRm(t) => format!("tag rm {t}"),
            Command::Password(on) => format!("password {}", on_off(*on)),
            Command::Robots(on) => format!("robots {}", on_off(*on)),
            Command::Cidr(op) => match op {
                grammar::CidrOp::Allow(c) => format!("cidr allow {c}"),
                grammar::CidrOp::Deny(c) => format!("cidr deny {c}"),
                grammar::CidrOp::Clear => "cidr clear".into(),
            },
            Command::Status => "status".into(),
            Command::Help => "help".into(),
        }
    }
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// The commands of `now` to run, in order and once each: not in `before` (the body before an
/// edit) and not already run (`done`, canonical texts).
pub fn to_run(now: &Parsed, before: Option<&Parsed>, done: &[String]) -> Vec<Command> {
    let mut seen: std::collections::HashSet<String> = done.iter().cloned().collect();
    if let Some(b) = before {
        seen.extend(b.commands.iter().map(Command::canonical));
    }
    now.commands
        .iter()
        .filter(|c| seen.insert(c.canonical()))
        .cloned()
        .collect()
}

/// The parse errors of `now` that the edit added (all of them for a new comment).
pub fn new_errors<'a>(now: &'a Parsed, before: Option<&Parsed>) -> Vec<&'a grammar::ParseError> {
    now.errors
        .iter()
        .filter(|e| before.is_none_or(|b| !b.errors.iter().any(|o| o.line == e.line)))
        .collect()
}

/// How one command ended, as the reply tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done; an optional short note (shown only when the reply is a comment anyway).
    Done(Option<String>),
    /// Not allowed: the message names the role needed.
    Refused(String),
    /// Could not be done: why.
    Failed(String),
    /// Text the caller asked for (help).
    Text(String),
}

impl Outcome {
    /// What the store records for it.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Done(_) => "done",
            Outcome::Refused(_) => "refused",
            Outcome::Failed(_) => "failed",
            Outcome::Text(_) => "text",
        }
    }

    fn needs_comment(&self) -> bool {
        !matches!(self, Outcome::Done(_))
    }
}

/// The reply to a comment: a reaction when every command succeeded, else a comment listing
/// each command's outcome (untrusted text escaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Reaction(&'static str),
    Comment(String),
}

/// A message whose `code spans` hold the (backtick-free) untrusted parts: the text between
/// them is escaped, the spans are kept (nothing renders inside a code span).
pub fn md(message: &str) -> String {
    use crate::forge::markdown::escape_md;
    message
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("`{part}`")
            } else {
                escape_md(part)
            }
        })
        .collect()
}

pub fn reply(
    author: &str,
    prefix: &str,
    results: &[(String, Outcome)],
    errors: &[&grammar::ParseError],
    refused: usize,
) -> Option<Reply> {
    use crate::forge::markdown::escape_md;
    if results.is_empty() && errors.is_empty() && refused == 0 {
        return None;
    }
    if errors.is_empty() && refused == 0 && !results.iter().any(|(_, o)| o.needs_comment()) {
        return Some(Reply::Reaction("+1"));
    }
    let mut out = format!("@{}\n\n", escape_md(author));
    for (cmd, o) in results {
        let cmd = format!("`{prefix} {}`", cmd.replace('`', "'"));
        match o {
            Outcome::Done(None) => out.push_str(&format!("- {cmd}: done\n")),
            Outcome::Done(Some(n)) => out.push_str(&format!("- {cmd}: done — {}\n", md(n))),
            Outcome::Refused(m) => out.push_str(&format!("- {cmd}: refused — {}\n", md(m))),
            Outcome::Failed(m) => out.push_str(&format!("- {cmd}: failed — {}\n", md(m))),
            Outcome::Text(_) => {}
        }
    }
    for e in errors {
        out.push_str(&format!(
            "- `{}`: {}\n",
            e.line.replace('`', "'"),
            md(&e.message)
        ));
    }
    if refused > 0 {
        out.push_str(&format!(
            "- {refused} more command line(s) ignored: at most {} commands per comment\n",
            grammar::MAX_COMMANDS
        ));
    }
    for (_, o) in results {
        if let Outcome::Text(t) = o {
            out.push('\n');
            out.push_str(t);
        }
    }
    if !errors.is_empty() && !results.iter().any(|(_, o)| matches!(o, Outcome::Text(_))) {
        out.push('\n');
        out.push_str(&grammar::help(prefix));
    }
    Some(Reply::Comment(out))
}

#[cfg(test)]
mod tests {
    use super::grammar::parse;
    use super::*;

    const P: &str = "/preview";

    #[test]
    fn edits_run_only_what_they_added() {
        let before = parse("/preview deploy\n/preview tag add qa", P);
        let now = parse(
            "/preview deploy\n/preview tag add qa\n/preview extend 2d",
            P,
        );
        let run = to_run(&now, Some(&before), &[]);
        assert_eq!(run.len(), 1);
        assert_eq!(run[0].canonical(), "extend 2d");
        // Without the old body (GitLab), the record of what ran decides.
        let done = vec!["deploy".to_string(), "tag add qa".to_string()];
        assert_eq!(to_run(&now, None, &done), run);
        // A retried job skips what already ran; duplicates in one comment run once.
        let dup = parse("/preview status\n/preview status\n/preview help", P);
        let run: Vec<_> = to_run(&dup, None, &["help".into()])
            .iter()
            .map(Command::canonical)
            .collect();
        assert_eq!(run, vec!["status"]);
        // An edit that removes commands runs nothing.
        assert!(to_run(&parse("thanks", P), Some(&before), &[]).is_empty());
    }

    #[test]
    fn errors_only_for_added_lines() {
        let before = parse("/preview deplyo", P);
        let now = parse("/preview deplyo\n/preview extend forever", P);
        let errs = new_errors(&now, Some(&before));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].line.contains("forever"));
        assert_eq!(new_errors(&now, None).len(), 2);
    }

    #[test]
    fn replies() {
        let ok = vec![("deploy".to_string(), Outcome::Done(None))];
        assert_eq!(reply("a", P, &ok, &[], 0), Some(Reply::Reaction("+1")));
        assert_eq!(reply("a", P, &[], &[], 0), None);
        let refused = vec![(
            "destroy".to_string(),
            Outcome::Refused("needs the developer role".into()),
        )];
        let Some(Reply::Comment(c)) = reply("<b>x</b>", P, &refused, &[], 0) else {
            panic!()
        };
        assert!(c.contains("refused — needs the developer role"), "{c}");
        assert!(!c.contains("<b>"), "{c}");
        assert_eq!(
            md("tag `<b>` is <i>bad</i>"),
            "tag `<b>` is &lt;i&gt;bad&lt;/i&gt;"
        );
        let parsed = parse("/preview deplyo", P);
        let errs = new_errors(&parsed, None);
        let Some(Reply::Comment(c)) = reply("a", P, &[], &errs, 3) else {
            panic!()
        };
        assert!(c.contains("did you mean `/preview deploy`"), "{c}");
        assert!(c.contains("3 more command line(s) ignored"), "{c}");
        assert!(
            c.contains("/preview extend DURATION"),
            "help is included: {c}"
        );
    }
}
