"""The mutating admission webhook: cache affinity for pods, ``suspend`` for queued Jobs, over TLS.

``AdmissionHandler.review`` takes an AdmissionReview v1 request (bytes) and always returns an
AdmissionReview v1 response that *allows* the object, with a JSONPatch when there is something
to add:

- a Pod (CREATE) reading fluidfs datasets gets the node affinity of ``placement`` (preferred,
  weighted by cached bytes; required on request), merged with what the user wrote;
- a ``batch/v1`` Job (CREATE) labelled ``fluidfs.io/queue`` (and not managed by Kueue) gets
  ``spec.suspend: true``, so that it waits for the queue to admit it.

Anything unexpected — a malformed review, a lookup that fails, a bug — gives "allowed, no
patch" and a warning the user sees, never an error: the webhook must never block a pod (it is
registered with ``failurePolicy: Ignore`` as well, for when it is down or slow).

``WebhookServer`` serves the handler over HTTPS (stdlib ``http.server`` in threads; the
controller starts and stops it). The certificate and key are files mounted from a Secret and
reloaded when they change on disk. ``webhook_configuration`` builds the matching
MutatingWebhookConfiguration (the chart renders the same object; see docs/scheduling.md).

Caveats: the handler does the PVC/PV/StorageClass reads synchronously through the adapter's
``VolumeLookups`` (serve them from informer caches: the API server waits ``timeoutSeconds`` at
most); a Job admitted by the API server while the webhook is down starts unqueued (the queue
reports it). The server answers one request per connection thread; it is not meant to face
anything but the API server.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from .locations import CacheLocations
from .placement import cache_affinity, merge_patch, parse_mode
from .queue import KUEUE_LABEL, QUEUE_LABEL
from .resolve import DRIVER, VolumeLookups, dataset_keys, pod_datasets

log = logging.getLogger(__name__)

PATH = "/mutate"
MAX_BODY = 3 * 1024 * 1024  # the API server's own request limit is 3 MiB
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
OPT_OUT_LABEL = "fluidfs.io/webhook"


@dataclass(frozen=True)
class WebhookConfig:
    driver: str = DRIVER
    levels: int = 4
    suspend_queued_jobs: bool = True
    queues: frozenset[str] | None = None  # the queue names a controller runs (None: any name)


def _response(uid: str, ops: Sequence[Mapping[str, Any]], warnings: Sequence[str]) -> dict[str, Any]:
    resp: dict[str, Any] = {"uid": uid, "allowed": True}
    if ops:
        resp["patchType"] = "JSONPatch"
        resp["patch"] = base64.b64encode(json.dumps(list(ops), separators=(",", ":")).encode()).decode()
    if warnings:
        resp["warnings"] = [f"fluidfs: {w}" for w in warnings]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}


class Reviewer(Protocol):
    """What ``WebhookServer`` serves: AdmissionReview bytes in, AdmissionReview out."""

    def review(self, body: bytes) -> dict[str, Any]: ...


class AdmissionHandler:
    """AdmissionReview in, AdmissionReview out (see the module docstring)."""

    def __init__(
        self,
        lookups: VolumeLookups,
        locations: Callable[[], CacheLocations],
        config: WebhookConfig | None = None,
    ) -> None:
        self.lookups = lookups
        self.locations = locations
        self.config = config or WebhookConfig()

    def review(self, body: bytes) -> dict[str, Any]:
        uid = ""
        try:
            review = json.loads(body)
            request = review.get("request") if isinstance(review, dict) else None
            if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
                raise ValueError("no request.uid")
            uid = request["uid"]
            ops, warnings = self._mutate(request)
            return _response(uid, ops, warnings)
        except Exception as e:  # never fail admission: allow unchanged, say why
            log.warning("admission review %s: %s: %s; allowed without changes", uid or "?", type(e).__name__, e)
            return _response(uid, [], [f"cache scheduling skipped: {type(e).__name__}: {str(e)[:80]}"])

    def _mutate(self, request: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        if request.get("operation") != "CREATE":
            return [], []
        kind = request.get("kind") or {}
        obj = request.get("object")
        if not isinstance(obj, dict) or not isinstance(kind, dict):
            raise ValueError("request.object is not an object")
        group, version, name = kind.get("group", ""), kind.get("version", ""), kind.get("kind", "")
        if (group, version, name) == ("", "v1", "Pod"):
            return self._pod(request, obj)
        if (group, version, name) == ("batch", "v1", "Job"):
            return self._job(obj)
        return [], []

    def _pod(self, request: Mapping[str, Any], pod: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        spec = pod.get("spec")
        meta = pod.get("metadata") or {}
        if not isinstance(spec, dict) or not isinstance(meta, dict):
            raise ValueError("pod has no spec")
        if spec.get("nodeName"):
            return [], []  # bound already: the scheduler will not see it
        mode, warning = parse_mode(meta.get("annotations"))
        warnings = [warning] if warning else []
        namespace = str(request.get("namespace") or meta.get("namespace") or "default")
        volumes = pod_datasets(
            spec, namespace, self.lookups, pod_name=str(meta.get("name") or ""), driver=self.config.driver
        )
        keys = dataset_keys(volumes)
        if not keys:
            return [], warnings
        aff = cache_affinity(keys, self.locations(), mode=mode, levels=self.config.levels)
        ops, more = merge_patch(pod, aff)
        if ops:
            log.debug("pod %s/%s: cache affinity for %s", namespace, meta.get("name") or meta.get("generateName"), keys)
        return ops, warnings + more

    def _job(self, job: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        labels = (job.get("metadata") or {}).get("labels") or {}
        spec = job.get("spec")
        if not self.config.suspend_queued_jobs or not isinstance(spec, dict) or QUEUE_LABEL not in labels:
            return [], []
        if KUEUE_LABEL in labels:
            return [], [f"job is managed by Kueue ({KUEUE_LABEL}); label {QUEUE_LABEL} ignored"]
        queues = self.config.queues
        if queues is not None and labels[QUEUE_LABEL] not in queues:
            runs = ", ".join(sorted(queues)) or "none"
            return [], [f"no fluidfs queue {str(labels[QUEUE_LABEL])!r} runs here (queues: {runs}); job not suspended"]
        if spec.get("suspend") is True:
            return [], []
        op = "replace" if "suspend" in spec else "add"
        return [{"op": op, "path": "/spec/suspend", "value": True}], []


# ---------------------------------------------------------------------------- TLS server


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    request_timeout = 10.0

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], tls: _Certificates) -> None:
        self.tls = tls
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        sock.settimeout(self.request_timeout)
        # The handshake happens in the request thread (first read), never in the accept loop.
        return self.tls.context().wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that is not speaking TLS, or hangs up mid-request: its problem, not ours.
        log.debug("webhook: connection from %s failed", client_address, exc_info=True)


class _Certificates:
    """The server's TLS context, rebuilt when the certificate or key file changes."""

    def __init__(self, certfile: str, keyfile: str) -> None:
        self.certfile, self.keyfile = certfile, keyfile
        self._lock = threading.Lock()
        self._stamp: tuple[float, float] | None = None
        self._ctx: ssl.SSLContext | None = None
        self.context()  # fail at start-up on unreadable files

    def context(self) -> ssl.SSLContext:
        stamp = (os.stat(self.certfile).st_mtime, os.stat(self.keyfile).st_mtime)
        with self._lock:
            if self._ctx is None or stamp != self._stamp:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                ctx.load_cert_chain(self.certfile, self.keyfile)
                if self._ctx is not None:
                    log.info("webhook: serving certificate %s reloaded", self.certfile)
                self._ctx, self._stamp = ctx, stamp
            return self._ctx


def _request_handler(handler: Reviewer, path: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("webhook %s: " + format, self.address_string(), *args)

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path in ("/healthz", "/readyz"):
                self._send(200, b"ok\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != path:
                self._send(404, b"not found\n", "text/plain")
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._send(411, b"Content-Length required\n", "text/plain")
                return
            if length < 0 or length > MAX_BODY:
                self.close_connection = True
                self._send(413, b"request too large\n", "text/plain")
                return
            body = self.rfile.read(length)
            out = handler.review(body)
            self._send(200, json.dumps(out, separators=(",", ":")).encode())

    return Handler


class WebhookServer:
    """HTTPS server for an ``AdmissionHandler``; ``start`` serves in a thread, ``stop`` ends it."""

    def __init__(
        self,
        handler: Reviewer,
        certfile: str,
        keyfile: str,
        host: str = "0.0.0.0",
        port: int = 9443,
        path: str = PATH,
    ) -> None:
        self._server = _TLSServer((host, port), _request_handler(handler, path), _Certificates(certfile, keyfile))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fluidfs-webhook", daemon=True)
        self._thread.start()
        log.info("webhook: serving on port %d", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> WebhookServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------- registration


def webhook_configuration(
    name: str,
    service: str,
    namespace: str,
    ca_bundle: str,
    *,
    port: int = 443,
    path: str = PATH,
    timeout_seconds: int = 3,
    driver: str = DRIVER,
    queue_jobs: bool = True,
    queue_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The MutatingWebhookConfiguration registering this webhook (``ca_bundle``: base64 PEM).

    Kept off system namespaces and the controller's own (namespaceSelector), and off anything
    labelled ``fluidfs.io/webhook: disabled``; pods only when they have a volume that could be
    fluidfs (matchConditions, so most pods never reach us); Jobs only with the queue label (one of
    ``queue_names`` when given: the queues the controller runs).
    """
    ns_selector = {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [*SYSTEM_NAMESPACES, namespace]},
            {"key": OPT_OUT_LABEL, "operator": "NotIn", "values": ["disabled"]},
        ]
    }
    client = {"service": {"name": service, "namespace": namespace, "path": path, "port": port}, "caBundle": ca_bundle}
    common: dict[str, Any] = {
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Ignore",
        "timeoutSeconds": timeout_seconds,
        "reinvocationPolicy": "Never",
        "matchPolicy": "Equivalent",
        "namespaceSelector": ns_selector,
        "clientConfig": client,
    }
    volumes_cel = (
        "has(object.spec.volumes) && object.spec.volumes.exists(v, has(v.persistentVolumeClaim) || "
        f"has(v.ephemeral) || (has(v.csi) && v.csi.driver == '{driver}'))"
    )
    hooks: list[dict[str, Any]] = [
        {
            "name": "pods.cache-affinity.fluidfs.io",
            **common,
            "rules": [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE"],
                    "resources": ["pods"],
                    "scope": "Namespaced",
                }
            ],
            "objectSelector": {
                "matchExpressions": [{"key": OPT_OUT_LABEL, "operator": "NotIn", "values": ["disabled"]}]
            },
            "matchConditions": [{"name": "may-read-a-fluidfs-volume", "expression": volumes_cel}],
        }
    ]
    if queue_jobs:
        hooks.append(
            {
                "name": "jobs.queue.fluidfs.io",
                **common,
                "rules": [
                    {
                        "apiGroups": ["batch"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["jobs"],
                        "scope": "Namespaced",
                    }
                ],
                "objectSelector": {
                    "matchExpressions": [
                        {"key": QUEUE_LABEL, "operator": "In", "values": list(queue_names)}
                        if queue_names
                        else {"key": QUEUE_LABEL, "operator": "Exists"},
                        {"key": KUEUE_LABEL, "operator": "DoesNotExist"},
                    ]
                },
            }
        )
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "fluidfs", "app.kubernetes.io/component": "webhook"},
        },
        "webhooks": hooks,
    }
