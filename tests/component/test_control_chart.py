"""The chart's control plane: the Dataset CRD, fluidfs-controller's Deployment, ServiceAccount,
RBAC and metrics Service, rendered offline (helm-python-sdk) with default and all-features
values and validated with kubernetes-validate --strict (Kubernetes 1.29 to the newest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from fluidfs.control import crd
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


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
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
                            "Role", "RoleBinding", "Service", "Deployment"])  # fmt: skip


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


def test_rbac_is_least_privilege(default: list[dict[str, Any]]) -> None:
    role = one(default, "ClusterRole")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                assert "*" not in (group, res) and "*" not in rule["verbs"]
                granted.setdefault((group, res), set()).update(rule["verbs"])
    assert ("", "secrets") not in granted  # credentials reach workers as secretKeyRef env vars
    assert granted[("", "pods")] == {"list"}
    assert granted[("apps", "statefulsets/scale")] == {"get", "patch"}
    assert granted[("fluidfs.io", "datasets")] == {"get", "list", "watch", "patch"}
    # it may grant the workers' Role exactly what it holds for discovery
    assert granted[("discovery.k8s.io", "endpointslices")] == {"get", "list", "watch"}
    assert not any("escalate" in v or "bind" in v for v in granted.values())
    local = one(default, "Role")
    assert {r["resources"][0]: set(r["verbs"]) for r in local["rules"]} == {
        "leases": {"get", "create", "update"}, "pods": {"list"}}  # fmt: skip
    sa = one(default, "ServiceAccount")["metadata"]["name"]
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        assert one(default, kind)["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]


def test_all_features_namespaced_controller(full: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in full)
    assert "ClusterRole" not in kinds and kinds.count("Role") == 2
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
    ],
)
def test_toggles(values: dict[str, Any], absent: set[str]) -> None:
    kinds = {o["kind"] for o in control(render(values))}
    assert not kinds & absent


def test_bad_values_are_rejected() -> None:
    for bad in ({"datasetController": {"replicas": -1}}, {"datasetController": {"watchNamespace": "Not_A_Name"}},
                {"datasetController": {"peerSecret": "a/b/c"}}, {"datasetController": {"bogus": 1}}):  # fmt: skip
        with pytest.raises(helm.HelmError):
            render(bad)
