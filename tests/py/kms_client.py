"""An independent KMS v2 client, as kube-apiserver is one: Python grpcio stubs generated from
proto/kms_v2.proto (package v2, the wire contract of k8s.io/kms/apis/v2), over the plugin's unix
socket. One call per run; JSON in (stdin, for decrypt) and out (stdout).

  kms_client.py --socket S --proto-dir D status
  kms_client.py --socket S --proto-dir D encrypt --plaintext-hex HEX
  kms_client.py --socket S --proto-dir D decrypt < {"ciphertext": b64, "key_id": s, "annotations": {k: b64}}

A refused call prints {"error": "<grpc code name>", "details": "..."} and exits 3.
"""

import argparse
import base64
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import uuid

import grpc


def stubs(proto_dir):
    proto = os.path.join(proto_dir, "kms_v2.proto")
    with open(proto, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()[:16]
    base = os.path.join(tempfile.gettempdir(), f"keyward-kms-stubs-{os.getuid()}")
    out = os.path.join(base, digest)
    if not os.path.exists(os.path.join(out, "kms_v2_pb2_grpc.py")):
        from grpc_tools import protoc

        os.makedirs(base, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=base, prefix=".gen-")
        rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", proto])
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {proto} with {rc}")
        try:
            os.rename(tmp, out)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.path.insert(0, out)
    return importlib.import_module("kms_v2_pb2"), importlib.import_module("kms_v2_pb2_grpc")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--timeout", type=float, default=10.0)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status")
    enc = sub.add_parser("encrypt")
    enc.add_argument("--plaintext-hex", required=True)
    sub.add_parser("decrypt")
    args = ap.parse_args()

    pb, pb_grpc = stubs(args.proto_dir)
    # As kube-apiserver dials it (kmsv2/grpc_service.go NewGRPCService): unix socket,
    # authority "localhost", insecure, wait-for-ready.
    channel = grpc.insecure_channel(
        "unix://" + os.path.abspath(args.socket),
        options=[("grpc.default_authority", "localhost")],
    )
    stub = pb_grpc.KeyManagementServiceStub(channel)
    try:
        if args.cmd == "status":
            r = stub.Status(pb.StatusRequest(), timeout=args.timeout, wait_for_ready=True)
            out = {"version": r.version, "healthz": r.healthz, "key_id": r.key_id}
        elif args.cmd == "encrypt":
            r = stub.Encrypt(
                pb.EncryptRequest(plaintext=bytes.fromhex(args.plaintext_hex), uid=str(uuid.uuid4())),
                timeout=args.timeout,
                wait_for_ready=True,
            )
            out = {
                "ciphertext": base64.b64encode(r.ciphertext).decode(),
                "key_id": r.key_id,
                "annotations": {k: base64.b64encode(v).decode() for k, v in r.annotations.items()},
            }
        else:
            req = json.load(sys.stdin)
            r = stub.Decrypt(
                pb.DecryptRequest(
                    ciphertext=base64.b64decode(req["ciphertext"]),
                    uid=str(uuid.uuid4()),
                    key_id=req["key_id"],
                    annotations={k: base64.b64decode(v) for k, v in req["annotations"].items()},
                ),
                timeout=args.timeout,
                wait_for_ready=True,
            )
            out = {"plaintext_hex": r.plaintext.hex()}
    except grpc.RpcError as e:
        print(json.dumps({"error": e.code().name, "details": e.details()}))
        return 3
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
