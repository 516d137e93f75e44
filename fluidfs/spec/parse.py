"""Parse and validate Dataset documents and command-line URLs into ``fluidfs.spec.model``.

A Dataset is a YAML document (``apiVersion: fluidfs.io/v1alpha1``, ``kind: Dataset``; the full
format is in ``docs/dataset.md``) or a single URL given on the command line.  Fluid's own
``data.fluid.io/v1alpha1`` Dataset is accepted too and translated by ``fluidfs.spec.fluid``;
fields of it that fluidfs does not use become ``Dataset.warnings`` instead of errors.

Every mistake raises ``fluidfs.errors.SpecError(document, field_path, problem)`` with a field
path like ``spec.mounts[1].mountPoint``.  Credential *values* are never read while parsing, and
never appear in an exception or a log line: ``resolve_credentials`` reads them at mount time.

Field-level checks live in ``fluidfs.spec.fields``; this module handles the YAML, the
``fluidfs.io`` document shape and the public entry points.

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
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import yaml

from fluidfs.errors import SpecError
from fluidfs.spec import fluid as spec_fluid
from fluidfs.spec.fields import (
    API_VERSION,
    COMMAND_LINE,
    CREDENTIAL_NAMES,
    FLUID_API_VERSION,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    Ctx,
    PendingMount,
    assemble,
    check_keys,
    credentials,
    dataset_name,
    dns_label,
    kind_of,
    mapping,
    metadata_name,
    mount_list,
    mount_name,
    mount_path,
    parse_mount_point,
    parse_options,
    string,
)
from fluidfs.spec.model import CacheSpec, Dataset, MetadataSpec, MountSpec
from fluidfs.util import sizes

__all__ = [
    "load_dataset",
    "parse_dataset",
    "dataset_from_url",
    "dataset_from_source_arg",
    "resolve_credentials",
    "API_VERSION",
    "FLUID_API_VERSION",
]

log = logging.getLogger(__name__)
_CAMEL = {v: k for k, v in CREDENTIAL_NAMES.items()}
_URL_ARG = re.compile(r"(?i)(s3|https?|local|file)://")

# ----------------------------------------------------------------------------- fluidfs.io


def _mount(ctx: Ctx, value: object, field: str) -> PendingMount:
    m = mapping(ctx, value, field)
    check_keys(ctx, m, field, ("mountPoint", "name", "path", "options", "credentials", "readOnly"))
    url, scheme, default_name = parse_mount_point(ctx, m.get("mountPoint"), f"{field}.mountPoint")
    read_only = m.get("readOnly")
    if read_only is not None and not isinstance(read_only, bool):
        ctx.fail(f"{field}.readOnly", f"must be true or false, got {kind_of(read_only)}")
    if read_only is False:
        ctx.fail(f"{field}.readOnly", "fluidfs mounts are read-only")
    name = default_name if m.get("name") is None else mount_name(ctx, m["name"], f"{field}.name")
    path = None if m.get("path") is None else mount_path(ctx, m["path"], f"{field}.path")
    opts = {} if m.get("options") is None else parse_options(ctx, m["options"], f"{field}.options")
    creds = {} if m.get("credentials") is None else credentials(ctx, m["credentials"], f"{field}.credentials")
    return PendingMount(field, url, scheme, name, path, opts, creds)


def _size(ctx: Ctx, m: Mapping[str, Any], key: str, field: str) -> int | None:
    if m.get(key) is None:
        return None
    try:
        return sizes.parse_size(m[key])
    except ValueError as e:
        ctx.fail(f"{field}.{key}", str(e))


def _duration(ctx: Ctx, m: Mapping[str, Any], key: str, field: str) -> float | None:
    if m.get(key) is None:
        return None
    try:
        return sizes.parse_duration(m[key])
    except ValueError as e:
        ctx.fail(f"{field}.{key}", str(e))


def _cache(ctx: Ctx, value: object, field: str) -> CacheSpec:
    m = mapping(ctx, value, field)
    check_keys(
        ctx,
        m,
        field,
        (
            "directory",
            "size",
            "memorySize",
            "blockSize",
            "eviction",
            "readahead",
            "freeSpaceFloor",
            "prefetchSiblings",
            "metricsAddr",
        ),
    )
    block = _size(ctx, m, "blockSize", field)
    if block is not None and not MIN_BLOCK_SIZE <= block <= MAX_BLOCK_SIZE:
        ctx.fail(f"{field}.blockSize", f"must be between 1Mi and 64Mi, got {m['blockSize']!r}")
    eviction = None
    if m.get("eviction") is not None:
        eviction = string(ctx, m["eviction"], f"{field}.eviction").lower()
        if eviction not in ("lru", "none"):
            ctx.fail(f"{field}.eviction", f"must be 'lru' or 'none', got {m['eviction']!r}")
    directory = None
    if m.get("directory") is not None:
        directory = string(ctx, m["directory"], f"{field}.directory")
    siblings = None
    if m.get("prefetchSiblings") is not None:
        raw = m["prefetchSiblings"]
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            ctx.fail(f"{field}.prefetchSiblings", f"must be a whole number >= 0, got {raw!r}")
        siblings = int(raw)
    metrics_addr = None
    if m.get("metricsAddr") is not None:
        metrics_addr = string(ctx, m["metricsAddr"], f"{field}.metricsAddr")
        host, sep, port = metrics_addr.rpartition(":")
        if metrics_addr.lower() not in ("none", "off") and not (sep and host and port.isdigit() and int(port) < 65536):
            ctx.fail(f"{field}.metricsAddr", f"must be HOST:PORT or 'none', got {metrics_addr!r}")
    return CacheSpec(
        directory=directory,
        size=_size(ctx, m, "size", field),
        memory_size=_size(ctx, m, "memorySize", field),
        block_size=block,
        eviction=eviction,
        readahead=_size(ctx, m, "readahead", field),
        free_space_floor=_size(ctx, m, "freeSpaceFloor", field),
        sibling_prefetch=siblings,
        metrics_addr=metrics_addr,
    )


def _metadata(ctx: Ctx, value: object, field: str) -> MetadataSpec:
    m = mapping(ctx, value, field)
    check_keys(ctx, m, field, ("ttl", "negativeTtl"))
    return MetadataSpec(ttl=_duration(ctx, m, "ttl", field), negative_ttl=_duration(ctx, m, "negativeTtl", field))


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


def _load_yaml(ctx: Ctx, text: str) -> Any:
    try:
        docs = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or "syntax error"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        ctx.fail("", f"invalid YAML{where}: {problem}")
    if not docs:
        ctx.fail("", "empty document; expected a Dataset")
    if len(docs) > 1:
        ctx.fail("", f"{len(docs)} YAML documents found; put one Dataset per file")
    return docs[0]


# ----------------------------------------------------------------------------- public API


def parse_dataset(text: str, document: str) -> Dataset:
    """Parse one Dataset YAML document; ``document`` names it in messages and warnings."""
    ctx = Ctx(document)
    doc = _load_yaml(ctx, text)
    if not isinstance(doc, dict):
        ctx.fail("", f"a Dataset document must be a mapping, got {kind_of(doc)}")
    api = doc.get("apiVersion")
    expected = f"expected {API_VERSION!r} (or Fluid's {FLUID_API_VERSION!r})"
    if api is None:
        ctx.fail("apiVersion", f"required field is missing; {expected}")
    if api not in (API_VERSION, FLUID_API_VERSION):
        ctx.fail("apiVersion", f"unsupported apiVersion {api!r}; {expected}")
    if doc.get("kind") is None:
        ctx.fail("kind", "required field is missing; expected 'Dataset'")
    if doc["kind"] != "Dataset":
        ctx.fail("kind", f"expected 'Dataset', got {doc['kind']!r}")
    cache, meta = CacheSpec(), MetadataSpec()
    if api == FLUID_API_VERSION:
        name, pending = spec_fluid.translate(ctx, doc)
    else:
        check_keys(ctx, doc, "", ("apiVersion", "kind", "metadata", "spec"))
        name = metadata_name(ctx, doc, fluid=False)
        spec = mapping(ctx, doc.get("spec"), "spec")
        check_keys(ctx, spec, "spec", ("mounts", "cache", "metadata"))
        raw_mounts = mount_list(ctx, spec.get("mounts"), "spec.mounts")
        pending = [_mount(ctx, raw, f"spec.mounts[{i}]") for i, raw in enumerate(raw_mounts)]
        if spec.get("cache") is not None:
            cache = _cache(ctx, spec["cache"], "spec.cache")
        if spec.get("metadata") is not None:
            meta = _metadata(ctx, spec["metadata"], "spec.metadata")
    return Dataset(
        name=name,
        mounts=assemble(ctx, pending),
        cache=cache,
        metadata=meta,
        document=document,
        warnings=tuple(ctx.warnings),
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


def dataset_from_url(url: str, options: Mapping[str, str] | None = None, name: str | None = None) -> Dataset:
    """A one-mount Dataset at path ``/`` for a bare URL or absolute path (command line).

    The dataset name is ``name`` if given, else derived from the bucket, host or last
    directory component.
    """
    ctx = Ctx(COMMAND_LINE)
    norm, scheme, mname = parse_mount_point(ctx, url, "")
    opts = {} if options is None else parse_options(ctx, dict(options), "options")
    dname = dataset_name(ctx, name, "name") if name is not None else dns_label(mname)
    mount = MountSpec(name=mname, url=norm, scheme=scheme, path="/", options=opts)
    return Dataset(name=dname, mounts=(mount,), document=COMMAND_LINE)


def dataset_from_source_arg(arg: str, options: Mapping[str, str] | None = None, name: str | None = None) -> Dataset:
    """The Dataset for a command-line SOURCE: a URL, a Dataset YAML file, or a directory.

    For a YAML file, ``options`` override every mount's options and ``name`` the dataset name.
    """
    if _URL_ARG.match(arg):
        return dataset_from_url(arg, options, name)
    if os.path.isfile(arg):
        ds = load_dataset(arg)
        ctx = Ctx(COMMAND_LINE)
        if options:
            extra = parse_options(ctx, dict(options), "options")
            ds = replace(ds, mounts=tuple(replace(m, options={**m.options, **extra}) for m in ds.mounts))
        if name is not None:
            ds = replace(ds, name=dataset_name(ctx, name, "name"))
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
