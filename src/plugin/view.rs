//! What `kubectl keyward` shows, computed from a ManagedKey alone (pure, tested without a
//! cluster). Nothing here sees key material: status holds fingerprints and public keys only.

use crate::crd::{DesiredState, ManagedKey};
use crate::lifecycle::KeyState;
use base64::Engine;
use jiff::Timestamp;
use kube::ResourceExt;
use std::fmt::{self, Write};

/// "in 3d4h" / "5m ago" for an RFC 3339 time, or the text as stored when it does not parse.
pub fn relative(at: &str, now: Timestamp) -> String {
    match at.parse::<Timestamp>() {
        Ok(t) => {
            let secs = t.as_second() - now.as_second();
            if secs >= 0 {
                format!("{at} (in {})", crate::duration::format(secs))
            } else {
                format!("{at} ({} ago)", crate::duration::format(-secs))
            }
        }
        Err(_) => at.to_owned(),
    }
}

/// The `status` command's text.
pub fn status(mk: &ManagedKey, now: Timestamp) -> String {
    let ns = mk.namespace().unwrap_or_default();
    let name = mk.name_any();
    let mut o = String::new();
    let policy = mk
        .spec
        .policy_ref
        .as_ref()
        .map(|p| format!("policy {}", p.name))
        .unwrap_or_else(|| "no policy: rotates only on request".into());
    let _ = writeln!(
        o,
        "ManagedKey {ns}/{name} ({}, {policy})",
        mk.spec.algorithm.as_str()
    );
    let _ = writeln!(o, "Desired:         {:?}", mk.spec.desired_state);
    let Some(st) = mk.status.as_ref() else {
        let _ = writeln!(o, "Status:          none yet (is the controller running?)");
        return o;
    };
    let current = st
        .current_version
        .map(|v| format!(" (current version {v})"))
        .unwrap_or_else(|| " (no current version)".into());
    let _ = writeln!(
        o,
        "State:           {}{current}",
        st.state.as_deref().unwrap_or("unknown")
    );
    for c in &st.conditions {
        let _ = writeln!(
            o,
            "{:<16} {} {}{}",
            format!("{}:", c.type_),
            c.status,
            c.reason,
            if c.message.is_empty() {
                String::new()
            } else {
                format!(": {}", c.message)
            }
        );
    }
    if let Some(n) = &st.next_rotation {
        let staged = st
            .next_version
            .map(|v| format!(" (version {v} pre-published, activates then)"))
            .unwrap_or_default();
        let _ = writeln!(o, "Next rotation:   {}{staged}", relative(n, now));
    }
    if let Some(l) = &st.last_rotation {
        let _ = writeln!(o, "Last rotation:   {}", relative(l, now));
    }
    if let Some(pd) = &st.pending_deletion {
        let _ = writeln!(
            o,
            "Deletion:        scheduled {}, material destroyed {}; restore with `kubectl keyward restore {name} --uid {}`",
            pd.scheduled_at,
            relative(&pd.destroy_at, now),
            mk.uid().unwrap_or_default()
        );
    }
    if let Some(k) = &st.kek {
        let _ = writeln!(o, "KEK:             {k}");
    }
    let _ = writeln!(o, "Versions:        {} created", st.version_count);
    let _ = writeln!(
        o,
        "  {:<8} {:<14} {:<22} {:<22} {:<22} FINGERPRINT",
        "VERSION", "STATE", "CREATED", "ACTIVATED", "EXPIRES"
    );
    for v in &st.versions {
        let _ = writeln!(
            o,
            "  {:<8} {:<14} {:<22} {:<22} {:<22} {}",
            v.version,
            v.state.as_str(),
            v.created,
            v.activated.as_deref().unwrap_or("-"),
            v.expires.as_deref().unwrap_or("-"),
            v.fingerprint
        );
    }
    let _ = writeln!(o, "Who may mount:");
    if mk.spec.access.service_accounts.is_empty() {
        let _ = writeln!(o, "  nobody (spec.access.serviceAccounts is empty)");
    }
    for sa in &mk.spec.access.service_accounts {
        let _ = writeln!(
            o,
            "  {}/{}{}",
            sa.namespace,
            sa.name,
            if sa.public_only {
                " (public parts only)"
            } else {
                ""
            }
        );
    }
    o
}

/// The answer of `can-mount`: allowed or not, and why, in the key service's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanMount {
    /// Whether a Mount of `version: current` by that service account would be served now.
    pub allowed: bool,
    /// Why.
    pub reason: String,
}

impl fmt::Display for CanMount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            if self.allowed { "yes" } else { "no" },
            self.reason
        )
    }
}

/// Whether `sa_ns/sa` may mount the current version of `mk`, by the key service's rules: a
/// grant in the key's own `spec.access` (a pod of another namespace names the key as
/// `namespace/name`), and a current version to serve.
pub fn can_mount(mk: &ManagedKey, sa_ns: &str, sa: &str) -> CanMount {
    let ns = mk.namespace().unwrap_or_default();
    let name = mk.name_any();
    let no = |reason: String| CanMount {
        allowed: false,
        reason,
    };
    let grants: Vec<bool> = mk
        .spec
        .access
        .service_accounts
        .iter()
        .filter(|g| g.namespace == sa_ns && g.name == sa)
        .map(|g| g.public_only)
        .collect();
    if grants.is_empty() {
        return no(format!(
            "service account {sa_ns}/{sa} may not mount ManagedKey {ns}/{name}; add {{namespace: {sa_ns}, name: {sa}}} to its spec.access.serviceAccounts"
        ));
    }
    let public_only = grants.iter().all(|p| *p);
    if public_only && mk.spec.algorithm.is_symmetric() {
        return no(format!(
            "the grant of {sa_ns}/{sa} is public-only and {} has no public part",
            mk.spec.algorithm.as_str()
        ));
    }
    let Some(st) = mk.status.as_ref() else {
        return no(format!(
            "{ns}/{name} has no status yet: the controller has not created a version"
        ));
    };
    if let Some(pd) = &st.pending_deletion {
        return no(format!(
            "{ns}/{name} is scheduled for destruction at {}",
            pd.destroy_at
        ));
    }
    let current = st
        .current_version
        .and_then(|v| st.version(v))
        .filter(|v| v.state == KeyState::Active);
    match current {
        Some(v) => CanMount {
            allowed: true,
            reason: format!(
                "{sa_ns}/{sa} may mount {ns}/{name}{}; current version {} ({}){}",
                if public_only {
                    " (public parts only)"
                } else {
                    ""
                },
                v.version,
                v.fingerprint,
                if sa_ns == ns {
                    String::new()
                } else {
                    format!("; its pods name it `key: {ns}/{name}`")
                }
            ),
        },
        None => no(format!(
            "{sa_ns}/{sa} is granted {ns}/{name}, but it has no current version to serve ({})",
            match mk.spec.desired_state {
                DesiredState::Suspended => "the key is suspended".to_owned(),
                DesiredState::Deactivated => "the key is deactivated".to_owned(),
                _ => format!("state {}", st.state.as_deref().unwrap_or("unknown")),
            }
        )),
    }
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// The JWKS of the versions that verify or encrypt today (PreActivation, Active, Suspended,
/// Deactivated with a public key in status), newest first; each `kid` is the one status
/// records, which is the one pods receive.
pub fn jwks(mk: &ManagedKey) -> Result<String, String> {
    let ns = mk.namespace().unwrap_or_default();
    let name = mk.name_any();
    let alg = mk.spec.algorithm;
    if alg.is_symmetric() {
        return Err(format!(
            "{ns}/{name} is {}: a symmetric key has no public JWKS",
            alg.as_str()
        ));
    }
    let mut keys = Vec::new();
    for v in mk.status.iter().flat_map(|s| &s.versions) {
        let usable = matches!(
            v.state,
            KeyState::PreActivation
                | KeyState::Active
                | KeyState::Suspended
                | KeyState::Deactivated
        );
        let Some(pem) = v.public_key.as_deref().filter(|_| usable) else {
            continue;
        };
        let der = pem_to_der(pem).ok_or_else(|| {
            format!(
                "version {} of {ns}/{name}: public key is not PEM",
                v.version
            )
        })?;
        let kid = v.kid.as_deref().ok_or_else(|| {
            format!(
                "version {} of {ns}/{name} has no kid in status (its controller serves no keys, --disable-key-service)",
                v.version
            )
        })?;
        let jwk = crate::keys::public_jwk_from_spki(alg, &der, kid)
            .map_err(|e| format!("version {} of {ns}/{name}: {e}", v.version))?;
        let value: serde_json::Value =
            serde_json::from_str(&jwk).map_err(|e| format!("version {}: {e}", v.version))?;
        keys.push(value);
    }
    if keys.is_empty() {
        return Err(format!(
            "{ns}/{name} has no version with a public key in a usable state yet"
        ));
    }
    Ok(serde_json::to_string_pretty(&serde_json::json!({ "keys": keys })).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{KeyVersionStatus, ManagedKeyStatus};
    use serde_json::json;

    fn key(spec: serde_json::Value, status: Option<ManagedKeyStatus>) -> ManagedKey {
        let mut mk: ManagedKey = serde_json::from_value(json!({
            "apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey",
            "metadata": {"name": "k", "namespace": "team-a", "uid": "0b9d8c2e-8f7a-4c1e-9d3b-2a6f5e4d3c2b"},
            "spec": spec}))
        .unwrap();
        mk.status = status;
        mk
    }

    fn version(n: u32, state: KeyState, public_key: Option<String>) -> KeyVersionStatus {
        KeyVersionStatus {
            version: n,
            state,
            created: "2026-11-01T00:00:00Z".into(),
            activated: None,
            deactivated: None,
            expires: None,
            destroyed: None,
            fingerprint: format!("sha256:{n:032}"),
            kek: None,
            kid: Some(format!("kid-{n}")),
            public_key,
            transitions: vec![],
        }
    }

    fn with_current(v: u32, state: KeyState) -> ManagedKeyStatus {
        ManagedKeyStatus {
            current_version: Some(v),
            state: Some(state.as_str().into()),
            version_count: v,
            versions: vec![version(v, state, None)],
            ..Default::default()
        }
    }

    #[test]
    fn can_mount_follows_the_key_service_rules() {
        let spec = json!({"access": {"serviceAccounts": [
            {"namespace": "team-a", "name": "app"},
            {"namespace": "team-b", "name": "app"}]}});
        let mk = key(spec.clone(), Some(with_current(3, KeyState::Active)));
        let yes = can_mount(&mk, "team-a", "app");
        assert!(yes.allowed, "{yes}");
        assert!(yes.reason.contains("current version 3"), "{yes}");
        let other = can_mount(&mk, "team-a", "web");
        assert!(!other.allowed);
        assert!(
            other.reason.contains("add {namespace: team-a, name: web}"),
            "{other}"
        );
        // Another namespace, granted by the key itself: allowed, naming how to ask for it.
        let elsewhere = can_mount(&mk, "team-b", "app");
        assert!(
            elsewhere.allowed && elsewhere.reason.contains("`key: team-a/k`"),
            "{elsewhere}"
        );
        assert!(!can_mount(&mk, "team-b", "other").allowed);
        // Granted but nothing to serve.
        let suspended = key(
            json!({"desiredState": "Suspended", "access": spec["access"]}),
            Some(with_current(3, KeyState::Suspended)),
        );
        let s = can_mount(&suspended, "team-a", "app");
        assert!(!s.allowed && s.reason.contains("suspended"), "{s}");
        assert!(!can_mount(&key(spec.clone(), None), "team-a", "app").allowed);
        // Public-only grant of a symmetric key.
        let public = key(
            json!({"access": {"serviceAccounts": [{"namespace": "team-a", "name": "app", "publicOnly": true}]}}),
            Some(with_current(1, KeyState::Active)),
        );
        let p = can_mount(&public, "team-a", "app");
        assert!(!p.allowed && p.reason.contains("no public part"), "{p}");
    }

    #[test]
    fn jwks_from_status_public_keys_only_for_usable_versions() {
        let alg = crate::crd::KeyAlgorithm::EcdsaP256;
        let pems: Vec<String> = (0..3)
            .map(|_| {
                crate::keys::public_pem(alg, &crate::keys::generate(alg).unwrap())
                    .unwrap()
                    .unwrap()
            })
            .collect();
        let status = ManagedKeyStatus {
            current_version: Some(2),
            versions: vec![
                version(3, KeyState::PreActivation, Some(pems[2].clone())),
                version(2, KeyState::Active, Some(pems[1].clone())),
                version(1, KeyState::Compromised, Some(pems[0].clone())),
            ],
            ..Default::default()
        };
        let mk = key(json!({"algorithm": "ecdsa-p256"}), Some(status));
        let set: serde_json::Value = serde_json::from_str(&jwks(&mk).unwrap()).unwrap();
        let kids: Vec<&str> = set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, ["kid-3", "kid-2"]);
        assert!(
            set["keys"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k.get("d").is_none())
        );
        let aes = key(json!({"algorithm": "aes-256"}), None);
        assert!(jwks(&aes).unwrap_err().contains("symmetric"));
    }

    #[test]
    fn status_shows_versions_access_and_relative_times() {
        let now: Timestamp = "2026-11-24T00:00:00Z".parse().unwrap();
        let mut st = with_current(2, KeyState::Active);
        st.next_rotation = Some("2026-11-25T01:00:00Z".into());
        let mk = key(
            json!({"policyRef": {"name": "quarterly"}, "access": {"serviceAccounts": [{"namespace": "team-a", "name": "app"}]}}),
            Some(st),
        );
        let text = status(&mk, now);
        assert!(
            text.contains("ManagedKey team-a/k (aes-256, policy quarterly)"),
            "{text}"
        );
        assert!(text.contains("Active (current version 2)"), "{text}");
        assert!(text.contains("2026-11-25T01:00:00Z (in 1d1h)\n"), "{text}");
        assert!(text.contains("  team-a/app\n"), "{text}");
        let mut staged = mk.clone();
        staged.status.as_mut().unwrap().next_version = Some(3);
        assert!(
            status(&staged, now).contains("(in 1d1h) (version 3 pre-published, activates then)\n"),
            "{}",
            status(&staged, now)
        );
        assert!(status(&key(json!({}), None), now).contains("none yet"));
        assert_eq!(
            relative("2026-11-23T23:55:00Z", now),
            "2026-11-23T23:55:00Z (5m ago)"
        );
        assert_eq!(relative("soon", now), "soon");
    }

    #[test]
    fn restore_object_keeps_the_spec_and_names_the_uid() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k.yaml");
        std::fs::write(
            &f,
            "apiVersion: keyward.io/v1alpha1\nkind: ManagedKey\nmetadata: {name: old, namespace: x, uid: u, resourceVersion: \"9\"}\nspec: {algorithm: ed25519, deletion: {scheduled: true}}\n",
        )
        .unwrap();
        let uid = "0b9d8c2e-8f7a-4c1e-9d3b-2a6f5e4d3c2b";
        let mk = super::super::restore_object("team-a", "k", uid, Some(&f), None).unwrap();
        assert_eq!(mk.metadata.name.as_deref(), Some("k"));
        assert_eq!(mk.metadata.namespace.as_deref(), Some("team-a"));
        assert!(mk.metadata.resource_version.is_none() && mk.metadata.uid.is_none());
        assert_eq!(
            mk.annotations()
                .get(crate::crd::RESTORE_ANNOTATION)
                .map(String::as_str),
            Some(uid)
        );
        assert_eq!(mk.spec.algorithm, crate::crd::KeyAlgorithm::Ed25519);
        assert!(mk.spec.deletion.is_none());
        let bad = super::super::restore_object("team-a", "k", "../x", Some(&f), None);
        assert!(bad.unwrap_err().to_string().contains("is not a UID"));
        let none = super::super::restore_object("team-a", "k", uid, None, None);
        assert!(none.unwrap_err().to_string().contains("--algorithm"));
    }
}
