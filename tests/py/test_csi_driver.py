"""Tests of the driver stand-in (csi_driver.py) against the Secrets Store CSI Driver v1.6.0 rules.

No keyward provider needed: the gRPC tests run a fake provider in-process on a unix socket.
Run from the repository root:  .venv/bin/python -m unittest tests/py/test_csi_driver.py
"""

import base64
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from concurrent import futures

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import csi_driver as cd  # noqa: E402

PROTO_DIR = os.path.join(HERE, "..", "..", "proto")
TS_DIR_RE = re.compile(r"\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d+")
POD = {"name": "web-0", "namespace": "team-a", "uid": "uid-1", "service_account": "web"}


def tree(target):
    """{relative path: (mode, bytes)} as a pod sees the volume."""
    return {f["path"]: (f["mode"], f["contents"]) for f in cd.read_mounted_files(target)}


class TempDirCase(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name
        self.target = os.path.join(self.tmp, "mount")
        os.mkdir(self.target)

    def tearDown(self):
        self._tmp.cleanup()


# ---------------------------------------------------------------------------------------------
# Request building
# ---------------------------------------------------------------------------------------------


class GoJsonTest(unittest.TestCase):
    def test_html_and_control_escaping_like_go(self):
        self.assertEqual(cd.go_json_string("<a>&b"), '"\\u003ca\\u003e\\u0026b"')
        self.assertEqual(cd.go_json_string('q"b\\'), '"q\\"b\\\\"')
        self.assertEqual(cd.go_json_string("\b\f\n\r\t\x01\x1f"), '"\\b\\f\\n\\r\\t\\u0001\\u001f"')
        self.assertEqual(cd.go_json_string("\u2028\u2029"), '"\\u2028\\u2029"')
        self.assertEqual(cd.go_json_string("é\x7f/"), '"é\x7f/"')

    def test_map_is_sorted_and_compact_and_nil_is_null(self):
        self.assertEqual(cd.go_json_map({"b": "1", "a": "2", "é": "3", "Z": "4"}), '{"Z":"4","a":"2","b":"1","é":"3"}')
        self.assertEqual(cd.go_json_map(None), "null")
        self.assertEqual(cd.go_json_map({}), "{}")

    def test_go_clean(self):
        for p, want in [("a//b", "a/b"), ("a/", "a"), ("./a", "a"), (".", "."), ("", "."), ("a/../b", "b"),
                        ("//a", "/a"), ("../..", "../.."), ("/..", "/"), ("a/./b/", "a/b")]:
            self.assertEqual(cd.go_clean(p), want, p)

    def test_go_file_mode_bits(self):
        self.assertEqual(cd.go_file_mode_bits(0o644), 0o644)
        self.assertEqual(cd.go_file_mode_bits(0o4755), 0o755)  # numeric setuid bit is not Go's ModeSetuid
        self.assertEqual(cd.go_file_mode_bits(-1), 0o7777)  # int32 -1 sets Go's high flag bits


class RequestTest(unittest.TestCase):
    def test_secrets_null_when_nothing(self):
        self.assertEqual(cd.build_secrets(None, None, False), "null")
        self.assertEqual(cd.build_secrets({}, None, False), "null")
        self.assertEqual(cd.build_secrets(None, '{"k":{}}', False), "null")  # tokens in the volume context only

    def test_secrets_object_sorted_and_html_escaped(self):
        self.assertEqual(cd.build_secrets({"b": "<x>", "a": "&"}, None, False), '{"a":"\\u0026","b":"\\u003cx\\u003e"}')

    def test_secrets_carry_tokens_when_tokens_in_secrets(self):
        tj = cd.tokens_json({"keyward": "tok"}, "2030-01-01T00:00:00Z")
        s = json.loads(cd.build_secrets({"user": "pw"}, tj, True))
        self.assertEqual(s, {"user": "pw", cd.TOKENS_KEY: tj})

    def test_tokens_json_format(self):
        self.assertEqual(cd.tokens_json({"b": "t2", "a": "t<1"}, "2030-01-01T00:00:00Z"),
                         '{"a":{"token":"t\\u003c1","expirationTimestamp":"2030-01-01T00:00:00Z"},'
                         '"b":{"token":"t2","expirationTimestamp":"2030-01-01T00:00:00Z"}}')
        self.assertIsNone(cd.tokens_json(None))
        self.assertRegex(json.loads(cd.tokens_json({"a": "t"}))["a"]["expirationTimestamp"],
                         r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")

    def test_merge_order(self):
        spc = {"objects": "spc-objects", "x": "spc", "y": "spc", cd.POD_NAME_KEY: "spc-pod", cd.EPHEMERAL_KEY: "spc"}
        vattrs = {"secretProviderClass": "demo", "x": "vol", cd.POD_NAME_KEY: "vol-pod", cd.TOKENS_KEY: "vol-tokens"}
        a = cd.build_attributes(spc, vattrs, POD, tokens={"keyward": "tok"}, expiration="2030-01-01T00:00:00Z")
        self.assertEqual(a["objects"], "spc-objects")
        self.assertEqual(a["y"], "spc")
        self.assertEqual(a["x"], "vol")  # pod volumeAttributes override SPC parameters
        self.assertEqual(a["secretProviderClass"], "demo")  # passed through from volumeAttributes
        self.assertEqual(a[cd.POD_NAME_KEY], "web-0")  # kubelet keys override both
        self.assertEqual(a[cd.POD_NAMESPACE_KEY], "team-a")
        self.assertEqual(a[cd.POD_UID_KEY], "uid-1")
        self.assertEqual(a[cd.SERVICE_ACCOUNT_NAME_KEY], "web")
        self.assertEqual(a[cd.EPHEMERAL_KEY], "true")
        self.assertEqual(json.loads(a[cd.TOKENS_KEY]), {"keyward": {"token": "tok", "expirationTimestamp": "2030-01-01T00:00:00Z"}})

    def test_user_tokens_attribute_passes_through_without_token_requests(self):
        a = cd.build_attributes({"o": "1"}, {"secretProviderClass": "demo", cd.TOKENS_KEY: "forged"}, POD)
        self.assertEqual(a[cd.TOKENS_KEY], "forged")

    def test_tokens_in_secrets_still_in_attributes(self):
        a = cd.build_attributes({"o": "1"}, {"secretProviderClass": "demo"}, POD, tokens={"k": "tok"},
                                expiration="2030-01-01T00:00:00Z", tokens_in_secrets=True)
        self.assertEqual(a[cd.TOKENS_KEY], cd.tokens_json({"k": "tok"}, "2030-01-01T00:00:00Z"))
        ctx = cd.kubelet_volume_context({"secretProviderClass": "demo"}, POD, "t", tokens_in_secrets=True)
        self.assertNotIn(cd.TOKENS_KEY, ctx)

    def test_secrets_tokens_key_wins_over_volume_context(self):
        a = cd.build_attributes({"o": "1"}, {"secretProviderClass": "demo"}, POD, tokens={"k": "tok"},
                                node_publish_secret={cd.TOKENS_KEY: "from-secret"})
        self.assertEqual(a[cd.TOKENS_KEY], "from-secret")
        # key present but empty in secrets: getServiceAccountTokens returns "", nothing written last,
        # and the volume-context value copied by maps.Copy stays
        a = cd.build_attributes({"o": "1"}, {"secretProviderClass": "demo"}, POD, tokens={"k": "tok"},
                                expiration="2030-01-01T00:00:00Z", node_publish_secret={cd.TOKENS_KEY: ""})
        self.assertEqual(a[cd.TOKENS_KEY], cd.tokens_json({"k": "tok"}, "2030-01-01T00:00:00Z"))

    def test_spc_without_parameters_refused(self):
        for params in (None, {}):
            with self.assertRaises(cd.DriverError) as e:
                cd.build_attributes(params, {"secretProviderClass": "demo"}, POD)
            self.assertEqual(str(e.exception), "parameters not set in team-a/demo")

    def test_missing_secret_provider_class_refused(self):
        with self.assertRaises(cd.DriverError) as e:
            cd.build_attributes({"o": "1"}, {}, POD)
        self.assertEqual(str(e.exception), "secretProviderClass is not set")

    def test_request_fields(self):
        a = cd.build_attributes({"objects": "- key: <k>&"}, {"secretProviderClass": "demo"}, POD)
        f = cd.mount_request_fields(a, None, "/t")
        self.assertEqual(f["permission"], "420")
        self.assertEqual(f["secrets"], "null")
        self.assertEqual(f["current_object_version"], [])
        self.assertEqual(f["target_path"], "/t")
        self.assertEqual(
            f["attributes"],
            '{"csi.storage.k8s.io/ephemeral":"true","csi.storage.k8s.io/pod.name":"web-0",'
            '"csi.storage.k8s.io/pod.namespace":"team-a","csi.storage.k8s.io/pod.uid":"uid-1",'
            '"csi.storage.k8s.io/serviceAccount.name":"web","objects":"- key: \\u003ck\\u003e\\u0026",'
            '"secretProviderClass":"demo"}')
        self.assertEqual(json.loads(f["attributes"]), a)


# ---------------------------------------------------------------------------------------------
# Path validation
# ---------------------------------------------------------------------------------------------


class PathValidationTest(unittest.TestCase):
    ACCEPT = ["a", "a/b", "a/..foo", "a/.b", "x..a/b", "a/..."]
    REJECT = {
        "": "must not be empty",
        "/x": "must be relative",
        "..": "must not contain '..'",
        "a/../b": "must not contain '..'",
        "..foo": "must not start with '..'",
        "...": "must not start with '..'",
        "a//b": "invalid filepath",
        "a/": "invalid filepath",
        "./a": "invalid filepath",
        "a/./b": "invalid filepath",
        ".": "cleanup failure",
        "x" * 256: "filenames must be less than or equal to 255",
        "a/" + "é" * 128: "filenames must be less than or equal to 255",  # 256 bytes, 128 characters
        "/".join(["x" * 200] * 21)[:4097]: "less than or equal to 4096",
    }

    def test_accept(self):
        for p in self.ACCEPT + ["x" * 255, "/".join(["x" * 255] * 16)]:  # 4095 bytes
            cd.validate_files([(p, 0o644, b"")])

    def test_reject(self):
        for p, msg in self.REJECT.items():
            with self.assertRaises(cd.PathError, msg=p[:40]) as e:
                cd.validate_files([(p, 0o644, b"")])
            self.assertIn(msg, str(e.exception), p[:40])

    def test_4097_byte_path(self):
        p = "/".join(["x" * 200] * 21)[:4097]
        self.assertEqual(len(p), 4097)
        self.assertTrue(all(len(e) <= 255 for e in p.split("/")))


# ---------------------------------------------------------------------------------------------
# Atomic writer
# ---------------------------------------------------------------------------------------------


class AtomicWriterTest(TempDirCase):
    def write(self, files):
        return cd.write_payloads(self.target, files)

    def test_layout_and_exact_modes(self):
        old = os.umask(0o077)  # chmod after open: the umask must not matter
        try:
            out = self.write([("a", 0o644, b"A"), ("d/e/f", 0o400, b"F"), ("x", 0o777, b"X"), ("z", 0, b"Z")])
        finally:
            os.umask(old)
        self.assertTrue(out.written)
        ts = os.readlink(os.path.join(self.target, "..data"))
        self.assertRegex(ts, TS_DIR_RE)
        self.assertEqual(out.ts_dir, ts)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.target, ts)).st_mode), 0o755)
        self.assertEqual(sorted(os.listdir(self.target)), sorted(["..data", ts, "a", "d", "x", "z"]))
        self.assertEqual(os.readlink(os.path.join(self.target, "a")), "..data/a")
        self.assertEqual(os.readlink(os.path.join(self.target, "d")), "..data/d")  # first component only
        self.assertFalse(os.path.islink(os.path.join(self.target, ts, "d", "e")))
        self.assertEqual(tree(self.target), {"a": (0o644, b"A"), "d/e/f": (0o400, b"F"), "x": (0o777, b"X"), "z": (0, b"Z")})

    def test_unchanged_content_not_rewritten(self):
        self.write([("a", 0o644, b"A"), ("b/c", 0o644, b"C")])
        ts = os.readlink(os.path.join(self.target, "..data"))
        out = self.write([("b/c", 0o644, b"C"), ("a", 0o644, b"A")])
        self.assertFalse(out.written)
        self.assertEqual(os.readlink(os.path.join(self.target, "..data")), ts)

    def test_mode_only_change_not_applied(self):
        self.write([("a", 0o644, b"A")])
        out = self.write([("a", 0o600, b"A")])
        self.assertFalse(out.written)
        self.assertEqual(tree(self.target), {"a": (0o644, b"A")})
        out = self.write([("a", 0o600, b"A2")])  # with a content change the mode follows
        self.assertTrue(out.written)
        self.assertEqual(tree(self.target), {"a": (0o600, b"A2")})

    def test_stale_files_removed_on_rewrite(self):
        self.write([("a", 0o644, b"A"), ("b", 0o644, b"B"), ("d/x", 0o644, b"X"), ("d/y", 0o644, b"Y")])
        old_ts = os.readlink(os.path.join(self.target, "..data"))
        out = self.write([("a", 0o644, b"A"), ("d/x", 0o644, b"X")])  # same content, but paths to remove
        self.assertTrue(out.written)
        self.assertEqual(out.removed_paths, ["b"])
        self.assertEqual(tree(self.target), {"a": (0o644, b"A"), "d/x": (0o644, b"X")})
        self.assertFalse(os.path.lexists(os.path.join(self.target, "b")))
        self.assertFalse(os.path.exists(os.path.join(self.target, old_ts)))
        self.assertEqual(sorted(n for n in os.listdir(self.target) if n.startswith("..")),
                         sorted(["..data", os.readlink(os.path.join(self.target, "..data"))]))

    def test_file_and_directory_at_same_path_fails_and_keeps_old_files(self):
        self.write([("a", 0o644, b"old")])
        ts = os.readlink(os.path.join(self.target, "..data"))
        for files in ([("a", 0o644, b"1"), ("a/b", 0o644, b"2")], [("a/b", 0o644, b"2"), ("a", 0o644, b"1")]):
            with self.assertRaises(OSError):
                self.write(files)
            self.assertEqual(os.readlink(os.path.join(self.target, "..data")), ts)
            self.assertEqual(tree(self.target), {"a": (0o644, b"old")})

    def test_duplicate_paths_last_wins(self):
        self.write([("a", 0o644, b"1"), ("a", 0o600, b"2")])
        self.assertEqual(tree(self.target), {"a": (0o600, b"2")})

    def test_provider_written_file_is_replaced_by_link(self):
        with open(os.path.join(self.target, "a"), "wb") as fh:
            fh.write(b"written by a provider")
        self.write([("a", 0o644, b"new")])
        self.assertEqual(os.readlink(os.path.join(self.target, "a")), "..data/a")
        self.assertEqual(tree(self.target), {"a": (0o644, b"new")})

    def test_dot_refused_and_volume_kept(self):
        self.write([("a", 0o644, b"A")])
        with self.assertRaises(cd.PathError):
            self.write([(".", 0o644, b"x")])
        self.assertEqual(tree(self.target), {"a": (0o644, b"A")})

    def test_writer_counts(self):
        w = cd.AtomicWriter(self.target)
        w.write({"a": (b"1", 0o644)})
        w.write({"a": (b"1", 0o644)})
        w.write({"a": (b"2", 0o644), "b": (b"3", 0o644)})
        self.assertEqual((w.writes, w.files_written), (2, 3))

    def test_writer_needs_existing_target(self):
        with self.assertRaises(FileNotFoundError):
            cd.AtomicWriter(os.path.join(self.tmp, "absent"))

    def test_mounted_files_skip_reserved_entries(self):
        self.write([("a", 0o644, b"A")])
        os.mkdir(os.path.join(self.target, "..leftover"))
        self.assertEqual(list(cd.get_mounted_files(self.target)), ["a"])


# ---------------------------------------------------------------------------------------------
# gRPC: a fake provider in-process
# ---------------------------------------------------------------------------------------------


class FakeProvider:
    """A provider whose answer each test sets: `respond(request, context) -> MountResponse`."""

    def __init__(self, sock, stub_dir):
        import grpc

        pb, pb_grpc = cd.stubs(PROTO_DIR, stub_dir)
        self.pb = pb
        self.requests = []
        self.respond = None
        fake = self

        class Servicer(pb_grpc.CSIDriverProviderServicer):
            def Version(self, request, context):
                return pb.VersionResponse(version="v1alpha1", runtime_name="fake", runtime_version="0.0.1")

            def Mount(self, request, context):
                fake.requests.append(request)
                return fake.respond(request, context)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_CSIDriverProviderServicer_to_server(Servicer(), self.server)
        self.server.add_insecure_port("unix:" + sock)
        self.server.start()

    def files(self, files, versions=None):
        pb = self.pb

        def respond(request, context):
            return pb.MountResponse(
                object_version=[pb.ObjectVersion(id=i, version=v) for i, v in (versions or [("obj", "v1")])],
                files=[pb.File(path=p, mode=m, contents=c) for p, m, c in files],
            )

        self.respond = respond


class DriverTest(TempDirCase):
    @classmethod
    def setUpClass(cls):
        cls._ctmp = tempfile.TemporaryDirectory()
        cls.sock = os.path.join(cls._ctmp.name, "keyward.sock")
        cls.stub_dir = os.path.join(cls._ctmp.name, "stubs")
        cls.fake = FakeProvider(cls.sock, cls.stub_dir)
        cls.driver = cd.Driver(cls.sock, PROTO_DIR, cls.stub_dir, timeout=10)

    @classmethod
    def tearDownClass(cls):
        cls.driver.close()
        cls.fake.server.stop(None)
        cls._ctmp.cleanup()

    def setUp(self):
        super().setUp()
        self.target = os.path.join(self.tmp, "pods", "uid", "mount")  # not created: the driver does it
        self.fake.requests.clear()
        self.fake.files([("a", 0o644, b"A")])

    def mount(self, **kw):
        kw.setdefault("rotation_poll_interval", 0)
        return self.driver.mount(self.target, {"objects": "- key: k"}, {"secretProviderClass": "demo"}, POD, **kw)

    def test_first_mount_request_and_files(self):
        r = self.mount(tokens={"keyward": "tok"})
        self.assertTrue(r.ok, r.message)
        req = self.fake.requests[-1]
        self.assertEqual(req.secrets, "null")
        self.assertEqual(req.permission, "420")
        self.assertEqual(req.target_path, self.target)
        self.assertEqual(len(req.current_object_version), 0)
        attrs = json.loads(req.attributes)
        self.assertEqual(attrs["objects"], "- key: k")
        self.assertEqual(json.loads(attrs[cd.TOKENS_KEY])["keyward"]["token"], "tok")
        self.assertEqual(stat.S_IMODE(os.stat(self.target).st_mode) & 0o750, 0o750)
        self.assertTrue(r.rewritten)
        self.assertEqual(r.written, ["a"])
        self.assertEqual(r.files, [{"path": "a", "mode": 0o644, "contents": b"A"}])
        self.assertEqual(r.object_version, [{"id": "obj", "version": "v1"}])

    def test_tokens_in_secrets_request(self):
        r = self.mount(tokens={"keyward": "tok"}, tokens_in_secrets=True, node_publish_secret={"u": "p"})
        self.assertTrue(r.ok)
        req = self.fake.requests[-1]
        sec = json.loads(req.secrets)
        self.assertEqual(set(sec), {"u", cd.TOKENS_KEY})
        self.assertEqual(json.loads(req.attributes)[cd.TOKENS_KEY], sec[cd.TOKENS_KEY])

    def test_provider_error_code(self):
        pb = self.fake.pb
        self.fake.respond = lambda req, ctx: pb.MountResponse(error=pb.Error(code="AccessDenied"),
                                                             object_version=[pb.ObjectVersion(id="a", version="1")])
        r = self.mount()
        self.assertFalse(r.ok)
        self.assertEqual(r.code, "AccessDenied")
        self.assertIn("mount request failed with provider error code AccessDenied", r.message)

    def test_error_with_empty_code_is_success(self):
        pb = self.fake.pb
        self.fake.respond = lambda req, ctx: pb.MountResponse(error=pb.Error(code=""),
                                                             object_version=[pb.ObjectVersion(id="a", version="1")])
        r = self.mount()
        self.assertTrue(r.ok, r.message)
        self.assertEqual(r.files, [])  # no files: success, nothing written (issue #551)
        self.assertFalse(r.rewritten)

    def test_missing_object_versions(self):
        pb = self.fake.pb
        self.fake.respond = lambda req, ctx: pb.MountResponse(files=[pb.File(path="a", mode=0o644, contents=b"A")])
        r = self.mount()
        self.assertFalse(r.ok)
        self.assertEqual(r.code, "GRPCProviderError")
        self.assertTrue(r.message.endswith("err: missing object versions"), r.message)
        self.assertEqual(os.listdir(self.target), [])

    def test_rpc_error(self):
        import grpc

        def respond(req, ctx):
            ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "no access to team-a/k")

        self.fake.respond = respond
        r = self.mount()
        self.assertFalse(r.ok)
        self.assertEqual((r.code, r.grpc_code, r.grpc_message), ("GRPCProviderError", "PERMISSION_DENIED", "no access to team-a/k"))
        self.assertEqual(r.message, "failed to mount secrets store objects for pod team-a/web-0, err: "
                                    "rpc error: code = PermissionDenied desc = no access to team-a/k")
        j = r.to_json()
        self.assertEqual((j["ok"], j["code"], j["grpc_code"]), (False, "GRPCProviderError", "PERMISSION_DENIED"))

    def test_unavailable_retried_three_attempts(self):
        import grpc

        def respond(req, ctx):
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "try later")

        self.fake.respond = respond
        r = self.mount()
        self.assertEqual(r.grpc_code, "UNAVAILABLE")
        self.assertEqual(len(self.fake.requests), 3)

    def test_invalid_path_is_file_write_error_and_unmounts(self):
        self.fake.files([("ok", 0o644, b"1"), ("a//b", 0o644, b"2")])
        r = self.mount()
        self.assertFalse(r.ok)
        self.assertEqual(r.code, "FileWriteError")
        self.assertIn('invalid filepath: "a//b"', r.message)
        self.assertEqual(os.listdir(self.target), [])

    def test_first_mount_writer_failure_unmounts(self):
        self.fake.files([("a", 0o644, b"1"), ("a/b", 0o644, b"2")])
        r = self.mount()
        self.assertEqual((r.ok, r.code), (False, "FileWriteError"))
        self.assertEqual(os.listdir(self.target), [])  # the tmpfs would have been unmounted

    def test_rotation_off_remount_skips_provider(self):
        self.assertTrue(self.mount(rotation_poll_interval=None).ok)
        r = self.mount(rotation_poll_interval=None)
        self.assertTrue(r.ok and r.skipped and not r.called_provider)
        self.assertEqual(len(self.fake.requests), 1)
        self.assertEqual(r.files, [{"path": "a", "mode": 0o644, "contents": b"A"}])

    def test_rotation_poll_interval_uses_target_mtime(self):
        self.assertTrue(self.mount(rotation_poll_interval=120).ok)  # target absent: Stat fails, carry on
        r = self.mount(rotation_poll_interval=120)
        self.assertTrue(r.skipped)
        self.assertEqual(len(self.fake.requests), 1)
        past = time.time() - 121
        os.utime(self.target, (past, past))
        r = self.mount(rotation_poll_interval=120)
        self.assertTrue(r.called_provider and not r.skipped)
        self.assertFalse(r.rewritten)  # same content: nothing written, so the mtime does not move
        self.assertLess(os.stat(self.target).st_mtime, time.time() - 100)

    def test_remount_same_content_not_rewritten_new_content_rewritten(self):
        self.mount()
        r = self.mount()
        self.assertTrue(r.ok and r.called_provider and not r.rewritten and r.written == [])
        self.fake.files([("a", 0o600, b"A2")], [("obj", "v2")])
        r = self.mount()
        self.assertTrue(r.rewritten)
        self.assertEqual(r.files, [{"path": "a", "mode": 0o600, "contents": b"A2"}])

    def test_masked_remount_keeps_old_files(self):
        import grpc

        self.fake.files([("a", 0o644, b"A"), ("d/e", 0o400, b"E")])
        self.assertTrue(self.mount().ok)
        before = tree(self.target)
        ts = os.readlink(os.path.join(self.target, "..data"))

        def deny(req, ctx):
            ctx.abort(grpc.StatusCode.NOT_FOUND, "gone")

        failures = [deny, None, None]
        self.fake.files([("a", 0o644, b"1"), ("a/b", 0o644, b"2")])
        failures[1] = self.fake.respond
        pb = self.fake.pb
        failures[2] = lambda req, ctx: pb.MountResponse(files=[pb.File(path="a", mode=0o644, contents=b"new")])
        for fail, code in zip(failures, ["GRPCProviderError", "FileWriteError", "GRPCProviderError"]):
            self.fake.respond = fail
            r = self.mount()
            self.assertTrue(r.ok)
            self.assertEqual(r.masked_error["code"], code)
            self.assertEqual(tree(self.target), before)
            self.assertEqual(os.readlink(os.path.join(self.target, "..data")), ts)
            self.assertEqual(r.to_json()["masked_error"]["code"], code)

    def test_spc_errors_not_masked_on_remount(self):
        self.assertTrue(self.mount().ok)
        r = self.driver.mount(self.target, {}, {"secretProviderClass": "demo"}, POD, rotation_poll_interval=0)
        self.assertEqual((r.ok, r.code, r.message), (False, "FailedToMount", "parameters not set in team-a/demo"))
        self.assertEqual(len(self.fake.requests), 1)

    def test_cli(self):
        env = dict(os.environ)
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "csi_driver.py"), "mount", "--socket", self.sock,
             "--proto-dir", PROTO_DIR, "--stub-dir", self.stub_dir, "--service-account", "payments",
             "--token", "tok", "--objects", "- key: k\n", "--volume-attr", "x=1", "--spc-param", "y=2"],
            capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        j = json.loads(out.stdout)
        self.assertTrue(j["ok"])
        self.assertEqual(j["files"], [{"path": "a", "mode": 0o644, "contents_b64": base64.b64encode(b"A").decode()}])
        self.assertEqual(j["object_version"], [{"id": "obj", "version": "v1"}])
        self.assertEqual(j["written"], ["a"])
        self.assertTrue(os.path.islink(os.path.join(j["target"], "..data")))
        req = self.fake.requests[-1]
        attrs = json.loads(req.attributes)
        self.assertEqual(req.secrets, "null")
        self.assertEqual((attrs[cd.POD_NAMESPACE_KEY], attrs[cd.POD_NAME_KEY], attrs["secretProviderClass"]),
                         ("default", "demo-pod", "demo"))
        self.assertEqual((attrs["x"], attrs["y"], attrs["objects"]), ("1", "2", "- key: k\n"))
        self.assertEqual(list(json.loads(attrs[cd.TOKENS_KEY])), ["keyward"])


if __name__ == "__main__":
    unittest.main()
