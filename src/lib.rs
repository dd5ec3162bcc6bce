//! keyward: Kubernetes-native key management.
