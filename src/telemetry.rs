//! Logging set-up: `tracing` to stderr, human-readable or JSON (`--log-format json`), filtered
//! by `ENDOR_LOG` (or `RUST_LOG`), default `info`.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The filter of `ENDOR_LOG` (or `RUST_LOG`), default `info`. The store's driver logs every
/// query at debug level (the job queue polls every 200 ms): it stays at `warn` unless the
/// filter names `sqlx` itself.
pub fn filter_text(given: Option<String>) -> String {
    let f = given.unwrap_or_else(|| "info".into());
    if f.contains("sqlx") {
        f
    } else {
        format!("{f},sqlx=warn")
    }
}

pub fn init(format: LogFormat) {
    use std::io::IsTerminal;
    let given = std::env::var("ENDOR_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok());
    let filter = EnvFilter::try_new(filter_text(given)).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a terminal: a log written to a file or a pipe stays plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_drivers_queries_stay_quiet_unless_asked_for() {
        assert_eq!(super::filter_text(None), "info,sqlx=warn");
        assert_eq!(super::filter_text(Some("debug".into())), "debug,sqlx=warn");
        assert_eq!(
            super::filter_text(Some("debug,sqlx=debug".into())),
            "debug,sqlx=debug"
        );
    }
}
