"""Parse and validate Dataset documents and command-line URLs into ``fluidfs.spec.model``.

A Dataset is a YAML document (``apiVersion: fluidfs.io/v1alpha1``, ``kind: Dataset``; the full
format is in ``docs/dataset.md``) or a single URL given on the command line.  Fluid's own
``data.fluid.io/v1alpha1`` Dataset is accepted too and translated by ``fluidfs.spec.fluid``;
fields of it that fluidfs does not use become ``Dataset.warnings`` instead of errors.

Every mistake raises ``fluidfs.errors.SpecError(document, field_path, problem)`` with a field
path like ``spec.mounts[1].mountPoint``.  Credential *values* are never read while parsing, and
never appear in an exception or a log line: ``resolve_credentials`` reads them at mount time.

The document's shape is a pydantic schema (``fluidfs.spec.schema``, its settings sections
derived from the settings table; ``fluidfs.spec.fluid`` for Fluid's format), the checks of single
values live in ``fluidfs.spec.fields``; this module reads the YAML, picks the format by
``apiVersion`` and holds the public entry points.

Caveats: local paths and URLs are taken literally (no percent-decoding); a normalised local
mount's ``url`` is ``"file://" + absolute_path``, so take the path as ``url[len("file://"):]``
rather than through ``urlsplit`` (names may contain ``?`` or ``#``).  YAML 1.1 rules apply
(``yes``/``no`` are booleans); option values are coerced to strings after that.  Duplicate
keys are rejected (PyYAML's safe loader would silently keep the last one).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

import yaml

from fluidfs.config.kinds import kind_of
from fluidfs.errors import SpecError
from fluidfs.spec import fluid
from fluidfs.spec.fields import (
    API_VERSION,
    COMMAND_LINE,
    CREDENTIAL_NAMES,
    FLUID_API_VERSION,
    Problem,
    assemble,
    dataset_name,
    dns_label,
    location,
    sub,
)
from fluidfs.spec.fields import options as option_map
from fluidfs.spec.model import Dataset, MountSpec
from fluidfs.spec.schema import dataset_model, validate

__all__ = [
    "load_dataset",
    "parse_dataset",
    "dataset_from_url",
    "dataset_from_source_arg",
    "resolve_credentials",
    "API_VERSION",
    "FLUID_API_VERSION",
]

log = logging.getLogger("fluidfs.spec")  # the package: one logger for every parse warning
_CAMEL = {v: k for k, v in CREDENTIAL_NAMES.items()}
_URL_ARG = re.compile(r"(?i)(s3|https?|local|file)://")
T = TypeVar("T")


# ----------------------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also rejects duplicate keys (a silent-typo trap)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[str] = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                )
            seen.add(key_node.value)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml(document: str, text: str) -> Any:
    try:
        docs = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or "syntax error"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SpecError(document, "", f"invalid YAML{where}: {problem}") from None
    if not docs:
        raise SpecError(document, "", "empty document; expected a Dataset")
    if len(docs) > 1:
        raise SpecError(document, "", f"{len(docs)} YAML documents found; put one Dataset per file")
    return docs[0]


# ----------------------------------------------------------------------------- public API


def parse_dataset(text: str, document: str) -> Dataset:
    """Parse one Dataset YAML document; ``document`` names it in messages and warnings."""
    doc = _load_yaml(document, text)
    if not isinstance(doc, dict):
        raise SpecError(document, "", f"a Dataset document must be a mapping, got {kind_of(doc)}")
    api = doc.get("apiVersion")
    expected = f"expected {API_VERSION!r} (or Fluid's {FLUID_API_VERSION!r})"
    if api is None:
        raise SpecError(document, "apiVersion", f"required field is missing; {expected}")
    if api not in (API_VERSION, FLUID_API_VERSION):
        raise SpecError(document, "apiVersion", f"unsupported apiVersion {api!r}; {expected}")
    if doc.get("kind") is None:
        raise SpecError(document, "kind", "required field is missing; expected 'Dataset'")
    if doc["kind"] != "Dataset":
        raise SpecError(document, "kind", f"expected 'Dataset', got {doc['kind']!r}")
    settings: dict[str, Any] = {}
    warnings: list[str] = []
    if api == FLUID_API_VERSION:
        name, pending, ignored = fluid.translate(doc, document)
        for field, why in ignored:
            warnings.append(f"{document}: {field}: {why}")  # the command shows each once
    else:
        model = validate(dataset_model(), doc, document)
        name = model.metadata.name
        pending = [m.to_pending(f"spec.mounts[{i}]") for i, m in enumerate(model.spec.mounts)]
        settings = model.spec.settings()
    return Dataset(
        name=name,
        mounts=assemble(document, pending),
        settings=settings,
        document=document,
        warnings=tuple(warnings),
    )


def load_dataset(path: str) -> Dataset:
    """Read and parse the Dataset YAML file at ``path`` (named ``path`` in messages)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise SpecError(path, "", "not a UTF-8 text file") from None
    except OSError as e:
        raise SpecError(path, "", f"cannot read: {e.strerror or e}") from None
    return parse_dataset(text, path)


def _command_line(check: Callable[[Any], T], value: object, field: str) -> T:
    """``check(value)``, a SpecError naming ``field`` of the command line for a mistake."""
    try:
        return check(value)
    except Problem as exc:
        for part in exc.at:
            field = sub(field, part)
        raise SpecError(COMMAND_LINE, field, str(exc)) from None


def dataset_from_url(url: str, options: Mapping[str, str] | None = None, name: str | None = None) -> Dataset:
    """A one-mount Dataset at path ``/`` for a bare URL or absolute path (command line).

    The dataset name is ``name`` if given, else derived from the bucket, host or last
    directory component.
    """
    loc = _command_line(location, url, "")
    opts = {} if options is None else _command_line(option_map, dict(options), "options")
    dname = _command_line(dataset_name, name, "name") if name is not None else dns_label(loc.default_name)
    mount = MountSpec(name=loc.default_name, url=loc.url, scheme=loc.scheme, path="/", options=opts)
    return Dataset(name=dname, mounts=(mount,), document=COMMAND_LINE)


def dataset_from_source_arg(arg: str, options: Mapping[str, str] | None = None, name: str | None = None) -> Dataset:
    """The Dataset for a command-line SOURCE: a URL, a Dataset YAML file, or a directory.

    For a YAML file, ``options`` override every mount's options and ``name`` the dataset name.
    """
    if _URL_ARG.match(arg):
        return dataset_from_url(arg, options, name)
    if os.path.isfile(arg):
        ds = load_dataset(arg)
        if options:
            extra = _command_line(option_map, dict(options), "options")
            ds = replace(ds, mounts=tuple(replace(m, options={**m.options, **extra}) for m in ds.mounts))
        if name is not None:
            ds = replace(ds, name=_command_line(dataset_name, name, "name"))
        return ds
    if os.path.isdir(arg):
        return dataset_from_url(os.path.abspath(arg), options, name)
    raise SpecError(
        arg,
        "",
        "no such file or unsupported URL (expected a Dataset file, a "
        "directory, or an s3://, http(s)://, local:// or file:// URL)",
    )


def resolve_credentials(mount: MountSpec, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Read the mount's credential values: {"access_key_id": "...", ...}.

    Raises SpecError (document ``mount '<name>'``, field ``credentials.<name>``) when a value
    cannot be read.  Values never appear in messages.
    """
    env = os.environ if environ is None else environ
    doc = f"mount {mount.name!r}"
    out: dict[str, str] = {}
    for key, ref in mount.credentials.items():
        field = f"credentials.{_CAMEL.get(key, key)}"
        if ref.env:
            value = env.get(ref.env)
            if value is None:
                raise SpecError(doc, field, f"environment variable {ref.env!r} is not set")
            where = f"environment variable {ref.env!r}"
        elif ref.file:
            try:
                with open(ref.file, "rb") as f:
                    value = f.read().decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise SpecError(doc, field, f"file {ref.file!r} is not UTF-8 text") from None
            except OSError as e:
                raise SpecError(doc, field, f"cannot read file {ref.file!r}: {e.strerror or 'error'}") from None
            where = f"file {ref.file!r}"
        elif ref.secret_name or ref.secret_key:
            raise SpecError(
                doc,
                field,
                f"Kubernetes secret {ref.secret_name!r} key {ref.secret_key!r} must be resolved by the CSI plugin",
            )
        else:
            raise SpecError(doc, field, "empty credential reference")
        if not value:
            raise SpecError(doc, field, f"{where} is empty")
        out[key] = value
    return out
