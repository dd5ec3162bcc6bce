//! The Secrets Store CSI Driver stand-in (tests/py/csi_driver.py) is itself tested against the
//! driver's rules (v1.6.0 request building, path validation, atomic writer, remount masking):
//! those unit tests run here so `make test` runs them and prints their count.

mod fixture;

#[test]
fn driver_stand_in_follows_the_driver_rules() {
    let out = std::process::Command::new(fixture::python())
        .current_dir(fixture::root())
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
