#!/usr/bin/env bash
# keyward end to end on kind, in one command (`make e2e`):
#   kind cluster (kind-config.yaml) -> Secrets Store CSI Driver (pinned, rotation on, token
#   requests for audience keyward) -> keyward image built and loaded -> helm install
#   charts/keyward -> RotationPolicy + ManagedKey + SecretProviderClass + Pod ->
#   1. the mounted file is the current key (fingerprint against .status),
#   2. a rotation changes the mounted file to the new current key,
#   3. a pod whose service account is not allowed never starts; its Events name the reason;
#   4. (KEYWARD_E2E_KMS=1) Secrets encrypted at rest through `keyward kms-plugin`: the cluster
#      comes from tests/e2e/kind-config-kms.yaml and tests/e2e/kms-step.sh checks etcd.
# Logs and state are collected on failure; the cluster is deleted at the end.
#
# Needs docker (with a running engine), kind (>= v0.29.0 for the pinned node image), kubectl,
# helm and python3. Kubernetes >= 1.30 (the CSI driver chart 1.6.0 requires it). Without them it prints `SKIPPED: <reason>` and exits 0.
#
# Environment:
#   KIND_CLUSTER=keyward            cluster name
#   KIND_NODE_IMAGE=...             override the node image of kind-config.yaml
#   CSI_DRIVER_VERSION=1.6.0        secrets-store-csi-driver chart version
#   IMAGE=keyward:e2e               image tag built and loaded
#   KEEP_CLUSTER=1                  keep the cluster afterwards (for debugging)
#   KEYWARD_E2E_KMS=1               also turn on KMS v2 encryption at rest (default 1 when
#                                   the script creates the cluster; never on an existing one)
#   E2E_ARTIFACTS=DIR               where diagnostics go on failure (default: a temp dir)
#   KEYWARD_E2E_EXISTING_CLUSTER=1  use the cluster KUBECONFIG points at instead of creating
#                                   one (`make demo` does this); the CSI driver and keyward
#                                   are installed there only if missing, nothing is deleted.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${KIND_CLUSTER:-keyward}
CSI_VERSION=${CSI_DRIVER_VERSION:-1.6.0}
IMAGE=${IMAGE:-keyward:e2e}
NS=keyward-system
APP_NS=default
existing=${KEYWARD_E2E_EXISTING_CLUSTER:-}
# Encryption at rest rewires the apiserver: only on a cluster this script creates.
KMS=${KEYWARD_E2E_KMS:-1}
[ -n "$existing" ] && KMS=0
ARTIFACTS=${E2E_ARTIFACTS:-$(mktemp -d -t keyward-e2e.XXXXXX)}

skip() { echo "SKIPPED: $*"; exit 0; }
if [ -z "$existing" ]; then
  command -v docker >/dev/null 2>&1 || skip "docker is not installed (needs docker with a running engine, kind, kubectl, helm)"
  docker info >/dev/null 2>&1 || skip "no Docker engine is running (docker info failed)"
  for t in kind kubectl helm; do
    command -v "$t" >/dev/null 2>&1 || skip "$t is not installed (needs docker with a running engine, kind, kubectl, helm)"
  done
else
  command -v kubectl >/dev/null 2>&1 || skip "kubectl is not installed"
  kubectl version --request-timeout=5s >/dev/null 2>&1 || skip "no cluster reachable through KUBECONFIG"
fi

step() { echo; echo "==> $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# ---------------------------------------------------------------- diagnostics and cleanup
collect() {
  mkdir -p "$ARTIFACTS"
  echo "---- diagnostics (also in $ARTIFACTS) ----"
  {
    kubectl get nodes -o wide
    kubectl get pods -A -o wide
    kubectl get mk,rotationpolicies -A -o yaml
    kubectl get secretproviderclasses,secretproviderclasspodstatuses -A -o yaml
    kubectl describe pod -n "$APP_NS" payments intruder
    kubectl get events -A --sort-by=.lastTimestamp
  } >"$ARTIFACTS/cluster.txt" 2>&1 || true
  kubectl -n "$NS" logs -l app.kubernetes.io/component=controller --all-containers --prefix --tail=500 >"$ARTIFACTS/controller.log" 2>&1 || true
  kubectl -n "$NS" logs -l app.kubernetes.io/component=csi-provider --all-containers --prefix --tail=500 >"$ARTIFACTS/provider.log" 2>&1 || true
  kubectl -n kube-system logs -l app=secrets-store-csi-driver --all-containers --prefix --tail=500 >"$ARTIFACTS/csi-driver.log" 2>&1 || true
  tail -n 40 "$ARTIFACTS/controller.log" "$ARTIFACTS/provider.log" "$ARTIFACTS/csi-driver.log" 2>/dev/null || true
  kubectl get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -n 30 || true
}
cleanup() {
  rc=$?
  trap - EXIT
  [ "$rc" -ne 0 ] && collect
  if [ -n "$existing" ]; then
    kubectl delete pod -n "$APP_NS" intruder --ignore-not-found --wait=false >/dev/null 2>&1 || true
  elif [ -n "${KEEP_CLUSTER:-}" ]; then
    echo "keeping cluster $CLUSTER (KUBECONFIG=$KUBECONFIG)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT

# sha256: + the first 32 hex characters of SHA-256("keyward-fingerprint-v1\0" || key bytes),
# as src/crypto/mod.rs::fingerprint and .status.versions[].fingerprint.
fingerprint() { { printf 'keyward-fingerprint-v1\0'; cat; } | sha256sum | cut -c1-32 | sed 's/^/sha256:/'; }
mounted_fingerprint() { kubectl -n "$APP_NS" exec payments -- cat /keys/dek | fingerprint; }
current_version() { kubectl -n "$APP_NS" get mk payments-dek -o jsonpath='{.status.currentVersion}'; }
status_fingerprint() { kubectl -n "$APP_NS" get mk payments-dek -o jsonpath="{.status.versions[?(@.version==$1)].fingerprint}"; }
# until SECONDS DESCRIPTION COMMAND...: retry COMMAND every 2 s until it succeeds.
until_ok() {
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || fail "timed out after ${t}s waiting for $what"
    sleep 2
  done
}

# ---------------------------------------------------------------- cluster and installs
if [ -z "$existing" ]; then
  export KUBECONFIG="$ARTIFACTS/kubeconfig"
  kind_config=kind-config.yaml
  if [ "$KMS" = 1 ]; then
    # The KMS plugin's root key and the EncryptionConfiguration live on the host and are
    # mounted into the control-plane node: never in the cluster whose Secrets they protect.
    KMS_DIR="$ARTIFACTS/kms"
    mkdir -p "$KMS_DIR"
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$KMS_DIR/kek.hex")
    cat >"$KMS_DIR/enc.yaml" <<'YAML'
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - identity: {}
YAML
    kind_config="$ARTIFACTS/kind-config-kms.yaml"
    sed "s#__KMS_DIR__#$KMS_DIR#" tests/e2e/kind-config-kms.yaml >"$kind_config"
  fi
  step "kind cluster $CLUSTER ($kind_config)"
  kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  kind create cluster --name "$CLUSTER" --config "$kind_config" --kubeconfig "$KUBECONFIG" \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 120s
fi

# The CSIDriver secrets-store.csi.k8s.io is shared by every provider on the cluster: keep the
# audiences others asked for and append keyward's (`--set tokenRequests[0]...` would replace
# them and break the other providers' mounts).
AUDIENCE=keyward
merged_token_requests() {
  local have
  have=$(kubectl get csidriver secrets-store.csi.k8s.io -o jsonpath='{.spec.tokenRequests}' 2>/dev/null || true)
  python3 -c 'import json,sys
have = json.loads(sys.argv[1] or "[]")
if not any(r.get("audience") == sys.argv[2] for r in have):
    have.append({"audience": sys.argv[2]})
print(json.dumps(have, separators=(",", ":")))' "$have" "$AUDIENCE"
}
# The driver re-mounts a pod only when kubelet republishes it (about every 60-90 s with
# requiresRepublish) and its rotationPollInterval has passed since the last write, so a
# rotated key can take max(poll interval, 90 s) to reach the file; 60 s of slack on top.
ROTATION_POLL_SECONDS=5
ROTATION_WAIT=$(( (ROTATION_POLL_SECONDS > 90 ? ROTATION_POLL_SECONDS : 90) + 60 ))

if ! kubectl get csidriver secrets-store.csi.k8s.io >/dev/null 2>&1 \
   || ! kubectl get csidriver secrets-store.csi.k8s.io -o jsonpath='{.spec.tokenRequests[*].audience}' | grep -qw "$AUDIENCE"; then
  command -v helm >/dev/null 2>&1 || fail "the Secrets Store CSI Driver is missing or lacks audience $AUDIENCE, and helm is missing"
  step "Secrets Store CSI Driver chart $CSI_VERSION (rotation every ${ROTATION_POLL_SECONDS}s, token audience $AUDIENCE appended)"
  helm repo add secrets-store-csi-driver https://kubernetes-sigs.github.io/secrets-store-csi-driver/charts --force-update >/dev/null
  helm upgrade --install csi secrets-store-csi-driver/secrets-store-csi-driver -n kube-system \
    --version "$CSI_VERSION" --reuse-values \
    --set-json "tokenRequests=$(merged_token_requests)" \
    --set enableSecretRotation=true --set rotationPollInterval=${ROTATION_POLL_SECONDS}s \
    --wait --timeout 5m
fi
kubectl get csidriver secrets-store.csi.k8s.io -o jsonpath='{.spec.tokenRequests[*].audience}' | grep -qw "$AUDIENCE" \
  || fail "the CSIDriver secrets-store.csi.k8s.io has no tokenRequests for audience $AUDIENCE"
kubectl get csidriver secrets-store.csi.k8s.io -o jsonpath='{.spec.requiresRepublish}' | grep -qx true \
  || fail "the CSIDriver secrets-store.csi.k8s.io has requiresRepublish false: rotated keys would never reach running pods (enableSecretRotation=true)"

if ! kubectl -n "$NS" get deploy keyward-controller >/dev/null 2>&1; then
  command -v helm >/dev/null 2>&1 || fail "keyward is not installed in $NS and helm is missing"
  if [ -z "$existing" ]; then
    step "image $IMAGE (make image) -> kind load"
    make image IMAGE="$IMAGE"
    kind load docker-image "$IMAGE" --name "$CLUSTER"
  fi
  step "helm install keyward charts/keyward"
  helm upgrade --install keyward charts/keyward -n "$NS" --create-namespace \
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=IfNotPresent \
    --set controller.maxRequeueSeconds=5 \
    --wait --timeout 5m
fi
kubectl -n "$NS" rollout status deploy/keyward-controller --timeout=180s
kubectl -n "$NS" rollout status ds/keyward-csi-provider --timeout=180s

# ---------------------------------------------------------------- 1. the pod mounts the current key
step "RotationPolicy + ManagedKey payments-dek"
kubectl apply -f examples/rotation-policy.yaml -f examples/managed-key.yaml
has_version() { [ -n "$(current_version)" ]; }
until_ok 90 "payments-dek to get its first version" has_version
kubectl -n "$APP_NS" get mk payments-dek

step "SecretProviderClass payments-keys + ServiceAccount payments + Pod payments"
kubectl -n "$APP_NS" delete pod payments intruder --ignore-not-found --wait=true >/dev/null
kubectl apply -f examples/secretproviderclass.yaml -f examples/pod.yaml
kubectl -n "$APP_NS" wait pod/payments --for=condition=Ready --timeout=180s

v1=$(current_version)
want1=$(status_fingerprint "$v1")
[ -n "$want1" ] || fail "no fingerprint for version $v1 in .status.versions"
got1=$(mounted_fingerprint)
[ "$got1" = "$want1" ] || fail "mounted /keys/dek is $got1, the current version $v1 is $want1"
echo "ok: /keys/dek is version $v1 ($got1)"

# ---------------------------------------------------------------- 2. rotation reaches the file
step "rotate now"
kubectl -n "$APP_NS" annotate mk payments-dek keyward.io/rotate-now="$(date +%s)" --overwrite
rotated() { [ "$(current_version)" != "$v1" ]; }
until_ok 90 "a new current version after the rotation" rotated
v2=$(current_version)
want2=$(status_fingerprint "$v2")
[ -n "$want2" ] && [ "$want2" != "$want1" ] || fail "version $v2 has no new fingerprint in .status ($want2)"
remounted() { [ "$(mounted_fingerprint)" = "$want2" ]; }
until_ok "$ROTATION_WAIT" "the mounted file to become version $v2 (kubelet republish period + driver poll ${ROTATION_POLL_SECONDS}s)" remounted
echo "ok: after the rotation /keys/dek is version $v2 ($want2)"
# version: all also mounts the previous version (Deactivated, within the 7d grace period).
prev=$(kubectl -n "$APP_NS" exec payments -- cat "/keys/dek.v$v1" | fingerprint)
[ "$prev" = "$want1" ] || fail "/keys/dek.v$v1 is $prev, expected version $v1 ($want1)"
echo "ok: /keys/dek.v$v1 still holds the previous version during the grace period"

# ---------------------------------------------------------------- 3. a pod that is not allowed
step "pod intruder (service account not in spec.access) must not start"
kubectl apply -f - <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: intruder, namespace: $APP_NS}
---
apiVersion: v1
kind: Pod
metadata: {name: intruder, namespace: $APP_NS}
spec:
  serviceAccountName: intruder
  containers:
    - name: app
      image: busybox:1.36
      command: ["sleep", "3600"]
      volumeMounts: [{name: keys, mountPath: /keys, readOnly: true}]
  volumes:
    - name: keys
      csi: {driver: secrets-store.csi.k8s.io, readOnly: true, volumeAttributes: {secretProviderClass: payments-keys}}
EOF
events() { kubectl -n "$APP_NS" get events --field-selector involvedObject.kind=Pod,involvedObject.name=intruder -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}'; }
refused() { events | grep -q 'may not mount'; }
until_ok 120 "a FailedMount Event on pod intruder naming the refusal" refused
phase=$(kubectl -n "$APP_NS" get pod intruder -o jsonpath='{.status.phase}')
started=$(kubectl -n "$APP_NS" get pod intruder -o jsonpath='{.status.containerStatuses[0].started}')
[ "$phase" = "Pending" ] && [ "$started" != "true" ] || fail "pod intruder is $phase (started=$started)"
echo "ok: intruder is $phase; its Event says:"
events | grep 'may not mount' | tail -n 1 | sed 's/^/    /'
kubectl -n "$APP_NS" delete pod intruder --wait=false >/dev/null

# ---------------------------------------------------------------- 4. encryption at rest
if [ "$KMS" = 1 ]; then
  # shellcheck source=tests/e2e/kms-step.sh
  . tests/e2e/kms-step.sh
fi

echo
echo "e2e: PASS"
