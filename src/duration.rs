//! Durations as users write them in policies: `90d`, `2160h`, `1d12h`, `30m`, and ISO 8601
//! `P90D`, `PT12H`, `P1DT2H`. Months and years are refused because their length varies.
//!
//! [`Duration`] is the typed form the core works with (policies, grace periods, windows): it
//! parses and prints the user's notation, serializes as that string, and describes itself in a
//! JSON schema with the same pattern, so a value is checked once, where it enters.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Regex (for the CRD schema) that accepts exactly what [`parse`] accepts.
pub const PATTERN: &str = r"^(([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?|P([0-9]+W)?([0-9]+D)?(T([0-9]+H)?([0-9]+M)?([0-9]+S)?)?)$";

/// A duration string that is not one of the accepted forms; the message lists them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {0:?}: use a number with a unit (w, d, h, m, s) such as \"90d\" or \"2160h\", or ISO 8601 such as \"P90D\" or \"PT12H\"; months and years are not accepted"
)]
pub struct DurationError(pub String);

/// A non-negative whole number of seconds, written the way policies write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(i64);

impl Duration {
    /// Zero seconds.
    pub const ZERO: Duration = Duration(0);

    /// From whole seconds (negative values clamp to zero: a duration never points backwards).
    pub const fn from_secs(secs: i64) -> Self {
        Duration(if secs < 0 { 0 } else { secs })
    }

    /// From whole days.
    pub const fn from_days(days: i64) -> Self {
        Self::from_secs(days.saturating_mul(86_400))
    }

    /// Whole seconds.
    pub const fn secs(self) -> i64 {
        self.0
    }

    /// For timestamp arithmetic.
    pub fn signed(self) -> jiff::SignedDuration {
        jiff::SignedDuration::from_secs(self.0)
    }
}

impl From<Duration> for jiff::SignedDuration {
    fn from(d: Duration) -> Self {
        d.signed()
    }
}

impl FromStr for Duration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, DurationError> {
        parse(s).map(Duration)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": PATTERN,
            "minLength": 2,
            "maxLength": 32,
        })
    }
}

/// Parse a duration into whole seconds. The error names the accepted forms.
pub fn parse(s: &str) -> Result<i64, DurationError> {
    let bad = || DurationError(s.chars().take(64).collect());
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    let (body, iso) = match t.strip_prefix('P') {
        Some(rest) => (rest, true),
        None => (t, false),
    };
    let mut total: i64 = 0;
    let mut num = String::new();
    let mut in_time = false;
    let mut any = false;
    for c in body.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        if iso && c == 'T' && num.is_empty() && !in_time {
            in_time = true;
            continue;
        }
        if num.is_empty() {
            return Err(bad());
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match (iso, in_time, c) {
            (false, _, 'w') | (true, false, 'W') => 7 * 86_400,
            (false, _, 'd') | (true, false, 'D') => 86_400,
            (false, _, 'h') | (true, true, 'H') => 3_600,
            (false, _, 'm') | (true, true, 'M') => 60,
            (false, _, 's') | (true, true, 'S') => 1,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        any = true;
    }
    if !num.is_empty() || !any {
        return Err(bad());
    }
    Ok(total)
}

/// Render seconds compactly (`90d`, `1d2h`), for messages and status.
pub fn format(secs: i64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = secs.abs();
    for (unit, name) in [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")] {
        if rest >= unit {
            out.push_str(&format!("{}{}", rest / unit, name));
            rest %= unit;
        }
    }
    if secs < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_short_and_iso_forms() {
        assert_eq!(parse("90d"), Ok(90 * 86_400));
        assert_eq!(parse("2160h"), Ok(90 * 86_400));
        assert_eq!(parse("P90D"), Ok(90 * 86_400));
        assert_eq!(parse("1d12h"), Ok(36 * 3_600));
        assert_eq!(parse("PT12H"), Ok(12 * 3_600));
        assert_eq!(parse("P1DT2H3M4S"), Ok(86_400 + 7_200 + 180 + 4));
        assert_eq!(parse("2w"), Ok(14 * 86_400));
        assert_eq!(parse("45s"), Ok(45));
    }

    #[test]
    fn refuses_months_garbage_and_empty() {
        for s in [
            "", "P", "PT", "90", "d", "P1M", "P1Y", "1x", "-5d", "1.5d", "P1H", "PT1D",
        ] {
            let e = parse(s).expect_err(s).to_string();
            assert!(e.contains("P90D"), "{e}");
        }
    }

    #[test]
    fn pattern_agrees_with_parser() {
        let re = regex::Regex::new(PATTERN).unwrap();
        for s in [
            "90d",
            "2160h",
            "P90D",
            "1d12h",
            "PT12H",
            "P1DT2H3M4S",
            "2w",
            "45s",
        ] {
            assert!(re.is_match(s) && parse(s).is_ok(), "{s}");
        }
        for s in ["P1M", "1x", "-5d", "1.5d"] {
            assert!(!re.is_match(s) && parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn newtype_round_trips_through_serde_and_refuses_garbage() {
        let d: Duration = serde_json::from_str("\"1d12h\"").unwrap();
        assert_eq!(d.secs(), 36 * 3_600);
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1d12h\"");
        let e = serde_json::from_str::<Duration>("\"P1M\"").unwrap_err();
        assert!(e.to_string().contains("months and years"), "{e}");
        assert_eq!(Duration::from_secs(-5), Duration::ZERO);
        let schema = schemars::schema_for!(Duration);
        assert_eq!(
            schema.get("pattern").and_then(|p| p.as_str()),
            Some(PATTERN)
        );
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format(90 * 86_400), "90d");
        assert_eq!(format(86_400 + 7_200), "1d2h");
    }
}
