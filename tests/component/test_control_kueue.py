"""The Kueue AdmissionCheck ``fluidfs.io/cache-aware``: its decisions over a cluster of Kueue
Workloads (as the API serves them: quota reserved, checks Pending, owned by Jobs), and the
controller applying them against the in-memory adapter (status subresource patches, conditional
on the resourceVersion read; a 409 retried on the next pass)."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

import pytest

from fluidfs.control import metrics
from fluidfs.control.informer import ClusterView, Periods
from fluidfs.control.kueuecheck import KueueChecks, KueueSettings
from fluidfs.control.sched.kueue import CONTROLLER_NAME, CheckConfig, plan_checks, workload_info
from fluidfs.control.sched.locations import CacheLocations, dataset_key_for_url, label_name
from fluidfs.control.sched.ordering import OrderingConfig
from fluidfs.control.sched.queue import PASSED_OVER, ClusterState
from fluidfs.control.scheduling import Scheduling, SchedulingConfig
from fluidfs.errors import KubeApiError
from tests.support.control_fake import FakeKube
from tests.support.kube_lookups import FakeVolumeLookups

GIB = 1 << 30
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
IMAGENET, COCO = "s3://training-data/imagenet", "s3://training-data/coco"
K_IMAGENET, K_COCO = dataset_key_for_url(IMAGENET), dataset_key_for_url(COCO)
SIZES = {K_IMAGENET: 150 * GIB, K_COCO: 20 * GIB}


def node(name: str, gpus: int, cached: dict[str, int] | None = None) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    labels.update({label_name(k): str(b >> 20) for k, b in (cached or {}).items()})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"allocatable": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": str(gpus)}},
    }


def template(gpus: int, url: str | None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [
            {"name": "train", "image": "trainer:1", "resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}
        ],
    }
    if url:
        spec["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data", "readOnly": True}]
        spec["volumes"] = [
            {"name": "data", "csi": {"driver": "csi.fluidfs.io", "readOnly": True, "volumeAttributes": {"url": url}}}
        ]
    return {"metadata": {"annotations": annotations or {}}, "spec": spec}


def workload(
    job: str,
    created: str,
    url: str | None = IMAGENET,
    *,
    gpus: int = 8,
    checks: dict[str, str] | None = None,
    conditions: tuple[str, ...] = ("QuotaReserved",),
    cq: str = "gpu-cq",
    annotations: dict[str, str] | None = None,
    podsets: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A Workload Kueue made for Job ``job`` (owned by it), quota reserved in ClusterQueue ``cq``."""
    checks = {"fluidfs": "Pending"} if checks is None else checks
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "Workload",
        "metadata": {
            "name": f"job-{job}-5c7f2",
            "namespace": "ml",
            "uid": f"uid-{job}",
            "resourceVersion": "100",
            "creationTimestamp": created,
            "annotations": annotations or {},
            "labels": {"kueue.x-k8s.io/job-uid": f"job-uid-{job}"},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": job,
                    "uid": f"job-uid-{job}",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],  # fmt: skip
        },
        "spec": {
            "queueName": "team-a",
            "active": True,
            "priority": 0,
            "podSets": podsets or [{"name": "main", "count": 1, "template": template(gpus, url)}],
        },
        "status": {
            "conditions": [
                {"type": c, "status": "True", "reason": c, "message": "", "lastTransitionTime": created}
                for c in conditions
            ],
            "admission": {"clusterQueue": cq, "podSetAssignments": [{"name": "main", "count": 1}]},
            "admissionChecks": [
                {"name": name, "state": state, "message": "", "lastTransitionTime": created}
                for name, state in checks.items()
            ],
        },
    }


def check(name: str, controller: str = CONTROLLER_NAME, active: bool = False) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "AdmissionCheck",
        "metadata": {"name": name, "generation": 1},
        "spec": {"controllerName": controller},
    }
    if active:
        obj["status"] = {"conditions": [{"type": "Active", "status": "True", "reason": "Active", "message": "",
                                         "lastTransitionTime": "2026-03-01T10:00:00Z"}]}  # fmt: skip
    return obj


def running_pod(name: str, node_name: str, gpus: int, job: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "labels": {"batch.kubernetes.io/job-name": job}},
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}],
        },
        "status": {"phase": "Running"},
    }


CHECKS = [check("fluidfs"), check("prov", "kueue.x-k8s.io/provisioning-request", active=True)]


def cluster() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """n1 holds imagenet and has 8 GPUs free; n2 runs a job of 8 GPUs (full)."""
    nodes = [node("n1", 8, {K_IMAGENET: 150 * GIB}), node("n2", 8)]
    pods = [running_pod("other-0", "n2", 8, "other")]
    return nodes, pods


def state(nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> ClusterState:
    return ClusterState((), nodes, pods, CacheLocations.from_nodes(nodes), SIZES)


def entries(patch: Any) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in patch["status"]["admissionChecks"]}


# ---------------------------------------------------------------------------- decisions


def test_the_warm_workload_starts_first_and_the_cold_one_is_passed_over() -> None:
    nodes, pods = cluster()
    cold = workload("coco-1", "2026-03-01T11:00:00Z", COCO)
    warm = workload("imagenet-2", "2026-03-01T11:30:00Z", checks={"prov": "Pending", "fluidfs": "Pending"})
    plan = plan_checks(state(nodes, pods), [cold, warm], CHECKS, CheckConfig(), FakeVolumeLookups(), NOW)
    assert [(p.kind, p.namespace, p.name) for p in plan.ready] == [("Workload", "ml", "job-imagenet-2-5c7f2")]
    patch = plan.ready[0].patch
    assert patch["metadata"] == {"resourceVersion": "100"}  # conditional: a concurrent change is a 409
    got = entries(patch)
    assert got["fluidfs"]["state"] == "Ready" and got["fluidfs"]["lastTransitionTime"] == "2026-03-01T12:00:00Z"
    assert got["fluidfs"]["message"].startswith("fluidfs: ")
    assert got["prov"] == warm["status"]["admissionChecks"][0]  # another controller's entry, as read
    assert [(p.name, p.patch) for p in plan.passed_over] == [
        ("job-coco-1-5c7f2", {"metadata": {"annotations": {PASSED_OVER: "1"}}})
    ]
    assert plan.waiting == 1 and not plan.problems


def test_cache_oblivious_order_is_the_base_policy() -> None:
    nodes, pods = cluster()
    cold = workload("coco-1", "2026-03-01T11:00:00Z", COCO)
    warm = workload("imagenet-2", "2026-03-01T11:30:00Z")
    cfg = CheckConfig(OrderingConfig(cache_aware=False))
    plan = plan_checks(state(nodes, pods), [warm, cold], CHECKS, cfg, FakeVolumeLookups(), NOW)
    assert [p.name for p in plan.ready] == ["job-coco-1-5c7f2"] and not plan.passed_over


def test_only_workloads_with_quota_and_our_check_pending_are_ordered() -> None:
    nodes, pods = [node("n1", 32), node("n2", 8)], []
    wls = [
        workload("no-quota", "2026-03-01T11:00:00Z", conditions=()),
        workload("done", "2026-03-01T11:00:00Z", conditions=("QuotaReserved", "Finished")),
        workload("not-ours", "2026-03-01T11:00:00Z", checks={"prov": "Pending"}),
        workload("rejected", "2026-03-01T11:00:00Z", checks={"fluidfs": "Retry"}),
        workload("mine", "2026-03-01T11:10:00Z"),
    ]
    plan = plan_checks(state(nodes, pods), wls, CHECKS, CheckConfig(), FakeVolumeLookups(), NOW)
    assert [p.name for p in plan.ready] == ["job-mine-5c7f2"] and plan.waiting == 0


def test_workloads_already_ready_read_their_data_and_hold_their_gpus() -> None:
    """A Workload whose check is Ready but whose pods are not bound yet holds n1's GPUs, and its
    dataset counts as being read: the next imagenet job is warm, but must wait for GPUs."""
    nodes, pods = [node("n1", 8), node("n2", 8)], [running_pod("other-0", "n2", 8, "other")]
    started = workload("imagenet-1", "2026-03-01T10:00:00Z", checks={"fluidfs": "Ready"})
    cold = workload("coco-1", "2026-03-01T11:00:00Z", COCO, gpus=4)
    warm = workload("imagenet-2", "2026-03-01T11:30:00Z", gpus=4)
    plan = plan_checks(state(nodes, pods), [started, cold, warm], CHECKS, CheckConfig(), FakeVolumeLookups(), NOW)
    assert not plan.ready and plan.waiting == 2
    bound = running_pod("imagenet-1-abc", "n1", 4, "imagenet-1")  # it runs on 4 GPUs only: 4 are free
    started4 = workload("imagenet-1", "2026-03-01T10:00:00Z", gpus=4, checks={"fluidfs": "Ready"})
    plan = plan_checks(state(nodes, [*pods, bound]), [started4, cold, warm], CHECKS, CheckConfig(),
                       FakeVolumeLookups(), NOW)  # fmt: skip
    assert [p.name for p in plan.ready] == ["job-imagenet-2-5c7f2"]  # warm: imagenet is being read


def test_pods_of_other_owners_count_once_bound() -> None:
    """A running JobSet's Workload: its pod on n2 counts as a pod there, not again as unbound."""
    nodes = [node("n1", 8), node("n2", 8)]
    jobset = workload(
        "js", "2026-03-01T10:00:00Z", COCO, checks={"fluidfs": "Ready"}, conditions=("QuotaReserved", "Admitted")
    )
    jobset["metadata"]["ownerReferences"] = [{"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "name": "js",
                                              "uid": "u", "controller": True}]  # fmt: skip
    pod = running_pod("js-workers-0-0", "n2", 8, "js-workers-0")  # the JobSet's child Job, not "js"
    warm = workload("imagenet-2", "2026-03-01T11:30:00Z")
    plan = plan_checks(state(nodes, [pod]), [jobset, warm], CHECKS, CheckConfig(), FakeVolumeLookups(), NOW)
    assert [p.name for p in plan.ready] == ["job-imagenet-2-5c7f2"]
    assert workload_info(jobset, FakeVolumeLookups()).name == "ml/job-js-5c7f2"


def test_cluster_queues_share_the_free_gpus() -> None:
    nodes, pods = cluster()
    a = workload("imagenet-a", "2026-03-01T11:30:00Z", cq="cq-a")
    b = workload("imagenet-b", "2026-03-01T11:00:00Z", cq="cq-b")
    plan = plan_checks(state(nodes, pods), [b, a], CHECKS, CheckConfig(), FakeVolumeLookups(), NOW)
    assert [p.name for p in plan.ready] == ["job-imagenet-a-5c7f2"] and set(plan.decisions) == {"cq-a", "cq-b"}


def test_what_cannot_be_ordered_is_set_ready_and_reported() -> None:
    nodes, pods = cluster()
    huge = workload("huge", "2026-03-01T11:00:00Z", gpus=16)
    bad = workload("bad", "2026-03-01T11:05:00Z", annotations={PASSED_OVER: "many"})
    plan = plan_checks(state(nodes, pods), [huge, bad], CHECKS, CheckConfig(), FakeVolumeLookups(), NOW)
    assert sorted(p.name for p in plan.ready) == ["job-bad-5c7f2", "job-huge-5c7f2"]
    assert any("job-huge" in line and "more nvidia.com/gpu than any node" in line for line in plan.problems)
    assert any("job-bad" in line and "is not a count" in line for line in plan.problems)


def test_a_workload_of_several_pod_sets() -> None:
    """An MPI-style Workload: a launcher without GPUs and two workers of 4 GPUs reading imagenet."""
    wl = workload("mpi", "2026-03-01T11:00:00Z", podsets=[
        {"name": "launcher", "count": 1, "template": template(0, None, {"fluidfs.io/expected-duration": "2h"})},
        {"name": "worker", "count": 2, "template": template(4, IMAGENET)},
    ])  # fmt: skip
    info = workload_info(wl, FakeVolumeLookups())
    assert (info.name, info.gpus_per_pod, info.pods, info.datasets) == ("ml/mpi", 4, 2, (K_IMAGENET,))
    assert info.expected_seconds == 7200


def test_our_admission_checks_are_made_active() -> None:
    checks = [check("fluidfs"), check("fluidfs-ready", active=True), check("prov", "kueue.x-k8s.io/other")]
    plan = plan_checks(state([], []), [], checks, CheckConfig(), FakeVolumeLookups(), NOW)
    assert [(p.kind, p.name) for p in plan.activate] == [("AdmissionCheck", "fluidfs")]
    (cond,) = plan.activate[0].patch["status"]["conditions"]
    assert cond["type"] == "Active" and cond["status"] == "True" and cond["reason"] == "Active"
    assert cond["observedGeneration"] == 1 and cond["lastTransitionTime"] == "2026-03-01T12:00:00Z"


# ---------------------------------------------------------------------------- the controller


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def controller(kube: FakeKube, clock: Clock) -> tuple[ClusterView, KueueChecks]:
    view = ClusterView(kube, Periods(), jobs=False, pods=True, kueue=True, clock=clock)
    view.refresh()
    return view, KueueChecks(kube, view, KueueSettings(), identity="test", clock=clock)


def test_the_controller_sets_ready_through_the_status_subresource() -> None:
    kube, clock = FakeKube(), Clock()
    nodes, pods = cluster()
    for obj in [*nodes, *pods, *CHECKS]:
        kube.add(obj)
    kube.add(workload("coco-1", "2026-03-01T11:00:00Z", COCO))
    kube.add(workload("imagenet-2", "2026-03-01T11:30:00Z", checks={"prov": "Pending", "fluidfs": "Pending"}))
    before = metrics.KUEUE_READY._value.get()
    _, checks = controller(kube, clock)
    checks.dataset_bytes = lambda: SIZES
    assert checks.run_once(NOW) is not None
    assert {(k, n) for k, _, n, _ in kube.patches} == {
        ("AdmissionCheck/status", "fluidfs"),
        ("Workload/status", "job-imagenet-2-5c7f2"),
        ("Workload", "job-coco-1-5c7f2"),
    }
    ac = kube.obj("AdmissionCheck", "", "fluidfs")
    assert ac["status"]["conditions"][0]["type"] == "Active" and ac["spec"] == CHECKS[0]["spec"]
    warm = kube.obj("Workload", "ml", "job-imagenet-2-5c7f2")
    assert {e["name"]: e["state"] for e in warm["status"]["admissionChecks"]} == {"prov": "Pending", "fluidfs": "Ready"}
    assert warm["status"]["conditions"][0]["type"] == "QuotaReserved"  # the rest of the status is untouched
    cold = kube.obj("Workload", "ml", "job-coco-1-5c7f2")
    assert cold["metadata"]["annotations"][PASSED_OVER] == "1"
    assert cold["status"]["admissionChecks"][0]["state"] == "Pending"
    assert metrics.KUEUE_READY._value.get() == before + 1 and metrics.KUEUE_WAITING._value.get() == 1
    (event,) = kube.events
    assert event["reason"] == "Ready" and event["regarding"]["kind"] == "Workload"
    assert event["regarding"]["apiVersion"] == "kueue.x-k8s.io/v1beta1"

    kube.patches.clear()  # the next pass: the Ready Workload holds n1, nothing else fits
    clock.t += 5
    checks.run_if_due()
    assert kube.patches == []


def test_a_workload_changed_since_the_list_is_retried_on_the_next_pass() -> None:
    kube, clock = FakeKube(), Clock()
    nodes, pods = cluster()
    for obj in [*nodes, *pods, check("fluidfs", active=True)]:
        kube.add(obj)
    kube.add(workload("imagenet-2", "2026-03-01T11:30:00Z"))
    view, checks = controller(kube, clock)
    checks.dataset_bytes = lambda: SIZES
    kube.patch("Workload", "ml", "job-imagenet-2-5c7f2", {"metadata": {"labels": {"touched": "yes"}}})  # after the list
    checks.run_once(NOW)
    assert kube.obj("Workload", "ml", "job-imagenet-2-5c7f2")["status"]["admissionChecks"][0]["state"] == "Pending"
    assert not kube.events
    clock.t += Periods().jobs
    view.refresh()
    checks.run_once(NOW)
    wl = kube.obj("Workload", "ml", "job-imagenet-2-5c7f2")
    assert wl["status"]["admissionChecks"][0]["state"] == "Ready" and wl["metadata"]["labels"]["touched"] == "yes"


def test_nothing_is_decided_before_the_first_lists() -> None:
    kube, clock = FakeKube(), Clock()
    kube.fail("list", "Workload", KubeApiError("forbidden", 403))
    kube.add(check("fluidfs"))
    _, checks = controller(kube, clock)
    assert checks.run_once(NOW) is None and not kube.patches


def test_scheduling_runs_the_check_on_the_leader() -> None:
    kube, clock = FakeKube(), Clock()
    kube.add(check("fluidfs"))
    sched = Scheduling(kube, SchedulingConfig(kueue=KueueSettings()), identity="test", clock=clock)
    assert sched.cfg.enabled and sched.kueue is not None
    sched.refresh()
    sched.run_leader()
    assert [(k, n) for k, _, n, _ in kube.patches] == [("AdmissionCheck/status", "fluidfs")]
    sched.close()


@pytest.mark.parametrize("argv", [["--kueue-check"], ["--kueue-check", "--kueue-controller-name", "example.com/x"]])
def test_the_flag_turns_it_on(argv: list[str]) -> None:
    from fluidfs.control.main import build_parser, scheduling_config
    from fluidfs.control.objects import WorkerConfig

    cfg = scheduling_config(build_parser().parse_args([*argv, "--queue-policy", "sjf"]), WorkerConfig())
    assert cfg.queues is None and cfg.kueue is not None and cfg.kueue.ordering.base.value == "sjf"
    assert cfg.kueue.controller_name == (argv[-1] if len(argv) > 1 else CONTROLLER_NAME)


def test_fixture_objects_are_not_modified() -> None:
    nodes, pods = cluster()
    wl = workload("imagenet-2", "2026-03-01T11:30:00Z")
    snapshot = copy.deepcopy(wl)
    plan_checks(state(nodes, pods), [wl], CHECKS, CheckConfig(), FakeVolumeLookups(), NOW)
    assert wl == snapshot
