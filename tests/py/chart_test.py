"""Render, lint and validate the Helm chart with helm-python-sdk (embedded Helm) and
kubernetes-validate, for the default values and several others. Exit 1 on any failure.

Writes the default rendering to argv[1] (a directory) for the Rust test that applies it to the
test API server."""
import json
import os
import subprocess
import sys

import helm_python as helm
import kubernetes_validate
import yaml

K8S = "1.33.0"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "charts", "keyward")
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def merge(base, extra):
    out = json.loads(json.dumps(base))
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


chart = helm.Chart.load(CHART)
defaults = chart.values
SETS = {
    "default": {},
    "passphrase": {"kek": {"backend": "passphrase", "passphrase": {"secretName": "kek-pass", "kdf": "pbkdf2"}}},
    "pkcs11": {"kek": {"backend": "pkcs11", "pkcs11": {"module": "/usr/lib/softhsm/libsofthsm2.so", "tokenLabel": "keyward", "pinSecretName": "hsm-pin"}}},
    "awskms": {"kek": {"backend": "awskms", "awskms": {"keyId": "alias/keyward", "region": "eu-west-1", "credentialsSecretName": "aws"}}},
    "custom-socket-dir": {"provider": {"socketDir": "/etc/kubernetes/secrets-store-csi-providers"}},
    "own-tls": {"keyService": {"tls": {"generate": False, "secretName": "my-tls"}}},
    "single-replica": {"controller": {"replicas": 1, "leaderElection": False}},
    "audit-signed": {"audit": {"signingKeySecretName": "audit-key", "checkpointEvery": 10}},
    "audit-off": {"audit": {"enabled": False}},
}


def docs(rendered):
    out = []
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml"):
            continue
        for d in yaml.safe_load_all(text):
            if d:
                out.append((path, d))
    return out


default_docs = None
all_args = []
for name, extra in SETS.items():
    values = merge(defaults, extra)
    try:
        chart.validate_schema(values)
        check(True, f"{name}: values.schema.json accepts the values")
    except Exception as e:  # noqa: BLE001
        check(False, f"{name}: schema refused valid values: {e}")
        continue
    rendered = chart.render(values, name="keyward", namespace="keyward-system", is_install=True)
    report = helm.lint(CHART, values, strict=True, namespace="keyward-system", kube_version="v" + K8S)
    errs = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
    check(not errs, f"{name}: strict lint clean {errs if errs else ''}")
    ds = docs(rendered)
    check(len(ds) >= 9, f"{name}: rendered {len(ds)} manifests")
    for path, d in ds:
        try:
            kubernetes_validate.validate(d, K8S, strict=True)
        except kubernetes_validate.ValidationError as e:
            check(False, f"{name}: {path} {d.get('kind')} invalid for Kubernetes {K8S}: {e.message}")
    check(True, f"{name}: every manifest validates against Kubernetes {K8S}")
    dep = next(d for _, d in ds if d["kind"] == "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    backend = values["kek"]["backend"]
    check(f"--kek-backend={backend}" in args, f"{name}: controller runs --kek-backend={backend}")
    sc = dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    check(sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"], f"{name}: controller hardened")
    ds_ = next(d for _, d in ds if d["kind"] == "DaemonSet")
    host = ds_["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"]
    check(host == values["provider"]["socketDir"], f"{name}: provider socket hostPath {host}")
    all_args.append({"set": name, "controller": args, "provider": ds_["spec"]["template"]["spec"]["containers"][0]["args"]})
    if name == "default":
        default_docs = ds

# Bad values are refused by the schema, with the offending key named.
for bad, key in [({"kek": {"backend": "vault"}}, "backend"), ({"controller": {"replicas": 0}}, "replicas"), ({"surprise": 1}, "surprise"), ({"provider": {"socketDir": "relative/dir"}}, "socketDir")]:
    try:
        chart.validate_schema(merge(defaults, bad))
        check(False, f"schema accepted bad values {bad}")
    except Exception as e:  # noqa: BLE001
        check(key in str(e), f"schema refuses {bad}: {str(e)[:120]}")
try:
    chart.render(merge(defaults, {"controller": {"replicas": 2, "leaderElection": False}}), name="keyward", namespace="keyward-system")
    check(False, "two replicas without leader election rendered")
except Exception as e:  # noqa: BLE001
    check("leaderElection" in str(e), "two replicas without leader election refused")

# CRDs in the chart are the generated ones.
for f in sorted(os.listdir(os.path.join(ROOT, "crds"))):
    a = open(os.path.join(ROOT, "crds", f)).read()
    b = open(os.path.join(CHART, "crds", f)).read()
    check(a == b, f"chart crds/{f} identical to crds/{f}")

# Least privilege: the provider has no RBAC; the controller's Secret access is as documented.
bindings = [d for _, d in default_docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
subjects = [s["name"] for b in bindings for s in b["subjects"]]
check("keyward-csi-provider" not in subjects, "provider service account is bound to no role")
cr = next(d for _, d in default_docs if d["kind"] == "ClusterRole")
secret_rules = [r for r in cr["rules"] if "secrets" in r["resources"]]
check(len(secret_rules) == 1 and sorted(secret_rules[0]["verbs"]) == sorted(["get", "list", "watch", "create", "update", "delete"]), "controller secret verbs as documented")
check(not any("*" in r["verbs"] or "*" in r["resources"] for r in cr["rules"]), "no wildcard rules")
prov = next(d for _, d in default_docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
check(prov.get("automountServiceAccountToken") is False, "provider does not mount the default API token")
check([i["key"] for i in prov["volumes"][1]["secret"]["items"]] == ["ca.crt"], "provider mounts only ca.crt of the TLS Secret")

# The e2e suite skips cleanly without a Docker engine.
r = subprocess.run([os.path.join(ROOT, "tests/e2e/kind-e2e.sh")], capture_output=True, text=True, env={**os.environ, "KEYWARD_E2E_EXISTING_CLUSTER": ""})
check(r.returncode == 0 and r.stdout.startswith("SKIPPED:"), f"e2e without Docker: exit {r.returncode}, {r.stdout.strip()[:100]}")

if len(sys.argv) > 1:
    os.makedirs(sys.argv[1], exist_ok=True)
    keep = [d for _, d in default_docs if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    with open(os.path.join(sys.argv[1], "rbac.yaml"), "w") as f:
        yaml.safe_dump_all(keep, f)
    with open(os.path.join(sys.argv[1], "args.json"), "w") as f:
        json.dump(all_args, f)

print(f"{len(failures)} failures")
sys.exit(1 if failures else 0)
