//! The dashboard's templates (`templates/dashboard/`, compiled in) and their filters.

/// Every template, by name.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "base.html",
        include_str!("../../templates/dashboard/base.html"),
    ),
    (
        "message.html",
        include_str!("../../templates/dashboard/message.html"),
    ),
    (
        "sign_in.html",
        include_str!("../../templates/dashboard/sign_in.html"),
    ),
    (
        "home.html",
        include_str!("../../templates/dashboard/home.html"),
    ),
    (
        "sites.html",
        include_str!("../../templates/dashboard/sites.html"),
    ),
    (
        "site.html",
        include_str!("../../templates/dashboard/site.html"),
    ),
    (
        "members.html",
        include_str!("../../templates/dashboard/members.html"),
    ),
    (
        "repositories.html",
        include_str!("../../templates/dashboard/repositories.html"),
    ),
    (
        "repository.html",
        include_str!("../../templates/dashboard/repository.html"),
    ),
    (
        "connected.html",
        include_str!("../../templates/dashboard/connected.html"),
    ),
    (
        "previews.html",
        include_str!("../../templates/dashboard/previews.html"),
    ),
    (
        "preview.html",
        include_str!("../../templates/dashboard/preview.html"),
    ),
    (
        "usage.html",
        include_str!("../../templates/dashboard/usage.html"),
    ),
    (
        "notifications.html",
        include_str!("../../templates/dashboard/notifications.html"),
    ),
    (
        "settings.html",
        include_str!("../../templates/dashboard/settings.html"),
    ),
    (
        "invitation.html",
        include_str!("../../templates/dashboard/invitation.html"),
    ),
    (
        "unsubscribe.html",
        include_str!("../../templates/dashboard/unsubscribe.html"),
    ),
];

pub const CSS: &str = include_str!("../../templates/dashboard/endor.css");
pub const JS: &str = include_str!("../../templates/dashboard/endor.js");

/// Unix milliseconds as `YYYY-MM-DD HH:MM UTC` (nothing for none).
fn when(ms: Option<i64>) -> String {
    ms.map(crate::duration::format_utc).unwrap_or_default()
}

/// Milliseconds as `1.2 s` / `340 ms`.
fn duration(ms: Option<i64>) -> String {
    match ms {
        None => String::new(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// A path segment, percent-encoded (names in links).
fn seg(s: String) -> String {
    super::seg(&s)
}

pub fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    // Every template is HTML: every value is escaped unless marked safe.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    // Escape what HTML needs (`& < > " '`), not `/`: URLs stay readable in the page.
    env.set_formatter(|out, state, value| {
        if value.is_safe() || state.auto_escape() == minijinja::AutoEscape::None {
            return minijinja::escape_formatter(out, state, value);
        }
        if value.is_none() || value.is_undefined() {
            return Ok(());
        }
        let text = match value.as_str() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(value.to_string()),
        };
        for ch in text.chars() {
            match ch {
                '&' => out.write_str("&amp;")?,
                '<' => out.write_str("&lt;")?,
                '>' => out.write_str("&gt;")?,
                '"' => out.write_str("&quot;")?,
                '\'' => out.write_str("&#39;")?,
                c => {
                    let mut b = [0u8; 4];
                    out.write_str(c.encode_utf8(&mut b))?
                }
            }
        }
        Ok(())
    });
    for (name, src) in TEMPLATES {
        env.add_template(name, src)
            .expect("a dashboard template parses");
    }
    env.add_filter("when", when);
    env.add_filter("duration", duration);
    env.add_filter("seg", seg);
    env
}
