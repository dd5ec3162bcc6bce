"""Render the chart's identities and RBAC (ServiceAccounts, ClusterRoles, Roles and their
bindings) with the default values, as a JSON list on stdout, so tests can install exactly
what `helm install` would and run the binaries under it:
`.venv/bin/python tests/py/render_rbac.py [NAMESPACE]` (default keyward-system).
"""
import os
import sys

import helm_python as helm
import json

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}

ns = sys.argv[1] if len(sys.argv) > 1 else "keyward-system"
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
