//! Durations as users write them in policies: `90d`, `2160h`, `1d12h`, `30m`, and ISO 8601
//! `P90D`, `PT12H`, `P1DT2H`. Months and years are refused because their length varies.

/// Regex (for the CRD schema) that accepts exactly what [`parse`] accepts.
pub const PATTERN: &str = r"^(([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?|P([0-9]+W)?([0-9]+D)?(T([0-9]+H)?([0-9]+M)?([0-9]+S)?)?)$";

/// Parse a duration into whole seconds. The error names the accepted forms.
pub fn parse(s: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "invalid duration {s:?}: use a number with a unit (w, d, h, m, s) such as \"90d\" or \"2160h\", or ISO 8601 such as \"P90D\" or \"PT12H\"; months and years are not accepted"
        )
    };
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
            let e = parse(s).expect_err(s);
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
    fn formats_compactly() {
        assert_eq!(format(90 * 86_400), "90d");
        assert_eq!(format(86_400 + 7_200), "1d2h");
    }
}
