//! Durations and cron expressions from a RotationPolicy: arbitrary strings and near-boundary
//! values. A duration parses to at most 100 years or is a typed error; what parses prints back
//! to the same value; a policy is a `Policy` or a `PolicyError` naming its field; a parsed
//! schedule's next firing is after the time asked about, and found in bounded time.

use keyward::crd::RotationPolicySpec;
use keyward::duration::{self, Duration, DurationError, MAX_SECS, PATTERN};
use keyward::rotation::{Policy, PolicyError};
use proptest::prelude::*;
use std::sync::OnceLock;

fn pattern() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(PATTERN).unwrap())
}

/// The parser's contract for one string.
fn check_duration(s: &str) -> Result<(), TestCaseError> {
    match duration::parse(s) {
        Ok(v) => {
            prop_assert!((0..=MAX_SECS).contains(&v), "{s:?} -> {v}");
            prop_assert_eq!(duration::parse(&duration::format(v)), Ok(v), "{:?}", s);
            let d: Duration = s.parse().unwrap();
            prop_assert_eq!(d.secs(), v);
            prop_assert_eq!(d.to_string().parse::<Duration>().map(|d| d.secs()), Ok(v));
        }
        Err(DurationError::Invalid(shown)) => {
            // The pattern and lengths the CRD carries accept only what parses (or is too long).
            prop_assert!(
                !(pattern().is_match(s) && duration::LENGTH.contains(&s.len())),
                "the schema accepts {s:?}, the parser refuses it"
            );
            prop_assert!(shown.chars().count() <= 64);
        }
        Err(DurationError::TooLong(shown)) => {
            prop_assert!(shown.chars().count() <= 64);
            prop_assert!(DurationError::TooLong(shown).to_string().contains("36500d"));
        }
    }
    Ok(())
}

/// Units as the short and ISO forms write them, with their length in seconds.
fn component() -> impl Strategy<Value = (u64, char, char, i64)> {
    (
        prop_oneof![
            0u64..100,
            36_400u64..36_600,
            3_153_599_000u64..3_153_601_000,
            Just(u64::MAX),
            any::<u64>()
        ],
        prop::sample::select(vec![
            ('w', 'W', 604_800i64),
            ('d', 'D', 86_400),
            ('h', 'H', 3_600),
            ('m', 'M', 60),
            ('s', 'S', 1),
        ]),
    )
        .prop_map(|(n, (short, iso, secs))| (n, short, iso, secs))
}

proptest! {
    #![proptest_config(crate::config("durations"))]

    #[test]
    fn arbitrary_strings(s in any::<String>()) {
        check_duration(&s)?;
    }

    #[test]
    fn near_valid_strings(s in "[0-9PTwdhmsWDHMS ]{0,40}") {
        check_duration(&s)?;
    }

    /// Structured: components near the limit in the short form; the value is exactly the sum,
    /// refused as too long past 100 years.
    #[test]
    fn near_the_limit(parts in prop::collection::vec(component(), 1..5)) {
        let text: String = parts.iter().map(|(n, c, _, _)| format!("{n}{c}")).collect();
        let sum = parts.iter().try_fold(0i128, |acc, (n, _, _, secs)| {
            Some(acc + (*n as i128) * (*secs as i128))
        }).unwrap();
        match duration::parse(&text) {
            Ok(v) => prop_assert_eq!(v as i128, sum),
            Err(DurationError::TooLong(_)) => prop_assert!(sum > MAX_SECS as i128, "{} = {}", text, sum),
            Err(e) => prop_assert!(false, "{text}: {e}"),
        }
        check_duration(&text)?;
    }

    /// Every value up to the limit prints and parses back; any i64 prints without panicking.
    #[test]
    fn format_round_trips(v in 0i64..=MAX_SECS, any_v in any::<i64>()) {
        prop_assert_eq!(duration::parse(&duration::format(v)), Ok(v));
        let printed = duration::format(any_v);
        prop_assert_eq!(printed.starts_with('-'), any_v < 0);
    }

    /// A whole policy from arbitrary duration strings and a schedule: a Policy whose durations
    /// are within the cap, or an error naming a field.
    #[test]
    fn policies(
        period in prop::option::of(prop_oneof!["[0-9]{1,12}[wdhms]", any::<String>()]),
        expire in prop::option::of("[0-9]{1,12}[dh]"),
        notify in prop::option::of("[0-9]{1,12}[dh]"),
        grace in "[0-9]{1,12}[dhms]",
        schedule in prop::option::of(cron()),
        at in -377_705_116_800i64..=253_402_207_200i64,
    ) {
        let spec = RotationPolicySpec {
            rotation_period: period,
            schedule,
            expire_after: expire,
            notify_before_expiry: notify,
            grace_period: grace,
            ..Default::default()
        };
        match Policy::from_spec(&spec) {
            Ok(p) => {
                for d in [p.period, p.expire_after, p.notify_before, Some(p.grace)].into_iter().flatten() {
                    prop_assert!(d.secs() <= MAX_SECS);
                }
                let activated = jiff::Timestamp::from_second(at).unwrap();
                let started = std::time::Instant::now();
                if let Some(due) = p.due_after(activated) {
                    prop_assert!(due >= activated, "due {due} before {activated}");
                }
                prop_assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", spec.schedule);
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(text.starts_with("spec"), "{text}");
                if let PolicyError::Schedule { value, .. } = &e {
                    prop_assert!(value.chars().count() <= 100);
                }
            }
        }
    }
}

/// Cron expressions: five fields of plausible tokens (including impossible dates such as
/// 31 February), or any string.
fn cron() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        Just("*".to_string()),
        "[0-9]{1,2}",
        "[0-9]{1,2}-[0-9]{1,2}",
        "\\*/[0-9]{1,3}",
        "[0-9]{1,2}(,[0-9]{1,2}){0,3}",
        "[A-Z]{3}",
        "[LW#?]{1,2}",
    ];
    prop_oneof![
        prop::collection::vec(field, 5..=6).prop_map(|f| f.join(" ")),
        Just("0 0 31 2 *".to_string()),
        Just("0 0 30 2 *".to_string()),
        any::<String>(),
    ]
}
