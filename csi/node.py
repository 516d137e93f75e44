"""CSI Node service: stage (shared mount + staging bind), publish (read-only bind), and back.

Rules beyond the happy path (CSI spec v1.9 error tables; the table checked is in
docs/kubernetes.md, "CSI conformance"):

- missing required fields, a malformed capability, bad volume attributes -> INVALID_ARGUMENT;
  a well-formed capability a read-only filesystem does not offer (block, writer access modes)
  -> FAILED_PRECONDITION ("Exceeds capabilities"); publish without staging_target_path (we have
  STAGE_UNSTAGE_VOLUME) -> FAILED_PRECONDITION;
- what the node's policy does not allow (``csi/policy.py``) -> PERMISSION_DENIED; a dataset that
  does not fit the node's memory -> RESOURCE_EXHAUSTED (``csi/budget.py``);
- volume unknown to this node -> NOT_FOUND (stage without any dataset in its volume_context,
  publish of a volume never staged, stats of an unknown volume);
- unstage/unpublish of a volume that is not staged/published at that path -> OK (the spec's
  MUST: kubelet would otherwise retry forever); fluidfs binds found there are removed, without
  ever touching the path itself while something else may be mounted on it;
- repeating a call that succeeded succeeds again; the same volume/path with different
  parameters -> ALREADY_EXISTS; a second target of a volume whose access mode is not
  MULTI_NODE_... -> FAILED_PRECONDITION;
- two calls on one volume at once: the second is answered ABORTED;
- a call that needs a dataset another call is mounting waits at most its budget (the caller's
  deadline, capped at ``--mount-timeout`` + 10 s), then UNAVAILABLE; a mount that does not answer
  within its time is DEADLINE_EXCEEDED; calls on other datasets never wait for it;
- more calls at once than the admission slots of ``csi/rpc.py`` -> UNAVAILABLE (kubelet retries);
  NodeGetVolumeStats has slots of its own and answers from one bounded ``statvfs``.

Ephemeral inline volumes (``csi.storage.k8s.io/ephemeral: "true"``) are staged internally at
the first publish and unstaged at their last unpublish; their secrets come with the publish.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from fluidfs.util.mounts import FLUIDFS_FSTYPE, is_mounted, mount_at

from . import metrics, nodeinfo
from ._gen import csi_pb2 as pb
from ._gen import csi_pb2_grpc as pb_grpc
from .binds import PROBE_TIMEOUT
from .mountops import path_kind, probe, umount_top, unmount_all
from .mounts import MountManager
from .rpc import OP_SLOTS, STATS_SLOTS, Admission, Budget, call
from .state import Publication, Volume
from .volumes import (
    RequestError,
    capability_digest,
    digest,
    has_dataset,
    identity_context,
    invalid,
    is_ephemeral,
    is_multi_node,
    mount_key,
    parse_context,
    require_capability,
)

log = logging.getLogger(__name__)
R = TypeVar("R")
T = TypeVar("T")
Unit = pb.VolumeUsage.Unit
STATS_TIMEOUT = 2.0  # NodeGetVolumeStats: longest statvfs wait (a hung mount is reported as such)
BUDGET_SLACK = 10.0  # a call may take --mount-timeout plus this (binds, locks, clean-up)


def _err(code: grpc.StatusCode, message: str) -> RequestError:
    return RequestError(code, message)


class NodeServicer(pb_grpc.NodeServicer):
    def __init__(self, node_id: str, manager: MountManager) -> None:
        self.node_id = node_id
        self.mm = manager
        self.state = manager.state
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self.ops = Admission("volume", OP_SLOTS)
        self.stats = Admission("volume stats", STATS_SLOTS)

    # -- plumbing -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _volume(self, volume_id: str) -> Iterator[None]:
        with self._busy_lock:
            if volume_id in self._busy:
                raise _err(grpc.StatusCode.ABORTED, f"an operation on volume {volume_id} is in progress")
            self._busy.add(volume_id)
        try:
            yield
        finally:
            with self._busy_lock:
                self._busy.discard(volume_id)

    def _call(self, context: grpc.ServicerContext, fn: Callable[[R, Budget], T], request: R) -> T:
        budget = Budget.of(context, self.mm.mount_timeout + BUDGET_SLACK)

        def run() -> T:
            with self.ops.slot():
                return fn(request, budget)

        return call(context, run)

    @staticmethod
    def _require(value: str, name: str) -> None:
        if not value:
            raise invalid(f"{name} is required")

    # -- capabilities / info --------------------------------------------------------------------
    def NodeGetCapabilities(
        self, request: pb.NodeGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> pb.NodeGetCapabilitiesResponse:
        return nodeinfo.capabilities()

    def NodeGetInfo(self, request: pb.NodeGetInfoRequest, context: grpc.ServicerContext) -> pb.NodeGetInfoResponse:
        return nodeinfo.info(self.node_id)

    # -- stage ----------------------------------------------------------------------------------
    def NodeStageVolume(
        self, request: pb.NodeStageVolumeRequest, context: grpc.ServicerContext
    ) -> pb.NodeStageVolumeResponse:
        return self._call(context, self._stage, request)

    def _stage(self, r: pb.NodeStageVolumeRequest, budget: Budget) -> pb.NodeStageVolumeResponse:
        self._require(r.volume_id, "volume_id")
        self._require(r.staging_target_path, "staging_target_path")
        require_capability(r.volume_capability, r.HasField("volume_capability"))
        ctx = identity_context(r.volume_context)
        cdigest = digest(ctx)
        capd = capability_digest(r.volume_capability)
        with self._volume(r.volume_id):
            vol = self.mm.volume(r.volume_id)
            if vol is not None:
                if (
                    vol.ephemeral
                    or vol.staging_target_path != r.staging_target_path
                    or vol.context_digest != cdigest
                    or vol.capability != capd
                ):
                    raise _err(
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"volume {r.volume_id} is already staged with different parameters",
                    )
                if not self.mm.bind_healthy(vol.staging_target_path):
                    with self.mm.dataset(vol.key, budget):
                        self.mm.check_locked(vol.key)
                return pb.NodeStageVolumeResponse()
            if not has_dataset(ctx):
                raise _err(
                    grpc.StatusCode.NOT_FOUND, f"volume {r.volume_id}: volume_context names no dataset (url or dataset)"
                )
            req = parse_context(ctx)
            self.mm.policy.check(req, r.secrets)
            if not os.path.isdir(r.staging_target_path):
                raise _err(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"staging_target_path {r.staging_target_path} is not a directory",
                )
            key = mount_key(req.dataset_digest(), r.secrets)
            vol = Volume(
                volume_id=r.volume_id,
                key=key,
                staging_target_path=r.staging_target_path,
                context_digest=cdigest,
                sub_path=req.sub_path,
                capability=capd,
            )
            with self.mm.dataset(key, budget):
                self.mm.ensure_shared(key, req, r.secrets, budget)
                with self.mm.state_lock:
                    self.state.volumes[r.volume_id] = vol
                try:
                    self.mm.stage_bind(vol)
                except BaseException:
                    with self.mm.state_lock:
                        del self.state.volumes[r.volume_id]
                    self.mm.release(key, budget)
                    raise
                with self.mm.state_lock:
                    self.state.forget_tombstone(r.volume_id, r.staging_target_path)
                    self.mm.save()
            metrics.set_volume(r.volume_id, True)
            log.info("volume %s: staged at %s (dataset %s)", r.volume_id, r.staging_target_path, key)
        return pb.NodeStageVolumeResponse()

    # -- unstage --------------------------------------------------------------------------------
    def NodeUnstageVolume(
        self, request: pb.NodeUnstageVolumeRequest, context: grpc.ServicerContext
    ) -> pb.NodeUnstageVolumeResponse:
        return self._call(context, self._unstage, request)

    def _unstage(self, r: pb.NodeUnstageVolumeRequest, budget: Budget) -> pb.NodeUnstageVolumeResponse:
        self._require(r.volume_id, "volume_id")
        self._require(r.staging_target_path, "staging_target_path")
        with self._volume(r.volume_id):
            vol = self.mm.volume(r.volume_id)
            if vol is None or vol.ephemeral or vol.staging_target_path != r.staging_target_path:
                # Not staged there (a repeat, or never): OK, as the spec requires.
                self._clear_unknown(os.path.normpath(r.staging_target_path), remove=False)
                return pb.NodeUnstageVolumeResponse()
            if vol.publications:
                raise _err(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"volume {r.volume_id} is still published at {len(vol.publications)} path(s)",
                )
            with self.mm.dataset(vol.key, budget):
                unmount_all(vol.staging_target_path)
                with self.mm.state_lock:
                    del self.state.volumes[r.volume_id]
                    self.state.add_tombstone(r.volume_id, r.staging_target_path)
                    self.mm.save()
                metrics.drop_volume(r.volume_id)
                self.mm.release(vol.key, budget)
            log.info("volume %s: unstaged from %s", r.volume_id, r.staging_target_path)
        return pb.NodeUnstageVolumeResponse()

    # -- publish --------------------------------------------------------------------------------
    def NodePublishVolume(
        self, request: pb.NodePublishVolumeRequest, context: grpc.ServicerContext
    ) -> pb.NodePublishVolumeResponse:
        return self._call(context, self._publish, request)

    def _publish(self, r: pb.NodePublishVolumeRequest, budget: Budget) -> pb.NodePublishVolumeResponse:
        self._require(r.volume_id, "volume_id")
        self._require(r.target_path, "target_path")
        ephemeral = is_ephemeral(r.volume_context)
        if ephemeral:
            self.mm.policy.check_ephemeral()
        require_capability(r.volume_capability, r.HasField("volume_capability"), ephemeral=ephemeral)
        if not ephemeral and not r.staging_target_path:
            raise _err(
                grpc.StatusCode.FAILED_PRECONDITION,
                "staging_target_path is required (the plugin has STAGE_UNSTAGE_VOLUME)",
            )
        capd = capability_digest(r.volume_capability)
        target = os.path.normpath(r.target_path)
        with self._volume(r.volume_id):
            vol = self.mm.volume(r.volume_id)
            if vol is None and ephemeral:
                self._publish_ephemeral(r, target, capd, budget)
                return pb.NodePublishVolumeResponse()
            if vol is None:
                raise _err(grpc.StatusCode.NOT_FOUND, f"volume {r.volume_id} is not staged on this node")
            if not vol.ephemeral and vol.staging_target_path != r.staging_target_path:
                raise _err(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"volume {r.volume_id} is staged at {vol.staging_target_path}, not {r.staging_target_path}",
                )
            pub = vol.publications.get(target)
            if pub is not None:
                if pub.capability != capd or pub.readonly != r.readonly:
                    raise _err(
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"volume {r.volume_id} is already published at {target} differently",
                    )
                if not self.mm.bind_healthy(target):
                    with self.mm.dataset(vol.key, budget):
                        self.mm.check_locked(vol.key)
                return pb.NodePublishVolumeResponse()
            if vol.publications and not is_multi_node(r.volume_capability):
                raise _err(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"volume {r.volume_id} is already published at {next(iter(vol.publications))} and its access"
                    f" mode {pb.VolumeCapability.AccessMode.Mode.Name(r.volume_capability.access_mode.mode)} allows"
                    " one target per node",
                )
            with self.mm.dataset(vol.key, budget):
                self._bind_target(vol, target, budget)
                self._record_publication(vol, target, r.readonly, capd)
        return pb.NodePublishVolumeResponse()

    def _bind_target(self, vol: Volume, target: str, budget: Budget) -> None:
        """Bind ``vol`` at ``target`` (the caller holds the dataset); a dead mount is remounted first."""
        with self.mm.state_lock:
            m = self.state.mounts[vol.key]
        if not self.mm.shared_healthy(m):
            self.mm.remount(m, budget)
        kind = path_kind(self.mm.source_of(vol), PROBE_TIMEOUT)
        if kind == "missing":
            raise invalid(f"subPath {vol.sub_path!r} does not exist in the dataset")
        if kind not in ("dir", "file"):
            raise _err(grpc.StatusCode.UNAVAILABLE, f"dataset {vol.key} does not answer ({kind}); retry")
        self.mm.publish_bind(vol, target, is_dir=kind == "dir")

    def _record_publication(self, vol: Volume, target: str, readonly: bool, capd: str) -> None:
        with self.mm.state_lock:
            vol.publications[target] = Publication(target_path=target, readonly=readonly, capability=capd)
            self.state.forget_tombstone(vol.volume_id, target)
            self.mm.save()
        metrics.set_volume(vol.volume_id, True)
        log.info("volume %s: published at %s", vol.volume_id, target)

    def _publish_ephemeral(self, r: pb.NodePublishVolumeRequest, target: str, capd: str, budget: Budget) -> None:
        """First publish of an inline volume: stage it internally, then bind it."""
        ctx = identity_context(r.volume_context)
        if not has_dataset(ctx):
            raise invalid("ephemeral volume: volumeAttributes must set 'url' or 'dataset'")
        req = parse_context(ctx)
        self.mm.policy.check(req, r.secrets)
        key = mount_key(req.dataset_digest(), r.secrets)
        vol = Volume(volume_id=r.volume_id, key=key, ephemeral=True, context_digest=digest(ctx), sub_path=req.sub_path)
        with self.mm.dataset(key, budget):
            self.mm.ensure_shared(key, req, r.secrets, budget)
            with self.mm.state_lock:
                self.state.volumes[r.volume_id] = vol
            log.info("volume %s: ephemeral, staged internally (dataset %s)", r.volume_id, key)
            try:
                self._bind_target(vol, target, budget)
            except BaseException:
                with self.mm.state_lock:
                    del self.state.volumes[vol.volume_id]
                self.mm.release(key, budget)
                raise
            self._record_publication(vol, target, r.readonly, capd)

    # -- unpublish ------------------------------------------------------------------------------
    def NodeUnpublishVolume(
        self, request: pb.NodeUnpublishVolumeRequest, context: grpc.ServicerContext
    ) -> pb.NodeUnpublishVolumeResponse:
        return self._call(context, self._unpublish, request)

    def _unpublish(self, r: pb.NodeUnpublishVolumeRequest, budget: Budget) -> pb.NodeUnpublishVolumeResponse:
        self._require(r.volume_id, "volume_id")
        self._require(r.target_path, "target_path")
        target = os.path.normpath(r.target_path)
        with self._volume(r.volume_id):
            vol = self.mm.volume(r.volume_id)
            if vol is None or target not in vol.publications:
                # Not published there (a repeat, or never): OK, as the spec requires.
                with self.mm.state_lock:
                    repeat = self.state.has_tombstone(r.volume_id, target)
                if repeat:
                    self._remove_target(target)  # ours: make sure nothing of it is left behind
                else:
                    self._clear_unknown(target)
                return pb.NodeUnpublishVolumeResponse()
            with self.mm.dataset(vol.key, budget):
                self._remove_target(target)
                last = False
                with self.mm.state_lock:
                    del vol.publications[target]
                    self.state.add_tombstone(r.volume_id, target)
                    if vol.ephemeral and not vol.publications:
                        del self.state.volumes[vol.volume_id]
                        last = True
                    self.mm.save()
                if last:
                    metrics.drop_volume(vol.volume_id)
                    self.mm.release(vol.key, budget)
            log.info("volume %s: unpublished from %s", r.volume_id, target)
        return pb.NodeUnpublishVolumeResponse()

    def _clear_unknown(self, path: str, remove: bool = True) -> None:
        """An unstage/unpublish of a path this node has no volume at: remove the fluidfs binds
        stacked there (left by a lost state file, say) and, for a target (``remove``), the empty
        directory (the staging directory is kubelet's), never stat-ing a path something else is
        still mounted on (it may be a dead or hung mount).  A path a known volume uses is left
        alone."""
        with self.mm.state_lock:
            for v in self.state.volumes.values():
                if path == v.staging_target_path or path in v.publications:
                    return
        top = mount_at(path)
        while top is not None and top.fstype == FLUIDFS_FSTYPE:
            umount_top(path, lazy=True)
            log.info("%s: removed a fluidfs bind no volume of this node uses", path)
            top = mount_at(path)
        if not remove or top is not None or is_mounted(path):
            return
        try:
            os.rmdir(path)
        except OSError:
            pass  # missing, not empty, or a file: not ours to remove

    @staticmethod
    def _remove_target(target: str) -> None:
        """Unmount every layer at ``target`` (repairs stack binds), then remove the path."""
        unmount_all(target)
        try:
            if os.path.isdir(target) and not os.path.islink(target):
                os.rmdir(target)
            elif os.path.lexists(target):
                os.unlink(target)
        except FileNotFoundError:
            pass

    # -- stats ----------------------------------------------------------------------------------
    def NodeGetVolumeStats(
        self, request: pb.NodeGetVolumeStatsRequest, context: grpc.ServicerContext
    ) -> pb.NodeGetVolumeStatsResponse:
        def run() -> pb.NodeGetVolumeStatsResponse:
            with self.stats.slot():
                return self._stats(request)

        return call(context, run)

    def _stats(self, r: pb.NodeGetVolumeStatsRequest) -> pb.NodeGetVolumeStatsResponse:
        """Never waits for a dataset's lock, and for ``statvfs`` at most STATS_TIMEOUT."""
        self._require(r.volume_id, "volume_id")
        self._require(r.volume_path, "volume_path")
        path = os.path.normpath(r.volume_path)
        with self.mm.state_lock:
            vol = self.state.volumes.get(r.volume_id)
            if vol is None:
                raise _err(grpc.StatusCode.NOT_FOUND, f"volume {r.volume_id} is not staged on this node")
            known = set(vol.publications) | ({vol.staging_target_path} if vol.staging_target_path else set())
        if path not in known:
            raise _err(grpc.StatusCode.NOT_FOUND, f"volume {r.volume_id} is not available at {path}")
        result = probe(path, STATS_TIMEOUT)
        if result.status == "missing":
            raise _err(grpc.StatusCode.NOT_FOUND, f"volume {r.volume_id} is not available at {path}")
        st = result.stat
        if st is None:
            why = "being repaired" if result.status == "enotconn" else "reported, not repaired"
            return pb.NodeGetVolumeStatsResponse(
                volume_condition=pb.VolumeCondition(abnormal=True, message=f"mount is {result.status} ({why})")
            )
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        return pb.NodeGetVolumeStatsResponse(
            usage=[
                pb.VolumeUsage(unit=Unit.BYTES, total=total, available=free, used=max(0, total - free)),
                pb.VolumeUsage(
                    unit=Unit.INODES, total=st.f_files, available=st.f_favail, used=max(0, st.f_files - st.f_ffree)
                ),
            ],
            volume_condition=pb.VolumeCondition(abnormal=False, message="mounted"),
        )
