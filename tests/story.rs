//! The user's story end to end with real processes (issue: "the whole user flow"): the test
//! API server, kubectl, the real controller and provider binaries, and the Python grpcio
//! stand-in for the CSI driver. On failure the error shows every process's last lines.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_story_end_to_end() {
    // Clients made in this process take the build's TLS provider (the fips build compiles
    // two, so rustls cannot pick one by itself).
    keyward::tls::install_default().unwrap();
    // The binaries the story runs are this build's: FIPS mode exactly in the fips build.
    let version = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert_eq!(
        version.contains("AWS-LC FIPS") && version.contains("(FIPS mode)"),
        cfg!(feature = "fips"),
        "{version}"
    );
    let repo = keyward_demo::story::repo_root();
    let python = keyward_demo::story::default_python(&repo);
    assert!(
        python.exists(),
        "{} missing: run tests/setup.sh",
        python.display()
    );
    let opts = keyward_demo::story::StoryOptions {
        bin: std::path::PathBuf::from(env!("CARGO_BIN_EXE_keyward")),
        python,
        repo,
        narrate: false,
    };
    if let Err(e) = keyward_demo::story::run(opts).await {
        panic!("story failed: {e:?}");
    }
}
