#!/usr/bin/env bash
# Sourced by kind-e2e.sh (cluster made from tests/e2e/kind-config-kms.yaml, image loaded):
# turn on encryption of Secrets at rest through `keyward kms-plugin` and prove it.
#   1. the plugin runs as a static pod on the control-plane node (root key from the node),
#   2. enc.yaml switches to kms-first; the apiserver reloads it and reports kms-providers healthy,
#   3. a new Secret is stored in etcd as `k8s:enc:kms:v2:keyward:` ciphertext without its
#      plaintext, and still reads back through the API.
# Needs from the caller: CLUSTER, IMAGE, KMS_DIR, step, fail, until_ok.

kms_node="${CLUSTER}-control-plane"
step "KMS v2: keyward kms-plugin as a static pod on $kms_node"
docker exec -i "$kms_node" sh -c 'cat > /etc/kubernetes/manifests/keyward-kms.yaml' <<YAML
apiVersion: v1
kind: Pod
metadata: {name: keyward-kms, namespace: kube-system, labels: {app: keyward-kms}}
spec:
  hostNetwork: true
  priorityClassName: system-node-critical
  containers:
    - name: kms
      image: $IMAGE
      imagePullPolicy: Never
      args: [kms-plugin, --socket=/var/run/keyward-kms/kms.sock, --kek-backend=local, --local-kek-file=/etc/keyward-kms/kek.hex]
      securityContext: {runAsUser: 0, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
      volumeMounts:
        - {name: socket, mountPath: /var/run/keyward-kms}
        - {name: kek, mountPath: /etc/keyward-kms, readOnly: true}
  volumes:
    - {name: socket, hostPath: {path: /var/run/keyward-kms, type: DirectoryOrCreate}}
    - {name: kek, hostPath: {path: /etc/keyward-kms, type: Directory}}
YAML
socket_ready() { docker exec "$kms_node" test -S /var/run/keyward-kms/kms.sock; }
until_ok 120 "the plugin's socket /var/run/keyward-kms/kms.sock on $kms_node" socket_ready

step "KMS v2: EncryptionConfiguration kms-first (reloaded by the apiserver)"
cat >"$KMS_DIR/enc.yaml.new" <<'YAML'
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - kms: {apiVersion: v2, name: keyward, endpoint: "unix:///var/run/keyward-kms/kms.sock", timeout: 3s}
      - identity: {}
YAML
mv "$KMS_DIR/enc.yaml.new" "$KMS_DIR/enc.yaml"
kms_healthy() { kubectl get --raw '/healthz/kms-providers' 2>/dev/null | grep -qx ok; }
until_ok 180 "the apiserver to load the kms provider (/healthz/kms-providers ok)" kms_healthy

step "KMS v2: a Secret is ciphertext in etcd and plaintext through the API"
plain="keyward-e2e-plaintext-$(date +%s)"
etcd_value() {
  kubectl -n kube-system exec "etcd-$kms_node" -- etcdctl \
    --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt \
    --cert=/etc/kubernetes/pki/etcd/server.crt --key=/etc/kubernetes/pki/etcd/server.key \
    get /registry/secrets/default/kms-e2e --print-value-only
}
encrypted() {
  # A reload takes effect for new writes: write again until the stored value is kms ciphertext.
  kubectl -n default create secret generic kms-e2e --from-literal=v="$plain" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  etcd_value | head -c 64 | grep -q '^k8s:enc:kms:v2:keyward:'
}
until_ok 120 "the Secret stored with the k8s:enc:kms:v2:keyward: prefix" encrypted
if etcd_value | grep -aq "$plain"; then fail "the Secret's plaintext is readable in etcd"; fi
got=$(kubectl -n default get secret kms-e2e -o jsonpath='{.data.v}' | base64 -d)
[ "$got" = "$plain" ] || fail "the Secret reads back as '$got', not its value"
echo "ok: Secret default/kms-e2e is k8s:enc:kms:v2:keyward: ciphertext in etcd, plaintext absent, reads back through the API"
