"""Stand-in for the Secrets Store CSI Driver: one Mount call over the provider's unix socket.

Generates the client from keyward's own proto at run time (grpc_tools), dials the socket with
authority "localhost" as the driver does, sends the driver's attribute keys, the pod's token
map for our audience and permission "420", and prints the result as JSON:
{"ok": true, "files": [{"path", "mode", "contents_b64"}], "object_version": [{"id","version"}]}
or {"ok": false, "code": "...", "message": "..."}.
"""
import argparse
import base64
import importlib
import json
import os
import sys
import tempfile


def stubs(proto_dir, out_dir):
    from grpc_tools import protoc

    os.makedirs(out_dir, exist_ok=True)
    if not os.path.exists(os.path.join(out_dir, "csi_provider_pb2_grpc.py")):
        rc = protoc.main([
            "protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
            os.path.join(proto_dir, "csi_provider.proto"),
        ])
        if rc != 0:
            sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out_dir)
    return importlib.import_module("csi_provider_pb2"), importlib.import_module("csi_provider_pb2_grpc")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--stub-dir", default=None)
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--pod", default="demo-pod")
    ap.add_argument("--service-account", required=True)
    ap.add_argument("--token", default="")
    ap.add_argument("--audience", default="keyward")
    ap.add_argument("--objects", required=True, help="the SecretProviderClass `objects` YAML")
    args = ap.parse_args()

    import grpc

    pb, pb_grpc = stubs(args.proto_dir, args.stub_dir or tempfile.mkdtemp())
    attributes = {
        "secretProviderClass": "demo",
        "objects": args.objects,
        "csi.storage.k8s.io/pod.name": args.pod,
        "csi.storage.k8s.io/pod.namespace": args.namespace,
        "csi.storage.k8s.io/pod.uid": "00000000-0000-0000-0000-000000000001",
        "csi.storage.k8s.io/serviceAccount.name": args.service_account,
        "csi.storage.k8s.io/ephemeral": "true",
    }
    if args.token:
        attributes["csi.storage.k8s.io/serviceAccount.tokens"] = json.dumps(
            {args.audience: {"token": args.token, "expirationTimestamp": "2099-01-01T00:00:00Z"}}
        )
    channel = grpc.insecure_channel(f"unix://{args.socket}", options=[("grpc.default_authority", "localhost")])
    stub = pb_grpc.CSIDriverProviderStub(channel)
    req = pb.MountRequest(attributes=json.dumps(attributes), secrets="{}", target_path="/var/lib/kubelet/pods/x/volumes/demo", permission="420")
    try:
        resp = stub.Mount(req, timeout=20, wait_for_ready=True)
    except grpc.RpcError as e:
        print(json.dumps({"ok": False, "code": e.code().name, "message": e.details()}))
        return
    if resp.error.code:
        print(json.dumps({"ok": False, "code": resp.error.code, "message": ""}))
        return
    print(json.dumps({
        "ok": True,
        "files": [{"path": f.path, "mode": f.mode, "contents_b64": base64.b64encode(f.contents).decode()} for f in resp.files],
        "object_version": [{"id": o.id, "version": o.version} for o in resp.object_version],
    }))


if __name__ == "__main__":
    main()
