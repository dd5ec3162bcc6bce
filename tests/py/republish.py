"""Republish rounds as a cluster with rotation on drives them: kubelet re-publishes every pod's
volume (requiresRepublish) and the driver, with --enable-secret-rotation, calls the provider
again once rotationPollInterval has passed since its last write (nodeserver.go
NodePublishVolume). The poll interval here is 0: every republish reaches the provider, the
worst case (after the first interval, unchanged content never moves the target's mtime).

Usage: republish.py --socket S --proto-dir P --pods pods.json --rounds N --targets DIR
pods.json: [{"name", "uid", "token"}]; all pods run as default/payments.
After each round prints one JSON line {"round", "mounts", "ok", "masked", "rewritten",
"files_written", "seconds"} and waits for a line on stdin before the next round, so the caller
can read its counters (and rotate a key) between rounds.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import csi_driver  # noqa: E402

OBJECTS = "- key: payments-dek\n  fileName: dek\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--stub-dir", default=None)
    ap.add_argument("--pods", required=True)
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--targets", required=True)
    args = ap.parse_args()
    pods = json.load(open(args.pods))
    with csi_driver.Driver(args.socket, args.proto_dir, args.stub_dir) as d:
        for r in range(1, args.rounds + 1):
            t0 = time.monotonic()
            ok = masked = rewritten = files = 0
            failures = []
            for p in pods:
                res = d.mount(
                    os.path.join(args.targets, p["uid"], "mount"),
                    spc_parameters={"objects": OBJECTS},
                    volume_attributes={"secretProviderClass": "payments-keys"},
                    pod={"name": p["name"], "namespace": "default", "uid": p["uid"], "service_account": "payments"},
                    tokens={"keyward": p["token"]},
                    rotation_poll_interval=0,
                )
                if res.ok and not res.masked_error:
                    ok += 1
                elif res.masked_error:
                    masked += 1
                if not res.ok or res.masked_error:
                    failures.append(res.masked_error or res.message)
                if res.rewritten:
                    rewritten += 1
                    files += len(res.written)
            print(json.dumps({
                "round": r, "mounts": len(pods), "ok": ok, "masked": masked, "rewritten": rewritten,
                "files_written": files, "seconds": round(time.monotonic() - t0, 3), "failures": failures[:3],
            }), flush=True)
            if r < args.rounds and not sys.stdin.readline():
                return


if __name__ == "__main__":
    main()
