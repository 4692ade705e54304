//! The slash-command grammar, with no I/O: a comment's Markdown is parsed (pulldown-cmark),
//! and only plain text lines count — lines in fenced or indented code blocks, inline code and
//! `>` quotes are never commands. One command per line, anywhere in the comment; the prefix is
//! configurable (`/preview`); verbs are case-insensitive; arguments are typed. The table
//! [`VERBS`] drives both parsing and the help text, so they cannot drift.

use std::time::Duration;

use pulldown_cmark::{Event, Parser, Tag, TagEnd};

use crate::duration::HumanDuration;

/// The most commands one comment may carry; the rest are refused.
pub const MAX_COMMANDS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncWhat {
    Files,
    Db,
    All,
}

/// A change of the preview's CIDR rules at the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrOp {
    Allow(String),
    Deny(String),
    Clear,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Deploy,
    Destroy,
    Extend(Duration),
    Sync(SyncWhat),
    TagAdd(String),
    TagRm(String),
    Password(bool),
    Robots(bool),
    Cidr(CidrOp),
    Status,
    Help,
}

impl Command {
    /// Does the command change anything (and so need the developer role)?
    pub fn mutating(&self) -> bool {
        !matches!(self, Command::Status | Command::Help)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The line as written (trimmed).
    pub line: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub commands: Vec<Command>,
    pub errors: Vec<ParseError>,
    /// Command lines past [`MAX_COMMANDS`], refused.
    pub refused: usize,
}

/// One verb: its name, its arguments as help shows them, what it does, and its parser.
pub struct Verb {
    pub name: &'static str,
    pub args: &'static str,
    pub about: &'static str,
    parse: fn(&[&str]) -> Result<Command, String>,
}

fn none(args: &[&str], cmd: Command) -> Result<Command, String> {
    match args {
        [] => Ok(cmd),
        [extra, ..] => Err(format!("unexpected `{}`", clip(extra))),
    }
}

fn on_off(args: &[&str]) -> Result<bool, String> {
    match args {
        [v] if v.eq_ignore_ascii_case("on") => Ok(true),
        [v] if v.eq_ignore_ascii_case("off") => Ok(false),
        [] => Err("expected `on` or `off`".into()),
        [v] => Err(format!("expected `on` or `off`, not `{}`", clip(v))),
        [_, extra, ..] => Err(format!("unexpected `{}`", clip(extra))),
    }
}

/// Tag names: 1–63 of letters, digits, `-`, `_`, `.` (the site rules of §7 apply later).
/// A CIDR's characters (the gateway's parser checks it for real when the command runs).
fn cidr_arg(c: &str) -> Result<String, String> {
    let ok = !c.is_empty()
        && c.len() <= 49
        && c.chars()
            .all(|ch| ch.is_ascii_hexdigit() || ":./".contains(ch));
    if ok {
        Ok(c.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{}` is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32",
            clip(c)
        ))
    }
}

fn tag_name(args: &[&str]) -> Result<String, String> {
    match args {
        [name] => {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if ok {
                Ok(name.to_ascii_lowercase())
            } else {
                Err(format!(
                    "invalid tag name `{}`: use 1-63 letters, digits, `-`, `_`, `.`",
                    clip(name)
                ))
            }
        }
        [] => Err("expected a tag name".into()),
        [_, extra, ..] => Err(format!("unexpected `{}`", clip(extra))),
    }
}

/// The verbs, in help order.
pub const VERBS: &[Verb] = &[
    Verb {
        name: "deploy",
        args: "",
        about: "create or redeploy the preview at the current head (approves a fork's head)",
        parse: |a| none(a, Command::Deploy),
    },
    Verb {
        name: "destroy",
        args: "",
        about: "destroy the preview now",
        parse: |a| none(a, Command::Destroy),
    },
    Verb {
        name: "extend",
        args: "DURATION",
        about: "push the expiry out, e.g. 90m, 36h, 2d (capped by previews.max_ttl)",
        parse: |a| {
            match a {
            [d] => d
                .parse::<HumanDuration>()
                .map(|h| Command::Extend(h.0))
                .map_err(|_| {
                    format!(
                        "invalid duration `{}`: write a whole number followed by s, m, h or d (e.g. 90m, 36h, 2d)",
                        clip(d)
                    )
                }),
            [] => Err("expected a duration such as 2d".into()),
            [_, extra, ..] => Err(format!("unexpected `{}`", clip(extra))),
        }
        },
    },
    Verb {
        name: "sync",
        args: "[files|db|all]",
        about: "refresh the preview's data from its parent",
        parse: |a| match a {
            [] => Ok(Command::Sync(SyncWhat::All)),
            [w] if w.eq_ignore_ascii_case("files") => Ok(Command::Sync(SyncWhat::Files)),
            [w] if w.eq_ignore_ascii_case("db") => Ok(Command::Sync(SyncWhat::Db)),
            [w] if w.eq_ignore_ascii_case("all") => Ok(Command::Sync(SyncWhat::All)),
            [w] => Err(format!(
                "expected `files`, `db` or `all`, not `{}`",
                clip(w)
            )),
            [_, extra, ..] => Err(format!("unexpected `{}`", clip(extra))),
        },
    },
    Verb {
        name: "tag",
        args: "add|rm NAME",
        about: "add or remove a site tag",
        parse: |a| match a {
            [op, rest @ ..] if op.eq_ignore_ascii_case("add") => {
                tag_name(rest).map(Command::TagAdd)
            }
            [op, rest @ ..] if op.eq_ignore_ascii_case("rm") => tag_name(rest).map(Command::TagRm),
            [op, ..] => Err(format!("expected `add` or `rm`, not `{}`", clip(op))),
            [] => Err("expected `add NAME` or `rm NAME`".into()),
        },
    },
    Verb {
        name: "password",
        args: "on|off",
        about: "basic auth on the preview (credentials are never posted here)",
        parse: |a| on_off(a).map(Command::Password),
    },
    Verb {
        name: "robots",
        args: "on|off",
        about: "add or drop `X-Robots-Tag: noindex, nofollow`",
        parse: |a| on_off(a).map(Command::Robots),
    },
    Verb {
        name: "cidr",
        args: "allow CIDR|deny CIDR|clear",
        about: "admit or refuse addresses at the gateway (deny wins; an allow list admits only it)",
        parse: |a| match a {
            [op] if op.eq_ignore_ascii_case("clear") => Ok(Command::Cidr(CidrOp::Clear)),
            [op, c] if op.eq_ignore_ascii_case("allow") => {
                cidr_arg(c).map(|c| Command::Cidr(CidrOp::Allow(c)))
            }
            [op, c] if op.eq_ignore_ascii_case("deny") => {
                cidr_arg(c).map(|c| Command::Cidr(CidrOp::Deny(c)))
            }
            [_, _, extra, ..] => Err(format!("unexpected `{}`", clip(extra))),
            [op, ..] => Err(format!(
                "expected `allow CIDR`, `deny CIDR` or `clear`, not `{}`",
                clip(op)
            )),
            [] => Err("expected `allow CIDR`, `deny CIDR` or `clear`".into()),
        },
    },
    Verb {
        name: "status",
        args: "",
        about: "refresh the status comment",
        parse: |a| none(a, Command::Status),
    },
    Verb {
        name: "help",
        args: "",
        about: "list the commands",
        parse: |a| none(a, Command::Help),
    },
];

/// Untrusted text shortened for an error message.
/// Backticks become `'`, so the text cannot close the code span it is shown in.
pub fn clip(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(40)
        .map(|c| if c == '`' { '\'' } else { c })
        .collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    out
}

/// The help text, from [`VERBS`].
pub fn help(prefix: &str) -> String {
    let mut out = String::from("Commands (one per line):\n\n");
    for v in VERBS {
        let usage = if v.args.is_empty() {
            format!("{prefix} {}", v.name)
        } else {
            format!("{prefix} {} {}", v.name, v.args)
        };
        out.push_str(&format!("- `{usage}`: {}\n", v.about));
    }
    out.push_str(&format!("\n`{prefix}` alone means `{prefix} deploy`.\n"));
    out
}

/// The plain text lines of a comment: text outside code blocks and quotes, inline code
/// replaced by a marker that can never start a command.
fn plain_lines(comment: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut quote = 0usize;
    let mut code_block = 0usize;
    let flush = |current: &mut String, lines: &mut Vec<String>| {
        if !current.trim().is_empty() {
            lines.push(std::mem::take(current));
        }
        current.clear();
    };
    for event in Parser::new(comment) {
        match event {
            Event::Start(Tag::BlockQuote(_)) => quote += 1,
            Event::End(TagEnd::BlockQuote(_)) => quote = quote.saturating_sub(1),
            Event::Start(Tag::CodeBlock(_)) => code_block += 1,
            Event::End(TagEnd::CodeBlock) => code_block = code_block.saturating_sub(1),
            _ if quote > 0 || code_block > 0 => {}
            Event::Text(t) => current.push_str(&t),
            // Inline code (and raw HTML) is never a command.
            Event::Code(_) | Event::InlineHtml(_) | Event::Html(_) => current.push('\u{0}'),
            Event::SoftBreak | Event::HardBreak => flush(&mut current, &mut lines),
            Event::End(_) => flush(&mut current, &mut lines),
            _ => {}
        }
    }
    flush(&mut current, &mut lines);
    lines
}

/// Parse every command in a comment.
pub fn parse(comment: &str, prefix: &str) -> Parsed {
    let mut out = Parsed::default();
    for line in plain_lines(comment) {
        let line = line.trim();
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if !first.eq_ignore_ascii_case(prefix) {
            continue;
        }
        if out.commands.len() + out.errors.len() >= MAX_COMMANDS {
            out.refused += 1;
            continue;
        }
        let rest: Vec<&str> = words.collect();
        let result = match rest.split_first() {
            None => Ok(Command::Deploy),
            Some((verb, args)) => match VERBS.iter().find(|v| v.name.eq_ignore_ascii_case(verb)) {
                Some(v) => (v.parse)(args),
                None => Err(unknown(verb, prefix)),
            },
        };
        match result {
            Ok(c) => out.commands.push(c),
            Err(message) => out.errors.push(ParseError {
                line: clip(line),
                message,
            }),
        }
    }
    out
}

fn unknown(verb: &str, prefix: &str) -> String {
    let lower = verb.to_ascii_lowercase();
    let best = VERBS
        .iter()
        .map(|v| (strsim::damerau_levenshtein(&lower, v.name), v.name))
        .min();
    match best {
        Some((d, name)) if d <= 2 => format!(
            "unknown command `{}`: did you mean `{prefix} {name}`?",
            clip(verb)
        ),
        _ => format!(
            "unknown command `{}`: `{prefix} help` lists the commands",
            clip(verb)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Command::*;

    const P: &str = "/preview";

    fn cmds(text: &str) -> Vec<Command> {
        let p = parse(text, P);
        assert!(p.errors.is_empty(), "{text:?}: {:?}", p.errors);
        p.commands
    }

    fn err(text: &str) -> String {
        let p = parse(text, P);
        assert!(p.commands.is_empty(), "{text:?}: {:?}", p.commands);
        assert_eq!(p.errors.len(), 1, "{text:?}: {:?}", p.errors);
        p.errors[0].message.clone()
    }

    #[test]
    fn the_table() {
        let h = |s: u64| Duration::from_secs(s);
        let cases: &[(&str, &[Command])] = &[
            ("/preview", &[Deploy]),
            ("/preview deploy", &[Deploy]),
            ("/PREVIEW DEPLOY", &[Deploy]),
            ("/Preview Deploy", &[Deploy]),
            ("   /preview deploy   ", &[Deploy]),
            ("/preview\tdeploy", &[Deploy]),
            // A leading tab is an indented code block in Markdown.
            ("\t/preview deploy", &[]),
            ("/preview destroy", &[Destroy]),
            ("/preview extend 90m", &[Extend(h(5400))]),
            ("/preview extend 36h", &[Extend(h(36 * 3600))]),
            ("/preview extend 2d", &[Extend(h(2 * 86400))]),
            ("/preview sync", &[Sync(SyncWhat::All)]),
            ("/preview sync files", &[Sync(SyncWhat::Files)]),
            ("/preview sync DB", &[Sync(SyncWhat::Db)]),
            ("/preview sync all", &[Sync(SyncWhat::All)]),
            ("/preview tag add qa", &[TagAdd("qa".into())]),
            ("/preview tag rm QA", &[TagRm("qa".into())]),
            ("/preview password on", &[Password(true)]),
            ("/preview password OFF", &[Password(false)]),
            ("/preview robots on", &[Robots(true)]),
            ("/preview robots off", &[Robots(false)]),
            (
                "/preview cidr allow 10.0.0.0/8",
                &[Cidr(CidrOp::Allow("10.0.0.0/8".into()))],
            ),
            (
                "/preview cidr deny 2001:DB8::/32",
                &[Cidr(CidrOp::Deny("2001:db8::/32".into()))],
            ),
            ("/preview cidr clear", &[Cidr(CidrOp::Clear)]),
            ("/preview status", &[Status]),
            ("/preview help", &[Help]),
            ("Looks good!\n/preview deploy\nthanks", &[Deploy]),
            ("/preview deploy\r\n/preview status\r\n", &[Deploy, Status]),
            (
                "/preview deploy\n\n/preview extend 2d",
                &[Deploy, Extend(h(172800))],
            ),
            ("- /preview deploy", &[Deploy]),
            ("1. /preview status", &[Status]),
            ("# /preview status", &[Status]),
            ("**bold** text\n/preview status", &[Status]),
            // Not commands.
            ("please /preview deploy", &[]),
            ("/previewdeploy", &[]),
            ("/preview-deploy", &[]),
            ("preview deploy", &[]),
            // An escaped slash renders as a slash: what the reader sees is the command.
            ("\\/preview deploy", &[Deploy]),
            ("`/preview deploy`", &[]),
            ("run `/preview deploy` to deploy", &[]),
            ("``/preview deploy``", &[]),
            ("```\n/preview deploy\n```", &[]),
            ("~~~\n/preview deploy\n~~~", &[]),
            ("```sh\n/preview destroy\n```\n/preview status", &[Status]),
            ("    /preview deploy", &[]),
            ("text\n\n    /preview destroy\n", &[]),
            ("> /preview deploy", &[]),
            ("> > /preview deploy", &[]),
            ("> quote\n> /preview destroy\n\n/preview status", &[Status]),
            ("<!-- /preview deploy -->", &[]),
            ("\u{2215}preview deploy", &[]),
            ("\u{FF0F}preview deploy", &[]),
            ("\u{2044}preview deploy", &[]),
            ("/preνiew deploy", &[]),
            ("", &[]),
            ("   \n\t\n", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(&cmds(text), want, "{text:?}");
        }
        assert!(cases.len() >= 50);
    }

    #[test]
    fn errors_are_precise() {
        let cases: &[(&str, &str)] = &[
            ("/preview dploy", "did you mean `/preview deploy`"),
            ("/preview destory", "did you mean `/preview destroy`"),
            ("/preview stauts", "did you mean `/preview status`"),
            ("/preview frobnicate", "`/preview help` lists the commands"),
            ("/preview extend", "expected a duration"),
            ("/preview extend 3 weeks", "unexpected `weeks`"),
            ("/preview extend soon", "invalid duration"),
            ("/preview extend 0h", "invalid duration"),
            (
                "/preview sync everything",
                "expected `files`, `db` or `all`",
            ),
            ("/preview tag add", "expected a tag name"),
            ("/preview tag add a/b", "invalid tag name"),
            ("/preview tag add $(rm)", "invalid tag name"),
            ("/preview tag frob x", "expected `add` or `rm`"),
            ("/preview tag", "expected `add NAME`"),
            ("/preview password maybe", "expected `on` or `off`"),
            ("/preview robots", "expected `on` or `off`"),
            (
                "/preview cidr",
                "expected `allow CIDR`, `deny CIDR` or `clear`",
            ),
            (
                "/preview cidr allow",
                "expected `allow CIDR`, `deny CIDR` or `clear`, not `allow`",
            ),
            ("/preview cidr allow 10.0.0.0/8;rm", "is not a CIDR"),
            (
                "/preview cidr allow 1.2.3.4 5.6.7.8",
                "unexpected `5.6.7.8`",
            ),
            ("/preview deploy now", "unexpected `now`"),
            ("/preview status please", "unexpected `please`"),
        ];
        for (text, needle) in cases {
            let e = err(text);
            assert!(e.contains(needle), "{text:?} gave {e:?}, wanted {needle:?}");
        }
    }

    #[test]
    fn at_most_ten_commands() {
        let text = "/preview status\n".repeat(1000);
        let p = parse(&text, P);
        assert_eq!(p.commands.len(), MAX_COMMANDS);
        assert_eq!(p.refused, 990);
    }

    #[test]
    fn big_comments_and_other_prefixes() {
        let mut text = String::from("/preview deploy\n```\n");
        while text.len() < 64 * 1024 {
            text.push_str("/preview destroy inside code\n");
        }
        text.push_str("```\n/preview extend 2d\n");
        let p = parse(&text, P);
        assert_eq!(
            p.commands,
            vec![Deploy, Extend(Duration::from_secs(2 * 86400))]
        );
        assert_eq!(parse("/endor deploy", "/endor").commands, vec![Deploy]);
        assert!(parse("/preview deploy", "/endor").commands.is_empty());
        // Long hostile arguments are clipped in messages.
        let e = err(&format!("/preview tag add {}", "x".repeat(500)));
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn help_comes_from_the_table() {
        let h = help(P);
        for v in VERBS {
            assert!(
                h.contains(&format!("`{P} {}", v.name)),
                "{} missing",
                v.name
            );
        }
        // Every verb in the table parses (with sample arguments).
        let samples = [
            "deploy",
            "destroy",
            "extend 1d",
            "sync",
            "tag add x",
            "password on",
            "robots off",
            "cidr clear",
            "status",
            "help",
        ];
        assert_eq!(samples.len(), VERBS.len());
        for s in samples {
            assert_eq!(cmds(&format!("{P} {s}")).len(), 1, "{s}");
        }
    }
}
