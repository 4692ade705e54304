//! Sizes as people write them in config and `.endor.toml`: `512MiB`, `2GiB`, `64KiB`, `1000B`.
//! Binary units only (`K`/`M`/`G`/`T`, with or without `iB`), so `512M` is 512 MiB.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(into = "String")]
pub struct ByteSize(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid size `{0}`: write a positive whole number followed by B, KiB, MiB, GiB or TiB (e.g. 512MiB, 2GiB)"
)]
pub struct SizeError(pub String);

const UNITS: [(&str, u64); 5] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

impl std::str::FromStr for ByteSize {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SizeError(s.chars().take(32).collect());
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() || num.len() > 15 {
            return Err(bad());
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult = match unit {
            "" | "B" => 1,
            "K" | "KiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            _ => return Err(bad()),
        };
        let bytes = n.checked_mul(mult).ok_or_else(bad)?;
        if bytes == 0 {
            return Err(bad());
        }
        Ok(ByteSize(bytes))
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (unit, size) = UNITS
            .iter()
            .find(|(_, size)| self.0 >= *size && self.0.is_multiple_of(*size))
            .copied()
            .unwrap_or(("B", 1));
        write!(f, "{}{unit}", self.0 / size)
    }
}

impl From<ByteSize> for String {
    fn from(d: ByteSize) -> String {
        d.to_string()
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
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
        for (s, bytes, back) in [
            ("512MiB", 512 << 20, "512MiB"),
            ("512M", 512 << 20, "512MiB"),
            ("2GiB", 2 << 30, "2GiB"),
            ("2048MiB", 2 << 30, "2GiB"),
            ("1000", 1000, "1000B"),
            ("1536KiB", 1536 << 10, "1536KiB"),
            (" 1T ", 1 << 40, "1TiB"),
        ] {
            let d: ByteSize = s.parse().unwrap();
            assert_eq!(d.0, bytes, "{s}");
            assert_eq!(d.to_string(), back);
        }
    }

    #[test]
    fn refuses_nonsense() {
        for s in [
            "",
            "MiB",
            "0MiB",
            "-1G",
            "1.5G",
            "1 GiB",
            "1GB",
            "1mib",
            "99999999999999T",
            "1Gi",
        ] {
            assert!(s.parse::<ByteSize>().is_err(), "{s:?}");
        }
    }
}
