"""The local backend of ``KubeApi``: cache workers as processes on this machine.

``LocalCluster`` keeps Dataset resources and the objects the controller creates in memory
and turns a StatefulSet into processes: creating or scaling it starts ordinals ``0..n-1`` of
``command`` (a parameter; placeholders below) and stops the highest ordinals first, as the
StatefulSet controller does.  Stopping is graceful: SIGTERM, then SIGKILL after the pod
template's ``terminationGracePeriodSeconds`` (or ``stop_timeout``), in a background thread so
that a draining worker does not block the controller; the pod reports ``deleting`` meanwhile.
So the controller's reconcile/scale/status path is exactly the one it runs on Kubernetes.

Command placeholders: ``{name}`` (pod name), ``{ordinal}``, ``{namespace}``, ``{dataset}``
(the ConfigMap's ``dataset.yaml`` written to a file), ``{cache_dir}``, ``{host}``,
``{peer_port}``, ``{listen}`` (``host:peer_port``), ``{metrics_port}``, ``{metrics_addr}``,
``{peers}`` (a peers file ``ID HOST:PORT`` of the running workers, rewritten on every
change), ``{workdir}`` (the pod's directory).  Ports are free ports picked at start.

Mount daemons (the "clients" whose input the autoscaler follows) are registered with
:meth:`LocalCluster.add_client` and listed as pods of the client namespace.

The peers file lists a StatefulSet's running pods once their peer and metrics ports accept
connections (checked whenever the set or its pods are read, i.e. every controller pass), as an
EndpointSlice lists ready endpoints; a stopping pod leaves it at once.

Caveats: a pod is ready once its metrics port accepts a connection; Secrets are taken from
the ``secrets`` mapping given at construction (``(name, key) -> value``), never from a cluster.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from fluidfs.control import crd
from fluidfs.control.adapter import Obj, PodInfo, merge_patch, selector_matches
from fluidfs.control.objects import micro_time
from fluidfs.errors import KubeApiError, ScrapeError

log = logging.getLogger(__name__)

CLIENT_NAMESPACE = "local-clients"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class _Proc:
    name: str
    ordinal: int
    proc: subprocess.Popen[bytes]
    peer_port: int
    metrics_port: int
    labels: dict[str, str]
    stopping: threading.Thread | None = None
    serving: bool = False  # its peer and metrics ports accepted a connection once (the readiness probe passed)


class LocalCluster:
    """``KubeApi`` whose StatefulSets are local processes of ``command``."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        command: Sequence[str],
        host: str = "127.0.0.1",
        stop_timeout: float | None = None,
        secrets: Mapping[tuple[str, str], str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.command = list(command)
        self.host = host
        self.stop_timeout = stop_timeout
        self.secrets = dict(secrets or {})
        self.env = dict(env or {})
        self.events: list[Obj] = []
        self._datasets: dict[tuple[str, str], Obj] = {}
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._procs: dict[tuple[str, str], list[_Proc]] = {}
        self._clients: dict[str, PodInfo] = {}
        self._version = itertools.count(1)
        self._lock = threading.RLock()

    # --- Datasets ------------------------------------------------------------------------

    def apply_dataset(self, obj: Obj) -> Obj:
        """Create or update a Dataset resource (as ``kubectl apply`` would)."""
        with self._lock:
            meta = obj.setdefault("metadata", {})
            key = (meta.setdefault("namespace", "default"), meta["name"])
            old = self._datasets.get(key)
            new = copy.deepcopy(obj)
            m = new["metadata"]
            if old is None:
                m.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=micro_time()[:19] + "Z")
            else:
                om = old["metadata"]
                m.update(uid=om["uid"], creationTimestamp=om["creationTimestamp"], finalizers=om.get("finalizers", []))
                m["generation"] = om["generation"] + (old.get("spec") != new.get("spec"))
                new["status"] = old.get("status", {})
            m["resourceVersion"] = str(next(self._version))
            self._datasets[key] = new
            return copy.deepcopy(new)

    def load_dataset(self, path: str | os.PathLike[str]) -> Obj:
        with open(path, encoding="utf-8") as f:
            obj = yaml.safe_load(f)
        if not isinstance(obj, dict) or obj.get("kind") != crd.KIND:
            raise KubeApiError(f"{path}: not a {crd.API_VERSION} Dataset", 422)
        return self.apply_dataset(obj)

    def delete_dataset(self, namespace: str, name: str) -> None:
        with self._lock:
            obj = self._datasets.get((namespace, name))
            if obj is None:
                return
            if obj["metadata"].get("finalizers"):
                obj["metadata"]["deletionTimestamp"] = micro_time()[:19] + "Z"
            else:
                self._drop_dataset(namespace, name)

    def _drop_dataset(self, namespace: str, name: str) -> None:
        uid = self._datasets.pop((namespace, name))["metadata"]["uid"]
        for key, obj in list(self._objects.items()):  # the garbage collector's job
            if any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences", [])):
                self.delete(*key)

    def list_datasets(self, namespace: str | None) -> list[Obj]:
        with self._lock:
            return [copy.deepcopy(o) for (ns, _), o in sorted(self._datasets.items()) if namespace in (None, ns)]

    def patch_dataset(self, namespace: str, name: str, patch: Obj) -> Obj:
        with self._lock:
            obj = self._datasets.get((namespace, name))
            if obj is None:
                raise KubeApiError(f"Dataset {namespace}/{name} not found", 404)
            meta = dict(patch.get("metadata") or {})
            rv = meta.pop("resourceVersion", None)
            if rv and rv != obj["metadata"]["resourceVersion"]:
                raise KubeApiError(f"Dataset {namespace}/{name} changed", 409)
            obj["metadata"].update(meta)
            obj["metadata"]["resourceVersion"] = str(next(self._version))
            if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
                self._drop_dataset(namespace, name)
            return copy.deepcopy(obj)

    def patch_dataset_status(self, namespace: str, name: str, status: Obj) -> None:
        with self._lock:
            obj = self._datasets.get((namespace, name))
            if obj is None:
                raise KubeApiError(f"Dataset {namespace}/{name} not found", 404)
            obj["status"] = {**obj.get("status", {}), **copy.deepcopy(status)}

    # --- objects -------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        with self._lock:
            obj = self._objects.get((kind, namespace, name))
            if obj is None:
                return None
            out = copy.deepcopy(obj)
            if kind == "StatefulSet":
                procs = self._procs.get((namespace, name), [])
                live = [p for p in procs if p.stopping is None and p.proc.poll() is None]
                ready = sum(_listening(self.host, p.metrics_port) for p in live)
                self._write_peers(namespace, name)
                out["status"] = {"replicas": len(live), "readyReplicas": ready, "availableReplicas": ready}
            return out

    def create(self, obj: Obj) -> Obj:
        with self._lock:
            m = obj["metadata"]
            key = (obj["kind"], m["namespace"], m["name"])
            if key in self._objects:
                raise KubeApiError(f"{obj['kind']} {m['namespace']}/{m['name']} already exists", 409)
            new = copy.deepcopy(obj)
            new["metadata"].update(uid=str(uuid.uuid4()), resourceVersion=str(next(self._version)))
            self._objects[key] = new
            if obj["kind"] == "StatefulSet":
                self._resize(m["namespace"], m["name"], int(obj["spec"].get("replicas") or 0))
            return copy.deepcopy(new)

    def replace(self, obj: Obj) -> Obj:
        with self._lock:
            m = obj["metadata"]
            key = (obj["kind"], m["namespace"], m["name"])
            old = self._objects.get(key)
            if old is None:
                raise KubeApiError(f"{obj['kind']} {m['namespace']}/{m['name']} not found", 404)
            if m.get("resourceVersion") != old["metadata"]["resourceVersion"]:
                raise KubeApiError(f"{obj['kind']} {m['namespace']}/{m['name']} changed", 409)
            new = copy.deepcopy(obj)
            new["metadata"].update(uid=old["metadata"]["uid"], resourceVersion=str(next(self._version)))
            self._objects[key] = new
            if obj["kind"] == "StatefulSet":
                self._resize(m["namespace"], m["name"], int(obj["spec"].get("replicas") or 0))
            return copy.deepcopy(new)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            if kind == "StatefulSet" and (kind, namespace, name) in self._objects:
                self._resize(namespace, name, 0)  # with the set's grace period
            self._objects.pop((kind, namespace, name), None)

    def list_objects(
        self, kind: str, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> list[Obj]:
        """Objects of ``kind`` created through this backend (there are no Nodes, Jobs or volumes
        on the local actuator: the scheduling features see an empty cluster)."""
        with self._lock:
            return [
                copy.deepcopy(o)
                for (k, ns, _), o in sorted(self._objects.items())
                if k == kind
                and namespace in (None, ns)
                and selector_matches(o["metadata"].get("labels") or {}, label_selector)
            ]

    def patch(self, kind: str, namespace: str, name: str, patch: Obj, subresource: str = "") -> Obj:
        with self._lock:
            obj = self._objects.get((kind, namespace, name))
            if obj is None:
                raise KubeApiError(f"{kind} {namespace}/{name} not found", 404)
            new = merge_patch(obj, patch)
            new["metadata"]["resourceVersion"] = str(next(self._version))
            self._objects[(kind, namespace, name)] = new
            return copy.deepcopy(new)

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        with self._lock:
            obj = self._objects.get(("StatefulSet", namespace, name))
            if obj is None:
                raise KubeApiError(f"StatefulSet {namespace}/{name} not found", 404)
            obj["spec"]["replicas"] = replicas
            obj["metadata"]["resourceVersion"] = str(next(self._version))
            self._resize(namespace, name, replicas)

    # --- processes -----------------------------------------------------------------------

    def _resize(self, namespace: str, name: str, replicas: int) -> None:
        procs = self._procs.setdefault((namespace, name), [])
        procs[:] = [p for p in procs if p.stopping is None or p.stopping.is_alive()]
        live = sorted((p for p in procs if p.stopping is None), key=lambda p: p.ordinal)
        for p in live[replicas:]:
            self._stop(namespace, name, p)
        have = {p.ordinal for p in live[:replicas]}
        for ordinal in range(replicas):
            if ordinal not in have:
                procs.append(self._start(namespace, name, ordinal))
        self._write_peers(namespace, name)

    def _pod_dir(self, namespace: str, name: str, pod: str = "") -> Path:
        d = self.workdir / namespace / name / pod if pod else self.workdir / namespace / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _serving(self, p: _Proc) -> bool:
        if not p.serving and p.proc.poll() is None:
            p.serving = _listening(self.host, p.peer_port) and _listening(self.host, p.metrics_port)
        return p.serving and p.proc.poll() is None

    def _write_peers(self, namespace: str, name: str) -> None:
        """The peers file lists the running pods that serve, not the stopping ones: an EndpointSlice's ready
        endpoints (a pod joins once its readiness probe passes and leaves when it starts terminating)."""
        procs = self._procs.get((namespace, name), [])
        live = [p for p in procs if p.stopping is None and self._serving(p)]
        text = "".join(f"{p.name} {self.host}:{p.peer_port}\n" for p in sorted(live, key=lambda p: p.ordinal))
        path = self._pod_dir(namespace, name) / "peers"
        try:
            if path.read_text() == text:
                return
        except FileNotFoundError:
            pass
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def _start(self, namespace: str, name: str, ordinal: int) -> _Proc:
        sts = self._objects[("StatefulSet", namespace, name)]
        template = sts["spec"]["template"]
        pod = f"{name}-{ordinal}"
        pod_dir = self._pod_dir(namespace, name, pod)
        dataset = pod_dir / "dataset.yaml"
        cm = self._objects.get(("ConfigMap", namespace, name))
        dataset.write_text((cm or {}).get("data", {}).get("dataset.yaml", ""))
        peer_port, metrics_port = free_port(self.host), free_port(self.host)
        fields = {
            "name": pod,
            "ordinal": str(ordinal),
            "namespace": namespace,
            "dataset": str(dataset),
            "cache_dir": str(pod_dir / "cache"),
            "host": self.host,
            "peer_port": str(peer_port),
            "listen": f"{self.host}:{peer_port}",
            "metrics_port": str(metrics_port),
            "metrics_addr": f"{self.host}:{metrics_port}",
            "peers": str(self._pod_dir(namespace, name) / "peers"),
            "workdir": str(pod_dir),
        }
        args = [part.format(**fields) for part in self.command]
        env = {**os.environ, **self.env, "POD_NAME": pod, "POD_NAMESPACE": namespace, "POD_IP": self.host}
        for container in template["spec"].get("containers", [])[:1]:
            for e in container.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and (ref["name"], ref["key"]) in self.secrets:
                    env[e["name"]] = self.secrets[(ref["name"], ref["key"])]
                elif "value" in e:
                    env[e["name"]] = e["value"]
        log_file = open(pod_dir / "log", "ab")
        try:
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                cwd=pod_dir, start_new_session=True,
            )  # fmt: skip
        finally:
            log_file.close()
        log.info("local: started %s/%s (pid %d): %s", namespace, pod, proc.pid, " ".join(args))
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        return _Proc(pod, ordinal, proc, peer_port, metrics_port, labels)

    def _stop(self, namespace: str, name: str, p: _Proc) -> None:
        grace = self.stop_timeout
        if grace is None:
            sts = self._objects.get(("StatefulSet", namespace, name))
            spec = (sts or {}).get("spec", {}).get("template", {}).get("spec", {})
            grace = float(spec.get("terminationGracePeriodSeconds", 30))
        thread = threading.Thread(target=_terminate, args=(p, grace), name=f"stop-{p.name}", daemon=True)
        p.stopping = thread
        thread.start()

    def close(self) -> None:
        """Stop every process (gracefully, with each one's deadline) and wait for them."""
        with self._lock:
            for (namespace, name), procs in self._procs.items():
                for p in procs:
                    if p.stopping is None:
                        self._stop(namespace, name, p)
            threads = [p.stopping for procs in self._procs.values() for p in procs if p.stopping is not None]
        for t in threads:
            t.join()

    def processes(self, namespace: str, name: str) -> list[subprocess.Popen[bytes]]:
        """The processes of a StatefulSet, running or stopping (for tests and tools)."""
        with self._lock:
            return [p.proc for p in self._procs.get((namespace, name), [])]

    # --- pods, metrics, events -----------------------------------------------------------

    def add_client(
        self, name: str, metrics_url: str, node: str = "local", labels: Mapping[str, str] | None = None
    ) -> None:
        """Register a mount daemon's metrics endpoint as a pod of the client namespace."""
        with self._lock:
            self._clients[name] = PodInfo(name, CLIENT_NAMESPACE, node, True, False, metrics_url, dict(labels or {}))

    def remove_client(self, name: str) -> None:
        with self._lock:
            self._clients.pop(name, None)

    def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[PodInfo]:
        with self._lock:
            if namespace == CLIENT_NAMESPACE:
                return [c for c in self._clients.values() if selector.items() <= c.labels.items()]
            out = []
            for (ns, _name), procs in self._procs.items():
                if ns != namespace:
                    continue
                self._write_peers(ns, _name)  # pods that became ready join their set's peers
                for p in procs:
                    if not selector.items() <= p.labels.items():
                        continue
                    alive = p.proc.poll() is None
                    ready = alive and p.stopping is None and _listening(self.host, p.metrics_port)
                    url = f"http://{self.host}:{p.metrics_port}/metrics"
                    deleting = p.stopping is not None
                    out.append(PodInfo(p.name, ns, "local", ready, deleting, url, dict(p.labels)))
            return out

    def scrape(self, url: str, timeout: float) -> str:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return bytes(resp.read()).decode("utf-8", "replace")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ScrapeError(f"{url}: {exc}") from None

    def emit(self, event: Obj) -> None:
        with self._lock:
            self.events.append(copy.deepcopy(event))
        log.info("event %s %s: %s", event.get("type"), event.get("reason"), event.get("note"))

    def dump(self) -> str:
        """Every Dataset and object, as JSON (for debugging a local run)."""
        with self._lock:
            return json.dumps({"datasets": list(self._datasets.values()), "objects": list(self._objects.values())})


def _terminate(p: _Proc, grace: float) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL (the kubelet's way)."""
    if p.proc.poll() is None:
        try:
            os.killpg(p.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.proc.wait(timeout=grace)
            log.info("local: %s exited (%s)", p.name, p.proc.returncode)
            return
        except subprocess.TimeoutExpired:
            log.warning("local: %s did not exit within %.0fs of SIGTERM: SIGKILL", p.name, grace)
        try:
            os.killpg(p.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.proc.wait()
