//! Generated keys checked by an independent implementation (the openssl CLI): keys pass
//! `openssl pkey -check`, our signatures verify with openssl and openssl's with ours, and an
//! X25519 shared secret agrees with `openssl pkeyutl -derive`.

use keyward::crd::KeyAlgorithm;
use keyward::crypto::SecretBytes;
use keyward::keys;
use pkcs8::DecodePrivateKey;
use std::path::Path;
use std::process::Command;

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl not installed: run tests/setup.sh")
}

fn ok(args: &[&str]) -> String {
    let o = openssl(args);
    assert!(
        o.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write_keys(dir: &Path, alg: KeyAlgorithm, m: &SecretBytes) -> (String, String) {
    let private = dir.join(format!("{}.pem", alg.as_str()));
    let public = dir.join(format!("{}.pub.pem", alg.as_str()));
    std::fs::write(&private, keys::private_pem(alg, m).unwrap().as_bytes()).unwrap();
    std::fs::write(&public, keys::public_pem(alg, m).unwrap().unwrap()).unwrap();
    (
        private.to_string_lossy().into_owned(),
        public.to_string_lossy().into_owned(),
    )
}

#[test]
fn generated_keys_pass_openssl_pkey_check() {
    let dir = tempfile::tempdir().unwrap();
    use KeyAlgorithm::*;
    for alg in [Rsa2048, Rsa3072, EcdsaP256, EcdsaP384, Ed25519, X25519] {
        let m = keys::generate(alg).unwrap();
        let (private, public) = write_keys(dir.path(), alg, &m);
        if matches!(alg, Rsa2048 | Rsa3072 | EcdsaP256 | EcdsaP384) {
            let o = ok(&["pkey", "-in", &private, "-check", "-noout"]);
            assert!(o.contains("valid") || o.is_empty(), "{alg:?}: {o}");
        } else {
            ok(&["pkey", "-in", &private, "-noout"]);
        }
        // openssl derives the same public key from our private key.
        let derived = ok(&["pkey", "-in", &private, "-pubout"]);
        assert_eq!(
            derived,
            std::fs::read_to_string(&public).unwrap(),
            "{alg:?}"
        );
    }
}

#[test]
fn signatures_cross_verify_with_openssl() {
    use signature::{Signer, Verifier};
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("msg");
    std::fs::write(&msg, b"keyward signs documents").unwrap();
    let msg_s = msg.to_string_lossy().into_owned();
    let sig = dir.path().join("sig");
    let sig_s = sig.to_string_lossy().into_owned();

    // ECDSA P-256: ours -> openssl, openssl -> ours.
    let m = keys::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let (private, public) = write_keys(dir.path(), KeyAlgorithm::EcdsaP256, &m);
    let sk = p256::ecdsa::SigningKey::from_pkcs8_der(m.expose()).unwrap();
    let s: p256::ecdsa::Signature = sk.sign(b"keyward signs documents");
    std::fs::write(&sig, s.to_der().as_bytes()).unwrap();
    assert!(
        ok(&[
            "dgst",
            "-sha256",
            "-verify",
            &public,
            "-signature",
            &sig_s,
            &msg_s
        ])
        .contains("Verified OK")
    );
    ok(&["dgst", "-sha256", "-sign", &private, "-out", &sig_s, &msg_s]);
    let theirs = p256::ecdsa::Signature::from_der(&std::fs::read(&sig).unwrap()).unwrap();
    sk.verifying_key()
        .verify(b"keyward signs documents", &theirs)
        .unwrap();

    // RSA PKCS#1 v1.5 SHA-256 (RS256).
    let m = keys::generate(KeyAlgorithm::Rsa2048).unwrap();
    let (private, public) = write_keys(dir.path(), KeyAlgorithm::Rsa2048, &m);
    let sk = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(
        rsa::RsaPrivateKey::from_pkcs8_der(m.expose()).unwrap(),
    );
    let s = sk.sign(b"keyward signs documents");
    std::fs::write(&sig, signature::SignatureEncoding::to_vec(&s)).unwrap();
    assert!(
        ok(&[
            "dgst",
            "-sha256",
            "-verify",
            &public,
            "-signature",
            &sig_s,
            &msg_s
        ])
        .contains("Verified OK")
    );
    ok(&["dgst", "-sha256", "-sign", &private, "-out", &sig_s, &msg_s]);
    let theirs =
        rsa::pkcs1v15::Signature::try_from(std::fs::read(&sig).unwrap().as_slice()).unwrap();
    use signature::Keypair;
    sk.verifying_key()
        .verify(b"keyward signs documents", &theirs)
        .unwrap();

    // Ed25519.
    let m = keys::generate(KeyAlgorithm::Ed25519).unwrap();
    let (private, public) = write_keys(dir.path(), KeyAlgorithm::Ed25519, &m);
    let sk = ed25519_dalek::SigningKey::from_pkcs8_der(m.expose()).unwrap();
    std::fs::write(&sig, sk.sign(b"keyward signs documents").to_bytes()).unwrap();
    assert!(
        ok(&[
            "pkeyutl", "-verify", "-pubin", "-inkey", &public, "-rawin", "-in", &msg_s, "-sigfile",
            &sig_s
        ])
        .contains("Signature Verified Successfully")
    );
    ok(&[
        "pkeyutl", "-sign", "-inkey", &private, "-rawin", "-in", &msg_s, "-out", &sig_s,
    ]);
    let theirs = ed25519_dalek::Signature::from_slice(&std::fs::read(&sig).unwrap()).unwrap();
    sk.verifying_key()
        .verify(b"keyward signs documents", &theirs)
        .unwrap();
}

#[test]
fn x25519_shared_secret_agrees_with_openssl_derive() {
    let dir = tempfile::tempdir().unwrap();
    let m = keys::generate(KeyAlgorithm::X25519).unwrap();
    let (private, public) = write_keys(dir.path(), KeyAlgorithm::X25519, &m);
    let peer = dir.path().join("peer.pem").to_string_lossy().into_owned();
    let peer_pub = dir
        .path()
        .join("peer.pub.pem")
        .to_string_lossy()
        .into_owned();
    ok(&["genpkey", "-algorithm", "X25519", "-out", &peer]);
    ok(&["pkey", "-in", &peer, "-pubout", "-out", &peer_pub]);
    let out = dir.path().join("ss").to_string_lossy().into_owned();
    ok(&[
        "pkeyutl", "-derive", "-inkey", &private, "-peerkey", &peer_pub, "-out", &out,
    ]);
    let theirs_from_ours = std::fs::read(&out).unwrap();
    ok(&[
        "pkeyutl", "-derive", "-inkey", &peer, "-peerkey", &public, "-out", &out,
    ]);
    let theirs_from_peer = std::fs::read(&out).unwrap();
    assert_eq!(theirs_from_ours, theirs_from_peer);
    // Our own derivation with the peer's public key agrees too.
    let peer_der = dir.path().join("peer.der").to_string_lossy().into_owned();
    ok(&[
        "pkey", "-pubin", "-in", &peer_pub, "-outform", "DER", "-out", &peer_der,
    ]);
    let peer_der = std::fs::read(&peer_der).unwrap();
    let mut pk = [0u8; 32];
    pk.copy_from_slice(&peer_der[peer_der.len() - 32..]);
    let mut sk = [0u8; 32];
    sk.copy_from_slice(&m.expose()[16..]);
    let ours =
        x25519_dalek::StaticSecret::from(sk).diffie_hellman(&x25519_dalek::PublicKey::from(pk));
    assert_eq!(ours.as_bytes().as_slice(), theirs_from_ours.as_slice());
}
