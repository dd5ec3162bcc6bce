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
import json
import os
import sys
import uuid

import grpc

from csi_driver import proto_stubs  # the same stub generator the driver stand-in uses


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

    pb, pb_grpc = proto_stubs(args.proto_dir, "kms_v2")
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
