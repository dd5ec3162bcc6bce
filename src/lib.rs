//! keyward: Kubernetes-native key management.
//!
//! Data-encryption keys (DEKs) are generated, stored only wrapped under a key-encryption key
//! (KEK), rotated on schedule, tracked through the NIST SP 800-57 lifecycle, audited, and
//! delivered to the pods allowed to have them through the Secrets Store CSI Driver.

pub mod audit;
pub mod backup;
pub mod controller;
pub mod crd;
pub mod crypto;
pub mod duration;
pub mod kek;
pub mod keys;
pub mod keyservice;
pub mod kms;
pub mod lifecycle;
pub mod plugin;
pub mod proto;
pub mod provider;
pub mod rotation;
pub mod shutdown;
pub mod state;
pub mod storage;
pub mod tls;
pub mod wrapped_key;
