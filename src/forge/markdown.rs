//! Text as the forges render it in comments: the hidden markers that identify endor's own
//! comments, escaping that makes untrusted text inert in Markdown and HTML, and the comment
//! length limit. Shared by the status comment, slash-command replies and the write-back that
//! finds endor's comments again.

/// The hidden first line that marks endor's status comment.
pub const MARKER: &str = "<!-- endor:status -->";
/// GitHub's limit on a comment body, in characters.
pub const MAX_COMMENT_CHARS: usize = 65_536;

/// The hidden first line of a reply comment to a slash-command comment.
pub fn reply_marker(key: &str) -> String {
    format!("<!-- endor:reply {key} -->")
}

/// Escape untrusted text for a Markdown line (and the HTML GitHub allows in it): entities for
/// `&`, `<`, `>`, `@` (so `@someone` mentions nobody) and `|`; a backslash before every other
/// Markdown punctuation; line breaks become spaces.
pub fn escape_md(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '@' => out.push_str("&#64;"),
            '|' => out.push_str("&#124;"),
            '\r' | '\n' | '\t' => out.push(' '),
            c if c.is_control() => {}
            '\\' | '`' | '*' | '_' | '{' | '}' | '[' | ']' | '(' | ')' | '#' | '+' | '-' | '.'
            | '!' | '~' | '=' | '"' | '\'' | ':' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// Keep a body under [`MAX_COMMENT_CHARS`], saying that it was cut.
pub fn trim(body: String) -> String {
    if body.chars().count() <= MAX_COMMENT_CHARS {
        return body;
    }
    const NOTE: &str = "\n\n… (trimmed to fit the forge's comment limit)";
    let keep = MAX_COMMENT_CHARS - NOTE.chars().count();
    let mut out: String = body.chars().take(keep).collect();
    out.push_str(NOTE);
    out
}
