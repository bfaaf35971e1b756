"""The Kubernetes launcher: a sharded run's shards as the pods of one Indexed Job.

`loadforge run --shards N --launcher kubernetes` listens for shards as with the local launcher,
then creates, through the Kubernetes API:

- an Indexed Job (`completionMode: Indexed`, `completions = parallelism = N`) whose pods run
  `loadforge shard --coordinator HOST:PORT`; each pod's `JOB_COMPLETION_INDEX` is its shard
  index. `backoffLimit: 0` and `restartPolicy: Never`: a failed pod is not restarted, and a
  pod that dials in after the start is refused anyway, so nothing resumes mid-schedule.
  Preferred pod anti-affinity on `kubernetes.io/hostname` spreads the shards over nodes.
- a headless Service (`clusterIP: None`) selecting the Job's pods, named in the pods'
  `subdomain`, so that each shard has a stable DNS name (`<job>-<index>.<service>`).
- a Secret holding the run's shard token (shards.py), which the pods read into
  LOADFORGE_SHARD_TOKEN: never on a command line, and the coordinator refuses anything without it.

The pods pass the restricted Pod Security Standard: non-root (the image's numeric user 10001),
no privilege escalation, every capability dropped, the runtime's default seccomp profile, a
read-only root file system (an emptyDir on /tmp), no service account token mounted. The Job
cleans up after itself should the coordinator die: `activeDeadlineSeconds` is the plan's
duration plus the start timeout plus the request timeout and DEADLINE_SLACK_S, and
`ttlSecondsAfterFinished` deletes it (and its pods) TTL_AFTER_FINISHED_S after it ends.
`--node-selector`, `--toleration`, `--service-account` and `--image-pull-secret` go into the pod
spec as in k6-operator's TestRun. `rbac()` is the Role (and its binding) the coordinator needs,
printed by `--dry-run` with the rest.

All carry the labels `app.kubernetes.io/name: loadforge` and `loadforge.io/run-id`. At the end
of the run (or when it fails) all are deleted (the Job with propagation Foreground, so its
pods go first) unless `--keep`. `--dry-run` prints the manifests (a JSON `List`, which
`kubectl apply -f -` takes) and contacts no API.

The `kubernetes` Python client is an optional dependency (`pip install 'loadforge[kubernetes]'`)
imported only here. Its configuration comes from the pod's service account when loadforge runs
in a cluster, else from the kubeconfig (`$KUBECONFIG`, ~/.kube/config); tests inject a
`kubernetes.client.Configuration` pointing at a fake API server instead.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from loadforge import __version__
from loadforge.errors import InputError, RunError

DEFAULT_PORT = 7070            # the coordinator's port when --coordinator-address names none
DEFAULT_START_TIMEOUT_S = 300.0  # pods are scheduled and images pulled before they dial in
RUN_ID_LABEL = "loadforge.io/run-id"
NAME_LABEL = "app.kubernetes.io/name"
TOKEN_KEY = "token"            # the Secret's key holding the shard token
TTL_AFTER_FINISHED_S = 600     # the Job (and its pods) go this long after it ends
DEADLINE_SLACK_S = 60          # beyond duration + start timeout + request timeout
IMAGE_UID = 10001              # the Dockerfile's user
COORDINATOR_ROLE = "loadforge-coordinator"
LOOPBACK_ENV = "LOADFORGE_TEST_KUBE_LOOPBACK"   # test-only: pods that share this loopback
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|E|Ei|P|Pi)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass
class KubeOptions:
    namespace: str = "default"
    image: str = f"loadforge:{__version__}"
    cpu: str = "1"
    memory: str = "512Mi"
    keep: bool = False
    coordinator_host: str = ""
    coordinator_port: int = DEFAULT_PORT
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    # A kubernetes.client.Configuration; None: in-cluster, else the kubeconfig.
    configuration: Any = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)
    service_account: str = ""
    image_pull_secrets: list[str] = field(default_factory=list)
    # The plan's duration plus its request timeout: with the start timeout, the Job's deadline.
    run_s: float = 0.0


def check_quantity(value: str, flag: str) -> str:
    if not _QUANTITY.match(value) or float(re.sub(r"[^0-9.]", "", value)) <= 0:
        raise InputError(f"{flag} {value}: expected a Kubernetes quantity, e.g. 1, 500m, 512Mi")
    return value


def check_namespace(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise InputError(f"--namespace {value}: expected a DNS label (lowercase letters, digits "
                         "and '-', at most 63 characters)")
    return value


_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def parse_node_selector(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    """--node-selector KEY=VALUE (repeatable): the pods' nodeSelector."""
    out: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(val):
            raise InputError(f"--node-selector {value}: expected KEY=VALUE with a label key and "
                             "value, e.g. kubernetes.io/arch=amd64")
        out[key] = val
    return out


def parse_toleration(value: str) -> dict[str, str]:
    """--toleration KEY[=VALUE][:EFFECT], as kubectl taint writes a taint; no value: the
    operator Exists; no effect: every effect."""
    rest, _, effect = value.partition(":") if ":" in value else (value, "", "")
    key, sep, val = rest.partition("=")
    if (not _LABEL_KEY.match(key) or (sep and not _LABEL_VALUE.match(val))
            or (effect and effect not in _EFFECTS)):
        raise InputError(f"--toleration {value}: expected KEY[=VALUE][:EFFECT] with EFFECT one "
                         f"of {', '.join(_EFFECTS)}, e.g. dedicated=loadtest:NoSchedule")
    out = {"key": key, "operator": "Equal" if sep else "Exists"}
    if sep:
        out["value"] = val
    if effect:
        out["effect"] = effect
    return out


def check_name(value: str, flag: str) -> str:
    """A DNS subdomain name (service accounts, Secrets)."""
    if (len(value) > 253 or
            not all(_DNS_LABEL.match(part) for part in value.split("."))):
        raise InputError(f"{flag} {value}: expected a Kubernetes object name (lowercase "
                         "letters, digits, '-' and '.')")
    return value


def loopback_trouble(host: str, given: bool) -> str:
    """Why pods cannot dial `host` (it is, or its name resolves to, a loopback address: the
    pods' own), with the fix; "" when they may. A name that does not resolve here may resolve
    in the cluster: not refused."""
    if os.environ.get(LOOPBACK_ENV) == "1":
        return ""
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return ""
    loop = next((str(i[4][0]) for i in infos
                 if ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback), None)
    if loop is None:
        return ""
    what = (f"--coordinator-address {host}" if given else
            f"this host's name ({socket.gethostname()})")
    resolved = "" if loop == host and given else f" resolves to {loop}, which"
    return (f"{what}{resolved} is a loopback address: the pods would dial their own loopback, "
            "not this machine; give --coordinator-address with an address of this machine "
            "the pods can reach (e.g. its node-network IP: --coordinator-address 10.0.0.5:7070)")


def parse_coordinator_address(value: str | None) -> tuple[str, int]:
    """--coordinator-address HOST[:PORT]: what the pods dial. Default: this host's name,
    resolved, on port DEFAULT_PORT."""
    if not value:
        try:
            return socket.gethostbyname(socket.gethostname()), DEFAULT_PORT
        except OSError as exc:
            raise InputError(f"--coordinator-address: this host's name does not resolve "
                             f"({exc}); give the address the pods can reach") from None
    host, port = value, DEFAULT_PORT
    if value.startswith("["):                     # [::1]:7070 or [::1]
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise InputError(f"--coordinator-address {value}: expected HOST[:PORT]")
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, _, digits = value.partition(":")
        if not digits.isdigit():
            raise InputError(f"--coordinator-address {value}: expected HOST[:PORT]")
        port = int(digits)
    if not host or not 0 < port < 65536:
        raise InputError(f"--coordinator-address {value}: expected HOST[:PORT] with a port "
                         "from 1 to 65535")
    return host, port


def bind_address(host: str) -> str:
    """Where the coordinator listens: the address itself when it is a loopback one (a test, a
    port-forward), else every interface (the address pods dial may be a NAT's or a name)."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "0.0.0.0"
    if ip.is_loopback:
        return host
    return "::" if ip.version == 6 else "0.0.0.0"


def default_workers(cpu: str) -> int:
    """Workers per shard when --workers is not given: one per whole CPU of the pod's request."""
    if cpu.endswith("m"):
        cores = float(cpu[:-1]) / 1000
    else:
        cores = float(cpu)
    return max(1, int(cores))


def resource_names(run_id: str) -> str:
    """The Job's and the Service's name: a DNS label short enough for `<name>-<index>` to be a
    pod hostname, unique per run (the run id's time stamp and random suffix)."""
    parts = run_id.split("-")
    stamp, token = parts[0].lower(), parts[-1].lower()
    name = re.sub(r"[^a-z0-9-]", "-", f"loadforge-{stamp}-{token}")[:50].strip("-")
    return name


def run_label(run_id: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", run_id)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value) or "run"


def deadline_s(opts: KubeOptions) -> int:
    """The Job's activeDeadlineSeconds: the pods start, run the plan and drain, then stop."""
    return math.ceil(opts.run_s + opts.start_timeout_s + DEADLINE_SLACK_S)


def restricted_security() -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's and the container's securityContext under the restricted Pod Security
    Standard."""
    pod = {"runAsNonRoot": True, "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_UID,
           "seccompProfile": {"type": "RuntimeDefault"}}
    container = {"allowPrivilegeEscalation": False, "privileged": False,
                 "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                 "capabilities": {"drop": ["ALL"]},
                 "seccompProfile": {"type": "RuntimeDefault"}}
    return pod, container


def manifests(run_id: str, shards: int, opts: KubeOptions, token: str
              ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The Job, the headless Service and the token's Secret of one sharded run, as the API
    takes them."""
    name = resource_names(run_id)
    labels = {NAME_LABEL: "loadforge", RUN_ID_LABEL: run_label(run_id)}
    selector = dict(labels)
    coordinator = f"{opts.coordinator_host}:{opts.coordinator_port}"
    if ":" in opts.coordinator_host:
        coordinator = f"[{opts.coordinator_host}]:{opts.coordinator_port}"
    resources = {"cpu": opts.cpu, "memory": opts.memory}
    pod_security, container_security = restricted_security()
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": name,
        # The shards call no API: no token of the service account in the pod.
        "automountServiceAccountToken": False,
        "securityContext": pod_security,
        "affinity": {"podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100,
                "podAffinityTerm": {
                    "labelSelector": {"matchLabels": dict(selector)},
                    "topologyKey": "kubernetes.io/hostname"}}]}},
        "containers": [{
            "name": "shard",
            "image": opts.image,
            # The index comes from JOB_COMPLETION_INDEX, set by the Job controller; the
            # token from the Secret, never on the command line.
            "command": ["loadforge", "shard", "--coordinator", coordinator],
            "env": [{"name": "LOADFORGE_SHARD_TOKEN", "valueFrom": {"secretKeyRef": {
                "name": name, "key": TOKEN_KEY}}}],
            "resources": {"requests": dict(resources), "limits": dict(resources)},
            "securityContext": container_security,
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if opts.node_selector:
        pod_spec["nodeSelector"] = dict(opts.node_selector)
    if opts.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in opts.tolerations]
    if opts.service_account:
        pod_spec["serviceAccountName"] = opts.service_account
    if opts.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in opts.image_pull_secrets]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": opts.namespace, "labels": dict(labels)},
        "spec": {
            "completionMode": "Indexed",
            "completions": shards,
            "parallelism": shards,
            "backoffLimit": 0,
            # Should the coordinator die: the pods stop by this deadline, the Job goes after.
            "activeDeadlineSeconds": deadline_s(opts),
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": opts.namespace, "labels": dict(labels)},
        "spec": {"clusterIP": "None", "selector": dict(selector)},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": opts.namespace, "labels": dict(labels)},
        "type": "Opaque",
        "stringData": {TOKEN_KEY: token},
    }
    return job, service, secret


def rbac(namespace: str) -> list[dict[str, Any]]:
    """What the coordinator needs in the namespace: a ServiceAccount (to run it in a pod; bind
    your own user or group instead from outside), a Role and the RoleBinding between them."""
    meta = {"name": COORDINATOR_ROLE, "namespace": namespace,
            "labels": {NAME_LABEL: "loadforge"}}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": dict(meta),
         "rules": [
             {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "delete"]},
             {"apiGroups": [""], "resources": ["services", "secrets"],
              "verbs": ["create", "delete"]},
             {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": dict(meta),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": COORDINATOR_ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": COORDINATOR_ROLE,
                       "namespace": namespace}]},
    ]


IN_CLUSTER_PROFILE_DIR = "/etc/loadforge"
IN_CLUSTER_RESULTS = "/results"
POD_IP = "$(POD_IP)"           # the kubelet expands it from the env var of that name


def coordinator_manifests(run_id: str, shards: int, opts: KubeOptions, profile_name: str,
                          profile_text: str, args: list[str],
                          results_claim: str | None) -> list[dict[str, Any]]:
    """--coordinator-in-cluster: the coordinator itself as the pod of a Job, from the same
    image: its profile in a ConfigMap, its results in /results (a PersistentVolumeClaim, else
    an emptyDir), the address the shards dial its own pod IP, its API access the
    loadforge-coordinator ServiceAccount (rbac()). `args` are the run's other flags."""
    name = f"{resource_names(run_id)}-coordinator"
    labels = {NAME_LABEL: "loadforge", RUN_ID_LABEL: run_label(run_id),
              "app.kubernetes.io/component": "coordinator"}
    pod_security, container_security = restricted_security()
    pod_security["fsGroup"] = IMAGE_UID          # the results volume is writable by the user
    command = ["loadforge", "run", f"{IN_CLUSTER_PROFILE_DIR}/{profile_name}", *args,
               "--shards", str(shards), "--launcher", "kubernetes",
               "--coordinator-address", POD_IP, "--out", IN_CLUSTER_RESULTS]
    results: dict[str, Any] = ({"persistentVolumeClaim": {"claimName": results_claim}}
                               if results_claim else {"emptyDir": {}})
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": opts.namespace, "labels": dict(labels)},
        "data": {profile_name: profile_text},
    }
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": opts.namespace, "labels": dict(labels)},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline_s(opts) + DEADLINE_SLACK_S,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            "template": {"metadata": {"labels": dict(labels)}, "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": COORDINATOR_ROLE,
                "securityContext": pod_security,
                **({"nodeSelector": dict(opts.node_selector)} if opts.node_selector else {}),
                **({"tolerations": [dict(t) for t in opts.tolerations]}
                   if opts.tolerations else {}),
                **({"imagePullSecrets": [{"name": n} for n in opts.image_pull_secrets]}
                   if opts.image_pull_secrets else {}),
                "containers": [{
                    "name": "coordinator",
                    "image": opts.image,
                    "command": command,
                    "env": [{"name": "POD_IP", "valueFrom": {
                        "fieldRef": {"fieldPath": "status.podIP"}}}],
                    "ports": [{"name": "shards", "containerPort": opts.coordinator_port}],
                    "resources": {"requests": {"cpu": "1", "memory": "512Mi"},
                                  "limits": {"cpu": "1", "memory": "512Mi"}},
                    "securityContext": container_security,
                    "volumeMounts": [
                        {"name": "profile", "mountPath": IN_CLUSTER_PROFILE_DIR,
                         "readOnly": True},
                        {"name": "results", "mountPath": IN_CLUSTER_RESULTS},
                        {"name": "tmp", "mountPath": "/tmp"}],
                }],
                "volumes": [{"name": "profile", "configMap": {"name": name}},
                            {"name": "results", **results},
                            {"name": "tmp", "emptyDir": {}}],
            }},
        },
    }
    return [config_map, job]


def in_cluster_text(run_id: str, shards: int, opts: KubeOptions, profile_name: str,
                    profile_text: str, args: list[str], results_claim: str | None) -> str:
    """--coordinator-in-cluster: what `kubectl apply -f -` takes to run the whole test in the
    cluster: the coordinator's RBAC, its profile and its Job."""
    items = [*rbac(opts.namespace), *coordinator_manifests(
        run_id, shards, opts, profile_name, profile_text, args, results_claim)]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2)


def dry_run_text(run_id: str, shards: int, opts: KubeOptions) -> str:
    """What a run would create (with a token of its own, which no coordinator holds), then the
    coordinator's RBAC: a List `kubectl apply -f -` takes."""
    from loadforge.run.shards import new_token

    job, service, secret = manifests(run_id, shards, opts, new_token())
    return json.dumps({"apiVersion": "v1", "kind": "List",
                       "items": [secret, service, job, *rbac(opts.namespace)]}, indent=2)


# -- the API -----------------------------------------------------------------------------------

def require_client() -> Any:
    try:
        import kubernetes
    except ImportError:
        raise InputError("--launcher kubernetes needs the kubernetes Python client: "
                         "pip install 'loadforge[kubernetes]'") from None
    return kubernetes


def load_configuration() -> Any:
    """The client configuration: the pod's service account in a cluster, else the kubeconfig."""
    kubernetes = require_client()
    from kubernetes.config.config_exception import ConfigException

    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
        return configuration
    except ConfigException:
        pass
    try:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    except (ConfigException, OSError, TypeError, ValueError) as exc:
        raise RunError(f"kubernetes: no cluster configuration (not in a pod, and no usable "
                       f"kubeconfig: {_one_line(str(exc))})") from None
    return configuration


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300] or "?"


def _api_error(exc: Exception, doing: str) -> RunError:
    status = getattr(exc, "status", None)
    if status is not None:
        said = getattr(exc, "reason", "") or ""
        try:
            said = json.loads(getattr(exc, "body", "") or "{}").get("message") or said
        except (ValueError, AttributeError):
            pass
        return RunError(f"kubernetes: {doing}: the API said {status} ({_one_line(str(said))})")
    return RunError(f"kubernetes: {doing}: {_one_line(str(exc))}")


CHECK_EVERY_S = 2.0
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
# Container states that do not end by themselves: the shard will never dial in.
STUCK = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
         "CreateContainerError", "CrashLoopBackOff"}


def _pod_trouble(pod: Any) -> str:
    status = pod.status
    if status is None:
        return ""
    for container in status.container_statuses or []:
        state = container.state
        if state is not None and state.waiting is not None and state.waiting.reason in STUCK:
            said = _one_line(state.waiting.message or "")
            return f"is {state.waiting.reason}" + (f": {said}" if said != "?" else "")
        if state is not None and state.terminated is not None:
            said = _one_line(state.terminated.message or state.terminated.reason or "")
            return (f"exited with code {state.terminated.exit_code}"
                    + (f": {said}" if said != "?" else ""))
    if status.phase == "Failed":
        return f"failed: {_one_line(status.message or status.reason or '')}"
    return ""


class KubeLauncher:
    """Creates the Job and the Service once the coordinator listens; deletes them at the end."""

    def __init__(self, opts: KubeOptions, run_id: str, shards: int):
        self.opts = opts
        self.run_id, self.shards = run_id, shards
        # ShardPool sets the run's token before launch().
        self.token = ""
        self.job, self.service, self.secret = manifests(run_id, shards, opts, "")
        self.name = self.job["metadata"]["name"]
        self.run_label = self.job["metadata"]["labels"][RUN_ID_LABEL]
        self.created: list[str] = []
        self.next_check = 0.0
        kubernetes = require_client()
        configuration = opts.configuration or load_configuration()
        self.api = kubernetes.client.ApiClient(configuration)
        self.batch = kubernetes.client.BatchV1Api(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)

    def launch(self, port: int) -> None:
        """Create the Secret and the Service, then the Job (its pods dial the coordinator on
        `port`)."""
        del port     # the manifests name the port already (--coordinator-address)
        if not self.token:
            raise RunError("kubernetes: no shard token to give the pods")
        self.job, self.service, self.secret = manifests(self.run_id, self.shards, self.opts,
                                                        self.token)
        ns = self.opts.namespace
        try:
            self.core.create_namespaced_secret(ns, self.secret)
        except Exception as exc:
            raise _api_error(exc, f"creating Secret {self.name} in namespace {ns}") from None
        self.created.append("secret")
        try:
            self.core.create_namespaced_service(ns, self.service)
        except Exception as exc:
            raise _api_error(exc, f"creating Service {self.name} in namespace {ns}") from None
        self.created.append("service")
        try:
            self.batch.create_namespaced_job(ns, self.job)
        except Exception as exc:
            raise _api_error(exc, f"creating Job {self.name} in namespace {ns}") from None
        self.created.append("job")

    def check(self, missing: list[int]) -> None:
        """While the coordinator waits for them: fail the start early, naming the shard, when
        one of the pods not dialled in yet cannot start (an image that does not pull, a pod
        that failed). Looks at most every CHECK_EVERY_S seconds; an API error here is ignored
        (the start timeout still holds)."""
        now = time.monotonic()
        if not missing or "job" not in self.created or now < self.next_check:
            return
        self.next_check = now + CHECK_EVERY_S
        try:
            pods = self.core.list_namespaced_pod(
                self.opts.namespace, label_selector=f"{RUN_ID_LABEL}={self.run_label}")
        except Exception:
            return
        for pod in pods.items or []:
            annotations = pod.metadata.annotations or {}
            labels = pod.metadata.labels or {}
            index = annotations.get(INDEX_KEY, labels.get(INDEX_KEY))
            if index is None or not str(index).isdigit() or int(index) not in missing:
                continue
            why = _pod_trouble(pod)
            if why:
                raise RunError(f"shard {index} cannot start: pod {pod.metadata.name} {why}")

    def cleanup(self) -> None:
        """Delete what was created (the Job's pods first), unless --keep; a failure to delete
        is said on stderr, once, and does not change the run's outcome."""
        created, self.created = self.created, []
        if self.opts.keep:
            if created:
                print(f"kubernetes: kept Job, Service and Secret {self.name} in namespace "
                      f"{self.opts.namespace} (--keep)", file=sys.stderr)
            return
        ns = self.opts.namespace
        try:
            # Not deserialized: the API answers a Status or the deleted object, by version.
            if "job" in created:
                self.batch.delete_namespaced_job(self.name, ns, propagation_policy="Foreground",
                                                 _preload_content=False)
            if "service" in created:
                self.core.delete_namespaced_service(self.name, ns, _preload_content=False)
            if "secret" in created:
                self.core.delete_namespaced_secret(self.name, ns, _preload_content=False)
        except Exception as exc:
            print(f"warning: {_api_error(exc, f'deleting {self.name} in namespace {ns}')}; "
                  f"delete it with: kubectl delete job,service,secret -n {ns} -l "
                  f"{RUN_ID_LABEL}={self.job['metadata']['labels'][RUN_ID_LABEL]}",
                  file=sys.stderr)
        finally:
            self.api.close()
