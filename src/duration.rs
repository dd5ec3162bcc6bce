//! Durations as users write them in policies: `90d`, `2160h`, `1d12h`, `30m`, and ISO 8601
//! `P90D`, `PT12H`, `P1DT2H`. Months and years are refused because their length varies.
//!
//! [`Duration`] is the typed form the core works with (policies, grace periods, windows): it
//! parses and prints the user's notation, serializes as that string, and describes itself in a
//! JSON schema with the same pattern, so a value is checked once, where it enters.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Regex (for the CRD schema) that, with the schema's `minLength: 2`, accepts only what
/// [`parse`] accepts (a time part `T` needs a component: `PT` alone was accepted until the
/// fuzzing harness `tests/fuzz/durations.rs` found it).
pub const PATTERN: &str = r"^(([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?|P([0-9]+W)?([0-9]+D)?(T([0-9]+H([0-9]+M)?([0-9]+S)?|[0-9]+M([0-9]+S)?|[0-9]+S))?)$";

/// The schema's length bounds for a duration string.
pub const LENGTH: std::ops::RangeInclusive<usize> = 2..=32;

/// The longest duration keyward accepts anywhere: 100 years (36,500 days) in seconds. A
/// longer one is refused where it enters (CRD schema rule and [`parse`]), so timestamp
/// arithmetic on policy durations cannot leave jiff's range (year 9999) from any realistic
/// "now".
pub const MAX_SECS: i64 = 36_500 * 86_400;

/// [`MAX_SECS`] as users write it, for messages.
pub const MAX_TEXT: &str = "36500d (100 years)";

/// CEL rule (for the CRD schema) that refuses a duration longer than [`MAX_SECS`]: each
/// `<number><unit>` component is summed in seconds. Numbers of 11 digits or more are refused
/// first, so the sum never overflows CEL's 64-bit integers (a string is at most 32 characters).
pub const CEL_MAX_RULE: &str = "!self.matches('[0-9]{11,}') && self.findAll('[0-9]+[wWdDhHmMsS]').map(c, int(c.substring(0, size(c) - 1)) * (c.endsWith('w') || c.endsWith('W') ? 604800 : c.endsWith('d') || c.endsWith('D') ? 86400 : c.endsWith('h') || c.endsWith('H') ? 3600 : c.endsWith('m') || c.endsWith('M') ? 60 : 1)).sum() <= 3153600000";

/// Message of [`CEL_MAX_RULE`].
pub const CEL_MAX_MESSAGE: &str = "must be at most 36500d (100 years)";

/// A duration string keyward refuses; the message names the accepted forms or the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not one of the accepted forms.
    #[error(
        "invalid duration {0:?}: use a number with a unit (w, d, h, m, s) such as \"90d\" or \"2160h\", or ISO 8601 such as \"P90D\" or \"PT12H\"; months and years are not accepted"
    )]
    Invalid(String),
    /// Well-formed but longer than [`MAX_SECS`].
    #[error("duration {0:?} is longer than the {MAX_TEXT} allowed: use a shorter duration")]
    TooLong(String),
}

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

/// `t + d`, saturating at jiff's last instant (year 9999): a due time past it is "never", and
/// no data-dependent sum can panic.
pub fn after(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    t.checked_add(d.signed()).unwrap_or(jiff::Timestamp::MAX)
}

/// `t - d`, saturating at jiff's first instant.
pub fn before(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    t.checked_sub(d.signed()).unwrap_or(jiff::Timestamp::MIN)
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
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schema(g)
    }
}

/// The schema of a duration field in a CRD: [`PATTERN`], 2 to 32 characters, and
/// [`CEL_MAX_RULE`] (which kube-apiserver enforces, as does keyward's test API server), so an
/// over-long duration is refused at `kubectl apply` with the field named. For `schema_with` on
/// `String` fields that hold durations.
pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schema_value(false)
}

/// [`schema`] for an optional field (`nullable`, as kube writes `Option` fields).
pub fn optional_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schema_value(true)
}

fn schema_value(nullable: bool) -> schemars::Schema {
    let mut s = schemars::json_schema!({
        "type": "string",
        "pattern": PATTERN,
        "minLength": *LENGTH.start(),
        "maxLength": *LENGTH.end(),
        "x-kubernetes-validations": [{
            "rule": CEL_MAX_RULE,
            "message": CEL_MAX_MESSAGE,
        }],
    });
    if nullable {
        s.insert("nullable".into(), true.into());
    }
    s
}

/// Parse a duration into whole seconds, at most [`MAX_SECS`]. The error names the accepted
/// forms or the limit. Work and memory are linear in the input and never more than 64
/// characters of it are copied into an error.
pub fn parse(s: &str) -> Result<i64, DurationError> {
    let shown = || s.chars().take(64).collect::<String>();
    let bad = || DurationError::Invalid(shown());
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
        // Only digits: the one way this fails is a number past i64, far past the limit. It
        // saturates so a well-formed string still gets the "too long" answer.
        let n: i64 = num.parse().unwrap_or(i64::MAX);
        num.clear();
        let unit = match (iso, in_time, c) {
            (false, _, 'w') | (true, false, 'W') => 7 * 86_400,
            (false, _, 'd') | (true, false, 'D') => 86_400,
            (false, _, 'h') | (true, true, 'H') => 3_600,
            (false, _, 'm') | (true, true, 'M') => 60,
            (false, _, 's') | (true, true, 'S') => 1,
            _ => return Err(bad()),
        };
        total = n.saturating_mul(unit).saturating_add(total);
        any = true;
    }
    if !num.is_empty() || !any {
        return Err(bad());
    }
    if total > MAX_SECS {
        return Err(DurationError::TooLong(shown()));
    }
    Ok(total)
}

/// Render seconds compactly (`90d`, `1d2h`), for messages and status.
pub fn format(secs: i64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = secs.unsigned_abs();
    for (unit, name) in [(86_400u64, "d"), (3_600, "h"), (60, "m"), (1, "s")] {
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
    fn caps_at_100_years_with_a_typed_error() {
        assert_eq!(parse("36500d"), Ok(MAX_SECS));
        assert_eq!(parse("P36500D"), Ok(MAX_SECS));
        assert_eq!(parse("5214w2d"), Ok(MAX_SECS));
        for s in [
            "36500d1s",
            "3000000d",
            "PT3153600001S",
            "99999999999999999999999999d",
            "9223372036854775807s",
            "1000000000w",
        ] {
            match parse(s) {
                Err(DurationError::TooLong(v)) => assert_eq!(v, s),
                other => panic!("{s}: {other:?}"),
            }
            let e = parse(s).unwrap_err().to_string();
            assert!(e.contains("36500d") && e.contains("shorter"), "{e}");
        }
        // Serde (the policy and config path) refuses the same way.
        let e = serde_json::from_str::<Duration>("\"3000000d\"").unwrap_err();
        assert!(e.to_string().contains("100 years"), "{e}");
    }

    #[test]
    fn format_of_extreme_values_does_not_overflow() {
        // Regression: `i64::abs` of i64::MIN overflowed (a panic on a data-dependent value).
        assert_eq!(format(i64::MIN), "-106751991167300d15h30m8s");
        assert_eq!(format(i64::MAX), "106751991167300d15h30m7s");
        assert_eq!(parse(&format(MAX_SECS)), Ok(MAX_SECS));
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
        for s in ["P1M", "1x", "-5d", "1.5d", "PT"] {
            assert!(!re.is_match(s) && parse(s).is_err(), "{s}");
        }
        // Regression (tests/fuzz/durations.rs): "PT" matched the pattern but never parsed.
        assert!(re.is_match("PT1M30S") && re.is_match("P1DT5S") && !re.is_match("P1DT"));
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
        assert_eq!(
            schema.as_value()["x-kubernetes-validations"][0]["rule"].as_str(),
            Some(CEL_MAX_RULE)
        );
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format(90 * 86_400), "90d");
        assert_eq!(format(86_400 + 7_200), "1d2h");
    }
}
