"""Render the chart's identities and RBAC (ServiceAccounts, ClusterRoles, Roles and their
bindings) with the default values, as a JSON list on stdout, so tests can install exactly
what `helm install` would and run the binaries under it:
`.venv/bin/python tests/py/render_rbac.py [NAMESPACE] [--admission]` (default keyward-system).
With --admission it prints the ValidatingAdmissionPolicy and the ClusterRoles instead, for the
test that evaluates the policy against the roles (the test API server enforces no admission
policy).
"""
import os
import sys

import helm_python as helm
import json

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}

args = [a for a in sys.argv[1:] if a != "--admission"]
if "--admission" in sys.argv:
    KINDS = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ClusterRole"}
ns = args[0] if args else "keyward-system"
chart = helm.Chart.load(os.path.join(ROOT, "charts", "keyward"))
rendered = chart.render(chart.values, name="keyward", namespace=ns, is_install=True)
out = []
for path, text in sorted(rendered.items()):
    if not path.endswith(".yaml"):
        continue
    for d in yaml.safe_load_all(text):
        if d and d.get("kind") in KINDS:
            out.append(d)
json.dump(out, sys.stdout)
