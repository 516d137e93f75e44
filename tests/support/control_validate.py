"""Validation helpers for control-plane tests: kubernetes-validate (strict) and the CRD schema."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate

from fluidfs.control import crd

#: oldest supported Kubernetes, the one the issue names, and the newest kubernetes-validate knows
KUBE_VERSIONS = sorted({"1.29.0", "1.35.0", kubernetes_validate.latest_version()},
                       key=lambda v: tuple(int(x) for x in v.split(".")))  # fmt: skip


def validate_strict(obj: dict[str, Any], where: str = "") -> None:
    """Strict schema validation of a built-in object for every supported Kubernetes version."""
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            name = obj.get("metadata", {}).get("name")
            raise AssertionError(f"{where}{obj['kind']}/{name} invalid for {version}: {path}: {e.message}") from None


def dataset_validator() -> jsonschema.Draft7Validator:
    """A validator of Dataset resources against the CRD's openAPIV3Schema."""
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(_strict(schema))


def _strict(node: Any) -> Any:
    """The structural schema as the API server applies it: unknown fields are errors (kubectl's
    server-side field validation is Strict by default), except where unknown fields are kept."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if (
            node.get("type") == "object"
            and "properties" in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        if node.get("x-kubernetes-int-or-string"):
            out["type"] = ["integer", "string"]
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """One line per schema error: ``<path>: <message>``."""
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in sorted(dataset_validator().iter_errors(obj), key=lambda e: list(e.absolute_path))
    ]
