"""Cache-aware scheduling inside fluidfs-controller, against the in-memory adapter.

The Job queue run by the controller (recorded cluster state, patches applied, warm-up Jobs,
capacity shared between queues and passes), the node labels written from the mounters' metrics
(bounded, cleaned when a dataset goes away), the admission webhook served by the controller from
its caches over TLS, and the leader-only writes.  Every object the controller creates or patches
is validated with kubernetes-validate --strict for Kubernetes 1.29, 1.35 and the newest known.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import http.client
import json
import ssl
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from fluidfs.control import metrics
from fluidfs.control.controller import Controller, ControllerConfig
from fluidfs.control.informer import WARM_LABEL, ClusterView, Periods
from fluidfs.control.jobqueue import JobQueues, QueueSettings
from fluidfs.control.kube import pod_info
from fluidfs.control.nodelabels import LabelConfig, NodeLabeler, node_report
from fluidfs.control.sched.locations import LabelPolicy, dataset_key_for_url, label_name
from fluidfs.control.sched.ordering import BasePolicy, OrderingConfig
from fluidfs.control.scheduling import Scheduling, SchedulingConfig, WebhookSettings
from fluidfs.control.warm import WarmConfig, job_name
from fluidfs.errors import KubeApiError
from tests.support.control_fake import FakeKube
from tests.support.tls import make_cert

FIXTURES = Path(__file__).parent / "fixtures" / "queue"
KUBE_VERSIONS = sorted({"1.29.0", "1.35.0", kubernetes_validate.latest_version()})
MIB, GIB = 1 << 20, 1 << 30
SYSTEM = "fluidfs-system"
MOUNTER = {"app.kubernetes.io/component": "mounter"}
IMAGENET, COCO, GONE = "s3://training-data/imagenet", "s3://training-data/coco", "s3://training-data/gone"
K_IMAGENET, K_COCO, K_GONE = (dataset_key_for_url(u) for u in (IMAGENET, COCO, GONE))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def validate(obj: dict[str, Any]) -> None:
    body = copy.deepcopy(obj)
    meta = body.get("metadata", {})
    for server_side in ("uid", "resourceVersion", "creationTimestamp"):
        meta.pop(server_side, None)
    body.pop("status", None)
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(body, version, strict=True)


def fixture(name: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / name).read_text())
    assert isinstance(data, dict)
    return data


def load_cluster(kube: FakeKube, fx: dict[str, Any]) -> None:
    for group in ("volumes", "jobs", "nodes", "pods"):
        for obj in fx["objects"][group]:
            kube.add(obj)


def storage_class(name: str, url: str) -> dict[str, Any]:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
            "provisioner": "csi.fluidfs.io", "parameters": {"url": url}}  # fmt: skip


def node(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}}}  # fmt: skip


# ---------------------------------------------------------------------------- the Job queue


def queues(kube: FakeKube, clock: Clock, fx: dict[str, Any], **settings: Any) -> tuple[ClusterView, JobQueues]:
    view = ClusterView(kube, Periods(), clock=clock)
    c = fx["config"]
    ordering = OrderingConfig(base=BasePolicy(c["base"]), cache_aware=c["cacheAware"], warm_ahead=c.get("warmAhead", 0))
    keys = fx["datasetKeys"]
    sizes = {keys[u]: n for u, n in fx["datasetBytes"].items()}
    q = JobQueues(kube, view, QueueSettings((fx["queue"],), ordering, **settings), warm_config=WarmConfig(),
                  dataset_bytes=lambda: sizes, clock=clock)  # fmt: skip
    view.refresh()
    return view, q


def test_the_controller_applies_the_queue_plan_and_warms_the_next_cold_dataset() -> None:
    fx = fixture("sjf-warm.json")
    kube, clock = FakeKube(), Clock()
    load_cluster(kube, fx)
    view, q = queues(kube, clock, fx)
    now = datetime.fromisoformat(fx["now"].replace("Z", "+00:00"))
    (plan,) = q.run_once(now)
    want = fx["expect"]
    assert [f"{p.namespace}/{p.name}" for p in plan.admit] == want["admit"]
    for ref in want["admit"]:
        ns, name = ref.split("/")
        job = kube.obj("Job", ns, name)
        assert job["spec"]["suspend"] is False and job["metadata"]["annotations"]["fluidfs.io/admitted-at"]
        validate(job)
    passed = kube.obj("Job", "ml", "laion-short")
    assert passed["metadata"]["annotations"]["fluidfs.io/passed-over"] == "1"
    validate(passed)
    # the laion job is next and cold: a warm-up Job reads it through the job's own claim
    laion = fx["datasetKeys"]["s3://training-data/laion"]
    warm = kube.obj("Job", "ml", job_name(laion))
    validate(warm)
    assert warm["metadata"]["labels"][WARM_LABEL] == laion
    assert warm["metadata"]["ownerReferences"][0]["name"] == "laion-short"
    pod = warm["spec"]["template"]["spec"]
    claim = kube.obj("Job", "ml", "laion-short")["spec"]["template"]["spec"]["volumes"]
    assert pod["volumes"] == claim
    assert all(m["readOnly"] for m in pod["containers"][0]["volumeMounts"])
    assert "nvidia.com/gpu" not in json.dumps(pod["containers"][0]["resources"])
    reasons = [e["reason"] for e in kube.events]
    assert reasons.count("Admitted") == 2 and reasons.count("Warming") == 1
    for event in kube.events:
        validate(event)
        assert event["regarding"]["kind"] == "Job"
    # the next pass, from the caches the patches updated: nothing admitted twice, no second warm-up
    creates = [c for c in kube.calls if c[0] == "create" and c[1] == "Job"]
    clock.t += 5
    view.refresh()
    (again,) = q.run_once(now)
    assert again.admit == () and again.warm == ()
    assert [c for c in kube.calls if c[0] == "create" and c[1] == "Job"] == creates


def test_a_warm_up_within_its_ttl_is_not_started_again() -> None:
    fx = fixture("sjf-warm.json")
    kube, clock = FakeKube(), Clock()
    load_cluster(kube, fx)
    view, q = queues(kube, clock, fx)
    now = datetime.fromisoformat(fx["now"].replace("Z", "+00:00"))
    q.run_once(now)
    laion = fx["datasetKeys"]["s3://training-data/laion"]
    warm = kube.obj("Job", "ml", job_name(laion))
    warm["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}  # done, kept for its ttl
    clock.t += 30
    view.refresh()
    (plan,) = q.run_once(now)
    assert [(w.dataset, w.job) for w in plan.warm] == [(laion, "ml/laion-short")]  # cold again...
    assert sum(1 for e in kube.events if e["reason"] == "Warming") == 1  # ...but the create said 409


def test_queues_share_capacity_within_a_pass_and_across_passes() -> None:
    kube, clock = FakeKube(), Clock()
    kube.add({**node("n1"), "status": {"allocatable": {"nvidia.com/gpu": "8"}}})
    kube.add(storage_class("imagenet", IMAGENET))
    for i, queue in enumerate(("a", "b", "a", "b")):
        kube.add({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"j{i}", "namespace": "ml", "labels": {"fluidfs.io/queue": queue},
                         "creationTimestamp": f"2026-03-01T11:0{i}:00Z"},
            "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "t", "image": "t:1", "resources": {"limits": {"nvidia.com/gpu": "4"}}}]}}},
        })  # fmt: skip
    view = ClusterView(kube, Periods(), clock=clock)
    view.refresh()
    q = JobQueues(kube, view, QueueSettings(("a", "b")), clock=clock)
    q.run_once()
    admitted = {n for (k, ns, n), o in kube.objects.items() if k == "Job" and o["spec"]["suspend"] is False}
    assert admitted == {"j0", "j2"}  # 4 + 4 GPUs for queue a; queue b saw them taken
    q.run_once()  # the pods are not bound yet: the admitted Jobs still hold their GPUs
    admitted = {n for (k, ns, n), o in kube.objects.items() if k == "Job" and o["spec"]["suspend"] is False}
    assert admitted == {"j0", "j2"}
    assert metrics.REGISTRY.get_sample_value("fluidfs_controller_queue_waiting_jobs", {"queue": "b"}) == 2
    assert metrics.REGISTRY.get_sample_value("fluidfs_controller_queue_waiting_jobs", {"queue": "a"}) == 0


def test_a_failed_patch_is_retried_on_the_next_pass() -> None:
    fx = fixture("sjf-warm.json")
    kube, clock = FakeKube(), Clock()
    load_cluster(kube, fx)
    view, q = queues(kube, clock, fx)
    now = datetime.fromisoformat(fx["now"].replace("Z", "+00:00"))
    kube.fail("patch", "Job", KubeApiError("etcd timeout", 500), times=10)
    q.run_once(now)
    assert kube.obj("Job", "ml", "imagenet-tiny")["spec"]["suspend"] is True
    kube.failures.clear()
    clock.t += 5
    view.refresh()
    q.run_once(now)
    assert kube.obj("Job", "ml", "imagenet-tiny")["spec"]["suspend"] is False


def test_nothing_is_admitted_before_the_first_lists() -> None:
    fx = fixture("sjf-warm.json")
    kube, clock = FakeKube(), Clock()
    load_cluster(kube, fx)
    kube.fail("list", "Pod", KubeApiError("forbidden", 403))
    view, q = queues(kube, clock, fx)
    assert view.pods is not None and not view.pods.listed and "forbidden" in view.pods.error
    assert q.run_once() == []
    assert not kube.patches


# ---------------------------------------------------------------------------- node labels


def mounter_page(*datasets: tuple[str, str, int, bool]) -> str:
    """The metrics page of a mounter: (dataset name, dataset key, SSD bytes cached, size known)."""
    lines = ["# TYPE fluidfs_csi_dataset_info gauge"]
    lines += [f'fluidfs_csi_dataset_info{{dataset="{n}",dataset_key="{k}"}} 1' for n, k, _, _ in datasets]
    lines.append("# TYPE fluidfs_cache_used_bytes gauge")
    for n, _, used, _ in datasets:
        lines += [f'fluidfs_cache_used_bytes{{dataset="{n}",tier="mem"}} {min(used, GIB)}',
                  f'fluidfs_cache_used_bytes{{dataset="{n}",tier="ssd"}} {used}']  # fmt: skip
    lines.append("# TYPE fluidfs_cache_quota_bytes gauge")
    for n, _, _, _ in datasets:
        lines += [f'fluidfs_cache_quota_bytes{{dataset="{n}",tier="mem"}} {GIB}',
                  f'fluidfs_cache_quota_bytes{{dataset="{n}",tier="ssd"}} {1 << 40}']  # fmt: skip
    lines.append("# TYPE fluidfs_dataset_size_bytes gauge")
    lines += [f'fluidfs_dataset_size_bytes{{dataset="{n}"}} {500 * GIB}' for n, _, _, _ in datasets]
    lines.append("# TYPE fluidfs_dataset_size_complete gauge")
    lines += [f'fluidfs_dataset_size_complete{{dataset="{n}"}} {int(c)}' for n, _, _, c in datasets]
    return "\n".join(lines) + "\n"


def mounter(kube: FakeKube, node_name: str, text: str | None) -> None:
    name = f"fluidfs-mounter-{node_name}"
    url = f"http://{node_name}.pods:9809/metrics"
    info = pod_info({
        "metadata": {"name": name, "namespace": SYSTEM, "labels": MOUNTER},
        "spec": {"nodeName": node_name, "containers": [{"ports": [{"name": "metrics", "containerPort": 9809}]}]},
        "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    })  # fmt: skip
    kube.clients.append(dataclasses.replace(info, metrics_url=url))
    kube.texts[url] = text


def labeler(kube: FakeKube, clock: Clock, **policy: Any) -> tuple[ClusterView, NodeLabeler]:
    from concurrent.futures import ThreadPoolExecutor

    view = ClusterView(kube, Periods(), jobs=False, clock=clock)
    view.refresh()
    cfg = LabelConfig(SYSTEM, MOUNTER, policy=LabelPolicy(**policy))
    return view, NodeLabeler(kube, view, cfg, ThreadPoolExecutor(2), clock)


def test_node_labels_follow_what_each_node_holds_and_go_with_the_dataset() -> None:
    kube, clock = FakeKube(), Clock()
    kube.add(storage_class("imagenet", IMAGENET))
    kube.add(storage_class("coco", COCO))
    # n1 mounts imagenet; n2 mounts nothing now but keeps coco's cache on disk, and a label of a
    # dataset no StorageClass, PV or pod names any more; n3's mounter does not answer
    kube.add(node("n1", {"team": "a"}))
    kube.add(node("n2", {label_name(K_COCO): "20480", label_name(K_GONE): "1024"}))
    kube.add(node("n3", {label_name(K_GONE): "64"}))
    mounter(kube, "n1", mounter_page(("imagenet", K_IMAGENET, 300 * GIB + 5 * MIB, True)))
    mounter(kube, "n2", mounter_page())
    mounter(kube, "n3", None)
    view, lab = labeler(kube, clock)
    assert lab.run_once() == 3
    n1, n2, n3 = (kube.obj("Node", "", n)["metadata"]["labels"] for n in ("n1", "n2", "n3"))
    assert n1 == {"kubernetes.io/hostname": "n1", "team": "a", label_name(K_IMAGENET): str(256 * 1024)}  # bucketed
    assert n2 == {"kubernetes.io/hostname": "n2", label_name(K_COCO): "20480"}
    assert n3 == {"kubernetes.io/hostname": "n3"}  # not measured, only cleaned
    for name in ("n1", "n2", "n3"):
        validate(kube.obj("Node", "", name))
    assert lab.dataset_bytes == {K_IMAGENET: 500 * GIB}
    patches = [p for p in kube.patches if p[0] == "Node"]
    assert all(set(p[3]) == {"metadata"} and set(p[3]["metadata"]) == {"labels"} for p in patches)
    # nothing changed: no Node update (every label change is one all watchers see)
    assert lab.run_once() == 0
    # the data grows a little: the bucketed value does not move, so no update either
    kube.texts["http://n1.pods:9809/metrics"] = mounter_page(("imagenet", K_IMAGENET, 310 * GIB, True))
    assert lab.run_once() == 0
    # the coco StorageClass goes away (no PV, no pod names it): its label goes from every node
    del kube.objects[("StorageClass", "", "coco")]
    clock.t += 60
    view.refresh()
    assert lab.run_once() == 1
    assert label_name(K_COCO) not in kube.obj("Node", "", "n2")["metadata"]["labels"]


def test_node_labels_are_bounded_and_ambiguous_names_are_left_out() -> None:
    kube, clock = FakeKube(), Clock()
    urls = [f"s3://b/{i}" for i in range(6)]
    for i, url in enumerate(urls):
        kube.add(storage_class(f"d{i}", url))
    kube.add(node("n1"))
    held = [(f"d{i}", dataset_key_for_url(u), (i + 1) * GIB, False) for i, u in enumerate(urls)]
    held.append(("tiny", dataset_key_for_url("s3://b/tiny"), 10 * MIB, False))
    page = mounter_page(*held)
    # one name served by two keys on the node: it cannot be split, so it is not labelled
    page += f'fluidfs_csi_dataset_info{{dataset="d0",dataset_key="{dataset_key_for_url("s3://other/x")}"}} 1\n'
    mounter(kube, "n1", page)
    view, lab = labeler(kube, clock, max_labels=3)
    lab.run_once()
    labels = kube.obj("Node", "", "n1")["metadata"]["labels"]
    ours = {k for k in labels if k.startswith("cache.fluidfs.io/")}
    assert ours == {label_name(dataset_key_for_url(u)) for u in urls[3:]}  # the three it holds most of
    assert lab.dataset_bytes == {}  # no mount has seen its whole tree: sizes unknown


def test_node_report_reads_the_largest_tier_and_rejects_garbage() -> None:
    rep = node_report(mounter_page(("imagenet", K_IMAGENET, 3 * GIB, True)))
    assert rep.cached == {K_IMAGENET: 3 * GIB} and rep.sizes == {K_IMAGENET: 500 * GIB}
    mem_only = mounter_page(("imagenet", K_IMAGENET, 3 * GIB, False)).replace(
        f'fluidfs_cache_quota_bytes{{dataset="imagenet",tier="ssd"}} {1 << 40}', ""
    )
    assert node_report(mem_only).cached == {K_IMAGENET: GIB}
    assert node_report(mounter_page()).cached == {}
    with pytest.raises(ValueError, match="garbled"):
        node_report("fluidfs_cache_used_bytes{dataset= 1 2 3\n")


# ---------------------------------------------------------------------------- the webhook


IMAGENET_CLAIM_POD: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "trainer", "namespace": "ml"},
    "spec": {"containers": [{"name": "t", "image": "t:1"}],
             "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "imagenet"}}]},
}  # fmt: skip


def review(obj: dict[str, Any], kind: str = "Pod", group: str = "") -> bytes:
    k = {"group": group, "version": "v1", "kind": kind}
    req = {"uid": "u-1", "kind": k, "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
           "namespace": "ml", "operation": "CREATE", "object": obj, "userInfo": {"username": "alice"}}  # fmt: skip
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}).encode()


def test_the_webhook_is_served_by_the_controller_from_its_caches(tmp_path: Path) -> None:
    kube, clock = FakeKube(), Clock()
    kube.add(storage_class("imagenet", IMAGENET))
    kube.add(node("n1", {label_name(K_IMAGENET): "204800"}))
    certfile, keyfile = make_cert(tmp_path)
    cfg = SchedulingConfig(
        webhook=WebhookSettings(certfile, keyfile, "127.0.0.1", 0),
        queues=QueueSettings(("train",)),
        periods=Periods(volumes=3600),
    )
    sched = Scheduling(kube, cfg, identity="test", clock=clock)
    sched.start()
    try:
        assert sched.server is not None
        ctx = ssl.create_default_context(cafile=certfile)

        def post(body: bytes) -> dict[str, Any]:
            conn = http.client.HTTPSConnection("localhost", sched.server.port, context=ctx, timeout=10)  # type: ignore[union-attr]
            try:
                conn.request("POST", "/mutate", body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                assert resp.status == 200
                out: dict[str, Any] = json.loads(resp.read())["response"]
                return out
            finally:
                conn.close()

        # the claim is created after the caches were listed (applied together with the pod):
        # one quick GET finds it, and the pod gets cache affinity towards n1
        claim = {"name": "imagenet", "namespace": "ml"}
        kube.add({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": claim,
                  "spec": {"storageClassName": "imagenet", "accessModes": ["ReadOnlyMany"]}})  # fmt: skip
        before = len(kube.calls)
        resp = post(review(IMAGENET_CLAIM_POD))
        assert resp["allowed"] is True and resp["patchType"] == "JSONPatch"
        assert label_name(K_IMAGENET) in json.dumps(json.loads(base64.b64decode(resp["patch"])))
        gets = [c for c in kube.calls[before:] if c[0] == "get"]
        assert gets == [("get", "PersistentVolumeClaim", "imagenet")]
        post(review(IMAGENET_CLAIM_POD))  # now cached: no API call at all
        assert [c for c in kube.calls[before:] if c[0] == "get"] == gets
        # a claim that does not exist is asked for once per miss_ttl, not on every pod
        missing = copy.deepcopy(IMAGENET_CLAIM_POD)
        missing["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "nope"
        for _ in range(3):
            assert "patch" not in post(review(missing))
        assert sum(1 for c in kube.calls if c == ("get", "PersistentVolumeClaim", "nope")) == 1
        # this controller runs queues: a labelled Job is suspended at creation
        template = {"spec": {"restartPolicy": "Never", "containers": [{"name": "t", "image": "t"}]}}
        job = {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": template},
               "metadata": {"name": "j", "namespace": "ml", "labels": {"fluidfs.io/queue": "train"}}}  # fmt: skip
        assert post(review(job, "Job", "batch"))["patchType"] == "JSONPatch"
        # ... only for a queue it runs: a misspelt queue would leave the Job suspended for ever
        job["metadata"]["labels"]["fluidfs.io/queue"] = "trian"
        resp = post(review(job, "Job", "batch"))
        assert "patch" not in resp and "no fluidfs queue 'trian'" in resp["warnings"][0]
        # the API server failing a lookup never blocks a pod: allowed, a warning, counted
        kube.fail("get", "PersistentVolumeClaim", KubeApiError("unreachable", 503))
        other = copy.deepcopy(IMAGENET_CLAIM_POD)
        other["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "new"
        resp = post(review(other))
        assert resp["allowed"] is True and "patch" not in resp and "skipped" in resp["warnings"][0]
        assert metrics.REGISTRY.get_sample_value(
            "fluidfs_controller_webhook_reviews_total", {"kind": "pod", "result": "error"}
        )
    finally:
        sched.close()


def test_without_queues_the_webhook_does_not_suspend_jobs(tmp_path: Path) -> None:
    kube = FakeKube()
    assert not SchedulingConfig().enabled
    certfile, keyfile = make_cert(tmp_path)
    cfg = SchedulingConfig(webhook=WebhookSettings(certfile, keyfile, "127.0.0.1", 0))
    sched = Scheduling(kube, cfg, identity="t")
    sched.start()
    try:
        assert sched.handler is not None
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "labels": {"fluidfs.io/queue": "q"}},
               "spec": {"template": {"spec": {"containers": []}}}}  # fmt: skip
        assert "patch" not in sched.handler.review(review(job, "Job", "batch"))["response"]
        assert sched.view.jobs is None  # no queue: its Jobs are never listed
    finally:
        sched.close()


# ---------------------------------------------------------------------------- in the loop


class Elector:
    def __init__(self, leading: bool) -> None:
        self.leading = leading

    def acquire_or_renew(self) -> bool:
        return self.leading

    def release(self) -> None:
        pass


@pytest.mark.parametrize("leading", [False, True])
def test_every_replica_refreshes_its_caches_and_only_the_leader_writes(leading: bool) -> None:
    kube = FakeKube()
    kube.add(storage_class("imagenet", IMAGENET))
    kube.add(node("n1", {label_name(K_GONE): "64"}))  # a dead dataset's label: the leader removes it
    mounter(kube, "n1", mounter_page())
    sched = Scheduling(kube, SchedulingConfig(labels=LabelConfig(SYSTEM, MOUNTER)), identity="t")
    controller = Controller(kube, ControllerConfig(resync=0.05), scheduling=sched)
    stop = threading.Event()
    t = threading.Thread(target=controller.run, args=(stop, Elector(leading)))
    t.start()
    try:
        for _ in range(200):
            if sched.view.nodes.listed and (not leading or kube.patches):
                break
            stop.wait(0.05)
    finally:
        stop.set()
        t.join(timeout=30)
        controller.close()
        sched.close()
    assert sched.view.nodes.listed
    assert bool(kube.patches) is leading
