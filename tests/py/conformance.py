"""Independent conformance check of keyward's CSI provider, through csi_driver.py: a stand-in that
reproduces what the Secrets Store CSI Driver v1.6.0 sends (attributes merge order, `secrets` =
`null`, permission `420`, dial options) and what it does with the answer (response checks, path
validation, atomic writer, remount semantics). The client is generated from proto/csi_provider.proto
at run time with grpcio-tools.

Usage: conformance.py <socket> <proto_dir> <case.json>
case.json: {"attributes": {...}, "expect_files": [{"path", "mode", "contents_hex"}],
            "bad_attributes": {...}, "bad_code": "NOT_FOUND", "bad_message": "..."}
`attributes` are the attributes a test expects the provider to get; they are split back into what
the driver starts from (SecretProviderClass parameters, the pod volume's volumeAttributes, the pod
and its tokens) so that the driver stand-in rebuilds the request itself.
Exit status 0 means every check passed; failures print what differed.
"""

import json
import os
import re
import stat
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import csi_driver as cd  # noqa: E402

CHECKS = 0


def check(cond, what):
    global CHECKS
    if not cond:
        raise SystemExit(f"FAIL: {what}")
    CHECKS += 1
    print(f"ok: {what}")


def split_attributes(attrs):
    """Case attributes -> (spc_parameters, volume_attributes, pod, tokens, expiration)."""
    pod = {
        "name": attrs[cd.POD_NAME_KEY],
        "namespace": attrs[cd.POD_NAMESPACE_KEY],
        "uid": attrs.get(cd.POD_UID_KEY, "00000000-0000-0000-0000-000000000001"),
        "service_account": attrs[cd.SERVICE_ACCOUNT_NAME_KEY],
    }
    tokens, expiration = None, None
    if attrs.get(cd.TOKENS_KEY):
        parsed = json.loads(attrs[cd.TOKENS_KEY])
        tokens = {aud: v["token"] for aud, v in parsed.items()}
        expiration = next(iter(parsed.values()))["expirationTimestamp"]
    volume_attributes = {cd.SPC_FIELD: attrs.get(cd.SPC_FIELD, "keys")}
    spc_parameters = {k: v for k, v in attrs.items()
                      if not k.startswith("csi.storage.k8s.io/") and k != cd.SPC_FIELD}
    return spc_parameters, volume_attributes, pod, tokens, expiration


def main():
    socket, proto_dir, case_path = sys.argv[1:4]
    case = json.load(open(case_path))
    want = [(f["path"], f["mode"], f["contents_hex"]) for f in case["expect_files"]]
    want_disk = {f["path"]: (f["mode"], f["contents_hex"]) for f in case["expect_files"]}
    spc, vattrs, pod, tokens, expiration = split_attributes(case["attributes"])
    bad_spc, bad_vattrs, bad_pod, bad_tokens, bad_exp = split_attributes(case["bad_attributes"])

    with tempfile.TemporaryDirectory() as work, cd.Driver(socket, proto_dir, os.path.join(work, "stubs")) as d:
        # The driver's health check: Version{version: "v1alpha1"}.
        v = d.version()
        check(v.version == "v1alpha1", f"Version.version == v1alpha1 (got {v.version!r})")
        check(v.runtime_name == "keyward", f"runtime_name == keyward (got {v.runtime_name!r})")
        parts = v.runtime_version.split(".")
        check(len(parts) == 3 and all(p.isdigit() for p in parts), f"runtime_version is semver ({v.runtime_version!r})")

        # First publish, as a v1.6.0 driver with rotation on (poll interval 0: every publish calls Mount).
        t1 = os.path.join(work, "pod1", "mount")
        r = d.mount(t1, spc, vattrs, pod, tokens=tokens, expiration=expiration, rotation_poll_interval=0)
        check(r.request is not None and r.request["secrets"] == "null",
              f"default request sends secrets = null (got {r.request and r.request['secrets']!r})")
        check(r.request["permission"] == "420" and r.request["current_object_version"] == [],
              "default request sends permission 420 and no current_object_version")
        check(r.ok and not r.code, f"no error code (got {r.code!r} {r.message!r})")
        got = [(f["path"], f["mode"], f["contents"].hex()) for f in r.response_files]
        check(got == want, f"files, modes and contents as expected ({[g[:2] for g in got]})")
        for f in r.response_files:
            check(not f["path"].startswith("/") and ".." not in f["path"].split("/"), f"{f['path']} is relative")
            check(0 <= f["mode"] <= 0o777, f"{f['path']} mode {f['mode']:o} within 0..0777")
        ids = [o["id"] for o in r.object_version]
        check(ids == [f["path"] for f in r.response_files], f"one object_version per file, id = file path ({ids})")
        check(all(o["version"] for o in r.object_version), "object versions are non-empty")
        secret_hexes = {f["contents_hex"] for f in case["expect_files"]}
        check(all(o["version"] not in secret_hexes for o in r.object_version),
              "object versions do not reveal the material")

        # What the pod sees: files written by the atomic writer, read back through the symlinks.
        disk = {f["path"]: (f["mode"], f["contents"].hex()) for f in r.files}
        check(disk == want_disk, f"files on disk with the returned modes (stat) and contents ({sorted(disk)})")
        data = os.path.join(t1, "..data")
        check(os.path.islink(data) and re.fullmatch(r"\.\.\d{4}(_\d{2}){5}\.\d+", os.readlink(data)) is not None,
              f"..data is a symlink to a timestamped dir ({os.readlink(data) if os.path.islink(data) else None})")
        tops = sorted({p.split("/")[0] for p in want_disk})
        check(all(os.readlink(os.path.join(t1, p)) == f"..data/{p}" for p in tops),
              f"user-visible entries are links into ..data ({tops})")
        check(all(stat.S_IMODE(os.stat(os.path.join(t1, p)).st_mode) == want_disk[p][0] for p in want_disk),
              "file modes on disk are exactly the returned modes")

        # Republish into the same target: same content -> the writer does not rewrite.
        ts_before = os.readlink(data)
        r2 = d.mount(t1, spc, vattrs, pod, tokens=tokens, expiration=expiration, rotation_poll_interval=0)
        check(r2.ok and r2.called_provider and not r2.masked_error, "republish into the mounted target succeeds")
        check(not r2.rewritten and os.readlink(data) == ts_before, "same content on republish: nothing rewritten")
        check([(o["id"], o["version"]) for o in r2.object_version] == [(o["id"], o["version"]) for o in r.object_version],
              "object versions stable across mounts")

        # Kubernetes >= 1.35 with serviceAccountTokenInSecrets: tokens in secrets, and in attributes.
        if tokens:
            t2 = os.path.join(work, "pod2", "mount")
            r3 = d.mount(t2, spc, vattrs, pod, tokens=tokens, expiration=expiration, tokens_in_secrets=True,
                         rotation_poll_interval=0)
            sec = json.loads(r3.request["secrets"])
            att = json.loads(r3.request["attributes"])
            check(isinstance(sec, dict) and set(sec) == {cd.TOKENS_KEY} and att.get(cd.TOKENS_KEY) == sec[cd.TOKENS_KEY],
                  "tokens-in-secrets request: secrets object holds the tokens, attributes carry the same tokens")
            check(r3.ok and {f["path"]: (f["mode"], f["contents"].hex()) for f in r3.files} == want_disk,
                  f"tokens-in-secrets mount succeeds with the same files (got {r3.code!r} {r3.message!r})")

        # A refused first mount: the provider's gRPC status, reported as the driver does.
        t3 = os.path.join(work, "pod3", "mount")
        b = d.mount(t3, bad_spc, bad_vattrs, bad_pod, tokens=bad_tokens, expiration=bad_exp, rotation_poll_interval=0)
        check(not b.ok and b.code == "GRPCProviderError", f"bad mount refused as GRPCProviderError (got {b.code!r})")
        check(b.grpc_code == case["bad_code"], f"bad mount code {b.grpc_code} == {case['bad_code']}")
        check(case["bad_message"] in (b.grpc_message or ""), f"bad mount message names the problem: {b.grpc_message!r}")
        check(not os.path.lexists(os.path.join(t3, "..data")), "refused first mount leaves nothing mounted")

        # The same refusal on a republish of a mounted volume is masked by the driver; old files stay.
        r4 = d.mount(t1, bad_spc, vattrs, pod, tokens=tokens, expiration=expiration, rotation_poll_interval=0)
        check(r4.ok and r4.masked_error is not None and r4.masked_error.get("grpc_code") == case["bad_code"],
              f"refusal on a remount is masked ({r4.masked_error})")
        check({f["path"]: (f["mode"], f["contents"].hex()) for f in r4.files} == want_disk
              and os.readlink(data) == ts_before, "masked remount keeps the old files")

    print(f"conformance: {CHECKS} checks")
    print("conformance: all checks passed")


if __name__ == "__main__":
    main()
