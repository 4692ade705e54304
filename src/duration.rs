//! Durations as people write them in `.endor.toml` and commands: `90s`, `30m`, `72h`, `3d`.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(into = "String")]
pub struct HumanDuration(pub Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration `{0}`: write a positive whole number followed by s, m, h or d (e.g. 90m, 72h, 3d)"
)]
pub struct DurationError(pub String);

impl std::str::FromStr for HumanDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DurationError(s.chars().take(32).collect());
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, unit) = t.split_at(split);
        if num.is_empty() || num.len() > 9 {
            return Err(bad());
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86_400,
            _ => return Err(bad()),
        };
        if secs == 0 {
            return Err(bad());
        }
        Ok(HumanDuration(Duration::from_secs(secs)))
    }
}

impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0.as_secs();
        match s {
            _ if s.is_multiple_of(86_400) => write!(f, "{}d", s / 86_400),
            _ if s.is_multiple_of(3600) => write!(f, "{}h", s / 3600),
            _ if s.is_multiple_of(60) => write!(f, "{}m", s / 60),
            _ => write!(f, "{s}s"),
        }
    }
}

impl From<HumanDuration> for String {
    fn from(d: HumanDuration) -> String {
        d.to_string()
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (s, secs, back) in [
            ("90s", 90, "90s"),
            ("30m", 1800, "30m"),
            ("72h", 259_200, "3d"),
            ("3d", 259_200, "3d"),
            ("36h", 129_600, "36h"),
            (" 2d ", 172_800, "2d"),
        ] {
            let d: HumanDuration = s.parse().unwrap();
            assert_eq!(d.0.as_secs(), secs, "{s}");
            assert_eq!(d.to_string(), back);
        }
    }

    #[test]
    fn refuses_nonsense() {
        for s in [
            "",
            "h",
            "0h",
            "-1h",
            "1.5h",
            "1w",
            "10",
            "1 h",
            "99999999999d",
            "3D",
            "1h30m",
            "∞h",
            "1ｈ",
        ] {
            assert!(s.parse::<HumanDuration>().is_err(), "{s:?}");
        }
    }
}

/// A Unix time in milliseconds as `YYYY-MM-DD HH:MM UTC` (for comments and the CLI).
pub fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod utc_tests {
    #[test]
    fn formats_utc_dates() {
        use super::format_utc;
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(format_utc(1_795_364_580_000), "2026-11-22 16:23 UTC");
        assert_eq!(format_utc(-60_000), "1969-12-31 23:59 UTC");
    }
}
