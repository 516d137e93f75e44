"""Helm chart, example manifests and Dockerfile: rendered, linted and validated offline.

The chart (helm/fluidfs) is rendered with helm-python-sdk (the Helm v4 engine as a library,
no helm binary, no cluster) with its default values and with ci/all-features-values.yaml,
which turns every optional feature on. Every rendered object and every example manifest is
validated with kubernetes-validate in strict mode (unknown fields rejected) for the oldest
and newest Kubernetes versions the chart supports. values.schema.json is checked with the
SDK's own schema validation and with jsonschema (draft-07).

Caveats: kubernetes-validate ships schemas for built-in kinds only; the ServiceMonitor (a
prometheus-operator CRD) is checked here by hand instead (shape, and that it selects the
metrics Service by a port that Service has). No API server runs here, so admission-time
behaviour (defaulting, webhooks) is not covered.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "fluidfs"
EXAMPLES = ROOT / "helm" / "examples"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
DRIVER = "csi.fluidfs.io"
RELEASE = "fluidfs"
NAMESPACE = "fluidfs-system"

#: oldest supported, a middle one the issue names, and the newest kubernetes-validate knows.
KUBE_VERSIONS = sorted(
    {"1.29.0", "1.35.0", kubernetes_validate.latest_version()}, key=lambda v: tuple(int(x) for x in v.split("."))
)
#: kinds that are CRDs: kubernetes-validate has no schema for them; checked by hand below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


# ---------------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def objects(manifests: dict[str, str]) -> list[dict[str, Any]]:
    """The CSI driver's objects; the Dataset controller's (CRD, Deployment, RBAC) are covered by
    tests/component/test_control_chart.py."""
    out: list[dict[str, Any]] = []
    for name, text in sorted(manifests.items()):
        if name.endswith("NOTES.txt") or "/dataset-" in name:
            continue
        out.extend(docs_of(text))
    return out


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def daemonset(objs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    """The DaemonSet of ``component``: ``node`` (the CSI node plugin) or ``mounter`` (the mount supervisor)."""
    found = [
        o for o in by_kind(objs, "DaemonSet") if o["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert len(found) == 1, f"expected one {component} DaemonSet, got {len(found)}"
    return found[0]


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    for c in pod_spec["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name!r}")


def volume(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    for v in pod_spec["volumes"]:
        if v["name"] == name:
            return v
    raise AssertionError(f"no volume {name!r}")


def mount(c: dict[str, Any], name: str) -> dict[str, Any]:
    for m in c.get("volumeMounts", []):
        if m["name"] == name:
            return m
    raise AssertionError(f"container {c['name']!r} does not mount {name!r}")


def flag(args: list[str], name: str) -> str | None:
    """Value of ``--name=value`` in args; '' for a bare ``--name``; None when absent."""
    for a in args:
        if a == f"--{name}":
            return ""
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def validate_strict(obj: dict[str, Any], where: str) -> None:
    """Strict schema validation for every supported Kubernetes version (CRDs excluded)."""
    key = (obj["apiVersion"], obj["kind"])
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            # only CRDs may lack a schema; a built-in kind without one is a wrong apiVersion
            assert key in CRD_KINDS, f"{where}: no schema for {key} in Kubernetes {version}"
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            raise AssertionError(
                f"{where}: {obj['kind']}/{obj['metadata'].get('name')} invalid for "
                f"Kubernetes {version}: {path}: {e.message}"
            ) from None


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as c:
        yield c


@pytest.fixture(scope="module")
def all_values() -> dict[str, Any]:
    return load_yaml(ALL_FEATURES)


@pytest.fixture(scope="module")
def default_objs() -> list[dict[str, Any]]:
    return objects(render())


@pytest.fixture(scope="module")
def full_render(all_values: dict[str, Any]) -> dict[str, str]:
    return render(all_values)


@pytest.fixture(scope="module")
def full_objs(full_render: dict[str, str]) -> list[dict[str, Any]]:
    return objects(full_render)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    data = json.loads((CHART / "values.schema.json").read_text())
    assert isinstance(data, dict)
    return data


# ---------------------------------------------------------------------------------- chart


def test_chart_metadata(chart: helm.Chart) -> None:
    meta = chart.metadata
    assert meta["name"] == "fluidfs"
    assert meta["apiVersion"] == "v2"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["appVersion"] == project["version"], "chart appVersion must follow the package"
    assert meta["kubeVersion"].startswith(">=1.29")
    assert chart.schema is not None, "values.schema.json must be loaded with the chart"


@pytest.mark.parametrize("kube", ["v1.29.0", "v1.35.0"])
@pytest.mark.parametrize("variant", ["default", "all-features"])
def test_lint_strict_is_clean(variant: str, kube: str, all_values: dict[str, Any]) -> None:
    values = all_values if variant == "all-features" else None
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=kube)
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # info (severity 1) only, e.g. "icon is recommended"; no warnings, no errors
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_render_has_exactly_the_core_objects(default_objs: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in default_objs)
    assert kinds == sorted(
        [
            "CSIDriver",
            "DaemonSet",
            "DaemonSet",
            "Deployment",
            "ServiceAccount",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ]
    )


def test_all_features_render_adds_the_optional_objects(full_objs: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in full_objs}
    assert {"StorageClass", "Service", "ServiceMonitor"} <= kinds


@pytest.mark.parametrize("variant", ["default", "all-features"])
def test_rendered_objects_validate_strictly(
    variant: str, default_objs: list[dict[str, Any]], full_objs: list[dict[str, Any]]
) -> None:
    objs = full_objs if variant == "all-features" else default_objs
    assert objs
    for obj in objs:
        validate_strict(obj, f"chart ({variant})")


def test_strict_validation_catches_mistakes(default_objs: list[dict[str, Any]]) -> None:
    """Negative control: the validator used above does reject what it should."""
    ds = copy.deepcopy(daemonset(default_objs, "mounter"))
    ds["spec"]["template"]["spec"]["containers"][0]["mountPropogation"] = "Bidirectional"
    with pytest.raises(AssertionError, match="mountPropogation"):
        validate_strict(ds, "typo")
    drv = copy.deepcopy(one(default_objs, "CSIDriver"))
    drv["spec"]["attachRequired"] = "no"
    with pytest.raises(AssertionError, match="attachRequired"):
        validate_strict(drv, "wrong type")
    wrong_api = {**one(default_objs, "Deployment"), "apiVersion": "apps/v1beta1"}
    with pytest.raises(AssertionError, match="no schema"):
        validate_strict(wrong_api, "removed apiVersion")


def test_standard_labels_and_namespaces(default_objs: list[dict[str, Any]], full_objs: list[dict[str, Any]]) -> None:
    cluster_scoped = {"CSIDriver", "ClusterRole", "ClusterRoleBinding", "StorageClass"}
    for obj in default_objs + full_objs:
        labels = obj["metadata"]["labels"]
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ):
            assert key in labels, f"{obj['kind']}/{obj['metadata']['name']} lacks {key}"
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"]
        elif obj["kind"] != "ServiceMonitor":
            assert obj["metadata"]["namespace"] == NAMESPACE


def test_csidriver(default_objs: list[dict[str, Any]]) -> None:
    drv = one(default_objs, "CSIDriver")
    assert drv["metadata"]["name"] == DRIVER
    spec = drv["spec"]
    assert spec["attachRequired"] is False
    assert spec["podInfoOnMount"] is True
    assert spec["volumeLifecycleModes"] == ["Persistent", "Ephemeral"]
    assert spec["fsGroupPolicy"] == "None"  # a read-only FUSE mount cannot be chowned


def test_csidriver_can_be_left_out() -> None:
    kinds = [o["kind"] for o in objects(render({"csiDriver": {"create": False}}))]
    assert "CSIDriver" not in kinds


def check_node_daemonset(ds: dict[str, Any], kubelet_dir: str, values: dict[str, Any]) -> None:
    """The node plugin: a CSI endpoint that forwards to the supervisor; no privilege, no mount."""
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert ds["spec"]["updateStrategy"] == values["node"]["updateStrategy"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["automountServiceAccountToken"] is False
    assert "hostNetwork" not in pod, "the node plugin never needs the network"

    plugin = container(pod, "fluidfs")
    args = plugin["args"]
    assert flag(args, "endpoint") == "unix:///csi/csi.sock"
    assert flag(args, "node-id") == "$(NODE_NAME)"
    assert flag(args, "mode") == "node"
    assert flag(args, "mounter") == "unix:///run/fluidfs/mounter.sock"
    assert flag(args, "mount-timeout") == str(values["mounter"]["mountTimeout"])
    assert flag(args, "metrics-addr") is None, "mount metrics are the supervisor's"
    env = {e["name"]: e for e in plugin["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert flag(args, "log-level") == values["logLevel"]
    sc = plugin["securityContext"]
    assert not sc.get("privileged") and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"] is True
    assert {m["name"] for m in plugin["volumeMounts"]} == {"plugin-dir", "mounter-socket"}
    assert mount(plugin, "mounter-socket")["mountPath"] == "/run/fluidfs"
    socket_dir = values["mounter"]["socketDir"]
    assert volume(pod, "mounter-socket")["hostPath"] == {"path": socket_dir, "type": "DirectoryOrCreate"}
    plugin_dir = f"{kubelet_dir}/plugins/{DRIVER}"
    assert volume(pod, "plugin-dir")["hostPath"] == {"path": plugin_dir, "type": "DirectoryOrCreate"}
    assert mount(plugin, "plugin-dir")["mountPath"] == "/csi"

    # registrar: socket path as the kubelet sees it, and the registration dir
    reg = container(pod, "node-driver-registrar")
    assert flag(reg["args"], "csi-address") == "/csi/csi.sock"
    assert flag(reg["args"], "kubelet-registration-path") == f"{plugin_dir}/csi.sock"
    assert mount(reg, "registration-dir")["mountPath"] == "/registration"
    assert volume(pod, "registration-dir")["hostPath"]["path"] == f"{kubelet_dir}/plugins_registry"
    assert reg["image"].startswith("registry.k8s.io/sig-storage/csi-node-driver-registrar:v")

    # liveness/readiness of the plugin are served by the livenessprobe sidecar's port
    probe = container(pod, "liveness-probe")
    assert probe["image"].startswith("registry.k8s.io/sig-storage/livenessprobe:v")
    health_port = int(flag(probe["args"], "health-port") or 0)
    ports = {p["name"]: p["containerPort"] for p in plugin["ports"]}
    assert ports["healthz"] == health_port
    for kind in ("livenessProbe", "readinessProbe"):
        assert plugin[kind]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert plugin["resources"] == values["node"]["resources"]
    assert pod["tolerations"] == values["node"]["tolerations"]
    assert pod["nodeSelector"] == values["node"]["nodeSelector"]


def check_mounter_daemonset(
    ds: dict[str, Any], node_ds: dict[str, Any], kubelet_dir: str, values: dict[str, Any]
) -> None:
    """The mount supervisor: never restarted by an upgrade, PID 1 a reaper, owns every mount."""
    pod = ds["spec"]["template"]["spec"]
    node_pod = node_ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["automountServiceAccountToken"] is False
    for key in ("nodeSelector", "tolerations", "affinity", "serviceAccountName"):
        assert pod.get(key) == node_pod.get(key), f"both node DaemonSets share {key}: they run on the same nodes"
    assert pod["terminationGracePeriodSeconds"] == values["mounter"]["terminationGracePeriodSeconds"]

    sup = container(pod, "mounter")
    assert sup["command"][:3] == ["python", "-m", "csi.reaper"] and sup["command"][-1] == "--"
    grace = float(sup["command"][sup["command"].index("--grace") + 1])
    assert 0 < grace < pod["terminationGracePeriodSeconds"], "the supervisor stops before the kubelet kills it"
    args = sup["args"]
    assert args[0] == "fluidfs-csi"
    assert flag(args, "mode") == "mounter"
    assert flag(args, "endpoint") == "unix:///run/fluidfs/mounter.sock"
    assert flag(args, "state-dir") == "/var/lib/fluidfs/csi"
    assert flag(args, "cache-root") == "/var/lib/fluidfs/cache"
    assert flag(args, "unstage-grace") == str(values["unstageGrace"])
    assert flag(args, "mount-timeout") == str(values["mounter"]["mountTimeout"])
    assert flag(args, "log-level") == values["logLevel"]
    assert sup["securityContext"]["privileged"] is True
    assert "livenessProbe" not in sup, "a liveness restart would end every mount on the node"
    assert sup["resources"] == values["mounter"]["resources"]

    # kubelet dir at the same path, Bidirectional; /dev/fuse; the state dir private; cache; socket
    km = mount(sup, "kubelet-dir")
    assert km["mountPath"] == kubelet_dir and km["mountPropagation"] == "Bidirectional"
    assert volume(pod, "kubelet-dir")["hostPath"] == {"path": kubelet_dir, "type": "Directory"}
    assert mount(sup, "fuse-device")["mountPath"] == "/dev/fuse"
    assert volume(pod, "fuse-device")["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    sm = mount(sup, "state-dir")  # holds the dataset mounts (mounts/<key>): private to the container
    assert sm["mountPath"] == flag(args, "state-dir") and "mountPropagation" not in sm
    assert volume(pod, "state-dir")["hostPath"] == {"path": values["stateDir"], "type": "DirectoryOrCreate"}
    assert mount(sup, "cache-dir")["mountPath"] == flag(args, "cache-root")
    assert volume(pod, "cache-dir")["hostPath"] == {"path": values["cache"]["hostPath"], "type": "DirectoryOrCreate"}
    assert mount(sup, "mounter-socket")["mountPath"] == "/run/fluidfs"
    assert volume(pod, "mounter-socket") == volume(node_pod, "mounter-socket")


def test_node_daemonsets_defaults(chart: helm.Chart, default_objs: list[dict[str, Any]]) -> None:
    values = chart.values
    node, mounter = daemonset(default_objs, "node"), daemonset(default_objs, "mounter")
    check_node_daemonset(node, "/var/lib/kubelet", values)
    check_mounter_daemonset(mounter, node, "/var/lib/kubelet", values)
    for ds, name in ((node, "fluidfs"), (mounter, "mounter")):
        pod = ds["spec"]["template"]["spec"]
        assert container(pod, name)["image"] == f"fluidfs/fluidfs:{chart.metadata['appVersion']}"
        assert "hostNetwork" not in pod
        assert pod["tolerations"] == [{"operator": "Exists"}]
    # fluidfs-controller (on by default) reads the mount supervisors' metrics: served, no Service
    assert flag(container(mounter["spec"]["template"]["spec"], "mounter")["args"], "metrics-addr") == "0.0.0.0:9809"
    assert not by_kind(default_objs, "Service")
    alone = daemonset(objects(render({"datasetController": {"enabled": False}})), "mounter")
    assert flag(container(alone["spec"]["template"]["spec"], "mounter")["args"], "metrics-addr") is None


def test_node_daemonsets_all_features(
    chart: helm.Chart, full_objs: list[dict[str, Any]], all_values: dict[str, Any]
) -> None:
    values = chart.merge_values(all_values)
    node, mounter = daemonset(full_objs, "node"), daemonset(full_objs, "mounter")
    # the trailing slash of kubeletDir is dropped everywhere
    check_node_daemonset(node, "/var/lib/k0s/kubelet", values)
    check_mounter_daemonset(mounter, node, "/var/lib/k0s/kubelet", values)
    for ds, name in ((node, "fluidfs"), (mounter, "mounter")):
        pod = ds["spec"]["template"]["spec"]
        c = container(pod, name)
        assert c["image"] == "registry.example.com/ml/fluidfs:0.1.0-rc1"
        assert c["imagePullPolicy"] == "Always"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["serviceAccountName"] == "fluidfs-node-sa"
        assert ds["spec"]["template"]["metadata"]["labels"]["team"] == "ml-platform"
    pod = mounter["spec"]["template"]["spec"]
    sup = container(pod, "mounter")
    assert flag(sup["args"], "metrics-addr") == "0.0.0.0:9900"
    assert {"name": "metrics", "containerPort": 9900, "protocol": "TCP"} in sup["ports"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_controller_deployment(chart: helm.Chart, default_objs: list[dict[str, Any]]) -> None:
    dep = one(default_objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    prov = container(pod, "csi-provisioner")
    assert prov["image"].startswith("registry.k8s.io/sig-storage/csi-provisioner:v5.")
    args = prov["args"]
    assert flag(args, "feature-gates") == "Topology=true"
    assert flag(args, "extra-create-metadata") == ""
    assert flag(args, "leader-election") == ""
    assert flag(args, "csi-address") == "/csi/csi.sock"
    assert flag(args, "strict-topology") is None
    plugin = container(pod, "fluidfs")
    assert flag(plugin["args"], "mode") == "controller"
    assert flag(plugin["args"], "endpoint") == "unix:///csi/csi.sock"
    assert "securityContext" not in plugin or not plugin["securityContext"].get("privileged")
    probe = container(pod, "liveness-probe")
    assert {p["name"]: p["containerPort"] for p in plugin["ports"]}["healthz"] == int(
        flag(probe["args"], "health-port") or 0
    )
    # all three share the socket directory
    for c in (prov, plugin, probe):
        assert mount(c, "socket-dir")["mountPath"] == "/csi"
    assert "emptyDir" in volume(pod, "socket-dir")
    assert pod["priorityClassName"] == "system-cluster-critical"


def test_controller_all_features(full_objs: list[dict[str, Any]]) -> None:
    dep = one(full_objs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    args = container(dep["spec"]["template"]["spec"], "csi-provisioner")["args"]
    assert flag(args, "strict-topology") == ""
    assert flag(args, "worker-threads") == "20"


def test_rbac_is_least_privilege(default_objs: list[dict[str, Any]]) -> None:
    role = one(default_objs, "ClusterRole")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                assert res != "*" and group != "*" and "*" not in rule["verbs"]
                granted.setdefault((group, res), set()).update(rule["verbs"])
    needed = {
        ("", "persistentvolumes"): {"get", "list", "watch", "create", "delete"},
        ("", "persistentvolumeclaims"): {"get", "list", "watch", "update"},
        ("storage.k8s.io", "storageclasses"): {"get", "list", "watch"},
        ("", "events"): {"create", "patch"},
        ("storage.k8s.io", "csinodes"): {"get", "list", "watch"},
        ("", "nodes"): {"get", "list", "watch"},
        ("storage.k8s.io", "volumeattachments"): {"get", "list", "watch"},
        ("", "secrets"): {"get"},
    }
    for key, verbs in needed.items():
        assert verbs <= granted.get(key, set()), f"provisioner lacks {verbs} on {key}"
    assert granted[("", "secrets")] == {"get"}  # never list/watch every secret
    assert set(granted) == set(needed), "nothing beyond what the provisioner needs"

    accounts = {sa["metadata"]["name"]: sa for sa in by_kind(default_objs, "ServiceAccount")}
    node_sas = {o["spec"]["template"]["spec"]["serviceAccountName"] for o in by_kind(default_objs, "DaemonSet")}
    assert len(node_sas) == 1, "both node DaemonSets use the node ServiceAccount"
    (node_sa,) = node_sas
    controller_sa = one(default_objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert node_sa in accounts and controller_sa in accounts
    assert accounts[node_sa]["automountServiceAccountToken"] is False
    bound = set()
    for binding in by_kind(default_objs, "ClusterRoleBinding") + by_kind(default_objs, "RoleBinding"):
        for s in binding["subjects"]:
            assert s["namespace"] == NAMESPACE
            bound.add(s["name"])
        kind = binding["roleRef"]["kind"]
        assert any(r["metadata"]["name"] == binding["roleRef"]["name"] for r in by_kind(default_objs, kind))
    assert bound == {controller_sa}, "the node plugin needs no API permissions"
    lease_role = one(default_objs, "Role")
    assert lease_role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "watch", "list", "delete", "update", "create"],
        }
    ]


def test_rbac_can_be_left_out() -> None:
    kinds = {o["kind"] for o in objects(render({"rbac": {"create": False}}))}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def test_storageclass(full_objs: list[dict[str, Any]], all_values: dict[str, Any]) -> None:
    sc = one(full_objs, "StorageClass")
    assert sc["metadata"]["name"] == "imagenet"
    assert sc["provisioner"] == DRIVER
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert sc["reclaimPolicy"] == "Delete"
    p = sc["parameters"]
    assert all(isinstance(v, str) for v in p.values())
    assert p["url"] == "s3://training-data/imagenet"
    assert p["endpoint"] == "http://minio.storage.svc:9000"
    assert p["region"] == "us-east-1"
    assert p["options.addressing_style"] == "path"
    assert p["subPath"] == "train"
    assert p["cacheSize"] == "500Gi" and p["memorySize"] == "8Gi" and p["blockSize"] == "8Mi"
    assert p["eviction"] == "lru"
    assert p["metadataTTL"] == "3600"  # storageClass.parameters win over metadata.ttl
    for kind in ("node-stage", "provisioner"):
        assert p[f"csi.storage.k8s.io/{kind}-secret-name"] == "s3-credentials"
        assert p[f"csi.storage.k8s.io/{kind}-secret-namespace"] == "ml-datasets"
    assert p["name"] == "imagenet-train" and p["pinToNode"] == "true"
    assert "dataset" not in p
    assert sc["allowedTopologies"] == all_values["storageClass"]["allowedTopologies"]


def test_storageclass_from_dataset_document_and_defaults() -> None:
    doc = (EXAMPLES / "storageclass-dataset.yaml").read_text()
    dataset = next(d for d in docs_of(doc) if d["kind"] == "StorageClass")["parameters"]["dataset"]
    objs = objects(render({"storageClass": {"create": True, "dataset": dataset}}))
    sc = one(objs, "StorageClass")
    p = sc["parameters"]
    assert yaml.safe_load(p["dataset"])["kind"] == "Dataset"
    assert p["metadataTTL"] == "60" and p["cacheSize"] == "10Gi" and p["eviction"] == "none"
    assert "url" not in p and not any(k.startswith("csi.storage.k8s.io/") for k in p)
    assert "pinToNode" not in p and "name" not in p
    validate_strict(sc, "storageClass.dataset")


@pytest.mark.parametrize(
    "sc, message",
    [
        ({"create": True}, "needs storageClass.url"),
        ({"create": True, "url": "s3://a/b", "dataset": "kind: Dataset"}, "exclusive"),
        ({"create": True, "dataset": "kind: Dataset", "region": "eu-west-1"}, "go with storageClass.url"),
    ],
)
def test_storageclass_misconfiguration_fails_with_a_clear_message(sc: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render({"storageClass": sc})


def test_metrics_service_and_servicemonitor(full_objs: list[dict[str, Any]]) -> None:
    svc = one(full_objs, "Service")
    ds = daemonset(full_objs, "mounter")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9900, "targetPort": "metrics", "protocol": "TCP"}]

    sm = one(full_objs, "ServiceMonitor")
    # the CRD is not in kubernetes-validate: its shape is checked here
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["namespace"] == "monitoring"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(sm["spec"]) <= {"jobLabel", "namespaceSelector", "selector", "endpoints"}
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s" and endpoint["scrapeTimeout"] == "10s"
    # selects only the metrics Service of this release
    other_services = [o for o in full_objs if o["kind"] == "Service" and o is not svc]
    assert not other_services


def test_servicemonitor_implies_metrics() -> None:
    objs = objects(render({"metrics": {"serviceMonitor": {"enabled": True}}}))
    sup = container(daemonset(objs, "mounter")["spec"]["template"]["spec"], "mounter")
    assert flag(sup["args"], "metrics-addr") == "0.0.0.0:9809"
    assert one(objs, "Service")["spec"]["ports"][0]["port"] == 9809
    one(objs, "ServiceMonitor")


def test_notes(full_render: dict[str, str]) -> None:
    notes = full_render["fluidfs/templates/NOTES.txt"]
    assert DRIVER in notes and "imagenet" in notes and "ReadOnlyMany" in notes
    assert "fluidfs-all-metrics" in notes
    default_notes = render()["fluidfs/templates/NOTES.txt"]
    assert "No StorageClass was created" in default_notes


# ---------------------------------------------------------------------------------- schema


def test_schema_is_strict_draft07(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["additionalProperties"] is False

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, f"{path} is not strict"
            for k, v in node.items():
                walk(v, f"{path}/{k}")

    walk(schema["properties"], "")


@pytest.mark.parametrize("variant", ["values.yaml", "all-features"])
def test_values_files_pass_the_schema(
    variant: str, chart: helm.Chart, schema: dict[str, Any], all_values: dict[str, Any]
) -> None:
    values = chart.values if variant == "values.yaml" else chart.merge_values(all_values)
    chart.validate_schema(values)  # raises HelmValuesError on failure
    jsonschema.Draft7Validator(schema).validate(values)
    # and values.yaml documents every key the schema knows (nothing hidden)
    if variant == "values.yaml":
        assert set(values) == set(schema["properties"]) - {"global"}


BAD_VALUES = [
    ({"cache": {"eviction": "foo"}}, "eviction"),
    ({"bogus": 1}, "bogus"),
    ({"cache": {"size": "lots"}}, "size"),
    ({"cache": {"memorySize": 512}}, "memorySize"),
    ({"cache": {"blockSize": "4MiB!"}}, "blockSize"),
    ({"cache": {"hostPath": "relative/dir"}}, "hostPath"),
    ({"cache": {"sizes": "1Gi"}}, "sizes"),
    ({"metadata": {"ttl": -1}}, "ttl"),
    ({"metadata": {"ttl": "soon"}}, "ttl"),
    ({"metadata": {"negativeTTL": 5}}, "negativeTTL"),
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"node": {"tolerations": "all"}}, "tolerations"),
    ({"node": {"hostNetwork": "yes"}}, "hostNetwork"),
    ({"logLevel": "chatty"}, "logLevel"),
    ({"unstageGrace": -5}, "unstageGrace"),
    ({"storageClass": {"url": "ftp://host/x"}}, "url"),
    ({"storageClass": {"pinToNode": "yes"}}, "pinToNode"),
    ({"storageClass": {"volumeBindingMode": "Later"}}, "volumeBindingMode"),
    ({"metrics": {"port": 70000}}, "port"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "interval"),
    ({"csiDriver": {"fsGroupPolicy": "Always"}}, "fsGroupPolicy"),
    ({"sidecars": {"provisioner": {"extraArgs": ["worker-threads=2"]}}}, "extraArgs"),
    ({"node": {"resources": {"limits": {"memory": "lots"}}}}, "memory"),
]


@pytest.mark.parametrize("override, key", BAD_VALUES, ids=[k for _, k in BAD_VALUES])
def test_bad_values_are_rejected(override: dict[str, Any], key: str, chart: helm.Chart, schema: dict[str, Any]) -> None:
    merged = chart.merge_values(copy.deepcopy(override))
    with pytest.raises(helm.HelmValuesError, match=re.escape(key)):
        chart.validate_schema(merged)
    assert list(jsonschema.Draft7Validator(schema).iter_errors(merged)), override
    with pytest.raises(helm.HelmError):  # an install with these values fails before rendering
        render(override)


def test_good_alternative_values_are_accepted(chart: helm.Chart) -> None:
    for override in (
        {"metadata": {"ttl": "indefinite"}},
        {"metadata": {"ttl": "1h30m"}},
        {"metadata": {"ttl": 0.5}},
        {"cache": {"size": "1.5Ti", "memorySize": "2G", "blockSize": "16Mi"}},
        {"controller": {"replicas": 0}},
        {"storageClass": {"url": "https://data.example.com/set"}},
    ):
        chart.validate_schema(chart.merge_values(override))


# ---------------------------------------------------------------------------------- examples


def example_objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for d in docs_of(path.read_text()):
            out.append((path.name, d))
    return out


def test_examples_validate_strictly() -> None:
    objs = example_objects()
    names = {name for name, _ in objs}
    assert {
        "storageclass.yaml",
        "pvc.yaml",
        "pod.yaml",
        "secret.yaml",
        "storageclass-dataset.yaml",
        "ephemeral-pod.yaml",
    } <= names
    for name, obj in objs:
        validate_strict(obj, f"helm/examples/{name}")


def test_examples_are_consistent() -> None:
    objs = [o for _, o in example_objects()]
    classes = {o["metadata"]["name"]: o for o in objs if o["kind"] == "StorageClass"}
    secrets = {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}
    claims = {o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"}
    for sc in classes.values():
        assert sc["provisioner"] == DRIVER
        assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
        p = sc["parameters"]
        assert ("url" in p) != ("dataset" in p)
        if "dataset" in p:
            doc = yaml.safe_load(p["dataset"])
            assert doc["kind"] == "Dataset" and doc["spec"]["mounts"]
        assert p["csi.storage.k8s.io/node-stage-secret-name"] in secrets
    for s in (o for o in objs if o["kind"] == "Secret"):
        assert set(s["stringData"]) == {"accessKeyId", "secretAccessKey"}
    for o in objs:
        if o["kind"] == "PersistentVolumeClaim":
            assert o["spec"]["accessModes"] == ["ReadOnlyMany"]
            assert o["spec"]["storageClassName"] in set(classes) | {""}
        if o["kind"] == "PersistentVolume":
            assert o["spec"]["csi"]["driver"] == DRIVER
            assert o["spec"]["csi"]["nodeStageSecretRef"]["name"] in secrets
        if o["kind"] == "Pod":
            for v in o["spec"]["volumes"]:
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] in claims
                    assert v["persistentVolumeClaim"]["readOnly"] is True
                if "csi" in v:
                    assert v["csi"]["driver"] == DRIVER and v["csi"]["readOnly"] is True
                    assert v["csi"]["nodePublishSecretRef"]["name"] in secrets
                    assert "url" in v["csi"]["volumeAttributes"]
            for c in o["spec"]["containers"]:
                for m in c.get("volumeMounts", []):
                    assert m["readOnly"] is True
                    # a repaired node mount reaches a running container only this way
                    assert m["mountPropagation"] == "HostToContainer"


# ---------------------------------------------------------------------------------- plugin


def volume_contexts(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, str]]]:
    """Every volume context a manifest hands the plugin: StorageClass parameters (what
    CreateVolume gets), PV and inline-volume volumeAttributes (what NodeStage/Publish get)."""
    for o in objs:
        if o["kind"] == "StorageClass" and o["provisioner"] == DRIVER:
            yield f"StorageClass/{o['metadata']['name']}", o["parameters"]
        if o["kind"] == "PersistentVolume" and o["spec"]["csi"]["driver"] == DRIVER:
            yield f"PersistentVolume/{o['metadata']['name']}", o["spec"]["csi"]["volumeAttributes"]
        if o["kind"] == "Pod":
            for v in o["spec"]["volumes"]:
                if "csi" in v and v["csi"]["driver"] == DRIVER:
                    yield f"Pod/{o['metadata']['name']}", v["csi"]["volumeAttributes"]


def test_every_volume_context_is_accepted_by_the_plugin(full_objs: list[dict[str, Any]]) -> None:
    """The chart's StorageClass and the examples speak the plugin's parameter language: its own
    parser (csi/volumes.py) accepts them, so no key is a typo and every size/TTL parses."""
    volumes = pytest.importorskip("csi.volumes", reason="the CSI plugin (csi/) is not importable")
    import csi

    assert csi.DRIVER_NAME == DRIVER
    doc = (EXAMPLES / "storageclass-dataset.yaml").read_text()
    dataset = next(d for d in docs_of(doc) if d["kind"] == "StorageClass")["parameters"]["dataset"]
    contexts = list(volume_contexts(full_objs))
    contexts += list(volume_contexts(objects(render({"storageClass": {"create": True, "dataset": dataset}}))))
    contexts += list(volume_contexts([o for _, o in example_objects()]))
    assert len(contexts) >= 6
    from fluidfs.spec.parse import parse_dataset

    for where, ctx in contexts:
        try:
            request = volumes.parse_context(ctx)
        except volumes.RequestError as e:
            raise AssertionError(f"{where}: the plugin rejects it: {e.message}") from None
        assert request.url or request.document, where
        if "dataset" in ctx:  # and fluidfs itself accepts the document
            parsed = parse_dataset(ctx["dataset"], where)
            assert parsed.mounts and not parsed.warnings, where
    allowed = one(full_objs, "StorageClass")["allowedTopologies"]
    assert allowed[0]["matchLabelExpressions"][0]["key"] == csi.TOPOLOGY_KEY


# ---------------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_copies_existing_paths_and_runs_the_csi_entry_point() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert froms and all("python:3.11-slim" in f or f.startswith("${PYTHON_IMAGE}") for f in froms)
    assert any(w == "ARG" and r.startswith("PYTHON_IMAGE=python:3.11-slim") for w, r in instructions)
    copied = []
    for word, rest in instructions:
        if word == "COPY" and "--from=" not in rest:
            *sources, _dest = shlex.split(rest)
            copied.extend(sources)
    assert {"pyproject.toml", "fluidfs", "csi"} <= set(copied)
    for src in copied:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):  # the build needs it
        assert readme in copied
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    for pkg in ("fuse3", "mount", "libfuse3-dev"):
        assert re.search(rf"\b{re.escape(pkg)}\b", runs), pkg
    (entry,) = [json.loads(rest) for word, rest in instructions if word == "ENTRYPOINT"]
    assert entry == ["fluidfs-csi"]
    assert "fluidfs-csi" in pyproject["project"]["scripts"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not set(ignored) & {"pyproject.toml", "fluidfs", "csi", readme}


# ---------------------------------------------------------------------------------- docs


def test_docs_have_the_install_sections() -> None:
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    for heading in ("## Install", "## Chart values", "## How the node plugin works"):
        assert re.search(rf"^{re.escape(heading)}\s*$", text, re.M), heading
    chart_readme = (CHART / "README.md").read_text()
    for key in flatten(load_yaml(CHART / "values.yaml")):
        assert f"`{key}`" in chart_readme, f"helm/fluidfs/README.md does not describe {key}"


#: values documented as a whole (Kubernetes structures, image triples)
OPAQUE_VALUES = {"resources", "nodeSelector", "updateStrategy", "image", "requests", "limits"}


def flatten(d: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k not in OPAQUE_VALUES:
            yield from flatten(v, key + ".")
        else:
            yield key
