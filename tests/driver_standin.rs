//! The Secrets Store CSI Driver stand-in (tests/py/csi_driver.py) is itself tested against the
//! driver's rules (v1.6.0 request building, path validation, atomic writer, remount masking):
//! those unit tests run here so `make test` runs them and prints their count.

use std::path::PathBuf;

#[test]
fn driver_stand_in_follows_the_driver_rules() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let py = std::env::var_os("KEYWARD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    assert!(
        py.exists(),
        "{} missing: run tests/setup.sh first",
        py.display()
    );
    let out = std::process::Command::new(py)
        .current_dir(&root)
        .args(["-m", "unittest", "-v", "tests/py/test_csi_driver.py"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stand-in unit tests failed:\n{err}");
    let ran = err
        .lines()
        .find_map(|l| l.strip_prefix("Ran ").and_then(|r| r.split(' ').next()))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    assert!(ran >= 40, "only {ran} stand-in tests ran:\n{err}");
    println!("driver stand-in: {ran} unit tests passed");
}
