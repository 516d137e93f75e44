"""Unit tests for the Dataset parser (fluidfs.spec: parse, fields, fluid): no I/O but tmp files."""

from __future__ import annotations

import copy
import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from fluidfs.errors import SpecError
from fluidfs.spec.model import MountSpec, SecretRef
from fluidfs.spec.parse import (
    dataset_from_source_arg,
    dataset_from_url,
    load_dataset,
    parse_dataset,
    resolve_credentials,
)

DOC = "ds.yaml"
SECRET = "s3cr3t-VALUE-never-shown"

BASE: dict[str, Any] = {
    "apiVersion": "fluidfs.io/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "imagenet"},
    "spec": {
        "mounts": [
            {"mountPoint": "s3://bucket-a/train", "name": "train"},
            {"mountPoint": "s3://bucket-b/val", "name": "val"},
        ]
    },
}


def parse(d: Any) -> Any:
    return parse_dataset(yaml.safe_dump(d), DOC)


def mutate(fn: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    fn(d)
    return d


def error_of(d: Any) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse(d) if not isinstance(d, str) else parse_dataset(d, DOC)
    return info.value


# ----------------------------------------------------------------------------- valid documents


def test_single_mount_at_root() -> None:
    ds = parse_dataset(
        """
apiVersion: fluidfs.io/v1alpha1
kind: Dataset
metadata:
  name: cifar
spec:
  mounts:
    - mountPoint: s3://datasets/cifar10/
      path: /
      options:
        endpoint: http://127.0.0.1:8333
        region: us-east-1
        addressing_style: Path
        anonymous: true
        max_pool: 16
      credentials:
        accessKeyId: {env: AWS_ACCESS_KEY_ID}
        secretAccessKey: {file: /var/run/secrets/sk}
        sessionToken: {secretKeyRef: {name: s3-creds, key: token}}
      readOnly: true
  cache:
    directory: /var/cache/fluidfs
    size: 100Gi
    memorySize: 2Gi
    blockSize: 4Mi
    eviction: none
    readahead: 64Mi
  metadata:
    ttl: 5m
    negativeTtl: indefinite
""",
        DOC,
    )
    assert ds.name == "cifar"
    assert ds.document == DOC
    assert ds.warnings == ()
    assert ds.mounts == (
        MountSpec(
            name="datasets",
            url="s3://datasets/cifar10",
            scheme="s3",
            path="/",
            options={
                "endpoint": "http://127.0.0.1:8333",
                "region": "us-east-1",
                "addressing_style": "path",
                "anonymous": "true",
                "max_pool": "16",
            },
            credentials={
                "access_key_id": SecretRef(env="AWS_ACCESS_KEY_ID"),
                "secret_access_key": SecretRef(file="/var/run/secrets/sk"),
                "session_token": SecretRef(secret_name="s3-creds", secret_key="token"),
            },
        ),
    )
    assert ds.settings == {
        "cache_dir": "/var/cache/fluidfs",
        "cache_size": 100 * 2**30,
        "memory_size": 2 * 2**30,
        "block_size": 4 * 2**20,
        "eviction": "none",
        "readahead": 64 * 2**20,
        "metadata_ttl": 300.0,
        "negative_ttl": math.inf,
    }


def test_several_mounts_and_defaults() -> None:
    ds = parse_dataset(
        """
apiVersion: fluidfs.io/v1alpha1
kind: Dataset
metadata: {name: mixed-1, namespace: team, labels: {a: b}, annotations: {c: d}}
spec:
  mounts:
    - mountPoint: s3://bucket/images
    - mountPoint: https://data.example.org:8443/labels/
      options: {verify_ssl: "no", manifest: index.txt}
    - mountPoint: /srv/local//data/
      name: extra
      path: /more/extra/
    - mountPoint: local:///opt/ds
    - mountPoint: file:///mnt/x
      path: /x
""",
        DOC,
    )
    assert [(m.name, m.scheme, m.url, m.path) for m in ds.mounts] == [
        ("bucket", "s3", "s3://bucket/images", "/bucket"),
        ("data.example.org-8443", "https", "https://data.example.org:8443/labels/", "/data.example.org-8443"),
        ("extra", "file", "file:///srv/local/data", "/more/extra"),
        ("ds", "file", "file:///opt/ds", "/ds"),
        ("x", "file", "file:///mnt/x", "/x"),
    ]
    assert ds.mounts[1].options == {"verify_ssl": "false", "manifest": "index.txt"}
    assert all(m.credentials == {} for m in ds.mounts)
    assert ds.settings == {}


def test_block_size_bounds_inclusive_and_numbers() -> None:
    for size, expected in (("1Mi", 2**20), ("64Mi", 64 * 2**20), (2**20, 2**20)):
        d = mutate(lambda d, size=size: d["spec"].__setitem__("cache", {"blockSize": size}))
        assert parse(d).settings["block_size"] == expected
    d = mutate(lambda d: d["spec"].__setitem__("metadata", {"ttl": 30, "negativeTtl": "2h"}))
    assert parse(d).settings == {"metadata_ttl": 30.0, "negative_ttl": 7200.0}


def test_null_optional_fields_mean_unset() -> None:
    d = mutate(lambda d: d["spec"].update(cache=None, metadata=None))
    d["spec"]["mounts"][0].update(options=None, credentials=None, path=None, readOnly=None)
    ds = parse(d)
    assert ds.settings == {} and ds.mounts[0].path == "/train"


def test_yaml_merge_keys_are_not_duplicates() -> None:
    text = """
apiVersion: fluidfs.io/v1alpha1
kind: Dataset
metadata: {name: m}
spec:
  mounts:
    - &base {mountPoint: s3://b/one, name: one}
    - <<: *base
      name: two
"""
    ds = parse_dataset(text, DOC)
    assert [m.name for m in ds.mounts] == ["one", "two"]


def test_load_dataset_from_file(tmp_path: Path) -> None:
    p = tmp_path / "ds.yaml"
    p.write_text(yaml.safe_dump(BASE))
    ds = load_dataset(str(p))
    assert ds.document == str(p) and ds.name == "imagenet"
    assert [m.path for m in ds.mounts] == ["/train", "/val"]


def test_load_dataset_unreadable(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_dataset(str(tmp_path / "missing.yaml"))
    assert str(info.value) == f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpecError, match="not a UTF-8 text file"):
        load_dataset(str(bad))


# ----------------------------------------------------------------------------- Fluid documents

FLUID = """
apiVersion: data.fluid.io/v1alpha1
kind: Dataset
metadata:
  name: imagenet
  namespace: default
spec:
  sharedOptions:
    alluxio.underfs.s3.endpoint.region: eu-west-1
  sharedEncryptOptions:
    - name: aws.accessKeyId
      valueFrom:
        secretKeyRef: {name: shared, key: ak}
  mounts:
    - mountPoint: s3://imagenet/train/
      name: train
      path: /train
      readOnly: false
      shared: true
      options:
        fs.s3a.endpoint: minio.fluid.svc:9000
        fs.s3a.connection.ssl.enabled: "false"
        fs.s3a.path.style.access: "true"
        fs.s3a.access.key: AKIAPLAINTEXT
        alluxio.underfs.s3.inherit.acl: "false"
      encryptOptions:
        - name: fs.s3a.secret.key
          valueFrom:
            secretKeyRef: {name: s3-secret, key: sk}
        - name: metaurl
          valueFrom:
            secretKeyRef: {name: jfs, key: metaurl}
    - mountPoint: https://mirror.example.com/labels
      options: {verify_ssl: false}
    - mountPoint: s3://val
      options:
        alluxio.underfs.s3.endpoint: s3.example.com
        alluxio.underfs.s3.disable.dns.buckets: false
        fs.s3a.aws.credentials.provider: org.apache.hadoop.fs.s3a.AnonymousAWSCredentialsProvider
  runtimes:
    - name: imagenet
      namespace: default
  nodeAffinity:
    required: {}
  accessModes: [ReadOnlyMany]
  placement: Exclusive
  tolerations: []
  owner: {uid: 1000}
status:
  phase: Bound
"""


def test_fluid_document_translates_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fluidfs.spec"):
        ds = parse_dataset(FLUID, "fluid.yaml")
    assert ds.name == "imagenet"
    train, labels, val = ds.mounts
    assert (labels.name, labels.path, labels.options, labels.credentials) == (
        "mirror.example.com",
        "/mirror.example.com",
        {"verify_ssl": "false"},
        {"access_key_id": SecretRef(secret_name="shared", secret_key="ak")},
    )
    assert (train.name, train.url, train.scheme, train.path) == ("train", "s3://imagenet/train", "s3", "/train")
    assert train.options == {
        "region": "eu-west-1",
        "endpoint": "http://minio.fluid.svc:9000",
        "addressing_style": "path",
    }
    assert train.credentials == {
        "access_key_id": SecretRef(secret_name="shared", secret_key="ak"),
        "secret_access_key": SecretRef(secret_name="s3-secret", secret_key="sk"),
    }
    assert (val.name, val.path) == ("val", "/val")
    assert val.options == {
        "region": "eu-west-1",
        "endpoint": "http://s3.example.com",
        "addressing_style": "virtual",
        "anonymous": "true",
    }
    expected = [
        "fluid.yaml: status: ignored (not used by fluidfs)",
        "fluid.yaml: metadata.namespace: ignored (not used by fluidfs)",
        "fluid.yaml: spec.runtimes: ignored (not used by fluidfs)",
        "fluid.yaml: spec.nodeAffinity: ignored (not used by fluidfs)",
        "fluid.yaml: spec.accessModes: ignored (not used by fluidfs)",
        "fluid.yaml: spec.placement: ignored (not used by fluidfs)",
        "fluid.yaml: spec.tolerations: ignored (not used by fluidfs)",
        "fluid.yaml: spec.owner: ignored (not used by fluidfs)",
        "fluid.yaml: spec.mounts[0].shared: ignored (not used by fluidfs)",
        "fluid.yaml: spec.mounts[0].readOnly: ignored (fluidfs mounts are read-only)",
        "fluid.yaml: spec.mounts[0].options['fs.s3a.access.key']: ignored (credentials must come from encryptOptions)",
        "fluid.yaml: spec.mounts[0].options['alluxio.underfs.s3.inherit.acl']: ignored (not used by fluidfs)",
        "fluid.yaml: spec.mounts[0].encryptOptions[1]: ignored (credential 'metaurl' is not used by fluidfs)",
    ]
    assert sorted(ds.warnings) == sorted(expected)
    assert caplog.records == []  # collected, not logged: the command that parsed it prints them once
    assert "AKIAPLAINTEXT" not in "\n".join(ds.warnings) + caplog.text


def test_fluid_warnings_are_printed_once_by_the_cli(tmp_path: Path) -> None:
    doc = tmp_path / "fluid.yaml"
    doc.write_text(FLUID)
    res = subprocess.run(
        [sys.executable, "-m", "fluidfs", "mount", str(doc), str(tmp_path / "no-such-mountpoint")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and "does not exist" in res.stderr
    lines = res.stderr.splitlines()
    for line in ("status: ignored (not used by fluidfs)", "spec.mounts[0].shared: ignored (not used by fluidfs)"):
        assert sum(line in ln for ln in lines) == 1, res.stderr
    assert "AKIAPLAINTEXT" not in res.stderr


def test_fluid_minimal_and_https_default_for_s3a() -> None:
    ds = parse_dataset(
        """
apiVersion: data.fluid.io/v1alpha1
kind: Dataset
metadata: {name: hbase}
spec:
  mounts:
    - mountPoint: s3://hbase
      path: /
      options: {fs.s3a.endpoint: s3.amazonaws.com, endpoint: "https://override.example"}
""",
        DOC,
    )
    assert ds.warnings == ()
    assert ds.mounts[0].path == "/"
    assert ds.mounts[0].options["endpoint"] in ("https://s3.amazonaws.com", "https://override.example")


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        (
            "spec: {mounts: [{mountPoint: oss://b/x}]}",
            "spec.mounts[0].mountPoint",
            "unknown scheme 'oss' (supported: s3, http, https, local, file)",
        ),
        ("spec: {mounts: []}", "spec.mounts", "must list at least one mount"),
        ("spec: {}", "spec.mounts", "required field is missing"),
        ("spec: {mounts: [{name: x}]}", "spec.mounts[0].mountPoint", "required field is missing"),
        (
            "spec: {mounts: [{mountPoint: s3://b, encryptOptions: {a: b}}]}",
            "spec.mounts[0].encryptOptions",
            "must be a list, got a mapping",
        ),
        (
            "spec: {mounts: [{mountPoint: s3://b, encryptOptions: [{name: aws.secretKey}]}]}",
            "spec.mounts[0].encryptOptions[0].valueFrom",
            "required field is missing",
        ),
        (
            "spec: {mounts: [{mountPoint: s3://b, encryptOptions: "
            "[{name: aws.secretKey, valueFrom: {secretKeyRef: {name: s}}}]}]}",
            "spec.mounts[0].encryptOptions[0].valueFrom.secretKeyRef.key",
            "required field is missing",
        ),
        (
            "spec: {mounts: [{mountPoint: s3://b, options: [a]}]}",
            "spec.mounts[0].options",
            "must be a mapping, got a list",
        ),
        (
            "spec: {mounts: [{mountPoint: s3://b, readOnly: maybe}]}",
            "spec.mounts[0].readOnly",
            "must be true or false, got a string",
        ),
        (
            "spec: {mounts: [{mountPoint: s3://b}, {mountPoint: s3://b/x}]}",
            "spec.mounts[1].name",
            "duplicate mount name 'b' (also used by spec.mounts[0]); give each mount a distinct name",
        ),
    ],
)
def test_fluid_errors(text: str, field: str, problem: str) -> None:
    head = "apiVersion: data.fluid.io/v1alpha1\nkind: Dataset\nmetadata: {name: f}\n"
    err = error_of(head + text)
    assert (err.document, err.field, err.problem) == (DOC, field, problem)


# ----------------------------------------------------------------------------- bare URLs


@pytest.mark.parametrize(
    ("url", "name", "mount_name", "scheme", "norm"),
    [
        ("s3://my-bucket", "my-bucket", "my-bucket", "s3", "s3://my-bucket"),
        ("s3://My_Bucket/a//b/", "my-bucket", "My_Bucket", "s3", "s3://My_Bucket/a/b"),
        ("S3://bucket/x", "bucket", "bucket", "s3", "s3://bucket/x"),
        ("http://127.0.0.1:8000/data/", "127-0-0-1-8000", "127.0.0.1-8000", "http", "http://127.0.0.1:8000/data/"),
        (
            "https://Data.Example.com/x?sig=1",
            "data-example-com",
            "Data.Example.com",
            "https",
            "https://Data.Example.com/x?sig=1",
        ),
        ("local:///data/ImageNet 2012/", "imagenet-2012", "ImageNet-2012", "file", "file:///data/ImageNet 2012"),
        ("local://localhost/srv/x", "x", "x", "file", "file:///srv/x"),
        ("file:///srv/train", "train", "train", "file", "file:///srv/train"),
        ("/srv/a_b/", "a-b", "a_b", "file", "file:///srv/a_b"),
        ("/", "root", "root", "file", "file:///"),
    ],
)
def test_dataset_from_url(url: str, name: str, mount_name: str, scheme: str, norm: str) -> None:
    ds = dataset_from_url(url)
    assert ds.name == name
    assert ds.document == "<command line>"
    assert ds.mounts == (MountSpec(name=mount_name, url=norm, scheme=scheme, path="/"),)


def test_dataset_from_url_options_and_name() -> None:
    ds = dataset_from_url("s3://b", {"endpoint": "http://localhost:9000", "anonymous": "1"}, name="mine")
    assert ds.name == "mine"
    assert ds.mounts[0].options == {"endpoint": "http://localhost:9000", "anonymous": "true"}


@pytest.mark.parametrize(
    ("url", "options", "name", "field", "problem"),
    [
        ("ftp://h/x", None, None, "", "unknown scheme 'ftp' (supported: s3, http, https, local, file)"),
        ("s3://", None, None, "", "s3 URL 's3://' has no bucket"),
        ("s3:///prefix", None, None, "", "s3 URL 's3:///prefix' has no bucket"),
        ("s3://b/a/../c", None, None, "", "'..' components are not allowed in the URL prefix"),
        ("s3://b/./c", None, None, "", "'.' components are not allowed in the URL prefix"),
        ("s3://bad bucket", None, None, "", "invalid bucket name 'bad bucket'"),
        ("http:///x", None, None, "", "http URL 'http:///x' has no host"),
        ("http://h:99999/x", None, None, "", "http URL 'http://h:99999/x' has an invalid port"),
        ("http://h:port/x", None, None, "", "http URL 'http://h:port/x' has an invalid port"),
        ("https://h/a/../b", None, None, "", "'..' components are not allowed in the URL path"),
        ("data/train", None, None, "", "relative local path 'data/train': must be absolute"),
        ("local://data", None, None, "", "relative local path 'local://data': must be absolute (local:///abs/path)"),
        ("/data/../etc", None, None, "", "'..' components are not allowed in a local path"),
        ("s3:/bucket", None, None, "", "malformed URL 's3:/bucket': expected s3://..."),
        ("/a\0b", None, None, "", "contains a NUL character"),
        ("", None, None, "", "must not be empty"),
        (
            "s3://b",
            {"addressing_style": "dns"},
            None,
            "options.addressing_style",
            "must be one of path, virtual, auto, got 'dns'",
        ),
        (
            "s3://b",
            {"endpoint": "localhost:9000"},
            None,
            "options.endpoint",
            "must be an http:// or https:// URL, got 'localhost:9000'",
        ),
        ("s3://b", {"anonymous": "sure"}, None, "options.anonymous", "must be true or false, got 'sure'"),
        ("s3://b", {"verify_ssl": "x"}, None, "options.verify_ssl", "must be true or false, got 'x'"),
        (
            "s3://b",
            None,
            "Bad_Name",
            "name",
            "invalid name 'Bad_Name': use lowercase letters, digits and '-' "
            "(at most 63, starting and ending with a letter or digit)",
        ),
    ],
)
def test_dataset_from_url_errors(
    url: str, options: dict[str, str] | None, name: str | None, field: str, problem: str
) -> None:
    with pytest.raises(SpecError) as info:
        dataset_from_url(url, options, name)
    assert (info.value.document, info.value.field, info.value.problem) == ("<command line>", field, problem)


def test_credentials_in_url_are_rejected_without_echo() -> None:
    for url in (f"https://user:{SECRET}@host/x", f"s3://AKIA:{SECRET}@bucket/x"):
        with pytest.raises(SpecError) as info:
            dataset_from_url(url)
        assert info.value.problem == ("credentials in the URL are not allowed; use the credentials field")
        assert SECRET not in str(info.value)


def test_secret_option_names_are_rejected_without_echo() -> None:
    with pytest.raises(SpecError) as info:
        dataset_from_url("s3://b", {"secret_access_key": SECRET})
    assert info.value.field == "options.secret_access_key"
    assert SECRET not in str(info.value)


def test_dataset_from_source_arg(tmp_path: Path) -> None:
    assert dataset_from_source_arg("s3://bkt/p").mounts[0].url == "s3://bkt/p"
    assert dataset_from_source_arg("HTTPS://h/x").mounts[0].scheme == "https"
    assert dataset_from_source_arg("local:///x").mounts[0].url == "file:///x"
    assert dataset_from_source_arg("file:///x").mounts[0].url == "file:///x"
    f = tmp_path / "ds.yaml"
    f.write_text(yaml.safe_dump(BASE))
    ds = dataset_from_source_arg(str(f), {"endpoint": "http://127.0.0.1:8333"}, name="other")
    assert ds.name == "other" and ds.document == str(f)
    assert all(m.options == {"endpoint": "http://127.0.0.1:8333"} for m in ds.mounts)
    d = tmp_path / "Some Dir"
    d.mkdir()
    ds = dataset_from_source_arg(str(d))
    assert ds.mounts[0].url == f"file://{d}" and ds.name == "some-dir"
    with pytest.raises(SpecError) as info:
        dataset_from_source_arg(str(tmp_path / "nope.yaml"))
    assert str(info.value) == (
        f"{tmp_path / 'nope.yaml'}: no such file or unsupported URL (expected a Dataset file, "
        "a directory, or an s3://, http(s)://, local:// or file:// URL)"
    )
    with pytest.raises(SpecError, match="no such file or unsupported URL"):
        dataset_from_source_arg("ftp://host/x")


# ----------------------------------------------------------------------------- credentials


def _mount(**creds: SecretRef) -> MountSpec:
    return MountSpec(name="m", url="s3://b", scheme="s3", path="/", credentials=creds)


def test_resolve_credentials_env_and_file(tmp_path: Path) -> None:
    f = tmp_path / "sk"
    f.write_text(SECRET + "\n")
    token = tmp_path / "token"
    token.write_text("tok\r\n")
    m = _mount(
        access_key_id=SecretRef(env="MY_AK"),
        secret_access_key=SecretRef(file=str(f)),
        session_token=SecretRef(file=str(token)),
    )
    assert resolve_credentials(m, {"MY_AK": "AKIA123"}) == {
        "access_key_id": "AKIA123",
        "secret_access_key": SECRET,
        "session_token": "tok",
    }
    assert resolve_credentials(_mount()) == {}


def test_resolve_credentials_uses_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUIDFS_TEST_PW", SECRET)
    assert resolve_credentials(_mount(password=SecretRef(env="FLUIDFS_TEST_PW"))) == {"password": SECRET}


def test_resolve_credentials_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff" + SECRET.encode())
    cases = [
        (
            _mount(access_key_id=SecretRef(env="NOPE")),
            {},
            "credentials.accessKeyId",
            "environment variable 'NOPE' is not set",
        ),
        (
            _mount(bearer_token=SecretRef(env="EMPTY")),
            {"EMPTY": ""},
            "credentials.bearerToken",
            "environment variable 'EMPTY' is empty",
        ),
        (
            _mount(secret_access_key=SecretRef(file=str(tmp_path / "gone"))),
            {},
            "credentials.secretAccessKey",
            f"cannot read file '{tmp_path / 'gone'}': No such file or directory",
        ),
        (_mount(password=SecretRef(file=str(empty))), {}, "credentials.password", f"file '{empty}' is empty"),
        (
            _mount(password=SecretRef(file=str(binary))),
            {},
            "credentials.password",
            f"file '{binary}' is not UTF-8 text",
        ),
        (
            _mount(username=SecretRef(secret_name="s", secret_key="k")),
            {},
            "credentials.username",
            "Kubernetes secret 's' key 'k' must be resolved by the CSI plugin",
        ),
        (_mount(username=SecretRef()), {}, "credentials.username", "empty credential reference"),
    ]
    for mount, environ, field, problem in cases:
        with pytest.raises(SpecError) as info:
            resolve_credentials(mount, environ | {"OTHER": SECRET})
        assert (info.value.document, info.value.field, info.value.problem) == ("mount 'm'", field, problem)
        assert SECRET not in str(info.value)
        # no chained exception whose text could quote the value
        assert info.value.__context__ is None or info.value.__suppress_context__


def test_parse_never_reads_or_shows_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AK", SECRET)
    d = mutate(lambda d: d["spec"]["mounts"][0].update(credentials={"accessKeyId": {"env": "AK"}}))
    ds = parse(d)
    assert SECRET not in repr(ds)
    d = mutate(lambda d: d["spec"]["mounts"][0].update(credentials={"accessKeyId": SECRET}))
    err = error_of(d)
    assert err.field == "spec.mounts[0].credentials.accessKeyId"
    assert SECRET not in str(err)


# ----------------------------------------------------------------------------- errors


def _m(i: int, **kv: Any) -> Callable[[dict[str, Any]], object]:
    return lambda d: d["spec"]["mounts"][i].update(kv)


def _spec(**kv: Any) -> Callable[[dict[str, Any]], object]:
    return lambda d: d["spec"].update(kv)


def _drop(*keys: str) -> Callable[[dict[str, Any]], object]:
    def fn(d: dict[str, Any]) -> None:
        target = d
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]

    return fn


def _mounts(*mounts: dict[str, Any]) -> Callable[[dict[str, Any]], object]:
    return lambda d: d["spec"].__setitem__("mounts", list(mounts))


ERRORS: list[tuple[Callable[[dict[str, Any]], object], str, str]] = [
    (
        _drop("apiVersion"),
        "apiVersion",
        "required field is missing; expected 'fluidfs.io/v1alpha1' (or Fluid's 'data.fluid.io/v1alpha1')",
    ),
    (
        lambda d: d.update(apiVersion="fluidfs.io/v2"),
        "apiVersion",
        "unsupported apiVersion 'fluidfs.io/v2'; expected 'fluidfs.io/v1alpha1' (or Fluid's 'data.fluid.io/v1alpha1')",
    ),
    (_drop("kind"), "kind", "required field is missing; expected 'Dataset'"),
    (lambda d: d.update(kind="DataLoad"), "kind", "expected 'Dataset', got 'DataLoad'"),
    (lambda d: d.update(status={}), "status", "unknown field; expected one of: apiVersion, kind, metadata, spec"),
    (_drop("metadata"), "metadata.name", "required field is missing"),
    (_drop("metadata", "name"), "metadata.name", "required field is missing"),
    (lambda d: d.update(metadata=["x"]), "metadata", "must be a mapping, got a list"),
    (lambda d: d["metadata"].update(nme="x"), "metadata.nme", "unknown field; did you mean 'name'?"),
    (
        lambda d: d["metadata"].update(name="ImageNet"),
        "metadata.name",
        "invalid name 'ImageNet': use lowercase letters, digits and '-' "
        "(at most 63, starting and ending with a letter or digit)",
    ),
    (
        lambda d: d["metadata"].update(name="a" * 64),
        "metadata.name",
        f"invalid name '{'a' * 64}': use lowercase letters, digits and '-' "
        "(at most 63, starting and ending with a letter or digit)",
    ),
    (lambda d: d["metadata"].update(name=12), "metadata.name", "must be a string, got a number"),
    (_drop("spec"), "spec", "required field is missing"),
    (_spec(mount=[]), "spec.mount", "unknown field; did you mean 'mounts'?"),
    (_spec(mounts=[]), "spec.mounts", "must list at least one mount"),
    (_spec(mounts={"a": 1}), "spec.mounts", "must be a list, got a mapping"),
    (_spec(mounts=["s3://b"]), "spec.mounts[0]", "must be a mapping, got a string"),
    (_m(1, mountPoint=None), "spec.mounts[1].mountPoint", "required field is missing"),
    (lambda d: d["spec"]["mounts"][1].pop("mountPoint"), "spec.mounts[1].mountPoint", "required field is missing"),
    (
        _m(1, mountPoint="ftp://host/x"),
        "spec.mounts[1].mountPoint",
        "unknown scheme 'ftp' (supported: s3, http, https, local, file)",
    ),
    (_m(1, mountPoint="s3:///x"), "spec.mounts[1].mountPoint", "s3 URL 's3:///x' has no bucket"),
    (_m(1, mountPoint="s3://b/a/.."), "spec.mounts[1].mountPoint", "'..' components are not allowed in the URL prefix"),
    (_m(1, mountPoint="data/val"), "spec.mounts[1].mountPoint", "relative local path 'data/val': must be absolute"),
    (
        _m(1, mountPoint="file://data/val"),
        "spec.mounts[1].mountPoint",
        "relative local path 'file://data/val': must be absolute (file:///abs/path)",
    ),
    (_m(1, mountPoint=42), "spec.mounts[1].mountPoint", "must be a string, got a number"),
    (_m(0, mountpoint="s3://x"), "spec.mounts[0].mountpoint", "unknown field; did you mean 'mountPoint'?"),
    (
        _m(1, name="train"),
        "spec.mounts[1].name",
        "duplicate mount name 'train' (also used by spec.mounts[0]); give each mount a distinct name",
    ),
    (
        _mounts({"mountPoint": "s3://b/x"}, {"mountPoint": "s3://b/y"}),
        "spec.mounts[1].name",
        "duplicate mount name 'b' (also used by spec.mounts[0]); give each mount a distinct name",
    ),
    (
        _m(1, name="a/b"),
        "spec.mounts[1].name",
        "invalid mount name 'a/b': must be a single path component (no '/', not '.' or '..')",
    ),
    (
        _m(1, name=".."),
        "spec.mounts[1].name",
        "invalid mount name '..': must be a single path component (no '/', not '.' or '..')",
    ),
    (_m(1, name=""), "spec.mounts[1].name", "must not be empty"),
    (
        lambda d: (_m(0, path="/a")(d), _m(1, path="/a/b")(d)),
        "spec.mounts[1].path",
        "'/a/b' overlaps '/a' of spec.mounts[0]",
    ),
    (
        lambda d: (_m(0, path="/a/b/c")(d), _m(1, path="/a/b")(d)),
        "spec.mounts[1].path",
        "'/a/b' overlaps '/a/b/c' of spec.mounts[0]",
    ),
    (
        lambda d: (_m(0, path="/a")(d), _m(1, path="/a/")(d)),
        "spec.mounts[1].path",
        "'/a' overlaps '/a' of spec.mounts[0]",
    ),
    (_m(1, path="/train"), "spec.mounts[1].path", "'/train' overlaps '/train' of spec.mounts[0]"),
    (_m(0, path="/"), "spec.mounts[0].path", "'/' is only allowed when the dataset has a single mount"),
    (
        lambda d: (_m(0, path="/")(d), _m(1, path="/")(d)),
        "spec.mounts[0].path",
        "'/' is only allowed when the dataset has a single mount",
    ),
    (_m(1, path="relative"), "spec.mounts[1].path", "must be absolute (start with '/'), got 'relative'"),
    (_m(1, path=""), "spec.mounts[1].path", "must not be empty"),
    (_m(1, path="/a/../b"), "spec.mounts[1].path", "'..' components are not allowed in a mount path"),
    (_m(1, path="/a/./b"), "spec.mounts[1].path", "'.' components are not allowed in a mount path"),
    (_m(1, path="/a//b"), "spec.mounts[1].path", "empty path component in '/a//b'"),
    (_m(1, path="/a\0b"), "spec.mounts[1].path", "contains a NUL character"),
    (_m(1, options="endpoint=x"), "spec.mounts[1].options", "must be a mapping, got a string"),
    (
        _m(1, options={"region": ["a"]}),
        "spec.mounts[1].options.region",
        "must be a string, number or boolean, got a list",
    ),
    (_m(1, options={"region": None}), "spec.mounts[1].options.region", "must be a string, number or boolean, got null"),
    (
        _m(1, options={"addressing_style": "dns"}),
        "spec.mounts[1].options.addressing_style",
        "must be one of path, virtual, auto, got 'dns'",
    ),
    (_m(1, options={"anonymous": "maybe"}), "spec.mounts[1].options.anonymous", "must be true or false, got 'maybe'"),
    (
        _m(1, options={"accessKeyId": "x"}),
        "spec.mounts[1].options.accessKeyId",
        "credentials belong under 'credentials' (env, file or secretKeyRef), not in options",
    ),
    (_m(1, readOnly=False), "spec.mounts[1].readOnly", "fluidfs mounts are read-only"),
    (_m(1, readOnly="yes"), "spec.mounts[1].readOnly", "must be true or false, got a string"),
    (_m(1, credentials=["x"]), "spec.mounts[1].credentials", "must be a mapping, got a list"),
    (
        _m(1, credentials={"accessKey": {"env": "A"}}),
        "spec.mounts[1].credentials.accessKey",
        "unknown field; did you mean 'accessKeyId'?",
    ),
    (
        _m(1, credentials={"accessKeyId": {}}),
        "spec.mounts[1].credentials.accessKeyId",
        "must set exactly one of env, file, secretKeyRef",
    ),
    (
        _m(1, credentials={"accessKeyId": {"env": "A", "file": "/f"}}),
        "spec.mounts[1].credentials.accessKeyId",
        "must set exactly one of env, file, secretKeyRef (got env, file)",
    ),
    (
        _m(1, credentials={"accessKeyId": {"env": "A", "value": "x"}}),
        "spec.mounts[1].credentials.accessKeyId.value",
        "unknown field; expected one of: env, file, secretKeyRef",
    ),
    (
        _m(1, credentials={"accessKeyId": {"env": "A-B"}}),
        "spec.mounts[1].credentials.accessKeyId.env",
        "invalid environment variable name 'A-B'",
    ),
    (
        _m(1, credentials={"password": {"file": "pw.txt"}}),
        "spec.mounts[1].credentials.password.file",
        "must be an absolute path, got 'pw.txt'",
    ),
    (
        _m(1, credentials={"password": {"secretKeyRef": {"name": "s"}}}),
        "spec.mounts[1].credentials.password.secretKeyRef.key",
        "required field is missing",
    ),
    (
        _m(1, credentials={"password": {"secretKeyRef": {"name": "s", "key": "k", "ns": "x"}}}),
        "spec.mounts[1].credentials.password.secretKeyRef.ns",
        "unknown field; expected one of: name, key",
    ),
    (_spec(cache=[]), "spec.cache", "must be a mapping, got a list"),
    (_spec(cache={"sise": "1Gi"}), "spec.cache.sise", "unknown field; did you mean 'size'?"),
    (
        _spec(cache={"size": "lots"}),
        "spec.cache.size",
        "invalid size 'lots': expected a number with an optional unit Ki, Mi, Gi, Ti, K, M, G, T (e.g. 512Mi, 10G)",
    ),
    (_spec(cache={"memorySize": "-1Gi"}), "spec.cache.memorySize", "invalid size '-1Gi': must not be negative"),
    (
        _spec(cache={"readahead": True}),
        "spec.cache.readahead",
        "invalid size True: expected a number with an optional unit Ki, Mi, Gi, Ti, K, M, G, T (e.g. 512Mi, 10G)",
    ),
    (_spec(cache={"blockSize": "512Ki"}), "spec.cache.blockSize", "must be between 1Mi and 64Mi, got '512Ki'"),
    (_spec(cache={"blockSize": "65Mi"}), "spec.cache.blockSize", "must be between 1Mi and 64Mi, got '65Mi'"),
    (_spec(cache={"eviction": "fifo"}), "spec.cache.eviction", "must be 'lru' or 'none', got 'fifo'"),
    (_spec(cache={"eviction": 3}), "spec.cache.eviction", "must be a string, got a number"),
    (_spec(cache={"directory": ""}), "spec.cache.directory", "must not be empty"),
    (
        _spec(metadata={"ttl": "soon"}),
        "spec.metadata.ttl",
        "invalid duration 'soon': expected seconds or a number with a unit s, m, h, d (e.g. 30s, 5m), or 'indefinite'",
    ),
    (_spec(metadata={"negativeTtl": -1}), "spec.metadata.negativeTtl", "invalid duration -1: must be >= 0"),
    (_spec(metadata={"TTL": 1}), "spec.metadata.TTL", "unknown field; did you mean 'ttl'?"),
]


@pytest.mark.parametrize(("change", "field", "problem"), ERRORS)
def test_errors(change: Callable[[dict[str, Any]], object], field: str, problem: str) -> None:
    err = error_of(mutate(change))
    assert (err.document, err.field, err.problem) == (DOC, field, problem)
    assert str(err) == f"{DOC}: {field}: {problem}"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "apiVersion: fluidfs.io/v1alpha1\nkind: [Dataset\nmetadata: {}\n",
            "invalid YAML at line 3, column 9: expected ',' or ']', but got ':'",
        ),
        ("a: 1\n  b: 2\n", "invalid YAML at line 2, column 4: mapping values are not allowed here"),
        ("kind: Dataset\nkind: Dataset\n", "invalid YAML at line 2, column 1: duplicate key 'kind'"),
        (
            "x: !!python/object:os.system {}\n",
            "invalid YAML at line 1, column 4: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object:os.system'",
        ),
        ("", "empty document; expected a Dataset"),
        ("# only a comment\n", "empty document; expected a Dataset"),
        ("- a\n- b\n", "a Dataset document must be a mapping, got a list"),
        ("just text\n", "a Dataset document must be a mapping, got a string"),
        ("kind: Dataset\n---\nkind: Dataset\n", "2 YAML documents found; put one Dataset per file"),
    ],
)
def test_document_level_errors(text: str, problem: str) -> None:
    err = error_of(text)
    assert (err.document, err.field, err.problem) == (DOC, "", problem)
    assert str(err) == f"{DOC}: {problem}"


def test_trailing_document_separator_is_fine() -> None:
    assert parse_dataset(yaml.safe_dump(BASE) + "---\n", DOC).name == "imagenet"


def test_single_mount_at_root_with_default_path() -> None:
    d = mutate(_mounts({"mountPoint": "/data", "path": "/"}))
    assert parse(d).mounts[0].path == "/"
    d = mutate(_mounts({"mountPoint": "/data"}))
    assert parse(d).mounts[0].path == "/data"


def test_env_var_for_options_is_not_interpolated() -> None:
    d = mutate(_m(0, options={"region": "$REGION"}))
    os.environ.pop("REGION", None)
    assert parse(d).mounts[0].options == {"region": "$REGION"}


def test_examples_in_docs_parse() -> None:
    import re

    doc = Path(__file__).resolve().parents[2] / "docs" / "dataset.md"
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S) if "apiVersion" in b]
    assert len(blocks) >= 3
    for block in blocks:
        assert parse_dataset(block, "docs/dataset.md").mounts


def _documented_datasets() -> list[tuple[str, str]]:
    """Every complete Dataset document (a yaml block starting with apiVersion) in the docs."""
    root = Path(__file__).resolve().parents[2]
    out = []
    for page in ("docs/dataset.md", "docs/http-source.md", "README.md"):
        text = (root / page).read_text()
        for i, block in enumerate(text.split("```yaml\n")[1:]):
            body = block.split("```", 1)[0]
            if body.lstrip().startswith("apiVersion:") and "\nkind: Dataset" in body:
                out.append((f"{page}#{i}", body))
    return out


@pytest.mark.parametrize("name,text", _documented_datasets(), ids=[n for n, _ in _documented_datasets()])
def test_documented_examples_parse(name: str, text: str) -> None:
    ds = parse_dataset(text, name)
    assert ds.mounts
    if ds.document.startswith("docs/dataset.md") and "secretKeyRef" not in text and "fluid" in text:
        # the runnable Fluid variant: nothing for the CSI plugin to resolve
        assert all(resolve_credentials(m, environ={}) == {} for m in ds.mounts)


def test_the_runnable_fluid_example_is_documented() -> None:
    fluid = [t for n, t in _documented_datasets() if "data.fluid.io" in t]
    assert any("secretKeyRef" in t for t in fluid) and any("secretKeyRef" not in t for t in fluid)
