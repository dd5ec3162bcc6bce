//! Generated gRPC types: the CSI driver's provider API and keyward's key service.
//!
//! Messages that carry key material or tokens have hand-written Debug impls that redact
//! them, so a stray `{:?}` cannot leak secrets.

#![allow(missing_docs, clippy::doc_lazy_continuation)]

/// Secrets Store CSI Driver provider API (`v1alpha1`).
pub mod csi {
    tonic::include_proto!("v1alpha1");

    impl std::fmt::Debug for MountRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("MountRequest")
                .field("attributes", &"[redacted]")
                .field("secrets", &"[redacted]")
                .field("target_path", &self.target_path)
                .field("permission", &self.permission)
                .finish()
        }
    }

    impl std::fmt::Debug for MountResponse {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("MountResponse")
                .field("object_version", &self.object_version)
                .field("error", &self.error)
                .field("files", &self.files)
                .finish()
        }
    }

    impl std::fmt::Debug for File {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("File")
                .field("path", &self.path)
                .field("mode", &format_args!("{:o}", self.mode))
                .field(
                    "contents",
                    &format_args!("[{} bytes redacted]", self.contents.len()),
                )
                .finish()
        }
    }
}

/// keyward's key service (`keyward.keyservice.v1`).
pub mod keyservice {
    tonic::include_proto!("keyward.keyservice.v1");

    impl std::fmt::Debug for FetchRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FetchRequest")
                .field("pod_token", &"[redacted]")
                .field("pod_namespace", &self.pod_namespace)
                .field("pod_name", &self.pod_name)
                .field("pod_uid", &self.pod_uid)
                .field("service_account", &self.service_account)
                .field("keys", &self.keys)
                .finish()
        }
    }

    impl std::fmt::Debug for FetchResponse {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FetchResponse")
                .field("keys", &self.keys)
                .finish()
        }
    }

    impl std::fmt::Debug for KeyResult {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("KeyResult")
                .field("key", &self.key)
                .field("algorithm", &self.algorithm)
                .field("versions", &self.versions)
                .field("current", &self.current)
                .field("next", &self.next)
                .field("public_only", &self.public_only)
                .finish()
        }
    }

    impl std::fmt::Debug for ServedVersion {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ServedVersion")
                .field("version", &self.version)
                .field("state", &self.state)
                .field("material", &"[redacted]")
                .field("fingerprint", &self.fingerprint)
                .field("version_id", &self.version_id)
                .finish()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_material_and_tokens() {
        let f = csi::File {
            path: "k".into(),
            mode: 0o400,
            contents: bytes::Bytes::from_static(b"SECRETSECRET"),
        };
        let s = format!("{f:?}");
        assert!(
            !s.contains("SECRET") && s.contains("12 bytes redacted"),
            "{s}"
        );
        let v = keyservice::ServedVersion {
            material: bytes::Bytes::from_static(b"SECRETSECRET"),
            ..Default::default()
        };
        assert!(!format!("{v:?}").contains("SECRET"));
        let r = keyservice::FetchRequest {
            pod_token: "TOKENTOKEN".into(),
            ..Default::default()
        };
        assert!(!format!("{r:?}").contains("TOKEN"));
        let m = csi::MountRequest {
            attributes: "TOKENTOKEN".into(),
            secrets: "TOKENTOKEN".into(),
            ..Default::default()
        };
        assert!(!format!("{m:?}").contains("TOKEN"));
    }
}

/// Kubernetes KMS v2 plugin API (`v2`), served by `keyward kms-plugin`.
pub mod kms {
    tonic::include_proto!("v2");

    impl std::fmt::Debug for EncryptRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("EncryptRequest")
                .field(
                    "plaintext",
                    &format_args!("[{} bytes redacted]", self.plaintext.len()),
                )
                .field("uid", &self.uid)
                .finish()
        }
    }

    impl std::fmt::Debug for DecryptResponse {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("DecryptResponse")
                .field(
                    "plaintext",
                    &format_args!("[{} bytes redacted]", self.plaintext.len()),
                )
                .finish()
        }
    }
}
