"""Which blocks a worker gives away after a membership change (``plan_rebalance``)."""

from __future__ import annotations

from fluidfs.cache.base import BlockKey
from fluidfs.cluster.hashing import Ring
from fluidfs.cluster.membership import Member
from fluidfs.cluster.rebalance import plan_rebalance

KEYS = [BlockKey("s3://b/f", "v1", 1 << 20, i) for i in range(400)]
A, B, C = (Member(n, f"127.0.0.1:{7000 + i}", 1.0) for i, n in enumerate("abc"))


def test_a_join_gives_the_new_member_exactly_the_keys_it_now_owns() -> None:
    held_by_a = [k for k in KEYS if Ring([A, B]).owners(k, 1) == ["a"]]
    plan = plan_rebalance([A, B, C], "a", held_by_a)
    moved = {k for k, _owners in plan}
    assert moved == {k for k in held_by_a if Ring([A, B, C]).owners(k, 1) == ["c"]}
    assert all([m.id for m in owners] == ["c"] for _k, owners in plan)  # never to the other old member
    assert 0.2 * len(held_by_a) < len(moved) < 0.5 * len(held_by_a)  # about a third


def test_replicas_keep_blocks_the_member_still_co_owns_and_a_non_member_plans_nothing() -> None:
    plan = plan_rebalance([A, B, C], "a", KEYS, replicas=2)
    assert all("a" not in [m.id for m in owners] and len(owners) == 2 for _k, owners in plan)
    assert {k for k, _o in plan} == {k for k in KEYS if "a" not in Ring([A, B, C]).owners(k, 2)}
    assert plan_rebalance([B, C], "a", KEYS) == []  # leaving or not a member: the handoff's job
