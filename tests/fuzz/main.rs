//! Fuzzing campaign on stable Rust: property-based harnesses (proptest) over every parser and
//! decoder that reads outside data. Each harness checks that arbitrary input is refused with a
//! typed error or accepted consistently, and never panics, loops or allocates without bound.
//!
//! `make test` runs every harness with the fixed case count printed at its start
//! (`KEYWARD_FUZZ_CASES`, default 256); `make fuzz` runs the same harnesses longer. A crash found
//! here becomes a named regression test in the module that owns the input.

mod apiserver_patch;
mod audit;
mod durations;
mod keyservice;
mod mount;
mod state;

use proptest::test_runner::Config;

mod envelope;
mod keys;

/// Case count for one harness: `KEYWARD_FUZZ_CASES` or 256, printed so a log shows what ran.
pub fn config(harness: &str) -> Config {
    let cases = std::env::var("KEYWARD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(256);
    // Straight to the stderr handle: libtest captures `print!`/`eprint!` of passing tests, and
    // the count must show in every `make test` log.
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "fuzz harness {harness}: {cases} cases"
        );
    }
    Config {
        cases,
        // Shrinking is for humans reading a failure; a bounded number keeps CI time bounded.
        max_shrink_iters: 1024,
        failure_persistence: None,
        ..Config::default()
    }
}
