"""The admission webhook driven with real AdmissionReview v1 JSON, in process and over TLS.

Pods with a PVC (bound and unbound), an inline CSI volume, a generic ephemeral volume, no fluidfs
volume, the user's own affinity, the required annotation; queued Jobs; and everything that must
never block admission (malformed reviews, failing lookups): allowed, no patch, a warning. Every
patched object and the MutatingWebhookConfiguration are validated with kubernetes-validate.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import ssl
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest

from fluidfs.control.sched.locations import MIB, CacheLocations, dataset_key_for_url, label_name
from fluidfs.control.sched.webhook import AdmissionHandler, WebhookConfig, WebhookServer, webhook_configuration
from tests.support.kube_lookups import FakeVolumeLookups
from tests.support.tls import make_cert

GIB = 1024 * MIB
KUBE_VERSIONS = ["1.29.0", "1.35.0", kubernetes_validate.latest_version()]
IMAGENET = "s3://training-data/imagenet"
KEY = dataset_key_for_url(IMAGENET)
LOCATIONS = CacheLocations({KEY: {"node-a": 200 * GIB, "node-b": 50 * GIB}})
PREF = "preferredDuringSchedulingIgnoredDuringExecution"
REQ = "requiredDuringSchedulingIgnoredDuringExecution"

VOLUME_OBJECTS: list[dict[str, Any]] = [
    {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "imagenet"},
        "provisioner": "csi.fluidfs.io",
        "parameters": {"url": IMAGENET, "cacheSize": "200Gi", "csi.storage.k8s.io/node-stage-secret-name": "s3"},
    },
    {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "ssd"},
        "provisioner": "ebs.csi.aws.com",
    },
    {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "unbound", "namespace": "ml"},
        "spec": {"storageClassName": "imagenet", "accessModes": ["ReadOnlyMany"]},
    },
    {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "bound", "namespace": "ml"},
        "spec": {"storageClassName": "", "volumeName": "imagenet-static", "accessModes": ["ReadOnlyMany"]},
    },
    {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "imagenet-static"},
        "spec": {"csi": {"driver": "csi.fluidfs.io", "volumeHandle": "x", "volumeAttributes": {"url": IMAGENET}}},
    },
    {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "scratch", "namespace": "ml"},
        "spec": {"storageClassName": "ssd", "accessModes": ["ReadWriteOnce"]},
    },
]


def pod(volumes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    meta = {"name": "trainer", "namespace": "ml", **extra.pop("metadata", {})}
    spec = {
        "containers": [
            {"name": "train", "image": "trainer:1", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
        ],
        "volumes": volumes,
        **extra,
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def review(obj: Any, kind: dict[str, str] | None = None, operation: str = "CREATE") -> bytes:
    kind = kind or {"group": "", "version": "v1", "kind": "Pod"}
    req = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": kind,
        "resource": {"group": kind["group"], "version": "v1", "resource": kind["kind"].lower() + "s"},
        "requestKind": kind,
        "requestResource": {"group": kind["group"], "version": "v1", "resource": kind["kind"].lower() + "s"},
        "namespace": "ml",
        "operation": operation,
        "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
        "object": obj,
        "oldObject": None,
        "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}).encode()


def validate(obj: dict[str, Any]) -> None:
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.fixture
def lookups() -> FakeVolumeLookups:
    return FakeVolumeLookups(VOLUME_OBJECTS)


def run(handler: AdmissionHandler, obj: Any, **kw: Any) -> tuple[dict[str, Any], Any]:
    out = handler.review(review(obj, **kw))
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    resp = out["response"]
    assert resp["allowed"] is True and resp["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    if "patch" not in resp:
        return resp, obj
    assert resp["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(resp["patch"]))
    patched = jsonpatch.apply_patch(copy.deepcopy(obj), ops)
    validate(patched)
    return resp, patched


PVC_UNBOUND = [{"name": "data", "persistentVolumeClaim": {"claimName": "unbound", "readOnly": True}}]
PVC_BOUND = [{"name": "data", "persistentVolumeClaim": {"claimName": "bound"}}]
INLINE = [
    {"name": "data", "csi": {"driver": "csi.fluidfs.io", "readOnly": True, "volumeAttributes": {"url": IMAGENET}}}
]
EPHEMERAL = [
    {
        "name": "data",
        "ephemeral": {
            "volumeClaimTemplate": {"spec": {"storageClassName": "imagenet", "accessModes": ["ReadOnlyMany"]}}
        },
    }
]


@pytest.mark.parametrize(
    "volumes", [PVC_UNBOUND, PVC_BOUND, INLINE, EPHEMERAL], ids=["pvc", "pv", "inline", "ephemeral"]
)
def test_pods_reading_a_dataset_get_weighted_preferred_affinity(
    lookups: FakeVolumeLookups, volumes: list[dict[str, Any]]
) -> None:
    handler = AdmissionHandler(lookups, lambda: LOCATIONS)
    resp, patched = run(handler, pod(volumes))
    terms = patched["spec"]["affinity"]["nodeAffinity"][PREF]
    assert {t["preference"]["matchExpressions"][0]["key"] for t in terms} == {label_name(KEY)}
    assert REQ not in patched["spec"]["affinity"]["nodeAffinity"]
    assert "warnings" not in resp


def test_pods_without_fluidfs_volumes_are_untouched(lookups: FakeVolumeLookups) -> None:
    handler = AdmissionHandler(lookups, lambda: LOCATIONS)
    for volumes in (
        [],
        [{"name": "data", "persistentVolumeClaim": {"claimName": "scratch"}}],
        [{"name": "data", "persistentVolumeClaim": {"claimName": "missing"}}],
        [{"name": "data", "emptyDir": {}}],
        [{"name": "data", "csi": {"driver": "other.csi", "volumeAttributes": {"url": IMAGENET}}}],
    ):
        resp, _ = run(handler, pod(volumes))
        assert "patch" not in resp and "warnings" not in resp
    resp, _ = run(handler, pod(PVC_UNBOUND, nodeName="node-a"))
    assert "patch" not in resp
    resp, _ = run(handler, pod(PVC_UNBOUND), operation="UPDATE")
    assert "patch" not in resp
    resp, _ = run(AdmissionHandler(lookups, CacheLocations), pod(PVC_UNBOUND))
    assert "patch" not in resp  # nothing cached anywhere yet


def test_user_affinity_is_kept_and_required_on_request(lookups: FakeVolumeLookups) -> None:
    handler = AdmissionHandler(lookups, lambda: LOCATIONS)
    user_pref = {"weight": 5, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}
    p = pod(
        PVC_UNBOUND,
        affinity={"nodeAffinity": {PREF: [user_pref]}},
        metadata={"annotations": {"fluidfs.io/cache-affinity": "required"}},
    )
    resp, patched = run(handler, p)
    na = patched["spec"]["affinity"]["nodeAffinity"]
    assert na[PREF][0] == user_pref and len(na[PREF]) > 1
    assert na[REQ] == {"nodeSelectorTerms": [{"matchExpressions": [{"key": label_name(KEY), "operator": "Exists"}]}]}
    user_req = {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]}
    p["spec"]["affinity"]["nodeAffinity"][REQ] = user_req
    resp, patched = run(handler, p)
    assert patched["spec"]["affinity"]["nodeAffinity"][REQ] == user_req
    assert any("required node affinity of its own" in w for w in resp["warnings"])
    p = pod(PVC_UNBOUND, metadata={"annotations": {"fluidfs.io/cache-affinity": "disabled"}})
    assert "patch" not in run(handler, p)[0]


def test_queued_jobs_are_suspended(lookups: FakeVolumeLookups) -> None:
    handler = AdmissionHandler(lookups, lambda: LOCATIONS)
    kind = {"group": "batch", "version": "v1", "kind": "Job"}
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "train", "namespace": "ml", "labels": {"fluidfs.io/queue": "train"}},
        "spec": {
            "suspend": False,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}},
        },
    }
    _, patched = run(handler, job, kind=kind)
    assert patched["spec"]["suspend"] is True
    del job["spec"]["suspend"]
    _, patched = run(handler, job, kind=kind)
    assert patched["spec"]["suspend"] is True
    job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "lq"
    resp, _ = run(handler, job, kind=kind)
    assert "patch" not in resp and "Kueue" in resp["warnings"][0]
    del job["metadata"]["labels"]["fluidfs.io/queue"]
    assert "patch" not in run(handler, job, kind=kind)[0]


def test_only_jobs_of_the_queues_the_controller_runs_are_suspended(lookups: FakeVolumeLookups) -> None:
    """A Job labelled for a queue no controller runs would stay suspended for ever: left alone, with a warning."""
    handler = AdmissionHandler(lookups, lambda: LOCATIONS, WebhookConfig(queues=frozenset({"train", "eval"})))
    kind = {"group": "batch", "version": "v1", "kind": "Job"}
    template = {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}
    meta = {"name": "j", "namespace": "ml", "labels": {"fluidfs.io/queue": "eval"}}
    job: dict[str, Any] = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": {"template": template}}
    _, patched = run(handler, job, kind=kind)
    assert patched["spec"]["suspend"] is True
    job["metadata"]["labels"]["fluidfs.io/queue"] = "trian"
    resp, _ = run(handler, job, kind=kind)
    assert "patch" not in resp
    assert resp["warnings"] == ["fluidfs: no fluidfs queue 'trian' runs here (queues: eval, train); job not suspended"]
    resp, _ = run(AdmissionHandler(lookups, lambda: LOCATIONS, WebhookConfig(queues=frozenset())), job, kind=kind)
    assert "patch" not in resp and "(queues: none)" in resp["warnings"][0]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"[]",
        json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
        json.dumps({"request": {"uid": 7}}).encode(),
    ],
)
def test_malformed_reviews_are_allowed_with_a_warning(lookups: FakeVolumeLookups, body: bytes) -> None:
    out = AdmissionHandler(lookups, lambda: LOCATIONS).review(body)
    assert out["response"]["allowed"] is True and "patch" not in out["response"]
    assert out["response"]["warnings"][0].startswith("fluidfs: cache scheduling skipped")


def test_broken_objects_and_failing_lookups_never_block(lookups: FakeVolumeLookups) -> None:
    handler = AdmissionHandler(lookups, lambda: LOCATIONS)
    for obj in ("a pod", {"kind": "Pod"}, {"spec": {"volumes": "nope"}, "metadata": {}}):
        resp, _ = run(handler, obj)
        assert "patch" not in resp
    lookups.fail = True
    resp, _ = run(handler, pod(PVC_UNBOUND))
    assert "patch" not in resp and "API server unreachable" in resp["warnings"][0]

    def broken() -> CacheLocations:
        raise RuntimeError("model not ready")

    resp, _ = run(AdmissionHandler(FakeVolumeLookups(VOLUME_OBJECTS), broken), pod(INLINE))
    assert "patch" not in resp and "model not ready" in resp["warnings"][0]


def test_webhook_configuration_is_valid() -> None:
    mwc = webhook_configuration(
        "fluidfs-webhook", "fluidfs-controller", "fluidfs-system", base64.b64encode(b"PEM").decode()
    )
    validate(mwc)
    for hook in mwc["webhooks"]:
        assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] <= 5 and hook["sideEffects"] == "None"
        excluded = hook["namespaceSelector"]["matchExpressions"][0]["values"]
        assert "kube-system" in excluded and "fluidfs-system" in excluded
    # with the controller's queue names, only their Jobs are sent (one In expression, still valid)
    named = webhook_configuration("w", "s", "ns", "UEVN", queue_names=["train", "eval"])
    validate(named)
    (jobs,) = [h for h in named["webhooks"] if h["rules"][0]["resources"] == ["jobs"]]
    assert {"key": "fluidfs.io/queue", "operator": "In", "values": ["train", "eval"]} in jobs["objectSelector"][
        "matchExpressions"
    ]


# ---------------------------------------------------------------------------- over TLS


def test_served_over_tls(tmp_path: Path, lookups: FakeVolumeLookups) -> None:
    certfile, keyfile = make_cert(tmp_path)
    ctx = ssl.create_default_context(cafile=certfile)
    handler = AdmissionHandler(lookups, lambda: LOCATIONS)
    with WebhookServer(handler, certfile, keyfile, host="127.0.0.1", port=0) as server:

        def call(method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
            conn = http.client.HTTPSConnection("localhost", server.port, context=ctx, timeout=10)
            try:
                conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()

        status, body = call("POST", "/mutate?timeout=3s", review(pod(INLINE)))
        assert status == 200
        assert json.loads(body)["response"]["patchType"] == "JSONPatch"
        status, body = call("POST", "/mutate", b"garbage")
        assert status == 200 and json.loads(body)["response"]["allowed"] is True
        assert call("GET", "/healthz")[0] == 200
        assert call("POST", "/elsewhere", b"{}")[0] == 404
        big = http.client.HTTPSConnection("localhost", server.port, context=ctx, timeout=10)
        big.putrequest("POST", "/mutate")
        big.putheader("Content-Length", str(3 * 1024 * 1024 + 1))
        big.endheaders()
        assert big.getresponse().status == 413
        big.close()
        # a plain-HTTP client gets no answer, and the server keeps serving
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            plain.request("GET", "/healthz")
            plain.getresponse().read()
        assert call("GET", "/healthz")[0] == 200
