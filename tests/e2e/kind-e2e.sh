#!/usr/bin/env bash
# keyward end to end on kind: cluster, Secrets Store CSI Driver, image, chart, a pod that reads
# its key, a rotation, a refused pod. Needs docker (with a running engine), kind, kubectl, helm.
# Without them it prints SKIPPED with the reason and exits 0.
# KEYWARD_E2E_EXISTING_CLUSTER=1 uses the cluster KUBECONFIG points at (chart already installed).
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=${KIND_CLUSTER:-keyward}
CSI_VERSION=${CSI_DRIVER_VERSION:-1.5.4}   # secrets-store-csi-driver chart, pinned
NS=keyward-system
existing=${KEYWARD_E2E_EXISTING_CLUSTER:-}

skip() { echo "SKIPPED: $*"; exit 0; }
if [ -z "$existing" ]; then
  for t in docker kind kubectl helm; do command -v "$t" >/dev/null 2>&1 || skip "$t is not installed"; done
  docker info >/dev/null 2>&1 || skip "no Docker engine is running (docker info failed)"
else
  command -v kubectl >/dev/null 2>&1 || skip "kubectl is not installed"
fi

logs() {
  echo "---- diagnostics ----"
  kubectl get pods -A -o wide || true
  kubectl -n "$NS" logs deploy/keyward-controller --tail=100 || true
  kubectl -n "$NS" logs ds/keyward-csi-provider --tail=100 || true
  kubectl get mk -A -o yaml || true
  kubectl get events -A --sort-by=.lastTimestamp | tail -50 || true
}
cleanup() {
  rc=$?
  [ $rc -ne 0 ] && logs
  [ -z "$existing" ] && [ -z "${KEEP_CLUSTER:-}" ] && kind delete cluster --name "$CLUSTER" || true
  exit $rc
}
trap cleanup EXIT

fingerprint() { # sha256: + first 32 hex of SHA-256("keyward-fingerprint-v1\0" || key)
  python3 -c 'import sys,hashlib; d=sys.stdin.buffer.read(); print("sha256:"+hashlib.sha256(b"keyward-fingerprint-v1\0"+d).hexdigest()[:32])'
}

if [ -z "$existing" ]; then
  kind create cluster --config kind-config.yaml --name "$CLUSTER"
  helm repo add secrets-store-csi-driver https://kubernetes-sigs.github.io/secrets-store-csi-driver/charts >/dev/null
  helm install csi secrets-store-csi-driver/secrets-store-csi-driver -n kube-system --version "$CSI_VERSION" \
    --set 'tokenRequests[0].audience=keyward' --set enableSecretRotation=true --set rotationPollInterval=10s --wait
  make image IMAGE=keyward:dev
  kind load docker-image keyward:dev --name "$CLUSTER"
  helm install keyward charts/keyward -n "$NS" --create-namespace --set controller.maxRequeueSeconds=5 --wait
fi

kubectl apply -f examples/rotation-policy.yaml -f examples/managed-key.yaml
kubectl wait mk/payments-dek --for=jsonpath='{.status.currentVersion}'=1 --timeout=60s
kubectl apply -f examples/pod.yaml
kubectl wait pod/payments --for=condition=Ready --timeout=120s
want=$(kubectl get mk payments-dek -o jsonpath='{.status.versions[?(@.version==1)].fingerprint}')
got=$(kubectl exec payments -- cat /keys/dek | fingerprint)
[ "$got" = "$want" ] || { echo "mounted key $got != status $want"; exit 1; }
echo "mounted key matches version 1: $got"

kubectl annotate mk payments-dek keyward.io/rotate-now="$(date +%s)" --overwrite
kubectl wait mk/payments-dek --for=jsonpath='{.status.currentVersion}'=2 --timeout=60s
want2=$(kubectl get mk payments-dek -o jsonpath='{.status.versions[?(@.version==2)].fingerprint}')
for _ in $(seq 1 30); do
  got2=$(kubectl exec payments -- cat /keys/dek | fingerprint)
  [ "$got2" = "$want2" ] && break
  sleep 5
done
[ "$got2" = "$want2" ] || { echo "mounted file did not follow the rotation"; exit 1; }
echo "after rotation the mounted key is version 2: $got2"

# A pod whose service account is not allowed never starts; its Events name the reason.
kubectl create serviceaccount intruder --dry-run=client -o yaml | kubectl apply -f -
sed -e 's/name: payments$/name: intruder/' -e 's/serviceAccountName: payments/serviceAccountName: intruder/' examples/pod.yaml \
  | awk 'BEGIN{RS="---"; ORS="---"} /kind: Pod/' | kubectl apply -f -
sleep 30
phase=$(kubectl get pod intruder -o jsonpath='{.status.phase}')
[ "$phase" != "Running" ] || { echo "intruder pod started"; exit 1; }
kubectl get events --field-selector involvedObject.name=intruder -o jsonpath='{.items[*].message}' | grep -q "may not mount" \
  || { echo "intruder's Events do not name the reason"; exit 1; }
echo "intruder pod refused: $(kubectl get events --field-selector involvedObject.name=intruder -o jsonpath='{.items[-1:].message}')"
echo "e2e: PASS"
