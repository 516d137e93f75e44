"""fluidfs-controller against the in-memory fake: objects, status, scaling, events, deletion,
leader election, and failures (invalid spec, conflicts, API errors, missing metrics).

Every object the controller creates is validated with kubernetes-validate --strict for the
oldest and newest supported Kubernetes versions, and every status it writes against the CRD's
status schema.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from fluidfs.cli.main import build_parser
from fluidfs.cli.options import cli_overrides
from fluidfs.config import build_config
from fluidfs.control import objects
from fluidfs.control.autoscaler import MANUAL
from fluidfs.control.controller import FINALIZER, Controller, ControllerConfig
from fluidfs.control.kube import pod_info
from fluidfs.control.leader import LeaderElector
from fluidfs.errors import KubeApiError
from tests.support.control_fake import FakeKube
from tests.support.control_series import Member, render
from tests.support.control_validate import schema_errors, validate_strict

ROOT = Path(__file__).resolve().parents[2]
NS, NAME, STS = "ml", "imagenet", "imagenet-cache"
CLIENTS = "fluidfs-system"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def dataset(**cache: Any) -> dict[str, Any]:
    obj = yaml.safe_load((ROOT / "docs" / "examples" / "dataset-autoscaled.yaml").read_text())
    obj["spec"]["cache"].update(cache)
    return obj  # type: ignore[no-any-return]


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


def make(kube: FakeKube, clock: Clock, **cfg: Any) -> Controller:
    config = ControllerConfig(client_namespace=CLIENTS, client_selector={"app": "fluidfs-node"}, **cfg)
    return Controller(kube, config, clock=clock)


def full_status_is_valid(kube: FakeKube) -> None:
    obj = kube.datasets[(NS, NAME)]
    assert schema_errors(obj) == [], obj["status"]


def test_first_pass_creates_valid_objects_owned_by_the_dataset(kube: FakeKube) -> None:
    kube.apply(dataset())
    c = make(kube, Clock())
    c.run_once()
    ds = kube.datasets[(NS, NAME)]
    assert FINALIZER in ds["metadata"]["finalizers"]
    kinds = [o["kind"] for o in kube.created]
    assert kinds == list(objects.KINDS)
    for obj in kube.created:
        validate_strict(obj, "created: ")
        ref = obj["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "Dataset",
            NAME,
            ds["metadata"]["uid"],
            True,
        )
    sts = kube.sts(NS, STS)
    assert sts is not None and sts["spec"]["replicas"] == 0  # minWorkers: 0
    pod = sts["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[:2] == ["worker", "/etc/fluidfs/dataset/dataset.yaml"]
    assert args[args.index("--kube-service") + 1] == f"{NS}/{STS}"
    # a command line `fluidfs worker` takes: members from the Service, the pod name as member id
    parsed = build_parser().parse_args([a.replace("$(POD_NAME)", f"{STS}-0") for a in args])
    cfg = build_config(cli_overrides(parsed))
    assert (cfg.kube_service, cfg.member_id, cfg.peer_listen, cfg.cache_dir) == (
        f"{NS}/{STS}", f"{STS}-0", "0.0.0.0:7070", "/var/cache/fluidfs",
    )  # fmt: skip
    assert cfg.handoff_timeout == 120.0 and cfg.peer_secret_file == "/etc/fluidfs/peer/secret"  # drainTimeout: 2m
    assert {e["name"] for e in pod["containers"][0]["env"]} >= {"POD_NAME"}
    assert pod["serviceAccountName"] == STS
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["FLUIDFS_M0_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3-credentials",
        "key": "accessKeyId",
    }
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "local-nvme"
    role = kube.objects[("Role", NS, STS)]
    assert role["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                              "verbs": ["get", "list", "watch"]}]  # fmt: skip
    cm = kube.objects[("ConfigMap", NS, STS)]
    assert "FLUIDFS_M0_ACCESS_KEY_ID" in cm["data"]["dataset.yaml"]
    status = kube.status_of(NS, NAME)
    assert status["phase"] == "Ready" and status["workers"] == "0/0"
    assert status["selector"] == f"app.kubernetes.io/component=cache-worker,fluidfs.io/dataset={NAME}"
    full_status_is_valid(kube)


def test_second_pass_changes_nothing_and_drift_is_repaired(kube: FakeKube) -> None:
    kube.apply(dataset(minWorkers=1))
    clock = Clock()
    c = make(kube, clock)
    c.run_once()
    n = len(kube.created)
    clock.t += 1
    c.run_once()
    assert len(kube.created) == n  # idempotent
    # someone edits the ConfigMap: its hash no longer matches, the controller puts it back
    kube.objects[("ConfigMap", NS, STS)]["metadata"]["annotations"][objects.SPEC_HASH] = "edited"
    clock.t += 1
    c.run_once()
    assert kube.created[-1]["kind"] == "ConfigMap" and len(kube.created) == n + 1
    # a changed Dataset spec rolls the StatefulSet, keeping the replica count the autoscaler set
    kube.scale(NS, STS, 3)
    obj = dataset(minWorkers=1)
    obj["spec"]["cache"]["worker"]["memorySize"] = "8Gi"
    kube.apply(obj)
    clock.t += 1
    c.run_once()
    sts = kube.sts(NS, STS)
    assert sts is not None and sts["spec"]["replicas"] == 3
    assert sts["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == str(
        (8 << 30) + (512 << 20)
    )


def test_changed_storage_recreates_the_statefulset(kube: FakeKube) -> None:
    kube.apply(dataset())
    clock = Clock()
    c = make(kube, clock)
    c.run_once()
    obj = dataset()
    obj["spec"]["cache"]["worker"]["storageClassName"] = "other"
    kube.apply(obj)
    clock.t += 1
    c.run_once()
    assert ("delete", "StatefulSet", STS) in kube.calls
    clock.t += 1
    c.run_once()
    sts = kube.sts(NS, STS)
    assert sts is not None and sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "other"


def mount_member(read_bytes: float, stall: float, hits: float, misses: float, used: int) -> Member:
    m = Member("node-a", "mount", 10 << 30)
    from_source = read_bytes * misses / (hits + misses) if hits + misses else 0.0  # block misses went to the source
    m.counters = {"read_bytes": read_bytes, "reads": read_bytes / (1 << 20), "stall": stall, "hits": hits,
                  "misses": misses, "source": from_source}  # fmt: skip
    m.used = used
    return m


def test_stalling_readers_scale_workers_up_with_an_event_and_status(kube: FakeKube) -> None:
    kube.apply(dataset(autoscaling={"interval": "15s", "window": "60s", "cooldown": "30s"}))
    url = "http://10.0.0.1:9809/metrics"
    kube.clients.append(pod_info({
        "metadata": {"name": "fluidfs-node-abc", "namespace": CLIENTS, "labels": {"app": "fluidfs-node"}},
        "spec": {"nodeName": "node-a", "containers": [{"ports": [{"name": "metrics", "containerPort": 9809}]}]},
        "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }))  # fmt: skip
    tick = {"n": 0}

    def mount_text() -> str:  # 100 MiB/s delivered, readers stall 2 s/s, hit ratio 20%
        n = tick["n"]
        return render(mount_member(n * 1500 << 20, n * 30.0, n * 20.0, n * 80.0, 9 << 30)) + (
            '# TYPE fluidfs_cache_hits counter\nfluidfs_cache_hits_total{dataset="other",tier="mem"} 5\n'
        )

    kube.texts[url] = mount_text
    clock = Clock()
    c = make(kube, clock)
    decisions = []
    for _ in range(4):
        tick["n"] += 1
        c.run_once()
        clock.t += 15
        decisions.append(kube.status_of(NS, NAME).get("lastDecision", ""))
    sts = kube.sts(NS, STS)
    assert sts is not None and sts["spec"]["replicas"] == 1, decisions
    assert ("scale", "StatefulSet", STS) in kube.calls
    (event,) = kube.events
    validate_strict(event, "event: ")
    assert event["reason"] == "ScaledUp" and event["regarding"]["name"] == NAME
    assert "0 -> 1 workers" in event["note"] and "stall" in event["note"]
    status = kube.status_of(NS, NAME)
    assert status["lastScaling"]["to"] == 1 and status["lastScaling"]["direction"] == "up"
    assert status["inputRate"] == "100MiB/s"
    assert status["input"]["stallSecondsPerSecond"] == 2.0
    assert "hitRatio" not in status["input"]  # the new worker did not answer yet: unknown, not 0
    assert status["nodes"][0]["node"] == "node-a" and status["nodes"][0]["role"] == "mount"
    full_status_is_valid(kube)
    # once the new worker's pod serves metrics, it is part of every sample
    kube.texts["http://imagenet-cache-0.fake:9090/metrics"] = render(Member("w", "worker", 200 << 30))
    for _ in range(2):
        tick["n"] += 1
        c.run_once()
        clock.t += 15
    status = kube.status_of(NS, NAME)
    assert status["input"]["hitRatio"] == 0.2 and status["input"]["complete"] is True
    assert status["input"]["lookupHitRatio"] == 0.2
    assert {n["role"] for n in status["nodes"]} == {"mount", "worker"}
    assert status["capacityBytes"] == (10 << 30) + (200 << 30)


def test_missing_metrics_make_the_status_say_so_and_change_nothing(kube: FakeKube) -> None:
    kube.apply(dataset(minWorkers=2))
    clock = Clock()
    c = make(kube, clock)
    for _ in range(3):
        c.run_once()  # the worker endpoints have no text: they refuse
        clock.t += 15
    sts = kube.sts(NS, STS)
    assert sts is not None and sts["spec"]["replicas"] == 2
    status = kube.status_of(NS, NAME)
    cond = {x["type"]: x for x in status["conditions"]}["SignalsComplete"]
    assert cond["status"] == "False" and "connection refused" in cond["message"]
    assert "incomplete" in status["lastDecision"]
    full_status_is_valid(kube)


def test_manual_policy_and_the_scale_subresource(kube: FakeKube) -> None:
    kube.apply(dataset(replicas=3, autoscaling={"policy": MANUAL}))
    clock = Clock()
    c = make(kube, clock)
    c.run_once()
    sts = kube.sts(NS, STS)
    assert sts is not None and sts["spec"]["replicas"] == 3  # created with it
    kube.apply(dataset(replicas=1, autoscaling={"policy": MANUAL}))  # an HPA wrote spec.cache.replicas
    clock.t += 60
    c.run_once()
    sts = kube.sts(NS, STS)
    assert sts is not None and sts["spec"]["replicas"] == 1
    assert kube.events[-1]["reason"] == "ScaledDown"


def test_invalid_spec_is_reported_once_per_generation(kube: FakeKube) -> None:
    kube.apply(dataset(minWorkers=9, maxWorkers=2))
    clock = Clock()
    c = make(kube, clock)
    for _ in range(3):
        c.run_once()
        clock.t += 15
    status = kube.status_of(NS, NAME)
    assert status["phase"] == "Failed"
    assert (
        status["message"] == "Dataset ml/imagenet: spec.cache.minWorkers: minWorkers (9) must not exceed maxWorkers (2)"
    )
    assert [e["reason"] for e in kube.events] == ["InvalidSpec"]
    assert not [o for o in kube.created if o["kind"] == "StatefulSet"]
    full_status_is_valid(kube)
    kube.apply(dataset(minWorkers=1, maxWorkers=2))  # fixed: the next pass proceeds
    c.run_once()
    assert kube.status_of(NS, NAME)["phase"] != "Failed"


def test_object_owned_by_someone_else_is_left_alone(kube: FakeKube) -> None:
    meta = {"name": STS, "namespace": NS, "resourceVersion": "1"}
    kube.objects[("ConfigMap", NS, STS)] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}
    kube.apply(dataset())
    make(kube, Clock()).run_once()
    status = kube.status_of(NS, NAME)
    assert status["phase"] == "Failed" and "not owned by this Dataset" in status["message"]
    assert "resourceVersion" in kube.objects[("ConfigMap", NS, STS)]["metadata"]
    assert not kube.created


def test_api_errors_do_not_stop_the_pass_and_a_failed_scale_is_retried(kube: FakeKube) -> None:
    kube.apply(dataset(replicas=2, autoscaling={"policy": MANUAL}))
    kube.apply({**dataset(), "metadata": {"name": "other", "namespace": NS}})
    clock = Clock()
    c = make(kube, clock)
    kube.fail("create", "ConfigMap", KubeApiError("etcd timeout", 500))
    c.run_once()  # imagenet fails, other goes on
    assert kube.sts(NS, "other-cache") is not None and kube.sts(NS, STS) is None
    clock.t += 15
    c.run_once()
    assert kube.sts(NS, STS) is not None
    kube.apply(dataset(replicas=4, autoscaling={"policy": MANUAL}))
    kube.fail("scale", "StatefulSet", KubeApiError("conflict", 409))
    clock.t += 15
    c.run_once()
    sts = kube.sts(NS, STS)
    assert sts is not None and sts["spec"]["replicas"] == 2
    clock.t += 15
    c.run_once()
    sts = kube.sts(NS, STS)
    assert sts is not None and sts["spec"]["replicas"] == 4


def test_deleting_the_dataset_removes_its_objects_and_finalizer(kube: FakeKube) -> None:
    kube.apply(dataset(minWorkers=1))
    clock = Clock()
    c = make(kube, clock)
    c.run_once()
    assert kube.sts(NS, STS) is not None
    kube.delete_dataset(NS, NAME)
    assert (NS, NAME) in kube.datasets  # held by the finalizer
    c.run_once()
    assert (NS, NAME) not in kube.datasets
    assert not [k for k in kube.objects if k[1] == NS]
    assert c._mem == {}


def test_leader_election_one_leader_and_takeover_after_expiry() -> None:
    kube = FakeKube()
    now = [datetime(2024, 1, 1, tzinfo=timezone.utc)]
    a = LeaderElector(kube, "sys", "fluidfs-controller", "a", lease_seconds=15, now=lambda: now[0])
    b = LeaderElector(kube, "sys", "fluidfs-controller", "b", lease_seconds=15, now=lambda: now[0])
    assert a.acquire_or_renew() and not b.acquire_or_renew()
    lease = kube.objects[("Lease", "sys", "fluidfs-controller")]
    validate_strict(lease, "lease: ")
    now[0] += timedelta(seconds=10)
    assert a.acquire_or_renew() and not b.acquire_or_renew()
    now[0] += timedelta(seconds=16)  # a stopped renewing
    assert b.acquire_or_renew()
    assert kube.objects[("Lease", "sys", "fluidfs-controller")]["spec"]["leaseTransitions"] == 1
    assert not a.acquire_or_renew()
    b.release()
    assert a.acquire_or_renew()


def test_manual_policy_still_recommends_what_training_speed_would_do(kube: FakeKube) -> None:
    from fluidfs.control import metrics

    kube.apply(dataset(replicas=1, autoscaling={"policy": MANUAL, "interval": "15s"}))
    url = "http://10.0.0.2:9809/metrics"
    kube.clients.append(PodInfoFor(url))
    tick = {"n": 0}
    kube.texts[url] = lambda: render(mount_member(tick["n"] * 1500 << 20, tick["n"] * 30.0, tick["n"] * 20.0,
                                                  tick["n"] * 80.0, 9 << 30))  # fmt: skip
    kube.texts["http://imagenet-cache-0.fake:9090/metrics"] = render(Member("w", "worker", 200 << 30))
    clock = Clock()
    c = make(kube, clock)
    for _ in range(5):
        tick["n"] += 1
        c.run_once()
        clock.t += 15
    sts = kube.sts(NS, STS)
    assert sts is not None and sts["spec"]["replicas"] == 1  # manual: the HPA decides
    assert kube.status_of(NS, NAME)["recommendedReplicas"] == 2
    assert metrics.RECOMMENDED.labels(NS, NAME)._value.get() == 2
    assert metrics.REPLICAS.labels(NS, NAME)._value.get() == 1


def PodInfoFor(url: str) -> Any:
    ip = url.split("//")[1].split(":")[0]
    return pod_info({
        "metadata": {"name": f"node-{ip}", "namespace": CLIENTS, "labels": {"app": "fluidfs-node"}},
        "spec": {"nodeName": "node-b", "containers": [{"ports": [{"name": "metrics", "containerPort": 9809}]}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    })  # fmt: skip


def test_cached_percentage_is_exact_only_with_a_complete_dataset_size(kube: FakeKube) -> None:
    from fluidfs.control import reconcile, signals

    target = signals.Target("fluidfs-system/mounter-a", signals.CLIENT, "node-a", "http://a/metrics")
    mount = render(mount_member(1 << 30, 1.0, 10, 10, 9 << 30))

    def status(size: int, complete: int) -> dict[str, Any]:
        ds = f'{{dataset="{NAME}"}}'
        text = mount + (
            f"# TYPE fluidfs_dataset_size_bytes gauge\nfluidfs_dataset_size_bytes{ds} {size}\n"
            f"# TYPE fluidfs_dataset_size_complete gauge\nfluidfs_dataset_size_complete{ds} {complete}\n"
        )
        before = signals.by_name([signals.snapshot(target, text, NAME, 0.0)])
        sample = signals.sample(before, [signals.snapshot(target, text, NAME, 15.0)])
        out = reconcile.status(generation=1, policy="training-speed", selector="s", sts=None, decision=None,
                               sample=sample, last_scaling=None, warnings=(), old_conditions=(),
                               now="2026-01-01T00:00:00Z")  # fmt: skip
        obj = dataset()
        obj["status"] = out
        assert schema_errors(obj) == []
        return out

    seen = status(20 << 30, 0)  # the mount has not listed every directory: 20 GiB is a lower bound
    assert seen["datasetBytesSeen"] == 20 << 30 and "datasetBytes" not in seen
    assert seen["cachedPercentage"] == "<=45%"
    assert seen["members"] == {"mounts": 1, "workers": 0}
    known = status(36 << 30, 1)
    assert known["datasetBytes"] == 36 << 30 and known["cachedPercentage"] == "25%"


def test_supervisors_serving_the_dataset_become_node_members_of_its_cluster(kube: FakeKube) -> None:
    """A mount supervisor exports the peer port of its daemon of the Dataset's Service: the next pass
    publishes it in the EndpointSlice ``<dataset>-cache-nodes`` (one port: the one most report); a
    supervisor that stops reporting it leaves the slice, one that does not answer keeps its place."""
    kube.apply(dataset())
    texts = {}
    for i, (pod, port) in enumerate([("mounter-a", 7345), ("mounter-b", 7345), ("mounter-c", 7346), ("plain", 0)]):
        kube.clients.append(pod_info({
            "metadata": {"name": pod, "namespace": CLIENTS, "labels": {"app": "fluidfs-node"}},
            "spec": {"nodeName": f"node-{i}", "containers": [{"ports": [{"name": "metrics", "containerPort": 9809}]}]},
            "status": {"podIP": f"10.0.0.{i + 1}", "conditions": [{"type": "Ready", "status": "True"}]},
        }))  # fmt: skip
        url = f"http://10.0.0.{i + 1}:9809/metrics"
        texts[pod] = url
        kube.texts[url] = (
            f'# TYPE fluidfs_csi_cluster_port gauge\nfluidfs_csi_cluster_port{{service="{NS}/{STS}"}} {port}\n'
            f'fluidfs_csi_cluster_port{{service="other/x-cache"}} 7001\n'
            if port
            else "# TYPE fluidfs_csi_shared_mounts gauge\nfluidfs_csi_shared_mounts 0\n"
        )
    clock = Clock()
    c = make(kube, clock)
    c.run_once()  # creates the objects and samples
    clock.t += 15
    c.run_once()  # writes the node members
    sl = kube.objects[("EndpointSlice", NS, f"{STS}-nodes")]
    validate_strict(sl, "slice: ")
    assert sl["metadata"]["labels"]["kubernetes.io/service-name"] == STS
    assert sl["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == objects.SLICE_MANAGER
    assert sl["ports"] == [{"name": "peer", "port": 7345, "protocol": "TCP"}]
    assert [(e["targetRef"]["name"], e["addresses"], e["nodeName"]) for e in sl["endpoints"]] == [
        ("mounter-a", ["10.0.0.1"], "node-0"),
        ("mounter-b", ["10.0.0.2"], "node-1"),
    ]
    # mounter-a no longer serves it, mounter-b does not answer (keeps its place)
    kube.texts[texts["mounter-a"]] = "# TYPE fluidfs_csi_shared_mounts gauge\nfluidfs_csi_shared_mounts 0\n"
    kube.texts[texts["mounter-b"]] = None
    clock.t += 15
    c.run_once()
    clock.t += 15
    c.run_once()
    sl = kube.objects[("EndpointSlice", NS, f"{STS}-nodes")]
    assert [e["targetRef"]["name"] for e in sl["endpoints"]] == ["mounter-b"]
    # deleting the Dataset deletes the slice too
    kube.delete_dataset(NS, NAME)
    c.run_once()
    assert ("EndpointSlice", NS, f"{STS}-nodes") not in kube.objects
