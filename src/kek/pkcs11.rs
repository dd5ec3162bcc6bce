//! KEK inside a PKCS#11 token (an HSM, a cloud HSM, or SoftHSM2 for tests).
//!
//! The KEK is an AES-256 secret key object with CKA_TOKEN=true, CKA_SENSITIVE=true,
//! CKA_EXTRACTABLE=false, CKA_PRIVATE=true: its value never leaves the token. keyward sets
//! CKA_ID = `keyward-kek:<label>` when it generates one, and uses an object only after reading
//! back that it is such a key: AES, 32 bytes, on the token, sensitive, not extractable, and
//! (attributes the token sets itself) CKA_LOCAL, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE,
//! i.e. generated inside the token and never readable. Any object carrying a KEK label that
//! fails is refused with [`KekError::ForeignKeyObject`] naming it and the attribute, so a key
//! someone imported or made extractable never becomes the KEK. Versions are
//! separate key objects labelled `<key-label>-v<N>`; the highest N is current, and a missing
//! `-v1` is generated inside the token on first start. `rotate()` generates `-v<N+1>`; old
//! versions stay in the token so old envelopes unwrap until the Keyring has rewrapped them.
//!
//! Wrapping is CKM_AES_GCM inside the token, with a 96-bit IV from the host CSPRNG and the
//! envelope's authenticated data (domain label + the whole header: backend, KEK id and
//! version, key id and version, nonce) as GCM AAD. The header is bound by the token's own
//! tag check, so no envelope can be moved to another key, version or KEK. (CKM_AES_KEY_WRAP_KWP
//! has no AAD; binding the header there needs a per-envelope derived key or the header hash
//! inside the wrapped plaintext, which not every token supports through C_Encrypt. GCM is
//! supported by every current HSM, so keyward uses GCM only.) Random IVs bound one key version
//! to 2^32 wraps (SP 800-38D §8.3): rotate long before that.
//!
//! All PKCS#11 calls run on the blocking pool; one logged-in R/W session behind a mutex
//! serves them. When the session is lost (token removed, HSM restarted) the next call opens a
//! new one, logs in again and retries once.

use super::{KekBackend, KekError};
use crate::crypto::{Algorithm, CryptoError, Envelope, KeyContext, SecretBytes, gcm};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

const KIND: &str = "pkcs11";
const S_MODULE: &str = "--pkcs11-module (KEYWARD_PKCS11_MODULE)";
const S_TOKEN: &str = "--pkcs11-token-label / --pkcs11-slot";
const S_PIN: &str = "--pkcs11-pin-file (KEYWARD_PKCS11_PIN_FILE) / KEYWARD_PKCS11_PIN";

/// Which token to use.
#[derive(Debug, Clone)]
pub enum TokenSelector {
    /// The token with this label.
    Label(String),
    /// The token in this slot.
    Slot(u64),
}

/// Settings of the PKCS#11 backend.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module.
    pub module: PathBuf,
    /// Token to use.
    pub token: TokenSelector,
    /// User PIN (Debug prints `[redacted]`).
    pub pin: SecretBytes,
    /// KEK label prefix; versions are `<label>-v<N>`.
    pub key_label: String,
}

/// PKCS#11 modules are initialised once per process (C_Initialize is process-wide), so
/// contexts are shared by module path and never finalized.
fn context(module: &Path) -> Result<Pkcs11, KekError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = CONTEXTS.get_or_init(Default::default).lock().expect("lock");
    if let Some(c) = map.get(module) {
        return Ok(c.clone());
    }
    let ctx = Pkcs11::new(module).map_err(|e| KekError::Misconfigured {
        setting: S_MODULE,
        detail: format!("cannot load PKCS#11 module {}: {e}", module.display()),
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(KekError::Unavailable {
                backend: KIND,
                setting: S_MODULE,
                detail: format!("C_Initialize of {} failed: {e}", module.display()),
            });
        }
    }
    map.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

fn session_lost(e: &CkError) -> bool {
    matches!(
        rv(e),
        Some(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::DeviceError
        )
    )
}

fn unavailable(what: &str, e: CkError) -> KekError {
    KekError::Unavailable {
        backend: KIND,
        setting: S_TOKEN,
        detail: format!("{what}: {e}"),
    }
}

struct Inner {
    ctx: Pkcs11,
    slot: Slot,
    token_label: String,
    pin: SecretBytes,
    key_label: String,
    session: Mutex<Option<Session>>,
}

impl Inner {
    fn open_session(&self) -> Result<Session, KekError> {
        let s = self
            .ctx
            .open_rw_session(self.slot)
            .map_err(|e| unavailable("C_OpenSession", e))?;
        let pin = std::str::from_utf8(self.pin.expose()).map_err(|_| KekError::Misconfigured {
            setting: S_PIN,
            detail: "the PIN is not UTF-8".into(),
        })?;
        match s.login(UserType::User, Some(&AuthPin::from(pin))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(s),
            Err(CkError::Pkcs11(
                rv @ (RvError::PinIncorrect
                | RvError::PinLocked
                | RvError::PinInvalid
                | RvError::PinLenRange),
                _,
            )) => Err(KekError::Misconfigured {
                setting: S_PIN,
                detail: format!("token {} refused the user PIN ({rv:?})", self.token_label),
            }),
            Err(e) => Err(unavailable("C_Login", e)),
        }
    }

    /// Run `f` with the session; on a lost session, reopen, log in and retry once.
    fn with_session<T>(
        &self,
        f: impl Fn(&Session) -> Result<T, CkError>,
    ) -> Result<Result<T, CkError>, KekError> {
        let mut guard = self.session.lock().expect("lock");
        if guard.is_none() {
            *guard = Some(self.open_session()?);
        }
        let r = f(guard.as_ref().expect("session"));
        match r {
            Err(e) if session_lost(&e) => {
                tracing::warn!(token = %self.token_label, error = %e, "PKCS#11 session lost; reopening");
                *guard = None;
                let s = self.open_session()?;
                let r = f(&s);
                *guard = Some(s);
                Ok(r)
            }
            r => Ok(r),
        }
    }

    fn label(&self, v: u32) -> String {
        format!("{}-v{v}", self.key_label)
    }

    /// Why object `h` (found under `label`) is not a KEK keyward generated, or `None` when it
    /// is one. Every attribute is read from the token: CKA_LOCAL, CKA_ALWAYS_SENSITIVE and
    /// CKA_NEVER_EXTRACTABLE are set by the token itself, so together they show the value was
    /// generated inside it and never left; CKA_ID carries the marker keyward sets at
    /// generation, bound to the label.
    fn vet(&self, s: &Session, h: ObjectHandle, label: &str) -> Result<Option<KekError>, CkError> {
        use AttributeType as T;
        let attrs = s.get_attributes(
            h,
            &[
                T::Id,
                T::Class,
                T::KeyType,
                T::ValueLen,
                T::Token,
                T::Sensitive,
                T::Extractable,
                T::AlwaysSensitive,
                T::NeverExtractable,
                T::Local,
            ],
        )?;
        let get = |t: T| attrs.iter().find(|a| a.attribute_type() == t);
        let id = match get(T::Id) {
            Some(Attribute::Id(id)) => id.as_slice(),
            _ => &[],
        };
        // An attacker may choose the CKA_ID: show at most 32 bytes of it.
        let object = format!(
            "{}/{label} (CKA_ID {})",
            self.token_label,
            if id.is_empty() {
                "empty".to_string()
            } else {
                hex::encode(&id[..id.len().min(32)])
            }
        );
        let refuse = |attribute: &'static str, detail: String| {
            Ok(Some(KekError::ForeignKeyObject {
                object: object.clone(),
                attribute,
                detail,
            }))
        };
        match get(T::Class) {
            Some(Attribute::Class(c)) if *c == ObjectClass::SECRET_KEY => {}
            other => return refuse("CKA_CLASS", format!("is {other:?}, must be CKO_SECRET_KEY")),
        }
        match get(T::KeyType) {
            Some(Attribute::KeyType(k)) if *k == KeyType::AES => {}
            other => return refuse("CKA_KEY_TYPE", format!("is {other:?}, must be CKK_AES")),
        }
        match get(T::ValueLen) {
            Some(Attribute::ValueLen(n)) if u64::from(*n) == 32 => {}
            other => {
                return refuse(
                    "CKA_VALUE_LEN",
                    format!("is {other:?}, must be 32 (AES-256)"),
                );
            }
        }
        let flags: [(T, &'static str, bool); 6] = [
            (T::Token, "CKA_TOKEN", true),
            (T::Extractable, "CKA_EXTRACTABLE", false),
            (T::Sensitive, "CKA_SENSITIVE", true),
            (T::Local, "CKA_LOCAL", true),
            (T::NeverExtractable, "CKA_NEVER_EXTRACTABLE", true),
            (T::AlwaysSensitive, "CKA_ALWAYS_SENSITIVE", true),
        ];
        for (t, name, want) in flags {
            let have = match get(t) {
                Some(
                    Attribute::Token(b)
                    | Attribute::Sensitive(b)
                    | Attribute::Extractable(b)
                    | Attribute::AlwaysSensitive(b)
                    | Attribute::NeverExtractable(b)
                    | Attribute::Local(b),
                ) => Some(*b),
                _ => None,
            };
            match have {
                Some(b) if b == want => {}
                Some(b) => {
                    let why = match t {
                        T::Local => " (the key was imported, not generated in the token)",
                        T::AlwaysSensitive | T::NeverExtractable => {
                            " (the key value was readable at some point)"
                        }
                        _ => "",
                    };
                    return refuse(name, format!("is {b}, must be {want}{why}"));
                }
                None => return refuse(name, "is not readable from the token".into()),
            }
        }
        if !crate::crypto::ct_eq(id, &marker(label)) {
            return refuse(
                "CKA_ID",
                format!(
                    "does not carry keyward's marker {:?} (keyward sets it when it generates a KEK)",
                    String::from_utf8_lossy(&marker(label))
                ),
            );
        }
        Ok(None)
    }

    /// Every version present in the token. Any object carrying a version label that is not a
    /// keyward KEK is refused, named, rather than skipped.
    fn versions(&self) -> Result<Vec<u32>, KekError> {
        let prefix = format!("{}-v", self.key_label);
        self.with_session(|s| {
            let mut out = Vec::new();
            for h in s.find_objects(&[])? {
                for a in s.get_attributes(h, &[AttributeType::Label])? {
                    if let Attribute::Label(l) = a
                        && let Some(label) = std::str::from_utf8(&l).ok()
                        && let Some(n) = label
                            .strip_prefix(&prefix)
                            .and_then(|n| n.parse::<u32>().ok())
                    {
                        if let Some(refusal) = self.vet(s, h, label)? {
                            return Ok(Err(refusal));
                        }
                        out.push(n);
                    }
                }
            }
            out.sort_unstable();
            out.dedup();
            Ok(Ok(out))
        })?
        .map_err(|e| unavailable("listing KEK versions", e))?
    }

    /// The KEK objects of version `v`; an object with that label that is not a keyward KEK
    /// makes the whole lookup fail, naming it.
    fn handles(&self, s: &Session, v: u32) -> Result<Result<Vec<ObjectHandle>, KekError>, CkError> {
        let label = self.label(v);
        let hs = s.find_objects(&[Attribute::Label(label.clone().into_bytes())])?;
        for h in &hs {
            if let Some(refusal) = self.vet(s, *h, &label)? {
                return Ok(Err(refusal));
            }
        }
        Ok(Ok(hs))
    }

    fn generate(&self, v: u32) -> Result<(), KekError> {
        let label = self.label(v);
        self.with_session(|s| {
            s.generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Label(label.clone().into_bytes()),
                    Attribute::Id(marker(&label)),
                ],
            )
        })?
        .map(|_| ())
        .map_err(|e| unavailable(&format!("generating KEK {label} in the token"), e))
    }

    fn encrypt(
        &self,
        v: u32,
        iv: &[u8],
        aad: &[u8],
        dek: &SecretBytes,
    ) -> Result<Vec<u8>, KekError> {
        self.with_session(|s| {
            let h = match self.handles(s, v)? {
                Ok(hs) => *hs.first().ok_or(CkError::Pkcs11(
                    RvError::KeyHandleInvalid,
                    cryptoki::context::Function::FindObjects,
                ))?,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let mut iv = iv.to_vec();
            let params = GcmParams::new(&mut iv, aad, 128.into())?;
            s.encrypt(&Mechanism::AesGcm(params), h, dek.expose())
                .map(Ok)
        })?
        .map_err(|e| unavailable(&format!("C_Encrypt with {}", self.label(v)), e))?
    }

    fn decrypt(&self, v: u32, iv: &[u8], aad: &[u8], ct: &[u8]) -> Result<SecretBytes, KekError> {
        enum Outcome {
            Plain(SecretBytes),
            NoKey,
            Refused(KekError),
            Failed(CkError),
        }
        let r = self.with_session(|s| {
            let hs = match self.handles(s, v)? {
                Ok(hs) => hs,
                Err(refusal) => return Ok(Outcome::Refused(refusal)),
            };
            // Two replicas racing on first start can each create `-v1`; try every match.
            let mut last = None;
            for h in hs {
                let mut iv = iv.to_vec();
                let params = GcmParams::new(&mut iv, aad, 128.into())?;
                match s.decrypt(&Mechanism::AesGcm(params), h, ct) {
                    Ok(p) => return Ok(Outcome::Plain(SecretBytes::new(p))),
                    // SoftHSM2 reports a failed GCM tag check as CKR_GENERAL_ERROR. If the
                    // session is still healthy afterwards, treat it as an integrity failure.
                    Err(CkError::Pkcs11(RvError::GeneralError, f))
                        if s.get_session_info().is_ok() =>
                    {
                        last = Some(CkError::Pkcs11(RvError::EncryptedDataInvalid, f))
                    }
                    Err(e) => last = Some(e),
                }
            }
            Ok(last.map_or(Outcome::NoKey, Outcome::Failed))
        })?;
        let e = match r {
            Ok(Outcome::Plain(p)) => return Ok(p),
            Ok(Outcome::Refused(refusal)) => return Err(refusal),
            Ok(Outcome::NoKey) => {
                return Err(KekError::UnknownKek {
                    backend: KIND.into(),
                    kek_id: format!("{}/{}", self.token_label, self.key_label),
                    version: v,
                });
            }
            Ok(Outcome::Failed(e)) | Err(e) => e,
        };
        match rv(&e) {
            Some(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange,
            ) => Err(CryptoError::Integrity.into()),
            _ => Err(unavailable(&format!("C_Decrypt with {}", self.label(v)), e)),
        }
    }
}

/// CKA_ID keyward sets on every KEK it generates (`keyward-kek:<label>`): marks the object as
/// keyward's and binds the mark to the label, so a relabelled object no longer passes.
fn marker(label: &str) -> Vec<u8> {
    format!("keyward-kek:{label}").into_bytes()
}

/// KEK held in a PKCS#11 token.
pub struct Pkcs11Kek {
    id: String,
    inner: Arc<Inner>,
    current: Mutex<u32>,
}

impl std::fmt::Debug for Pkcs11Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Kek")
            .field("id", &self.id)
            .field("current", &self.kek_version())
            .finish()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KekError> + Send + 'static,
) -> Result<T, KekError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KekError::Unavailable {
            backend: KIND,
            setting: S_MODULE,
            detail: format!("PKCS#11 call panicked or was cancelled: {e}"),
        })?
}

impl Pkcs11Kek {
    /// Load the module, find the token, log in, and find (or create) the KEK.
    pub async fn connect(cfg: Pkcs11Config) -> Result<Self, KekError> {
        blocking(move || Self::connect_blocking(cfg)).await
    }

    fn connect_blocking(cfg: Pkcs11Config) -> Result<Self, KekError> {
        if !cfg.module.exists() {
            return Err(KekError::Misconfigured {
                setting: S_MODULE,
                detail: format!("{} does not exist", cfg.module.display()),
            });
        }
        if cfg.key_label.is_empty() {
            return Err(KekError::Misconfigured {
                setting: "--pkcs11-key-label",
                detail: "empty".into(),
            });
        }
        let ctx = context(&cfg.module)?;
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| unavailable("C_GetSlotList", e))?;
        let mut seen = Vec::new();
        let mut found = None;
        for slot in slots {
            let label = ctx
                .get_token_info(slot)
                .map_err(|e| unavailable("C_GetTokenInfo", e))?
                .label()
                .to_string();
            let hit = match &cfg.token {
                TokenSelector::Label(l) => *l == label,
                TokenSelector::Slot(id) => slot.id() == *id,
            };
            if hit {
                found = Some((slot, label));
                break;
            }
            seen.push(format!("{label:?} (slot {})", slot.id()));
        }
        let Some((slot, token_label)) = found else {
            return Err(KekError::Misconfigured {
                setting: S_TOKEN,
                detail: format!(
                    "no token {:?} in {}; tokens present: [{}]",
                    cfg.token,
                    cfg.module.display(),
                    seen.join(", ")
                ),
            });
        };
        let inner = Arc::new(Inner {
            ctx,
            slot,
            token_label: token_label.clone(),
            pin: cfg.pin,
            key_label: cfg.key_label.clone(),
            session: Mutex::new(None),
        });
        *inner.session.lock().expect("lock") = Some(inner.open_session()?);
        let mut current = inner.versions()?.last().copied().unwrap_or(0);
        if current == 0 {
            inner.generate(1)?;
            current = 1;
            tracing::info!(token = %token_label, label = %inner.label(1), "generated PKCS#11 KEK");
        }
        Ok(Self {
            id: format!("{token_label}/{}", cfg.key_label),
            inner,
            current: Mutex::new(current),
        })
    }

    /// Versions present in the token.
    pub async fn versions(&self) -> Result<Vec<u32>, KekError> {
        let inner = self.inner.clone();
        blocking(move || inner.versions()).await
    }
}

#[async_trait::async_trait]
impl KekBackend for Pkcs11Kek {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn kek_id(&self) -> String {
        self.id.clone()
    }

    fn kek_version(&self) -> u32 {
        *self.current.lock().expect("lock")
    }

    async fn wrap(&self, ctx: &KeyContext, dek: &SecretBytes) -> Result<Envelope, KekError> {
        let v = self.kek_version();
        let mut env = Envelope::for_context(Algorithm::Aes256Gcm, KIND, &self.id, v, ctx);
        env.nonce = gcm::random_nonce().to_vec();
        let aad = env.aad();
        let iv = env.nonce.clone();
        let inner = self.inner.clone();
        let dek = dek.clone();
        env.ciphertext = blocking(move || inner.encrypt(v, &iv, &aad, &dek)).await?;
        Ok(env)
    }

    async fn unwrap(&self, env: &Envelope, ctx: &KeyContext) -> Result<SecretBytes, KekError> {
        super::check_owner(env, KIND, &self.id)?;
        env.check_context(ctx)?;
        if env.algorithm != Algorithm::Aes256Gcm || env.nonce.len() != 12 {
            return Err(CryptoError::Integrity.into());
        }
        let (v, iv, aad, ct) = (
            env.kek_version,
            env.nonce.clone(),
            env.aad(),
            env.ciphertext.clone(),
        );
        let inner = self.inner.clone();
        blocking(move || inner.decrypt(v, &iv, &aad, &ct)).await
    }

    async fn health(&self) -> Result<(), KekError> {
        let inner = self.inner.clone();
        let v = self.kek_version();
        blocking(move || {
            let n = inner
                .with_session(|s| inner.handles(s, v))?
                .map_err(|e| unavailable("health check", e))??
                .len();
            if n == 0 {
                return Err(KekError::Unavailable {
                    backend: KIND,
                    setting: "--pkcs11-key-label",
                    detail: format!(
                        "KEK {} is gone from token {}",
                        inner.label(v),
                        inner.token_label
                    ),
                });
            }
            Ok(())
        })
        .await
    }

    async fn rotate(&self) -> Result<u32, KekError> {
        let inner = self.inner.clone();
        let next = blocking(move || {
            let next = inner.versions()?.last().copied().unwrap_or(0) + 1;
            inner.generate(next)?;
            Ok(next)
        })
        .await?;
        *self.current.lock().expect("lock") = next;
        tracing::info!(kek = %self.id, version = next, "PKCS#11 KEK rotated");
        Ok(next)
    }

    /// Another process (`keyward kek rotate`, another replica, the KMS plugin's neighbour)
    /// may have generated a newer version in the token: wrap with the newest from now on.
    async fn refresh(&self) -> Result<(), KekError> {
        let inner = self.inner.clone();
        let newest = blocking(move || Ok(inner.versions()?.last().copied())).await?;
        if let Some(v) = newest {
            let mut cur = self.current.lock().expect("lock");
            if v > *cur {
                *cur = v;
            }
        }
        Ok(())
    }
}
