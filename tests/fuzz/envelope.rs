//! Envelopes (the wrapped DEKs in storage Secrets) and the passphrase backend's parameter
//! block, from arbitrary and from mutated valid bytes.
//!
//! Properties: arbitrary bytes decode to a typed error or to an envelope whose encoding is
//! exactly those bytes (one encoding per envelope); a valid envelope round-trips; any change to
//! a valid envelope's bytes is refused with a typed error (never a different key); a passphrase
//! envelope whose KDF costs exceed the configured ceilings is refused before any derivation.

use keyward::crypto::envelope::{MAX_ENVELOPE, MAX_KEK_ID};
use keyward::crypto::{Algorithm, CryptoError, Envelope, KeyContext, SecretBytes};
use keyward::kek::passphrase::{ARGON2_MIN_MEMORY_KIB, Kdf, PassphraseKek};
use keyward::kek::{KekBackend, KekError};
use proptest::prelude::*;
use std::sync::OnceLock;

fn algorithms() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::Aes256Kwp),
        Just(Algorithm::Aes256Kw),
        Just(Algorithm::Aes256Gcm)
    ]
}

/// One change to a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(prop::sample::Index, u8),
    SetByte(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
    Append(Vec<u8>),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Insert(i, v)),
        any::<prop::sample::Index>().prop_map(Mutation::Remove),
        prop::collection::vec(any::<u8>(), 1..8).prop_map(Mutation::Append),
    ];
    prop::collection::vec(one, 1..4)
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::FlipBit(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] ^= 1 << b;
        }
        Mutation::SetByte(i, v) => {
            let i = i.index(bytes.len());
            bytes[i] = *v;
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Insert(i, v) => {
            let i = i.index(bytes.len() + 1);
            bytes.insert(i, *v);
        }
        Mutation::Remove(i) => {
            let i = i.index(bytes.len());
            bytes.remove(i);
        }
        Mutation::Append(v) => bytes.extend_from_slice(v),
    }
}

fn open(bytes: &[u8], kek: &SecretBytes, ctx: &KeyContext) -> Result<SecretBytes, CryptoError> {
    Envelope::decode(bytes)?.open_with_raw_kek(kek, ctx)
}

/// A runtime and a passphrase KEK at the cheapest accepted costs, shared by the cases.
fn passphrase_kek() -> &'static (tokio::runtime::Runtime, PassphraseKek) {
    static K: OnceLock<(tokio::runtime::Runtime, PassphraseKek)> = OnceLock::new();
    K.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let k = rt
            .block_on(PassphraseKek::new(
                "pp",
                SecretBytes::from_slice(b"correct horse battery staple"),
                Kdf::ARGON2ID_FLOOR,
                Algorithm::Aes256Gcm,
            ))
            .unwrap();
        (rt, k)
    })
}

/// Interesting values for a cost field: around the ceiling, huge, and anything.
fn cost(ceiling: u32) -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(ceiling),
        Just(ceiling.saturating_sub(1)),
        Just(ceiling + 1),
        Just(4 * 1024 * 1024),
        Just(u32::MAX),
        Just(0),
        any::<u32>(),
    ]
}

proptest! {
    #![proptest_config(crate::config("envelope_decode_arbitrary_bytes"))]

    /// Arbitrary bytes, half of them behind a valid magic and version: a typed error, or an
    /// envelope that encodes back to exactly the input; never a panic. Opening such an
    /// envelope under a random KEK fails with a typed error.
    #[test]
    fn envelope_decode_arbitrary_bytes(
        prefix in any::<bool>(),
        body in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = if prefix { b"KWRD\x01".to_vec() } else { Vec::new() };
        bytes.extend_from_slice(&body);
        match Envelope::decode(&bytes) {
            Ok(env) => {
                prop_assert_eq!(env.encode().unwrap(), bytes);
                let ctx = KeyContext::new("ns", "k", 1);
                prop_assert!(env.open_with_raw_kek(&SecretBytes::random(32), &ctx).is_err());
            }
            Err(CryptoError::Malformed(m)) => prop_assert!(!m.is_empty()),
            Err(CryptoError::Length { what, .. }) => prop_assert_eq!(what, "envelope"),
            Err(CryptoError::Integrity) => prop_assert!(false, "decode never checks integrity"),
            Err(CryptoError::NotApproved(n)) => prop_assert!(false, "decode runs no crypto: {}", n),
        }
    }
}

proptest! {
    #![proptest_config(crate::config("envelope_mutated_valid"))]

    /// A sealed envelope round-trips; with any mutation that changes its bytes it is refused
    /// with a typed error (malformed, length or integrity), never opened to any key.
    #[test]
    fn envelope_mutated_valid(
        alg in algorithms(),
        dek_words in 2usize..9,
        ns in "[a-z0-9-]{1,20}",
        name in "[a-z0-9.-]{1,40}",
        version in 1u32..10_000,
        kek_id in "[ -~]{0,40}",
        muts in mutations(),
    ) {
        let kek = SecretBytes::random(32);
        let dek = SecretBytes::random(dek_words * 8);
        let ctx = KeyContext::new(&ns, &name, version);
        prop_assert!(kek_id.len() <= MAX_KEK_ID);
        let env = Envelope::for_context(alg, "local", &kek_id, 1, &ctx)
            .seal_with_raw_kek(&kek, &dek)
            .unwrap();
        let good = env.encode().unwrap();
        prop_assert_eq!(&Envelope::decode(&good).unwrap(), &env);
        prop_assert_eq!(open(&good, &kek, &ctx).unwrap(), dek.clone());

        let mut bad = good.clone();
        for m in &muts {
            apply(&mut bad, m);
        }
        prop_assert!(bad.len() <= MAX_ENVELOPE + 32);
        match open(&bad, &kek, &ctx) {
            Ok(k) => {
                // Only an unchanged byte string may open, and only to the same key.
                prop_assert_eq!(&bad, &good);
                prop_assert_eq!(k, dek);
            }
            Err(CryptoError::Malformed(_) | CryptoError::Integrity | CryptoError::Length { .. }) => {
                prop_assert_ne!(&bad, &good);
            }
            Err(CryptoError::NotApproved(n)) => prop_assert!(false, "a KWP envelope: {}", n),
        }
    }
}

proptest! {
    #![proptest_config(crate::config("envelope_passphrase_params"))]

    /// Arbitrary KDF costs and salts in a passphrase envelope: costs above the configured
    /// ceilings (here the floor: 19 MiB, 1 pass, 1 lane) are refused with `KdfCostRefused`
    /// naming the first parameter over, before anything is derived; every other block fails
    /// with a typed error (malformed, or integrity after at most one floor-cost derivation).
    #[test]
    fn envelope_passphrase_params(
        kdf_id in prop_oneof![Just(1u8), Just(2u8), any::<u8>()],
        memory in cost(ARGON2_MIN_MEMORY_KIB),
        time in cost(1),
        lanes in cost(1),
        iterations in cost(600_000),
        salt in prop::collection::vec(any::<u8>(), 0..40),
        format in prop_oneof![Just(1u8), any::<u8>()],
        junk in prop::collection::vec(any::<u8>(), 0..3),
    ) {
        let (rt, k) = passphrase_kek();
        let ctx = KeyContext::new("ns", "k", 1);
        let mut env = rt.block_on(k.wrap(&ctx, &SecretBytes::random(32))).unwrap();
        let mut params = vec![format, kdf_id];
        match kdf_id {
            1 => {
                for v in [memory, time, lanes] {
                    params.extend_from_slice(&v.to_be_bytes());
                }
            }
            _ => params.extend_from_slice(&iterations.to_be_bytes()),
        }
        params.push(salt.len() as u8);
        params.extend_from_slice(&salt);
        params.extend_from_slice(&junk);
        let unchanged = params == env.params;
        env.params = params;
        let before = k.derivations();
        let r = rt.block_on(k.unwrap(&env, &ctx));
        let derived = k.derivations() - before;
        let well_formed =
            format == 1 && matches!(kdf_id, 1 | 2) && junk.is_empty() && salt.len() >= 16;
        let over = match kdf_id {
            1 => [
                ("Argon2id memory (KiB)", memory, ARGON2_MIN_MEMORY_KIB),
                ("Argon2id time cost", time, 1),
                ("Argon2id parallelism", lanes, 1),
            ]
            .into_iter()
            .find(|(_, v, max)| v > max),
            2 => Some(("PBKDF2 iterations", iterations, 600_000)).filter(|(_, v, max)| v > max),
            _ => None,
        };
        prop_assert!(derived <= 1, "{} derivations for one unwrap", derived);
        if over.is_some() {
            // Over a ceiling: nothing may be derived, whatever else is wrong with the block.
            prop_assert_eq!(derived, 0);
        }
        match (&r, over) {
            (Err(KekError::KdfCostRefused { parameter, value, max, .. }), Some((p, v, m))) => {
                prop_assert_eq!((*parameter, *value, *max), (p, v, m));
            }
            (Err(KekError::KdfCostRefused { .. }), None) => {
                prop_assert!(false, "refused costs within the ceilings: {:?}", r);
            }
            // A well-formed block over a ceiling must be refused as such, naming it.
            (_, Some(_)) if well_formed => {
                prop_assert!(false, "costs over a ceiling not refused as such: {:?}", r);
            }
            (Ok(_), _) => {
                prop_assert!(unchanged && well_formed, "a changed params block unwrapped");
            }
            (Err(KekError::Crypto(_)), _) => {}
            (Err(e), _) => prop_assert!(false, "unexpected error kind: {}", e),
        }
    }
}

/// Regression-style fixed case: a params block naming PBKDF2 with u32::MAX iterations.
#[test]
fn passphrase_params_pbkdf2_u32_max_iterations_refused_before_derivation() {
    let (rt, k) = passphrase_kek();
    let ctx = KeyContext::new("ns", "k", 1);
    let mut env = rt.block_on(k.wrap(&ctx, &SecretBytes::random(32))).unwrap();
    let mut params = vec![1, 2];
    params.extend_from_slice(&u32::MAX.to_be_bytes());
    params.push(16);
    params.extend_from_slice(&[0; 16]);
    env.params = params;
    let before = k.derivations();
    let e = rt.block_on(k.unwrap(&env, &ctx)).unwrap_err();
    assert_eq!(k.derivations(), before);
    assert!(
        matches!(
            e,
            KekError::KdfCostRefused {
                setting: "--pbkdf2-max-iterations",
                ..
            }
        ),
        "{e}"
    );
}
