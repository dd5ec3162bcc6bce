//! Every way a Mount can fail, and the one place each becomes a gRPC code.
//!
//! The driver shows the status message in the pod's events and retries by code, so the code
//! says who must act: InvalidArgument and FailedPrecondition are for the user (fix the
//! SecretProviderClass, the grant or the key), Unauthenticated for the token set-up,
//! Unavailable for a retry, Internal for a keyward bug or version skew. Messages name the object
//! and the fix and never carry key material.

use super::format::{AnswerError, EncodeError, FormatError};
use super::params::{ParamError, TokenError};
use std::path::PathBuf;

/// Why a Mount failed. Each variant has one gRPC code (see the `From` impl below), except
/// [`MountError::KeyService`], which keeps the code the key service chose for its refusal.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The request or its `objects` parameter is malformed (InvalidArgument).
    #[error(transparent)]
    Request(#[from] ParamError),
    /// No usable pod token in the request (Unauthenticated).
    #[error(transparent)]
    PodToken(#[from] TokenError),
    /// The key cannot be written in the requested format, e.g. a public form of a symmetric
    /// key or a private form under a public-only grant (FailedPrecondition).
    #[error("object {key:?}: {source}")]
    Format {
        /// ManagedKey name.
        key: String,
        /// What the user must change.
        source: FormatError,
    },
    /// A file path the driver's writer would refuse (InvalidArgument).
    #[error("object {key:?}: file {path:?} {problem}; change its fileName")]
    Path {
        /// ManagedKey name of the object that writes the file.
        key: String,
        /// The file path.
        path: String,
        /// Why the driver refuses it.
        problem: String,
    },
    /// Two files of the mount clash (InvalidArgument).
    #[error(
        "object {key:?}: file {path:?} {problem} (an `all` object writes <fileName>.v<N> and <fileName>); rename one of the objects"
    )]
    PathClash {
        /// ManagedKey name of the object that writes the file.
        key: String,
        /// The file path.
        path: String,
        /// How it clashes.
        problem: String,
    },
    /// The files would exceed what the driver accepts (InvalidArgument).
    #[error(
        "the mount would return {total} bytes, above the 1 MiB limit; mount fewer objects or versions"
    )]
    TooLarge {
        /// Total bytes of all files.
        total: usize,
    },
    /// The key service's answer does not fit the request or cannot be encoded: a keyward bug
    /// or version skew between provider and controller (Internal).
    #[error(transparent)]
    Answer(#[from] AnswerError),
    /// The provider's own service-account token cannot be read (Unavailable: kubelet rewrites
    /// the projected file).
    #[error(
        "reading the provider's own service-account token {} (--token-file): {source}",
        path.display()
    )]
    CallerToken {
        /// `--token-file`.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The provider's own token is not valid header text (Internal).
    #[error("provider token is not valid header text")]
    CallerTokenNotHeader,
    /// The key service cannot be reached or failed below gRPC (Unavailable).
    #[error(
        "key service unreachable or failed: {detail} (check --key-service-url, TLS settings and that the controller is running)"
    )]
    KeyServiceUnreachable {
        /// The transport's message.
        detail: String,
    },
    /// The key service refused; its status is kept (the key service maps its own failures in
    /// `keyservice::service::FetchError`).
    #[error("{}", .0.message())]
    KeyService(tonic::Status),
}

impl MountError {
    /// An encoding failure of object `key`: the user's format choice or a bad answer.
    pub fn encode(key: &str, e: EncodeError) -> Self {
        match e {
            EncodeError::Format(source) => Self::Format {
                key: key.into(),
                source,
            },
            EncodeError::Answer(source) => Self::Answer(AnswerError::Object {
                key: key.into(),
                source: Box::new(source),
            }),
        }
    }
}

impl From<MountError> for tonic::Status {
    fn from(e: MountError) -> Self {
        use tonic::Code;
        let code = match &e {
            MountError::Request(_)
            | MountError::Path { .. }
            | MountError::PathClash { .. }
            | MountError::TooLarge { .. } => Code::InvalidArgument,
            MountError::PodToken(_) => Code::Unauthenticated,
            MountError::Format { .. } => Code::FailedPrecondition,
            MountError::Answer(_) | MountError::CallerTokenNotHeader => Code::Internal,
            MountError::CallerToken { .. } | MountError::KeyServiceUnreachable { .. } => {
                Code::Unavailable
            }
            MountError::KeyService(s) => return s.clone(),
        };
        tonic::Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    /// One row per variant: the code each failure kind reaches the driver with.
    #[test]
    fn every_variant_maps_to_its_code() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let cases: Vec<(MountError, Code)> = vec![
            (ParamError::NoObjects.into(), Code::InvalidArgument),
            (
                TokenError::Missing {
                    audience: "keyward".into(),
                }
                .into(),
                Code::Unauthenticated,
            ),
            (
                MountError::Format {
                    key: "db".into(),
                    source: FormatError::NoPublicPart,
                },
                Code::FailedPrecondition,
            ),
            (
                MountError::Path {
                    key: "db".into(),
                    path: "/x".into(),
                    problem: "is absolute".into(),
                },
                Code::InvalidArgument,
            ),
            (
                MountError::PathClash {
                    key: "db".into(),
                    path: "db.v1".into(),
                    problem: "is written twice".into(),
                },
                Code::InvalidArgument,
            ),
            (
                MountError::TooLarge { total: 2 << 20 },
                Code::InvalidArgument,
            ),
            (
                AnswerError::Count {
                    answered: 1,
                    requested: 2,
                }
                .into(),
                Code::Internal,
            ),
            (
                MountError::CallerToken {
                    path: "/t".into(),
                    source: io(),
                },
                Code::Unavailable,
            ),
            (MountError::CallerTokenNotHeader, Code::Internal),
            (
                MountError::KeyServiceUnreachable {
                    detail: "connection refused".into(),
                },
                Code::Unavailable,
            ),
            (
                MountError::KeyService(tonic::Status::permission_denied("no")),
                Code::PermissionDenied,
            ),
            (
                MountError::KeyService(tonic::Status::not_found("gone")),
                Code::NotFound,
            ),
        ];
        for (e, code) in cases {
            let msg = e.to_string();
            let s = tonic::Status::from(e);
            assert_eq!(s.code(), code, "{msg}");
            assert_eq!(s.message(), msg);
        }
    }

    /// A public format of a symmetric key is the user's to fix (format or algorithm), never a
    /// server fault: FailedPrecondition, naming the object and what to use instead.
    #[test]
    fn public_format_of_a_symmetric_key_is_failed_precondition_naming_the_fix() {
        for format in [
            super::super::params::Format::PublicJwk,
            super::super::params::Format::PublicPem,
            super::super::params::Format::Jwks,
        ] {
            let e = super::super::format::encode(format, "aes-256", &[7u8; 32], "kid", false)
                .map_err(|e| MountError::encode("db", e))
                .unwrap_err();
            let s = tonic::Status::from(e);
            assert_eq!(s.code(), Code::FailedPrecondition, "{format:?}: {s:?}");
            assert!(
                s.message().contains("object \"db\"")
                    && s.message().contains("symmetric keys have no public part"),
                "{format:?}: {}",
                s.message()
            );
        }
        // A private format under a public-only grant names the formats that work.
        let e = super::super::format::encode(
            super::super::params::Format::Raw,
            "ecdsa-p256",
            &[1u8; 4],
            "kid",
            true,
        )
        .map_err(|e| MountError::encode("jwt", e))
        .unwrap_err();
        let s = tonic::Status::from(e);
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(
            s.message().contains("public-pem, public-jwk or jwks"),
            "{}",
            s.message()
        );
    }
}
