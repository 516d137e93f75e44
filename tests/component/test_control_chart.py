"""The chart's control plane: the Dataset CRD, fluidfs-controller's Deployment, ServiceAccount,
RBAC and metrics Service, and its cache-aware scheduling (the admission webhook's TLS Secret,
Service and MutatingWebhookConfiguration, the scheduling ClusterRole), rendered offline
(helm-python-sdk) with default and all-features values and validated with kubernetes-validate
--strict (Kubernetes 1.29 to the newest)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from fluidfs.control import crd
from fluidfs.control.sched.webhook import webhook_configuration
from tests.support.control_validate import validate_strict

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "fluidfs"
NAMESPACE = "fluidfs-system"
COMPONENT = "dataset-controller"


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name="fluidfs", namespace=NAMESPACE, is_install=True)
    objs: list[dict[str, Any]] = []
    for name, text in sorted(out.items()):
        if not name.endswith("NOTES.txt"):
            objs.extend(d for d in yaml.safe_load_all(text) if d)
    return objs


def control(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == COMPONENT]


def one(objs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    """The one object of ``kind`` whose name ends with ``suffix`` (and not with -scheduling, -webhook
    when no suffix is given: those are the scheduling features')."""
    found = [
        o
        for o in objs
        if o["kind"] == kind
        and (
            o["metadata"]["name"].endswith(suffix)
            if suffix
            else not o["metadata"]["name"].endswith(("-scheduling", "-webhook"))
        )
    ]
    assert len(found) == 1, (kind, [o["metadata"]["name"] for o in found])
    return found[0]


def all_features() -> dict[str, Any]:
    data = yaml.safe_load((CHART / "ci" / "all-features-values.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return control(render())


@pytest.fixture(scope="module")
def full() -> list[dict[str, Any]]:
    return control(render(all_features()))


def test_default_render_installs_crd_controller_and_rbac(default: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in default)
    assert kinds == sorted(["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                            "Role", "RoleBinding", "Service", "Deployment",
                            # cache-aware scheduling: webhook (Secret, Service, registration) and its RBAC
                            "Secret", "Service", "MutatingWebhookConfiguration",
                            "ClusterRole", "ClusterRoleBinding"])  # fmt: skip


@pytest.mark.parametrize("variant", ["default", "all-features"])
def test_every_object_validates_strictly(
    variant: str, default: list[dict[str, Any]], full: list[dict[str, Any]]
) -> None:
    for obj in default if variant == "default" else full:
        validate_strict(obj, f"chart ({variant}): ")


def test_the_crd_is_the_one_the_code_defines(default: list[dict[str, Any]]) -> None:
    rendered = one(default, "CustomResourceDefinition")
    assert rendered["metadata"]["name"] == crd.NAME
    assert rendered["spec"] == crd.crd()["spec"]
    assert rendered["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_deployment_runs_fluidfs_controller_with_leader_election(default: list[dict[str, Any]]) -> None:
    dep = one(default, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["fluidfs-controller"]
    args = dict(a.removeprefix("--").split("=", 1) if "=" in a else (a.removeprefix("--"), "") for a in c["args"])
    assert args["worker-image"] == c["image"] == "fluidfs/fluidfs:0.1.0"
    assert "leader-election" in args and args["lease-namespace"] == "$(POD_NAMESPACE)"
    assert args["client-namespace"] == NAMESPACE
    assert "app.kubernetes.io/component=mounter" in args["client-selector"]  # pods holding the mounts
    assert args["peer-secret"] == "fluidfs-peer/secret" and "namespace" not in args
    assert pod["serviceAccountName"] == "fluidfs-dataset-controller"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    svc = one(default, "Service")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["port"] == int(args["metrics-addr"].rsplit(":", 1)[1])


def grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                assert "*" not in (group, res) and "*" not in rule["verbs"]
                granted.setdefault((group, res), set()).update(rule["verbs"])
    return granted


def test_rbac_is_least_privilege(default: list[dict[str, Any]]) -> None:
    role = one(default, "ClusterRole")
    granted = grants(role)
    assert ("", "secrets") not in granted  # credentials reach workers as secretKeyRef env vars
    assert granted[("", "pods")] == {"list"}
    assert granted[("apps", "statefulsets/scale")] == {"get", "patch"}
    assert granted[("fluidfs.io", "datasets")] == {"get", "list", "watch", "patch"}
    # it may grant the workers' Role exactly what it holds for discovery, and writes the slice of
    # each Dataset's node members
    assert granted[("discovery.k8s.io", "endpointslices")] == {"get", "list", "watch", "create", "update", "delete"}
    assert not any("escalate" in v or "bind" in v for v in granted.values())
    local = one(default, "Role")
    assert {r["resources"][0]: set(r["verbs"]) for r in local["rules"]} == {
        "leases": {"get", "create", "update"}, "pods": {"list"}}  # fmt: skip
    sa = one(default, "ServiceAccount")["metadata"]["name"]
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        assert one(default, kind)["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]


def test_all_features_namespaced_controller(full: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in full)
    # Datasets of one namespace: a Role there; scheduling stays cluster-wide (Nodes, PVs, any pod)
    assert [o["metadata"]["name"] for o in full if o["kind"] == "ClusterRole"] == [
        "fluidfs-all-dataset-controller-scheduling"
    ]
    assert kinds.count("Role") == 2
    roles = {o["metadata"]["namespace"] for o in full if o["kind"] == "Role"}
    assert roles == {"ml-datasets", NAMESPACE}
    dep = one(full, "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=ml-datasets" in args and "--peer-secret=cluster-peer-key/hmac" in args
    assert "--image-pull-secret=regcred" in args and "--peer-port=7171" in args
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "fluidfs-datasets"


@pytest.mark.parametrize(
    "values, absent",
    [
        ({"datasetController": {"enabled": False}}, {"Deployment", "ClusterRole", "ServiceAccount"}),
        ({"datasetController": {"installCRD": False}}, {"CustomResourceDefinition"}),
        ({"rbac": {"create": False}}, {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}),
        ({"datasetController": {"webhook": {"enabled": False}}}, {"MutatingWebhookConfiguration", "Secret"}),
        (
            {"datasetController": {"webhook": {"enabled": False}, "nodeLabels": {"enabled": False}}},
            {"MutatingWebhookConfiguration", "Secret", "ClusterRoleBinding-scheduling"},
        ),
    ],
)
def test_toggles(values: dict[str, Any], absent: set[str]) -> None:
    objs = control(render(values))
    kinds = {o["kind"] for o in objs} | {
        f"{o['kind']}-scheduling" for o in objs if o["metadata"]["name"].endswith("-scheduling")
    }
    assert not kinds & absent


def test_bad_values_are_rejected() -> None:
    for bad in ({"datasetController": {"replicas": -1}}, {"datasetController": {"watchNamespace": "Not_A_Name"}},
                {"datasetController": {"peerSecret": "a/b/c"}}, {"datasetController": {"bogus": 1}},
                {"datasetController": {"queue": {"enabled": True, "sourceAware": {"sourceBandwidth": "4G"}}}},
                {"datasetController": {"queue": {"sourceAware": {"gpuRate": "fast"}}}}):  # fmt: skip
        with pytest.raises(helm.HelmError):
            render(bad)


# ---------------------------------------------------------------------------- cache-aware scheduling


def test_the_webhook_registration_is_the_one_the_code_builds(
    default: list[dict[str, Any]], full: list[dict[str, Any]]
) -> None:
    for objs, release, queues in ((default, "fluidfs", None), (full, "fluidfs-all", ["train", "eval"])):
        mwc = one(objs, "MutatingWebhookConfiguration")
        name = f"{release}-dataset-controller"
        svc = one(objs, "Service", "-webhook")
        assert svc["metadata"]["name"] == f"{name}-webhook" and svc["spec"]["ports"][0]["port"] == 443
        ca = mwc["webhooks"][0]["clientConfig"]["caBundle"]
        want = webhook_configuration(
            name,
            svc["metadata"]["name"],
            NAMESPACE,
            ca,
            timeout_seconds=3 if queues is None else 5,
            queue_jobs=queues is not None,
            queue_names=queues,
        )
        assert mwc["metadata"]["name"] == name
        assert mwc["webhooks"] == want["webhooks"]
        dep = one(objs, "Deployment")
        port = next(p for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"] if p["name"] == "webhook")
        assert svc["spec"]["ports"][0]["targetPort"] == "webhook" and port["containerPort"] in (9443, 9553)


def test_the_serving_certificate_is_signed_for_the_service_by_the_registered_ca(default: list[dict[str, Any]]) -> None:
    from cryptography import x509

    secret = one(default, "Secret")
    assert secret["type"] == "kubernetes.io/tls"
    crt = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    mwc = one(default, "MutatingWebhookConfiguration")
    assert base64.b64decode(mwc["webhooks"][0]["clientConfig"]["caBundle"]) == base64.b64decode(
        secret["data"]["ca.crt"]
    )
    crt.verify_directly_issued_by(ca)
    sans = crt.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "fluidfs-dataset-controller-webhook.fluidfs-system.svc" in sans
    dep = one(default, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "webhook-tls", "secret": {"secretName": secret["metadata"]["name"], "defaultMode": 0o400}}
    ]
    (c,) = pod["containers"]
    assert {"name": "webhook-tls", "mountPath": "/tls", "readOnly": True} in c["volumeMounts"]
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


@pytest.mark.parametrize("variant", ["default", "all-features"])
def test_the_controller_accepts_its_arguments(
    variant: str, default: list[dict[str, Any]], full: list[dict[str, Any]]
) -> None:
    """The Deployment's arguments are ones fluidfs-controller parses into the features the values ask for."""
    from fluidfs.control.main import build_parser, scheduling_config
    from fluidfs.control.objects import WorkerConfig

    dep = one(default if variant == "default" else full, "Deployment")
    args = build_parser().parse_args(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    cfg = scheduling_config(args, WorkerConfig())
    assert cfg.webhook is not None and cfg.webhook.certfile == "/tls/tls.crt"
    assert cfg.labels is not None and dict(cfg.labels.selector)["app.kubernetes.io/component"] == "mounter"
    if variant == "default":
        assert cfg.queues is None and cfg.warm is None and cfg.labels.interval == 60
        queued = control(render({"datasetController": {"queue": {"enabled": True}}}))
        args = build_parser().parse_args(one(queued, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"])
        ordering = scheduling_config(args, WorkerConfig()).queues.ordering  # type: ignore[union-attr]
        assert ordering.source is None and not ordering.stagger and not ordering.local
    else:
        assert cfg.queues is not None and cfg.queues.names == ("train", "eval") and cfg.queues.slots == 10
        ordering = cfg.queues.ordering
        assert ordering.base.value == "sjf" and ordering.max_pass_over == 16 and ordering.local
        assert ordering.source is not None and ordering.stagger
        assert (ordering.source.bandwidth, ordering.source.gpu_rate) == (4e9, 250e6)
        assert cfg.kueue is not None and cfg.kueue.ordering == ordering
        assert cfg.kueue.controller_name == "fluidfs.io/cache-aware"
        assert cfg.warm is not None and cfg.labels.policy.max_labels == 8 and cfg.labels.interval == 120


def test_scheduling_rbac_is_least_privilege(default: list[dict[str, Any]], full: list[dict[str, Any]]) -> None:
    base = grants(one(default, "ClusterRole", "-scheduling"))
    assert base == {
        ("", "persistentvolumeclaims"): {"get", "list"},
        ("", "persistentvolumes"): {"get", "list"},
        ("storage.k8s.io", "storageclasses"): {"get", "list"},
        ("", "nodes"): {"list", "patch"},  # the cache labels (merge patches of labels only)
        ("", "pods"): {"list"},  # live datasets of inline volumes
    }
    queue = grants(one(full, "ClusterRole", "-scheduling"))
    assert queue[("batch", "jobs")] == {"list", "patch", "create"}  # create: warm-up Jobs (warmAhead 1)
    assert queue[("events.k8s.io", "events")] == {"create"}
    assert ("", "secrets") not in queue
    only_webhook = control(render({"datasetController": {"nodeLabels": {"enabled": False}}}))
    assert grants(one(only_webhook, "ClusterRole", "-scheduling"))[("", "nodes")] == {"list"}
    no_warm = control(render({"datasetController": {"queue": {"enabled": True}}}))
    assert grants(one(no_warm, "ClusterRole", "-scheduling"))[("batch", "jobs")] == {"list", "patch"}
    assert queue[("kueue.x-k8s.io", "workloads")] == {"list", "patch"}
    assert queue[("kueue.x-k8s.io", "workloads/status")] == {"patch"}
    assert queue[("kueue.x-k8s.io", "admissionchecks/status")] == {"patch"}
    assert queue[("kueue.x-k8s.io", "admissionchecks")] == {"list"}
    assert not any(group == "kueue.x-k8s.io" for group, _ in base)
    binding = one(default, "ClusterRoleBinding", "-scheduling")
    assert binding["roleRef"]["name"] == "fluidfs-dataset-controller-scheduling"


def test_mount_supervisors_serve_the_metrics_the_controller_reads() -> None:
    objs = render()
    sup = next(o for o in objs if o["kind"] == "DaemonSet" and o["metadata"]["name"].endswith("-mounter"))
    (c,) = sup["spec"]["template"]["spec"]["containers"]
    assert "--metrics-addr=0.0.0.0:9809" in c["args"] and c["ports"][0]["name"] == "metrics"


def test_kueue_alone_orders_workloads_without_job_queues() -> None:
    """kueue.enabled without queue.enabled: the ordering flags, no Job queue, no Job permissions."""
    from fluidfs.control.main import build_parser, scheduling_config
    from fluidfs.control.objects import WorkerConfig

    objs = control(render({"datasetController": {"kueue": {"enabled": True}, "queue": {"warmAhead": 2}}}))
    args = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--kueue-check" in args and not any(a.startswith(("--queue=", "--warm-ahead")) for a in args)
    cfg = scheduling_config(build_parser().parse_args(args), WorkerConfig())
    assert cfg.queues is None and cfg.warm is None and cfg.kueue is not None
    rules = grants(one(objs, "ClusterRole", "-scheduling"))
    assert ("batch", "jobs") not in rules and rules[("kueue.x-k8s.io", "workloads")] == {"list", "patch"}
    assert rules[("events.k8s.io", "events")] == {"create"} and rules[("", "pods")] == {"list"}
