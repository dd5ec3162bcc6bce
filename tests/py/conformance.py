"""Independent conformance check of keyward's CSI provider, written against the driver's
contract with Python grpcio: generate a client from proto/csi_provider.proto at run time, dial
the unix socket the way the Secrets Store CSI Driver does, call Version and Mount.

Usage: conformance.py <socket> <proto_dir> <case.json>
case.json: {"attributes": {...}, "expect_files": [{"path", "mode", "contents_hex"}],
            "bad_attributes": {...}, "bad_code": "NOT_FOUND", "bad_message": "..."}
Exit status 0 means every check passed; failures print what differed.
"""

import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc


def generate(proto_dir, out):
    args = [
        "protoc",
        f"-I{proto_dir}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        os.path.join(proto_dir, "csi_provider.proto"),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("grpc_tools.protoc failed on csi_provider.proto")
    sys.path.insert(0, out)
    import csi_provider_pb2
    import csi_provider_pb2_grpc

    return csi_provider_pb2, csi_provider_pb2_grpc


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAIL: {what}")
    print(f"ok: {what}")


def main():
    socket, proto_dir, case_path = sys.argv[1:4]
    case = json.load(open(case_path))
    with tempfile.TemporaryDirectory() as out:
        pb, pb_grpc = generate(proto_dir, out)
        # As the driver dials: unix socket, authority "localhost", no TLS, wait for ready.
        channel = grpc.insecure_channel(
            f"unix://{socket}", options=[("grpc.default_authority", "localhost")]
        )
        stub = pb_grpc.CSIDriverProviderStub(channel)

        v = stub.Version(pb.VersionRequest(version="v1alpha1"), timeout=10, wait_for_ready=True)
        check(v.version == "v1alpha1", f"Version.version == v1alpha1 (got {v.version!r})")
        check(v.runtime_name == "keyward", f"runtime_name == keyward (got {v.runtime_name!r})")
        parts = v.runtime_version.split(".")
        check(len(parts) == 3 and all(p.isdigit() for p in parts), f"runtime_version is semver ({v.runtime_version!r})")

        req = pb.MountRequest(
            attributes=json.dumps(case["attributes"]),
            secrets="{}",
            target_path="/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/keys/mount",
            permission="420",
        )
        r = stub.Mount(req, timeout=10)
        check(not r.error.code, f"no error code (got {r.error.code!r})")
        got = [(f.path, f.mode, f.contents.hex()) for f in r.files]
        want = [(f["path"], f["mode"], f["contents_hex"]) for f in case["expect_files"]]
        check(got == want, f"files, modes and contents as expected ({[g[:2] for g in got]})")
        for f in r.files:
            check(not f.path.startswith("/") and ".." not in f.path.split("/"), f"{f.path} is relative")
            check(0 <= f.mode <= 0o777, f"{f.path} mode {f.mode:o} within 0..0777")
        ids = [o.id for o in r.object_version]
        check(ids == [f.path for f in r.files], f"one object_version per file, id = file path ({ids})")
        check(all(o.version for o in r.object_version), "object versions are non-empty")
        secret_hexes = {f["contents_hex"] for f in case["expect_files"]}
        check(
            all(o.version not in secret_hexes for o in r.object_version),
            "object versions do not reveal the material",
        )
        r2 = stub.Mount(req, timeout=10)
        check(
            [(o.id, o.version) for o in r2.object_version] == [(o.id, o.version) for o in r.object_version],
            "object versions stable across mounts",
        )

        bad = pb.MountRequest(attributes=json.dumps(case["bad_attributes"]), secrets="{}", permission="420")
        try:
            stub.Mount(bad, timeout=10)
            raise SystemExit("FAIL: bad mount succeeded")
        except grpc.RpcError as e:
            check(e.code().name == case["bad_code"], f"bad mount code {e.code().name} == {case['bad_code']}")
            check(case["bad_message"] in e.details(), f"bad mount message names the problem: {e.details()!r}")
    print("conformance: all checks passed")


if __name__ == "__main__":
    main()
