"""Real FUSE over S3 (moto on loopback): the parts of docs/SEMANTICS.md that only object keys can
show — how keys become a tree, an object beside a same-named prefix, prefix directory times, what
is seen once the TTLs have passed, and a source that denies access.

One server and one mount for the module, with short TTLs (``TTL`` seconds); the mount reads with
the key of an IAM user that may do everything except read objects under ``private/``.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3.session
import pytest

from tests.support.fuse import Mount, needs_fuse
from tests.support.s3 import put_objects
from tests.support.s3server import S3Server

pytestmark = needs_fuse

BUCKET = "semantics"
TTL = 2.0
LONG = "n" * 300  # one key component longer than 255 bytes
KEYS: dict[str, bytes] = {
    "keys/plain.txt": b"plain",
    "keys/with space & ünïcødé.txt": b"unicode",
    "keys/back\\slash": b"backslash",
    "keys/double//slash": b"double",  # an empty component
    "keys/dot/./x": b"dot",  # a '.' component
    "keys/dotdot/../y": b"dotdot",  # a '..' component
    "keys/marker/": b"",  # a marker object: an empty directory
    "keys/marked/": b"",  # a marker beside content
    "keys/marked/f": b"f",
    f"keys/{LONG}": b"long",
    "both/a": b"the object a",
    "both/a/inner": b"inner",
    "times/d/old": b"o",
    "ttl/changed": b"old",
    "ttl/deleted": b"deleted",
    "private/secret.txt": b"secret",
    "private/listed.txt": b"listed",
}
# the mount's user: everything, except reading objects under private/ (GET and HEAD)
POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/private/*"},
    ],
}


@dataclass(frozen=True)
class S3Mount:
    mnt: Path
    client: Any  # an allow-all boto3 S3 client


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Mount]:
    with S3Server("moto", auth=True) as server:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        put_objects(client, BUCKET, KEYS)
        admin = boto3.session.Session(
            aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key, region_name=server.region
        )
        iam = admin.client("iam", endpoint_url=server.endpoint)
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="no-private", PolicyDocument=json.dumps(POLICY))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        env = {**server.env(), "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        mnt = tmp_path_factory.mktemp("s3sem") / "mnt"
        flags = ("--metadata-ttl", str(TTL), "--negative-ttl", str(TTL), "--request-timeout", "10")
        with Mount(f"s3://{BUCKET}", str(mnt), *flags, env=env):
            yield S3Mount(mnt, client)


def errno_of(fn: Callable[..., object], *args: object) -> int:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno or -1
    return 0


def eventually(check: Callable[[], bool], within: float = TTL + 15) -> None:
    """``check()`` becomes true within ``within`` seconds (the TTL plus slack for a noisy machine)."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not seen after the TTL"
        time.sleep(0.1)


def test_keys_become_a_tree(s3: S3Mount) -> None:
    d = s3.mnt / "keys"
    files = ["plain.txt", "with space & ünïcødé.txt", "back\\slash", LONG]
    dirs = ["double", "dot", "dotdot", "marker", "marked"]
    # in the order of the keys (UTF-8 bytes; a directory's key is its prefix, ending in '/')
    assert os.listdir(d) == sorted(files + dirs, key=lambda n: (n + "/" if n in dirs else n).encode())
    assert os.getxattr(d / "plain.txt", "user.fluidfs.source") == f"s3://{BUCKET}/keys/plain.txt".encode()
    etag = s3.client.head_object(Bucket=BUCKET, Key="keys/plain.txt")["ETag"].strip('"')
    assert os.getxattr(d / "plain.txt", "user.fluidfs.version").decode() == etag
    assert (d / "back\\slash").read_bytes() == b"backslash"  # a backslash is an ordinary character
    assert os.listdir(d / "double") == []  # keys/double//slash: the empty component hides the key
    assert os.listdir(d / "dot") == [] and os.listdir(d / "dotdot") == []  # '.' and '..' keys: hidden
    assert errno_of(os.stat, d / "double" / "slash") == errno.ENOENT
    assert os.listdir(d / "marker") == []  # a key ending in '/': a directory, never a file
    assert os.listdir(d / "marked") == ["f"]
    assert (d / LONG).read_bytes() == b"long"  # a component longer than 255 bytes is served
    assert os.statvfs(s3.mnt).f_namemax == 255


def test_object_beside_prefix_directory_wins_object_returns(s3: S3Mount) -> None:
    both = s3.mnt / "both"
    assert os.listdir(both) == ["a"]
    assert stat.S_ISDIR(os.stat(both / "a").st_mode)
    assert (both / "a" / "inner").read_bytes() == b"inner"
    s3.client.delete_object(Bucket=BUCKET, Key="both/a/inner")  # the prefix is gone: the object shows
    eventually(lambda: os.path.isfile(both / "a"))
    assert (both / "a").read_bytes() == b"the object a" and os.listdir(both) == ["a"]


def test_prefix_directory_times(s3: S3Mount) -> None:
    d = s3.mnt / "times" / "d"
    obj = s3.client.head_object(Bucket=BUCKET, Key="times/d/old")
    f = os.stat(d / "old")
    assert f.st_mtime == obj["LastModified"].timestamp()  # whole seconds: S3's LastModified
    assert os.stat(d).st_mtime > 1.6e9  # before a listing: the mount's start time (never 1970)
    assert os.listdir(d) == ["old"]
    # a prefix: the newest object of its last listing, once the kernel asks for its attributes again
    eventually(lambda: os.stat(d).st_mtime == f.st_mtime)
    assert os.stat(d).st_nlink == 2 and os.stat(d / "old").st_nlink == 1


def test_changes_deletions_and_new_keys_seen_after_the_ttl(s3: S3Mount) -> None:
    d = s3.mnt / "ttl"
    assert (d / "changed").read_bytes() == b"old"
    assert (d / "deleted").read_bytes() == b"deleted"
    assert errno_of(os.stat, d / "new") == errno.ENOENT
    s3.client.put_object(Bucket=BUCKET, Key="ttl/changed", Body=b"new and longer")
    s3.client.delete_object(Bucket=BUCKET, Key="ttl/deleted")
    s3.client.put_object(Bucket=BUCKET, Key="ttl/new", Body=b"new")
    eventually(lambda: os.path.exists(d / "new") and not os.path.exists(d / "deleted"))
    eventually(lambda: (d / "changed").read_bytes() == b"new and longer")
    assert sorted(os.listdir(d)) == ["changed", "new"]
    assert os.stat(d / "changed").st_size == len(b"new and longer")


def test_access_denied_by_the_source_is_eacces(s3: S3Mount) -> None:
    d = s3.mnt / "private"
    assert sorted(os.listdir(d)) == ["listed.txt", "secret.txt"]  # listing is allowed
    assert os.stat(d / "secret.txt").st_size == 6  # its size comes from the listing
    assert errno_of(lambda: (d / "secret.txt").read_bytes()) == errno.EACCES  # GET denied
    assert os.path.ismount(s3.mnt) and (s3.mnt / "keys" / "plain.txt").read_bytes() == b"plain"
