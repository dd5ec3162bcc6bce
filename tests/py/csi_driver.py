"""Stand-in for the Secrets Store CSI Driver v1.6.0 (and the kubelet side of NodePublishVolume).

Reproduces, from the driver's source, what the real driver sends to a provider over the
provider API v1alpha1 and what it does with the answer, so keyward's provider can be tested
against the driver's behaviour instead of our assumptions about it. Each rule below carries a
comment naming the upstream file and function it comes from (kubernetes-sigs/
secrets-store-csi-driver, tag v1.6.0, commit 4960f963; kubelet rules from
pkg/volume/csi/csi_mounter.go). This is our own code, not a port of the Go code.

Module API (see each docstring):
  go_json_string(s), go_json_map(m), go_clean(p)      Go encoding/json and filepath.Clean
  tokens_json(tokens, expiration=None)                kubelet's serviceAccount.tokens value
  kubelet_volume_context(...), kubelet_secrets(...)   what kubelet puts in NodePublishVolume
  build_attributes(...), build_secrets(...)           the driver's MountRequest fields
  mount_request_fields(...)                           all MountRequest fields as sent
  validate_path(p), validate_files(files)             fileutil path validation
  AtomicWriter(target).write(payload)                 fileutil atomic_writer.go Write
  write_payloads(target, files)                       fileutil.WritePayloads
  get_mounted_files(target)                           fileutil.GetMountedFiles
  Driver(socket, proto_dir, stub_dir=None).mount(...) nodeserver.go NodePublishVolume
  python csi_driver.py mount ...                      CLI printing one JSON object

Deliberate differences from the real driver (all in the stand-in's favour of being testable):
  * no tmpfs: the target is a plain directory; "mounted" means it holds `..data`, and the
    unmount the driver does after a failed first mount is emulated by removing what the
    failed publish created in the target;
  * a file path "." is refused with an error (the real driver would `os.RemoveAll` the target,
    see write_payloads);
  * no SecretProviderClassPodStatus, no metrics, no mock provider, no Kubernetes API: the
    SecretProviderClass parameters are given by the caller.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import errno
import hashlib
import importlib
import json
import os
import random
import shutil
import stat
import sys
import tempfile
import time

# ---------------------------------------------------------------------------------------------
# Constants from the driver and kubelet
# ---------------------------------------------------------------------------------------------

# nodeserver.go consts: volume-context keys read by the driver (csiPodName ... secretProviderClassField)
SPC_FIELD = "secretProviderClass"
POD_NAME_KEY = "csi.storage.k8s.io/pod.name"
POD_NAMESPACE_KEY = "csi.storage.k8s.io/pod.namespace"
POD_UID_KEY = "csi.storage.k8s.io/pod.uid"
# kubelet csi_mounter.go podAttributes / getPodInfoAttrs: the other two pod-info keys
SERVICE_ACCOUNT_NAME_KEY = "csi.storage.k8s.io/serviceAccount.name"
EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"
# nodeserver.go csiPodServiceAccountTokens; kubelet podServiceAccountTokenAttrs; KEP-5538 (same key in secrets)
TOKENS_KEY = "csi.storage.k8s.io/serviceAccount.tokens"

# nodeserver.go filePermission: os.FileMode 0644, sent as json.Marshal(filePermission) = "420"
FILE_PERMISSION = 0o644

# atomic_writer.go: maxFileNameLength / maxPathLength
MAX_FILE_NAME_LENGTH = 255
MAX_PATH_LENGTH = 4096
# atomic_writer.go: dataDirName / newDataDirName
DATA_DIR_NAME = "..data"
NEW_DATA_DIR_NAME = "..data_tmp"

# provider_client.go ServiceConfig: waitForReady, at most 3 attempts, retry only UNAVAILABLE.
# (The Go constant spells the retry keys capitalised; grpc-go parses JSON case-insensitively,
# gRPC C-core needs the canonical camelCase used here.)
SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{"service": "v1alpha1.CSIDriverProvider"}],
            "waitForReady": True,
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "1s",
                "maxBackoff": "10s",
                "backoffMultiplier": 1.1,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
# main.go --max-call-recv-msg-size default 1024*1024*4, applied as MaxCallRecvMsgSize
MAX_CALL_RECV_MSG_SIZE = 4 * 1024 * 1024
# provider_client.go MountContent: proto.Size(resp) > 1 MiB only logs "proto above 1MiB, secret sync may fail"
PROTO_SIZE_WARNING = 1048576
# kubelet csi_plugin.go csiTimeout = 2 * time.Minute; the driver sets no per-call deadline of its own
KUBELET_CSI_TIMEOUT = 120.0
# provider_client.go HealthCheck: Version with a 5 s timeout
HEALTH_CHECK_TIMEOUT = 5.0
# main.go --rotation-poll-interval default 2*time.Minute (used only when rotation is enabled)
DEFAULT_ROTATION_POLL_INTERVAL = 120.0

# pkg/errors/errors.go reason labels used below
FAILED_TO_MOUNT = "FailedToMount"
GRPC_PROVIDER_ERROR = "GRPCProviderError"
FILE_WRITE_ERROR = "FileWriteError"
FAILED_TO_ENSURE_MOUNT_POINT = "FailedToEnsureMountPoint"

# provider_client.go errMissingObjectVersions
MISSING_OBJECT_VERSIONS = "missing object versions"


class DriverError(Exception):
    """A NodePublishVolume failure: `code` is the driver's error reason (metric label)."""

    def __init__(self, code: str, message: str, grpc_code: str | None = None, grpc_message: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.grpc_code = grpc_code
        self.grpc_message = grpc_message


class PathError(ValueError):
    """A file path refused by fileutil Validate / validatePath."""


# ---------------------------------------------------------------------------------------------
# Go encoding/json and path/filepath equivalents
# ---------------------------------------------------------------------------------------------

_HEX = "0123456789abcdef"


def go_json_string(s: str) -> str:
    """A string as Go's json.Marshal writes it (encode.go appendString, escapeHTML=true, Go >= 1.22).

    `"` and `\\` are backslash-escaped; \\b \\f \\n \\r \\t use their short forms; other bytes
    below 0x20 become \\u00XX (lower-case hex); `<`, `>`, `&` become \\u003c, \\u003e, \\u0026;
    U+2028 and U+2029 are escaped; everything else (including non-ASCII and DEL) is written raw.
    Invalid UTF-8 is replaced by U+FFFD (a Python str can only carry it as lone surrogates).
    """
    if not isinstance(s, str):
        raise TypeError(f"Go map[string]string value must be str, got {type(s).__name__}")
    out = ['"']
    for ch in s:
        c = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif c < 0x20:
            short = {0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}.get(c)
            out.append(short or "\\u00" + _HEX[c >> 4] + _HEX[c & 0xF])
        elif ch in "<>&":
            out.append("\\u00" + _HEX[c >> 4] + _HEX[c & 0xF])
        elif c in (0x2028, 0x2029):
            out.append("\\u%04x" % c)
        elif 0xD800 <= c <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_json_map(m: dict | None) -> str:
    """json.Marshal of a Go map[string]string: `null` for a nil map, else a compact object with
    keys sorted (Go sorts map keys by byte order; UTF-8 byte order equals code-point order)."""
    if m is None:
        return "null"
    return "{" + ",".join(go_json_string(k) + ":" + go_json_string(m[k]) for k in sorted(m)) + "}"


def go_clean(p: str) -> str:
    """Go filepath.Clean on Linux (lexical). Unlike os.path.normpath it also folds a leading `//`."""
    if p == "":
        return "."
    rooted = p.startswith("/")
    parts: list[str] = []
    for el in p.split("/"):
        if el in ("", "."):
            continue
        if el == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(el)
    out = ("/" if rooted else "") + "/".join(parts)
    return out or "."


def go_file_mode_bits(mode: int) -> int:
    """The mode bits Go's os.WriteFile/os.Chmod apply for os.FileMode(int32 mode) (file_posix.go
    syscallMode): the permission bits, plus S_ISUID/S_ISGID/S_ISVTX only for Go's own high flag bits
    (ModeSetuid 1<<23, ModeSetgid 1<<22, ModeSticky 1<<20). A numeric 04755 therefore acts as 0755;
    a negative int32 sets the high bits."""
    m = mode & 0xFFFFFFFF
    bits = m & 0o777
    if m & (1 << 23):
        bits |= stat.S_ISUID
    if m & (1 << 22):
        bits |= stat.S_ISGID
    if m & (1 << 20):
        bits |= stat.S_ISVTX
    return bits


def go_status_code_name(py_name: str) -> str:
    """grpc-go codes.Code String() for a Python grpc.StatusCode name (PERMISSION_DENIED -> PermissionDenied)."""
    if py_name == "CANCELLED":
        return "Canceled"
    return "".join(w.capitalize() for w in py_name.split("_"))


# ---------------------------------------------------------------------------------------------
# The request: kubelet's NodePublishVolume, then the driver's MountRequest
# ---------------------------------------------------------------------------------------------


def rfc3339(ts: datetime.datetime) -> str:
    """metav1.Time MarshalJSON: UTC, whole seconds, RFC 3339 (`2006-01-02T15:04:05Z`)."""
    return ts.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def tokens_json(tokens: dict | None, expiration: str | None = None) -> str | None:
    """The value kubelet stores under csi.storage.k8s.io/serviceAccount.tokens.

    kubelet csi_mounter.go podServiceAccountTokenAttrs: json.Marshal of map[audience]TokenRequestStatus,
    i.e. `{"<aud>":{"token":"...","expirationTimestamp":"<RFC3339>"}}` (struct field order token,
    expirationTimestamp; map keys sorted; Go escaping). `tokens` maps audience -> token; every token
    gets `expiration` (default: now + 1 h, kubelet's TokenRequest default lifetime). None when no tokens
    (kubelet adds nothing when the CSIDriver has no tokenRequests).
    """
    if not tokens:
        return None
    if expiration is None:
        expiration = rfc3339(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
    entries = []
    for aud in sorted(tokens):
        entries.append(
            go_json_string(aud)
            + ':{"token":' + go_json_string(tokens[aud])
            + ',"expirationTimestamp":' + go_json_string(expiration) + "}"
        )
    return "{" + ",".join(entries) + "}"


def kubelet_volume_context(volume_attributes: dict | None, pod: dict, tokens_value: str | None = None,
                           tokens_in_secrets: bool = False) -> dict:
    """NodePublishVolumeRequest.volume_context as kubelet builds it (csi_mounter.go SetUpAt).

    `pod` has keys name, namespace, uid, service_account.
    """
    # kubelet csi_mounter.go SetUpAt: the base is the inline volume's volumeAttributes
    ctx = dict(volume_attributes or {})
    # kubelet csi_mounter.go SetUpAt mergeMap(volAttribs, podInfoAttrs) (podInfoOnMount: true in the
    # chart's csidriver.yaml): kubelet's pod-info keys overwrite user volumeAttributes of the same name
    ctx.update({
        POD_NAME_KEY: pod["name"],
        POD_NAMESPACE_KEY: pod["namespace"],
        POD_UID_KEY: pod["uid"],
        SERVICE_ACCOUNT_NAME_KEY: pod["service_account"],
        # kubelet getPodInfoAttrs: "true" for Ephemeral (inline) volumes, the only lifecycle mode
        # the chart's CSIDriver allows (volumeLifecycleModes: [Ephemeral])
        EPHEMERAL_KEY: "true",
    })
    # kubelet csi_mounter.go SetUpAt mergeMap(volAttribs, serviceAccountTokenAttrs): tokens go into the
    # volume context unless the CSIDriver sets serviceAccountTokenInSecrets (KEP-5538: then only in secrets)
    if tokens_value and not tokens_in_secrets:
        ctx[TOKENS_KEY] = tokens_value
    return ctx


def kubelet_secrets(node_publish_secret: dict | None, tokens_value: str | None, tokens_in_secrets: bool) -> dict | None:
    """NodePublishVolumeRequest.secrets as the driver sees it (a Go map; None = nil).

    kubelet csi_util.go getCredentialsFromSecret: the nodePublishSecretRef Secret's data, decoded.
    KEP-5538 / kubernetes#134826: with serviceAccountTokenInSecrets the token JSON is added under
    csi.storage.k8s.io/serviceAccount.tokens (precedence over a Secret key of the same name is not
    confirmed from kubelet code; here the token wins).
    Protobuf cannot tell an empty map from a missing one, so an empty map reaches the driver as nil.
    """
    secrets = dict(node_publish_secret or {})
    if tokens_value and tokens_in_secrets:
        secrets[TOKENS_KEY] = tokens_value
    return secrets or None


def driver_attributes(spc_parameters: dict | None, volume_context: dict, secrets: dict | None) -> dict:
    """The driver's `attributes` map (nodeserver.go NodePublishVolume L180-205). Raises DriverError."""
    # nodeserver.go NodePublishVolume: secretProviderClass comes from the volume context (the pod's
    # volumeAttributes); empty -> plain error "secretProviderClass is not set" (reason FailedToMount)
    spc_name = volume_context.get(SPC_FIELD, "")
    if spc_name == "":
        raise DriverError(FAILED_TO_MOUNT, "secretProviderClass is not set")
    # utils.go getSecretProviderItem: the SPC is looked up in the pod's namespace (from the volume context)
    namespace = volume_context.get(POD_NAMESPACE_KEY, "")
    # utils.go getParametersFromSPC: an SPC without spec.parameters is refused
    if not spc_parameters:
        raise DriverError(FAILED_TO_MOUNT, f"parameters not set in {namespace}/{spc_name}")
    # nodeserver.go NodePublishVolume: SPC spec.parameters is the base map
    parameters = dict(spc_parameters)
    # nodeserver.go NodePublishVolume: volume context copied over SPC parameters (maps.Copy), so pod
    # volumeAttributes and kubelet keys override SPC parameters of the same name
    parameters.update(volume_context)
    # nodeserver.go getServiceAccountTokens: secrets[tokens key] if the key exists (even if empty),
    # else volume_context[tokens key]
    if secrets is not None and TOKENS_KEY in secrets:
        tokens_value = secrets[TOKENS_KEY]
    else:
        tokens_value = volume_context.get(TOKENS_KEY, "")
    # nodeserver.go NodePublishVolume: written last, only when non-empty
    if len(tokens_value) > 0:
        parameters[TOKENS_KEY] = tokens_value
    return parameters


def build_attributes(spc_parameters: dict | None, volume_attributes: dict | None, pod: dict, tokens: dict | None = None,
                     expiration: str | None = None, tokens_in_secrets: bool = False,
                     node_publish_secret: dict | None = None) -> dict:
    """The driver's attributes map (before JSON encoding) for one NodePublishVolume.

    Merge order: SPC spec.parameters, then the volume context (pod volumeAttributes, then kubelet's
    pod-info keys, then kubelet's serviceAccount.tokens when `tokens` and not `tokens_in_secrets`),
    then the driver writes serviceAccount.tokens last (from secrets if present there, else from the
    volume context). Raises DriverError for an SPC without parameters ("parameters not set") or a
    volume without secretProviderClass.
    """
    tv = tokens_json(tokens, expiration)
    ctx = kubelet_volume_context(volume_attributes, pod, tv, tokens_in_secrets)
    secrets = kubelet_secrets(node_publish_secret, tv, tokens_in_secrets)
    return driver_attributes(spc_parameters, ctx, secrets)


def build_secrets(node_publish_secret: dict | None, tokens_json: str | None, tokens_in_secrets: bool) -> str:  # noqa: F811
    """The MountRequest.secrets string.

    nodeserver.go NodePublishVolume: json.Marshal(req.GetSecrets()), unfiltered. Nothing (no
    nodePublishSecretRef data, no tokens in secrets) is a nil map, hence exactly `null`; otherwise a
    compact, key-sorted, HTML-escaped JSON object.
    """
    return go_json_map(kubelet_secrets(node_publish_secret, tokens_json, tokens_in_secrets))


def mount_request_fields(attributes: dict, secrets: dict | None, target_path: str) -> dict:
    """All MountRequest fields exactly as the driver fills them (provider_client.go MountContent)."""
    return {
        # nodeserver.go NodePublishVolume: json.Marshal(parameters)
        "attributes": go_json_map(attributes),
        # nodeserver.go NodePublishVolume: json.Marshal(secrets), nil map -> null
        "secrets": go_json_map(secrets),
        # nodeserver.go NodePublishVolume: req.GetTargetPath() unchanged
        "target_path": target_path,
        # nodeserver.go NodePublishVolume: json.Marshal(os.FileMode(0644)) = 420 (decimal, no quotes)
        "permission": json.dumps(FILE_PERMISSION),
        # nodeserver.go mountSecretsStoreObjectContent passes nil oldObjectVersions: always empty
        "current_object_version": [],
    }


# ---------------------------------------------------------------------------------------------
# Writing files: pkg/util/fileutil
# ---------------------------------------------------------------------------------------------


def validate_path(p: str) -> None:
    """atomic_writer.go validatePath. Raises PathError."""
    if p == "":
        raise PathError(f"invalid path: must not be empty: {p!r}")
    # path.IsAbs: a leading "/"
    if p.startswith("/"):
        raise PathError(f"invalid path: must be relative path: {p}")
    # lengths are Go byte lengths
    if len(p.encode("utf-8", "surrogatepass")) > MAX_PATH_LENGTH:
        raise PathError(f"invalid path: must be less than or equal to {MAX_PATH_LENGTH} characters")
    items = p.split("/")
    for item in items:
        if item == "..":
            raise PathError(f"invalid path: must not contain '..': {p}")
        if len(item.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_LENGTH:
            raise PathError(f"invalid path: filenames must be less than or equal to {MAX_FILE_NAME_LENGTH} characters")
    # only the FIRST element is checked for a leading ".." (a/..foo is accepted)
    if items[0].startswith("..") and len(items[0]) > 2:
        raise PathError(f"invalid path: must not start with '..': {p}")


def _file_tuple(f) -> tuple[str, int, bytes]:
    if isinstance(f, tuple):
        return f
    if isinstance(f, dict):
        return f["path"], f["mode"], f["contents"]
    return f.path, f.mode, f.contents  # a generated File message


def validate_files(files) -> None:
    """writer.go Validate: validatePath, then filepath.Clean(path) must equal path. Raises PathError.

    Stand-in addition: "." passes both upstream checks but is refused here (see write_payloads).
    """
    for f in files:
        p = _file_tuple(f)[0]
        validate_path(p)
        if go_clean(p) != p:
            raise PathError(f"invalid filepath: {json.dumps(p)}")
    for f in files:
        if _file_tuple(f)[0] == ".":
            # writer.go cleanupProviderFiles: the first component "." is <target>/. = the target itself,
            # not a symlink, so the real driver calls os.RemoveAll(target): it deletes ..data, the
            # timestamped dirs and every link, then fails on the busy tmpfs mountpoint ("cleanup
            # failure"); on a remount that error is masked and the pod keeps an EMPTY volume. Without a
            # tmpfs the RemoveAll would delete our target directory itself, so the stand-in refuses it.
            raise PathError('cleanup failure: path "." names the target directory itself; the real driver '
                            "would os.RemoveAll the volume (wiping every mounted file)")


@dataclasses.dataclass
class WriteOutcome:
    written: bool  # False: atomic_writer.go Write returned early, nothing on disk changed
    written_paths: list  # payload paths written into the new timestamped dir
    removed_paths: list  # user-visible (top-level) paths removed as stale
    ts_dir: str | None  # name of the timestamped dir now behind ..data


class AtomicWriter:
    """atomic_writer.go AtomicWriter (vendored from kubelet v1.20.6). Not safe for concurrent use."""

    def __init__(self, target_dir: str):
        # atomic_writer.go NewAtomicWriter: the target directory must exist
        if not os.path.exists(target_dir):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), target_dir)
        self.target_dir = target_dir
        self.writes = 0  # number of Write calls that changed the volume
        self.files_written = 0  # number of files written over all calls

    def write(self, payload: dict) -> WriteOutcome:
        """atomic_writer.go Write. `payload` maps path -> (contents: bytes, mode: int). Raises OSError
        (or PathError) on failure, leaving the volume as the real writer would."""
        # (1) atomic_writer.go validatePayload: validatePath each key, key by filepath.Clean(path)
        clean = {}
        for p, (data, mode) in payload.items():
            validate_path(p)
            clean[go_clean(p)] = (bytes(data), int(mode))

        # (2) read the ..data link; a missing link means no old version
        data_dir_path = os.path.join(self.target_dir, DATA_DIR_NAME)
        try:
            old_ts_dir = os.readlink(data_dir_path)
        except FileNotFoundError:
            old_ts_dir = ""
        old_ts_path = os.path.join(self.target_dir, old_ts_dir)

        paths_to_remove: set[str] = set()
        if old_ts_dir:
            # (3) atomic_writer.go pathsToRemove
            paths_to_remove = self._paths_to_remove(clean, old_ts_path)
            # (4) atomic_writer.go shouldWritePayload: content bytes only (a mode-only change is not
            # written); unchanged and nothing to remove -> return without touching the volume
            if not self._should_write_payload(clean, old_ts_path) and not paths_to_remove:
                return WriteOutcome(False, [], [], old_ts_dir)

        # (5) atomic_writer.go newTimestampDir
        ts_dir = self._new_timestamp_dir()
        ts_dir_name = os.path.basename(ts_dir)

        # (6) atomic_writer.go writePayloadToDir; on failure the new ts dir is left behind (upstream too)
        self._write_payload_to_dir(clean, ts_dir)

        # (7) atomic_writer.go createUserVisibleFiles
        self._create_user_visible_files(clean)

        # (8) atomic_writer.go Write: ..data_tmp -> <ts dir name> (relative)
        new_data_dir_path = os.path.join(self.target_dir, NEW_DATA_DIR_NAME)
        try:
            os.symlink(ts_dir_name, new_data_dir_path)
        except OSError:
            shutil.rmtree(ts_dir, ignore_errors=True)
            raise

        # (9) atomic_writer.go Write: rename ..data_tmp to ..data (atomic on Linux)
        try:
            os.rename(new_data_dir_path, data_dir_path)
        except OSError:
            _go_remove(new_data_dir_path, ignore=True)
            shutil.rmtree(ts_dir, ignore_errors=True)
            raise

        # (10) atomic_writer.go removeUserVisiblePaths: only top-level entries (no "/"), keep going on
        # error and return the last one
        removed, last_err = [], None
        for p in sorted(paths_to_remove):
            if "/" in p:
                continue
            try:
                _go_remove(os.path.join(self.target_dir, p))
                removed.append(p)
            except OSError as e:
                last_err = e
        if last_err is not None:
            raise last_err

        # (11) atomic_writer.go Write: os.RemoveAll the previous timestamped directory
        if old_ts_dir:
            _go_remove_all(old_ts_path)

        self.writes += 1
        self.files_written += len(clean)
        return WriteOutcome(True, list(clean), removed, ts_dir_name)

    @staticmethod
    def _paths_to_remove(payload: dict, old_ts_path: str) -> set:
        # atomic_writer.go pathsToRemove: every relative path (files and dirs) under the old ts dir
        # (filepath.Walk, symlinks not followed; a missing dir yields nothing) ...
        old: set[str] = set()
        if os.path.lexists(old_ts_path):
            for root, dirs, files in os.walk(old_ts_path, followlinks=False):
                for name in dirs + files:
                    old.add(os.path.relpath(os.path.join(root, name), old_ts_path))
        # ... minus every new path and all of its ancestors
        new: set[str] = set()
        for p in payload:
            while p:
                new.add(p)
                p = p.rpartition("/")[0]
        return old - new

    @staticmethod
    def _should_write_payload(payload: dict, old_ts_path: str) -> bool:
        # atomic_writer.go shouldWritePayload / shouldWriteFile: a missing file counts as changed;
        # otherwise compare content bytes (ReadFile errors, e.g. EISDIR, fail the Write)
        for p, (data, _mode) in payload.items():
            full = os.path.join(old_ts_path, p)
            if not os.path.lexists(full):
                return True
            with open(full, "rb") as fh:
                if fh.read() != data:
                    return True
        return False

    def _new_timestamp_dir(self) -> str:
        # atomic_writer.go newTimestampDir: os.MkdirTemp(target, UTC "..2006_01_02_15_04_05.")
        # (Go appends a random uint32 in decimal, creates with 0700, retries on EEXIST), then chmod
        # 0755 so group/other can traverse regardless of umask
        prefix = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        for _ in range(10000):
            path = os.path.join(self.target_dir, prefix + str(random.getrandbits(32)))
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            os.chmod(path, 0o755)
            return path
        raise FileExistsError(errno.EEXIST, "MkdirTemp: too many collisions", self.target_dir)

    @staticmethod
    def _write_payload_to_dir(payload: dict, ts_dir: str) -> None:
        # atomic_writer.go writePayloadToDir
        for p, (data, mode) in payload.items():
            bits = go_file_mode_bits(mode)
            full = os.path.join(ts_dir, p)
            # parents: os.MkdirAll(dir, os.ModePerm), mode subject to the umask
            os.makedirs(os.path.dirname(full), 0o777, exist_ok=True)
            # os.WriteFile(path, data, mode): O_WRONLY|O_CREATE|O_TRUNC
            try:
                fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, bits)
            except ValueError as e:  # embedded NUL: Go's open fails with EINVAL
                raise OSError(errno.EINVAL, str(e), full) from e
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            # os.Chmod(path, mode): the exact mode whatever the umask
            os.chmod(full, bits)
            # FsUser is never set by fileutil.WritePayloads: no chown

    def _create_user_visible_files(self, payload: dict) -> None:
        # atomic_writer.go createUserVisibleFiles: one link per FIRST path component,
        # <target>/<first> -> ..data/<first>, created only when Readlink says it does not exist
        for p in payload:
            first = p.split("/", 1)[0]
            visible = os.path.join(self.target_dir, first)
            try:
                os.readlink(visible)
            except FileNotFoundError:
                os.symlink(os.path.join(DATA_DIR_NAME, first), visible)
            except OSError:
                pass  # exists but not a link (EINVAL): left alone, as upstream


def _go_remove(path: str, ignore: bool = False) -> None:
    """Go os.Remove: unlink, or rmdir for an (empty) directory."""
    try:
        try:
            os.unlink(path)
        except IsADirectoryError:
            os.rmdir(path)
        except PermissionError:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                raise
    except OSError:
        if not ignore:
            raise


def _go_remove_all(path: str) -> None:
    """Go os.RemoveAll: a missing path is not an error."""
    if os.path.islink(path) or not os.path.isdir(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    else:
        shutil.rmtree(path)


def cleanup_provider_files(target: str, files) -> None:
    """writer.go cleanupProviderFiles: a first path component present in the target as a real file
    or directory (not a symlink) was written by a provider itself: os.RemoveAll it."""
    for f in files:
        first = _file_tuple(f)[0].split("/")[0]
        p = os.path.join(target, first)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        _go_remove_all(p)


def write_payloads(target: str, files) -> WriteOutcome:
    """writer.go WritePayloads. `files`: File messages, (path, mode, contents) tuples or dicts.
    Raises PathError/OSError (MountContent turns either into FileWriteError)."""
    # writer.go WritePayloads: Validate first (plus the stand-in's refusal of ".")
    validate_files(files)
    # writer.go WritePayloads: cleanupProviderFiles ("cleanup failure: ..." on error)
    try:
        cleanup_provider_files(target, files)
    except OSError as e:
        raise OSError(e.errno, f"cleanup failure: {e}") from e
    # writer.go WritePayloads: NewAtomicWriter(target, "secrets-store-csi-driver")
    w = AtomicWriter(target)
    # writer.go WritePayloads: map[path]FileProjection{Data, Mode}: duplicate paths, the last one wins
    payload = {}
    for f in files:
        p, mode, data = _file_tuple(f)
        payload[p] = (data, mode)
    return w.write(payload)


def get_mounted_files(target: str) -> dict:
    """filesystem.go GetMountedFiles: relative path -> absolute path of every file a pod sees;
    entries starting with ".." are skipped, top-level symlinks are followed, directories omitted."""
    out = {}
    for name in sorted(os.listdir(target)):
        if name.startswith(".."):
            continue
        root = os.path.join(target, name)
        if os.path.islink(root):
            root = os.path.join(target, os.readlink(root))
        if not os.path.isdir(root) or os.path.islink(root):
            out[name] = root
            continue
        for dirpath, _dirs, fnames in os.walk(root, followlinks=False):
            for fn in fnames:
                full = os.path.join(dirpath, fn)
                out[os.path.join(name, os.path.relpath(full, root))] = full
    return out


def read_mounted_files(target: str) -> list:
    """What a pod sees in the volume: [{"path", "mode", "contents"}] sorted by path (mode from stat)."""
    files = []
    for rel, full in sorted(get_mounted_files(target).items()):
        st = os.stat(full)
        with open(full, "rb") as fh:
            files.append({"path": rel, "mode": stat.S_IMODE(st.st_mode), "contents": fh.read()})
    return files


# ---------------------------------------------------------------------------------------------
# gRPC client
# ---------------------------------------------------------------------------------------------

_STUB_CACHE: dict = {}


def stubs(proto_dir: str, stub_dir: str | None = None):
    """Generate (once, cached by proto content) and import the client for csi_provider.proto."""
    return proto_stubs(proto_dir, "csi_provider", stub_dir)


def proto_stubs(proto_dir: str, name: str, stub_dir: str | None = None):
    """Generate (once, cached by proto content) and import the grpcio client for
    `<proto_dir>/<name>.proto`: returns the `<name>_pb2` and `<name>_pb2_grpc` modules."""
    proto = os.path.join(proto_dir, f"{name}.proto")
    with open(proto, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()[:16]
    if (name, digest) in _STUB_CACHE:
        return _STUB_CACHE[(name, digest)]
    base = stub_dir or os.path.join(tempfile.gettempdir(), f"keyward-{name}-stubs-{os.getuid()}")
    out = os.path.join(base, digest)
    if not os.path.exists(os.path.join(out, f"{name}_pb2_grpc.py")):
        from grpc_tools import protoc

        os.makedirs(base, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=base, prefix=".gen-")
        rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", proto])
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {proto} with {rc}")
        try:
            os.rename(tmp, out)  # atomic: concurrent generators do not see half-written stubs
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    if out not in sys.path:
        sys.path.insert(0, out)
    for mod in (f"{name}_pb2", f"{name}_pb2_grpc"):
        sys.modules.pop(mod, None)
    pb = importlib.import_module(f"{name}_pb2")
    pb_grpc = importlib.import_module(f"{name}_pb2_grpc")
    _STUB_CACHE[(name, digest)] = (pb, pb_grpc)
    return pb, pb_grpc


def dial(socket_path: str):
    """A channel as provider_client.go NewPluginClientBuilder / Get builds it: unix socket,
    authority "localhost", insecure, the driver's service config (wait-for-ready, 3 attempts on
    UNAVAILABLE), receive limit 4 MiB (main.go --max-call-recv-msg-size)."""
    import grpc

    return grpc.insecure_channel(
        "unix://" + os.path.abspath(socket_path),
        options=[
            ("grpc.default_authority", "localhost"),
            ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", MAX_CALL_RECV_MSG_SIZE),
        ],
    )


# ---------------------------------------------------------------------------------------------
# NodePublishVolume
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class MountResult:
    ok: bool
    target: str
    code: str = ""  # the driver's error reason (metric label) when not ok
    message: str = ""  # the error NodePublishVolume returns when not ok
    grpc_code: str | None = None  # the provider's gRPC status name (e.g. PERMISSION_DENIED) for GRPCProviderError
    grpc_message: str | None = None  # the provider's gRPC status details
    object_version: list = dataclasses.field(default_factory=list)  # [{"id","version"}] as returned
    object_versions: dict = dataclasses.field(default_factory=dict)  # the driver's map (duplicate ids: last wins)
    response_files: list = dataclasses.field(default_factory=list)  # [{"path","mode","contents"}] as returned
    files: list = dataclasses.field(default_factory=list)  # [{"path","mode","contents"}] read back from disk
    written: list = dataclasses.field(default_factory=list)  # paths the writer wrote in this call
    rewritten: bool = False  # the atomic writer swapped ..data in this call
    skipped: bool = False  # NodePublishVolume returned early, no provider call
    called_provider: bool = False
    masked_error: dict | None = None  # {"code","message"} of a remount failure the driver masked
    request: dict | None = None  # the MountRequest fields sent (see mount_request_fields)
    warnings: list = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        """The CLI's JSON form."""
        if not self.ok:
            d = {"ok": False, "code": self.code, "message": self.message, "target": self.target}
            if self.grpc_code:
                d["grpc_code"] = self.grpc_code
                d["grpc_message"] = self.grpc_message
            return d
        return {
            "ok": True,
            "files": [{"path": f["path"], "mode": f["mode"], "contents_b64": base64.b64encode(f["contents"]).decode()}
                      for f in self.files],
            "object_version": self.object_version,
            "written": sorted(self.written),
            "rewritten": self.rewritten,
            "skipped": self.skipped,
            "masked_error": self.masked_error,
            "target": self.target,
        }


class Driver:
    """The Secrets Store CSI Driver's node plugin, talking to one provider socket.

    The client (channel) is cached for the life of the object, as provider_client.go Get caches
    one client per provider for the life of the driver process.
    """

    def __init__(self, socket: str, proto_dir: str, stub_dir: str | None = None, timeout: float = KUBELET_CSI_TIMEOUT):
        self.socket = socket
        self.pb, self.pb_grpc = stubs(proto_dir, stub_dir)
        self.channel = dial(socket)
        self.stub = self.pb_grpc.CSIDriverProviderStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def version(self, version: str = "v1alpha1", timeout: float = HEALTH_CHECK_TIMEOUT):
        """provider_client.go Version / HealthCheck: Version{version: "v1alpha1"}, 5 s timeout."""
        return self.stub.Version(self.pb.VersionRequest(version=version), timeout=timeout, wait_for_ready=True)

    def mount_content(self, fields: dict):
        """provider_client.go MountContent: the RPC and the response checks, without writing.
        Returns the response; raises DriverError."""
        import grpc

        req = self.pb.MountRequest(
            attributes=fields["attributes"],
            secrets=fields["secrets"],
            target_path=fields["target_path"],
            permission=fields["permission"],
            current_object_version=[self.pb.ObjectVersion(id=i, version=v) for i, v in fields["current_object_version"]],
        )
        try:
            resp = self.stub.Mount(req, timeout=self.timeout, wait_for_ready=True)
        except grpc.RpcError as e:
            # provider_client.go MountContent: RPC error -> reason GRPCProviderError (grpc-go error text)
            name = e.code().name if e.code() else "UNKNOWN"
            details = e.details() or ""
            raise DriverError(GRPC_PROVIDER_ERROR, f"rpc error: code = {go_status_code_name(name)} desc = {details}",
                              grpc_code=name, grpc_message=details) from e
        # provider_client.go MountContent: a non-empty error.code fails (an Error with empty code is success)
        if resp.HasField("error") and len(resp.error.code) > 0:
            raise DriverError(resp.error.code, f"mount request failed with provider error code {resp.error.code}")
        # provider_client.go MountContent: no ObjectVersion at all (nil in Go) -> "missing object versions"
        if len(resp.object_version) == 0:
            raise DriverError(GRPC_PROVIDER_ERROR, MISSING_OBJECT_VERSIONS)
        return resp

    def mount(self, target_dir: str, spc_parameters: dict | None, volume_attributes: dict | None, pod: dict,
              tokens: dict | None = None, node_publish_secret: dict | None = None, tokens_in_secrets: bool = False,
              rotation_poll_interval: float | None = None, expiration: str | None = None) -> MountResult:
        """nodeserver.go NodePublishVolume for one pod volume.

        spc_parameters: the SecretProviderClass spec.parameters; volume_attributes: the pod volume's
        csi.volumeAttributes (must carry secretProviderClass); pod: name, namespace, uid,
        service_account; tokens: audience -> token (the CSIDriver's tokenRequests); node_publish_secret:
        the nodePublishSecretRef Secret's data (decoded strings); tokens_in_secrets: the CSIDriver's
        serviceAccountTokenInSecrets; rotation_poll_interval: None = --enable-secret-rotation=false
        (the default), else rotation on with this --rotation-poll-interval in seconds.
        """
        target = os.path.abspath(target_dir)
        # nodeserver.go NodePublishVolume: startTime is taken on entry
        start = time.time()
        tv = tokens_json(tokens, expiration)
        volume_context = kubelet_volume_context(volume_attributes, pod, tv, tokens_in_secrets)
        secrets = kubelet_secrets(node_publish_secret, tv, tokens_in_secrets)
        rotation_enabled = rotation_poll_interval is not None
        res = MountResult(ok=True, target=target)

        # nodeserver.go NodePublishVolume: with rotation on, skip when startTime < mtime(target) +
        # rotationCacheDuration (utils.go getLastUpdateTime = os.Stat(target).ModTime()); a Stat error
        # is only logged. The check runs before, and does not depend on, the mount-point check.
        if rotation_enabled:
            try:
                mtime = os.stat(target).st_mtime
            except OSError as e:
                res.warnings.append(f"could not find last modification time for targetpath: {e}")
            else:
                if start < mtime + rotation_poll_interval:
                    res.skipped = True
                    res.files = read_mounted_files(target) if _is_mounted(target) else []
                    return res

        # utils.go ensureMountPoint (stand-in: "mounted" = the target holds ..data); nodeserver.go
        # NodePublishVolume creates a missing target with os.MkdirAll(target, 0750) (kubelet >= 1.20 does not)
        if not os.path.exists(target):
            try:
                os.makedirs(target, 0o750)
            except OSError as e:
                return self._fail(res, FAILED_TO_MOUNT, f"failed to create target path {target}, err: {e}")
        elif not os.path.isdir(target):
            return self._fail(res, FAILED_TO_ENSURE_MOUNT_POINT,
                              f"failed to check if target path {target} is mount point, err: not a directory")
        mounted = _is_mounted(target)
        # nodeserver.go NodePublishVolume: isRemountRequest = mounted
        is_remount = mounted

        # nodeserver.go NodePublishVolume: rotation disabled and already mounted -> success, no provider call
        if not rotation_enabled and mounted:
            res.skipped = True
            res.files = read_mounted_files(target)
            return res

        # nodeserver.go NodePublishVolume: SPC lookup and attributes; these errors are NOT masked on a remount
        try:
            attributes = driver_attributes(spc_parameters, volume_context, secrets)
        except DriverError as e:
            return self._fail(res, e.code, str(e))

        fields = mount_request_fields(attributes, secrets, target)
        res.request = fields
        # nodeserver.go NodePublishVolume: Mount("tmpfs", target) when not mounted (stand-in: remember
        # what the target held, so the unmount on failure can be emulated)
        before = set(os.listdir(target))

        try:
            res.called_provider = True
            resp = self.mount_content(fields)
            res.object_version = [{"id": o.id, "version": o.version} for o in resp.object_version]
            # provider_client.go MountContent: versions keyed by id, the last duplicate wins
            res.object_versions = {o.id: o.version for o in resp.object_version}
            res.response_files = [{"path": f.path, "mode": f.mode, "contents": bytes(f.contents)} for f in resp.files]
            if resp.ByteSize() > PROTO_SIZE_WARNING:
                res.warnings.append("proto above 1MiB, secret sync may fail")
            # provider_client.go MountContent: no files -> success (provider wrote its own files, issue #551)
            if len(resp.files) > 0:
                try:
                    outcome = write_payloads(target, list(resp.files))
                except (OSError, PathError) as e:
                    # provider_client.go MountContent: WritePayloads failure -> reason FileWriteError
                    raise DriverError(FILE_WRITE_ERROR, str(e)) from e
                res.rewritten = outcome.written
                res.written = outcome.written_paths
        except DriverError as e:
            if is_remount:
                # nodeserver.go NodePublishVolume: "Mask error until fix available for
                # kubernetes/kubernetes#121271": success, no unmount, old files stay
                res.masked_error = {"code": e.code, "message": str(e)}
                if e.grpc_code:
                    res.masked_error["grpc_code"] = e.grpc_code
                res.object_version, res.object_versions = [], {}
                res.files = read_mounted_files(target)
                return res
            # nodeserver.go NodePublishVolume defer: mounted && !isRemountRequest -> Unmount(target), so
            # whatever the failed publish wrote disappears (stand-in: remove the new entries)
            for name in set(os.listdir(target)) - before:
                _go_remove_all(os.path.join(target, name))
            res.object_version, res.object_versions = [], {}
            res.grpc_code, res.grpc_message = e.grpc_code, e.grpc_message
            ns, name = pod["namespace"], pod["name"]
            # nodeserver.go NodePublishVolume: first-mount errors are wrapped
            return self._fail(res, e.code, f"failed to mount secrets store objects for pod {ns}/{name}, err: {e}")

        res.files = read_mounted_files(target)
        return res

    @staticmethod
    def _fail(res: MountResult, code: str, message: str) -> MountResult:
        res.ok, res.code, res.message = False, code, message
        return res


def _is_mounted(target: str) -> bool:
    return os.path.lexists(os.path.join(target, DATA_DIR_NAME))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _kv(items, what):
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"{what} expects key=value, got {item!r}")
        out[k] = v
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Secrets Store CSI Driver v1.6.0 stand-in")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mount", help="one NodePublishVolume against a provider socket; prints one JSON object")
    m.add_argument("--socket", required=True)
    m.add_argument("--proto-dir", required=True)
    m.add_argument("--stub-dir", default=None)
    m.add_argument("--target", default=None, help="target directory (default: a fresh temp dir)")
    m.add_argument("--namespace", default="default")
    m.add_argument("--pod", default="demo-pod")
    m.add_argument("--pod-uid", default="00000000-0000-0000-0000-000000000001")
    m.add_argument("--service-account", required=True)
    m.add_argument("--token", default="")
    m.add_argument("--audience", default="keyward")
    m.add_argument("--expiration", default=None, help="token expirationTimestamp (RFC 3339; default now+1h)")
    m.add_argument("--tokens-in-secrets", action="store_true", help="CSIDriver serviceAccountTokenInSecrets: true")
    m.add_argument("--node-publish-secret-json", default=None, help="nodePublishSecretRef data as a JSON object")
    m.add_argument("--objects", required=True, help="the SecretProviderClass `objects` parameter (YAML)")
    m.add_argument("--spc-name", default="demo", help="volumeAttributes secretProviderClass")
    m.add_argument("--spc-param", action="append", default=[], metavar="K=V", help="extra SPC spec.parameters")
    m.add_argument("--volume-attr", action="append", default=[], metavar="K=V", help="extra pod volumeAttributes")
    m.add_argument("--rotation-poll-interval", type=float, default=None,
                   help="enable rotation with this poll interval in seconds (default: rotation off)")
    m.add_argument("--timeout", type=float, default=KUBELET_CSI_TIMEOUT)
    args = ap.parse_args(argv)

    spc_parameters = {"objects": args.objects}
    spc_parameters.update(_kv(args.spc_param, "--spc-param"))
    volume_attributes = {SPC_FIELD: args.spc_name}
    volume_attributes.update(_kv(args.volume_attr, "--volume-attr"))
    pod = {"name": args.pod, "namespace": args.namespace, "uid": args.pod_uid, "service_account": args.service_account}
    tokens = {args.audience: args.token} if args.token else None
    nps = None
    if args.node_publish_secret_json:
        nps = json.loads(args.node_publish_secret_json)
        if not isinstance(nps, dict) or not all(isinstance(v, str) for v in nps.values()):
            raise SystemExit("--node-publish-secret-json must be a JSON object of strings")
    # kubelet: .../pods/<uid>/volumes/kubernetes.io~csi/<vol>/mount, not created before NodePublishVolume
    target = args.target or os.path.join(tempfile.mkdtemp(prefix="csi-driver-"), "mount")

    with Driver(args.socket, args.proto_dir, args.stub_dir, timeout=args.timeout) as d:
        res = d.mount(target, spc_parameters, volume_attributes, pod, tokens=tokens, node_publish_secret=nps,
                      tokens_in_secrets=args.tokens_in_secrets, rotation_poll_interval=args.rotation_poll_interval,
                      expiration=args.expiration)
    print(json.dumps(res.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
