"""The Kubernetes launcher (kube.py): manifests validated offline against the Kubernetes schema,
and the launcher driven against a fake Kubernetes API (a real HTTP server on 127.0.0.1 that
records what it is sent). No cluster: when the fake API accepts the Job, the test starts the
shards itself, as the Job's pods would (`JOB_COMPLETION_INDEX` set, the Job's command), and the
whole run goes against nginx on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from servers import ROOT, free_port

from loadforge.run import kube

kubernetes = pytest.importorskip("kubernetes")
kubernetes_validate = pytest.importorskip("kubernetes_validate")


class FakeKubeAPI:
    """Just the endpoints the launcher calls: POST/DELETE of batch/v1 Jobs, v1 Services and
    Secrets in a namespace, GET of its pods (`pods`, whatever the label selector). `refuse` maps (method, kind) to a status to answer with instead; `on_job` is
    called with each Job accepted (to play the Job controller)."""

    def __init__(self, refuse: dict[tuple[str, str], int] | None = None, on_job: Any = None,
                 pods: list[dict[str, Any]] | None = None):
        self.requests: list[tuple[str, str, Any]] = []
        self.pods = pods or []
        self.refuse = refuse or {}
        self.on_job = on_job
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                api.requests.append((method, self.path, body))
                kind = ("jobs" if "/jobs" in self.path else
                        "pods" if "/pods" in self.path else
                        "secrets" if "/secrets" in self.path else "services")
                status = api.refuse.get((method, kind))
                if kind == "pods" and not status:
                    status, reply = 200, {"kind": "PodList", "apiVersion": "v1",
                                          "metadata": {}, "items": api.pods}
                elif status:
                    reply: dict[str, Any] = {
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "code": status, "reason": "Forbidden",
                        "message": f'{kind} is forbidden: User "ci" cannot {method.lower()} '
                                   f'resource "{kind}" in namespace "loadtest"'}
                else:
                    status = 201 if method == "POST" else 200
                    reply = body if method == "POST" else {"kind": "Status", "apiVersion": "v1",
                                                           "status": "Success"}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if method == "POST" and kind == "jobs" and status == 201 and api.on_job:
                    api.on_job(body)

            def do_POST(self) -> None:
                self._answer("POST")

            def do_DELETE(self) -> None:
                self._answer("DELETE")

            def do_GET(self) -> None:
                self._answer("GET")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kubeconfig(self, tmp_path) -> str:
        path = tmp_path / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "ci", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "ci"}}]}))
        return str(path)

    def posted(self, kind: str) -> Any:
        return next(b for m, p, b in self.requests if m == "POST" and f"/{kind}" in p)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Pods:
    """Plays the Job controller: one local `loadforge shard` per completion index, with the
    Job's own command, JOB_COMPLETION_INDEX and the environment it names (the token, from the
    Secret posted before it), as a pod would run it."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.api: FakeKubeAPI | None = None

    def __call__(self, job: dict[str, Any]) -> None:
        container = job["spec"]["template"]["spec"]["containers"][0]
        command = container["command"]
        assert command[0] == "loadforge" and "--index" not in command
        assert self.api is not None
        secret = self.api.posted("secrets")
        env = {}
        for var in container["env"]:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            env[var["name"]] = secret["stringData"][ref["key"]]
        for index in range(job["spec"]["completions"]):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "loadforge.cli", *command[1:]], cwd=ROOT,
                env={**os.environ, **env, "JOB_COMPLETION_INDEX": str(index)},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def wait(self) -> list[int | None]:
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return [proc.returncode for proc in self.procs]


def write_profile(tmp_path, url: str) -> str:
    path = tmp_path / "kube.toml"
    path.write_text(f"""
name = "kube"
target = "{url}"
[load]
connections = 4
[[stages]]
name = "flat"
rate = 200
duration = "1s"
""")
    return str(path)


def loadforge(*args: str, env: dict[str, str] | None = None,
              timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """The CLI, its pods on this machine's loopback (the fake API's pods are processes of this
    machine): a loopback coordinator address is taken, unless `env` says otherwise."""
    return subprocess.run([sys.executable, "-m", "loadforge.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, kube.LOOPBACK_ENV: "1", **(env or {})})


def dry_run(prof: str, *args: str, shards: str = "3") -> dict[str, dict[str, Any]]:
    """What --dry-run prints, by kind."""
    out = loadforge("run", prof, "--shards", shards, "--launcher", "kubernetes", "--dry-run",
                    *args)
    assert out.returncode == 0, out.stderr
    items = json.loads(out.stdout)["items"]
    by_kind = {item["kind"]: item for item in items}
    assert len(by_kind) == len(items)
    return by_kind


def without_run_id(obj: Any, run_id: str, name: str) -> Any:
    """The manifests with this run's id and names replaced, to compare two runs' manifests."""
    text = json.dumps(obj, sort_keys=True).replace(run_id, "RUN").replace(name, "NAME")
    return json.loads(text)


# -- the manifests -----------------------------------------------------------------------------

def test_dry_run_manifests_validate_against_the_kubernetes_schema(tmp_path):
    prof = write_profile(tmp_path, "http://127.0.0.1:9")
    items = dry_run(prof, "--coordinator-address", "10.1.2.3:7100", "--namespace",
                    "loadtest", "--image", "registry.example/loadforge:0.1.0",
                    "--shard-cpu", "1500m", "--shard-memory", "1Gi")
    assert sorted(items) == ["Job", "Role", "RoleBinding", "Secret", "Service",
                             "ServiceAccount"]
    job, service = items["Job"], items["Service"]
    version = kubernetes_validate.latest_version()
    for manifest in items.values():
        kubernetes_validate.validate(manifest, version, strict=True)
    # The client's own models take them too, with every field they name.
    client = kubernetes.client.ApiClient()
    model = client._ApiClient__deserialize(job, "V1Job")
    assert model.spec.completion_mode == "Indexed"
    assert model.spec.completions == model.spec.parallelism == 3
    assert model.spec.backoff_limit == 0
    pod = model.spec.template.spec
    assert pod.restart_policy == "Never"
    assert pod.subdomain == service["metadata"]["name"] == job["metadata"]["name"]
    container = pod.containers[0]
    assert container.command == ["loadforge", "shard", "--coordinator", "10.1.2.3:7100"]
    assert container.image == "registry.example/loadforge:0.1.0"
    assert container.resources.requests == container.resources.limits == {
        "cpu": "1500m", "memory": "1Gi"}
    term = pod.affinity.pod_anti_affinity.preferred_during_scheduling_ignored_during_execution[0]
    assert term.pod_affinity_term.topology_key == "kubernetes.io/hostname"
    labels = job["metadata"]["labels"]
    assert term.pod_affinity_term.label_selector.match_labels == labels
    assert model.spec.template.metadata.labels == labels
    svc = client._ApiClient__deserialize(service, "V1Service")
    assert svc.spec.cluster_ip == "None" and svc.spec.selector == labels
    assert labels[kube.RUN_ID_LABEL].endswith(job["metadata"]["name"].rsplit("-", 1)[1])
    assert job["metadata"]["namespace"] == service["metadata"]["namespace"] == "loadtest"
    # A pod's hostname is <job>-<index>: a DNS label.
    assert len(f"{job['metadata']['name']}-{999}") <= 63


def test_run_ids_become_valid_names_and_labels():
    for run_id in ("20261126T034400-sharded-abc123",
                   "20261126T034400-" + "x" * 40 + "-abc123",
                   "20261126T034400-__--weird__-0a0b0c"):
        name, label = kube.resource_names(run_id), kube.run_label(run_id)
        job = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "labels": {kube.RUN_ID_LABEL: label}}}
        kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)
        assert kube._DNS_LABEL.match(name) and len(name) <= 55
        assert len(label) <= 63 and label[0].isalnum() and label[-1].isalnum()


@pytest.mark.parametrize("args, message", [
    (["--keep"], "--keep applies only with --launcher kubernetes"),
    (["--launcher", "kubernetes", "--shard-cpu", "lots", "--dry-run"],
     "--shard-cpu lots: expected a Kubernetes quantity"),
    (["--launcher", "kubernetes", "--namespace", "Load_Test", "--dry-run"],
     "--namespace Load_Test: expected a DNS label"),
    (["--launcher", "kubernetes", "--coordinator-address", "10.0.0.1:99999", "--dry-run"],
     "--coordinator-address 10.0.0.1:99999: expected HOST[:PORT]"),
])
def test_bad_kubernetes_flags_exit_2_with_one_line(tmp_path, args, message):
    prof = write_profile(tmp_path, "http://127.0.0.1:9")
    out = loadforge("run", prof, "--shards", "2", *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_the_coordinator_binds_loopback_only_for_a_loopback_address():
    assert kube.bind_address("127.0.0.1") == "127.0.0.1"
    assert kube.bind_address("localhost") == "127.0.0.1"
    assert kube.bind_address("::1") == "::1"
    assert kube.bind_address("10.0.0.7") == "0.0.0.0"
    assert kube.bind_address("fd00::7") == "::"
    assert kube.bind_address("coordinator.loadtest.svc") == "0.0.0.0"
    assert kube.parse_coordinator_address("[::1]:7100") == ("::1", 7100)
    assert kube.parse_coordinator_address("host.example") == ("host.example", kube.DEFAULT_PORT)


# -- against a fake API ------------------------------------------------------------------------

def test_launcher_takes_an_injected_configuration_and_cleans_up():
    api = FakeKubeAPI()
    try:
        configuration = kubernetes.client.Configuration(host=api.url)
        opts = kube.KubeOptions(namespace="loadtest", coordinator_host="127.0.0.1",
                                coordinator_port=7100, configuration=configuration)
        launcher = kube.KubeLauncher(opts, "20261126T034400-kube-abc123", 2)
        launcher.token = "t0ken"
        launcher.launch(7100)
        launcher.cleanup()
        launcher.cleanup()           # once only
        calls = [(m, p.split("?")[0]) for m, p, _ in api.requests]
        name = launcher.name
        assert calls == [("POST", "/api/v1/namespaces/loadtest/secrets"),
                         ("POST", "/api/v1/namespaces/loadtest/services"),
                         ("POST", "/apis/batch/v1/namespaces/loadtest/jobs"),
                         ("DELETE", f"/apis/batch/v1/namespaces/loadtest/jobs/{name}"),
                         ("DELETE", f"/api/v1/namespaces/loadtest/services/{name}"),
                         ("DELETE", f"/api/v1/namespaces/loadtest/secrets/{name}")]
        job_delete = api.requests[3]
        assert ("propagationPolicy=Foreground" in job_delete[1]
                or (job_delete[2] or {}).get("propagationPolicy") == "Foreground")
        assert api.posted("jobs") == launcher.job and api.posted("services") == launcher.service
        assert api.posted("secrets")["stringData"] == {"token": "t0ken"}
    finally:
        api.close()


@pytest.mark.parametrize("keep", [False, True])
def test_a_kubernetes_run_completes_with_shards_started_as_pods_would(nginx, tmp_path, keep):
    pods = Pods()
    api = FakeKubeAPI(on_job=pods)
    pods.api = api
    try:
        prof = write_profile(tmp_path, nginx.url)
        address = f"127.0.0.1:{free_port()}"
        flags = ["--shards", "2", "--launcher", "kubernetes", "--coordinator-address", address,
                 "--namespace", "loadtest", "--workers", "1"]
        before = nginx.served()
        out = loadforge("run", prof, *flags, *(["--keep"] if keep else []), "--quiet",
                        "--out", str(tmp_path / "results"), "--summary-json",
                        str(tmp_path / "s.json"), env={"KUBECONFIG": api.kubeconfig(tmp_path)})
        assert out.returncode == 0, out.stderr
        assert pods.wait() == [0, 0]
        result = json.loads((tmp_path / "s.json").read_text())
        assert result["requests"] == result["scheduled"] == 200
        assert nginx.served() - before - 1 == 200        # minus the preflight request
        assert [s["index"] for s in result["shards"]] == [0, 1]
        assert [s["scheduled"] for s in result["shards"]] == [100, 100]
        # What was posted is what --dry-run prints (but for the run id).
        job, service = api.posted("jobs"), api.posted("services")
        secret = api.posted("secrets")
        name = job["metadata"]["name"]
        printed = dry_run(prof, *flags[4:8], shards="2")
        printed_name = printed["Job"]["metadata"]["name"]
        printed_id = printed["Job"]["metadata"]["labels"][kube.RUN_ID_LABEL]
        assert job["metadata"]["labels"][kube.RUN_ID_LABEL] == result["run_id"]
        # Each run (and each dry run) has a token of its own.
        token = secret["stringData"]["token"]
        assert len(token) >= 40 and token != printed["Secret"]["stringData"]["token"]
        assert token not in json.dumps(job) and token not in out.stderr
        printed["Secret"]["stringData"]["token"] = token
        assert without_run_id([job, service, secret], result["run_id"], name) == without_run_id(
            [printed["Job"], printed["Service"], printed["Secret"]], printed_id, printed_name)
        deletes = [p.split("?")[0] for m, p, _ in api.requests if m == "DELETE"]
        if keep:
            assert deletes == [] and f"kept Job, Service and Secret {name}" in out.stderr
        else:
            assert deletes == [f"/apis/batch/v1/namespaces/loadtest/jobs/{name}",
                               f"/api/v1/namespaces/loadtest/services/{name}",
                               f"/api/v1/namespaces/loadtest/secrets/{name}"]
    finally:
        pods.wait()
        api.close()


def test_an_api_refusal_exits_3_with_one_line(nginx, tmp_path):
    api = FakeKubeAPI(refuse={("POST", "jobs"): 403})
    try:
        prof = write_profile(tmp_path, nginx.url)
        out = loadforge("run", prof, "--shards", "2", "--launcher", "kubernetes",
                        "--coordinator-address", f"127.0.0.1:{free_port()}", "--namespace",
                        "loadtest", "--quiet", "--out", str(tmp_path / "results"),
                        env={"KUBECONFIG": api.kubeconfig(tmp_path)})
        assert out.returncode == 3, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out.stderr
        assert "creating Job loadforge-" in lines[0] and "in namespace loadtest" in lines[0]
        assert "403" in lines[0] and 'cannot post resource "jobs"' in lines[0]
        # The Secret and Service created before the refusal are deleted again.
        assert [m for m, _, _ in api.requests] == ["POST", "POST", "POST", "DELETE", "DELETE"]
        assert "/services/" in api.requests[3][1] and "/secrets/" in api.requests[4][1]
    finally:
        api.close()


def test_shards_that_never_dial_in_fail_the_start_naming_them(nginx, tmp_path):
    api = FakeKubeAPI()             # accepts the Job; no pod ever starts
    try:
        prof = write_profile(tmp_path, nginx.url)
        out = loadforge("run", prof, "--shards", "2", "--launcher", "kubernetes",
                        "--coordinator-address", f"127.0.0.1:{free_port()}",
                        "--shard-start-timeout", "1s", "--quiet", "--out",
                        str(tmp_path / "results"), env={"KUBECONFIG": api.kubeconfig(tmp_path)})
        assert out.returncode == 3, out.stderr
        assert "shards [0, 1] never dialled in within 1 s" in out.stderr
        assert "--shard-start-timeout" in out.stderr and "Traceback" not in out.stderr
        assert [m for m, _, _ in api.requests if m != "GET"] == ["POST"] * 3 + ["DELETE"] * 3
    finally:
        api.close()


def test_a_pod_whose_image_does_not_pull_fails_the_start_early_naming_its_shard(tmp_path):
    pods = [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": f"loadforge-x-{i}-abcde",
                          "annotations": {"batch.kubernetes.io/job-completion-index": str(i)}},
             "status": {"phase": "Pending", "containerStatuses": [{
                 "name": "shard", "image": "registry.example/loadforge:nope", "imageID": "",
                 "ready": False, "restartCount": 0,
                 "state": {"waiting": {"reason": reason, "message": message}}}]}}
            for i, reason, message in ((0, "ContainerCreating", ""),
                                       (1, "ImagePullBackOff", 'Back-off pulling image '
                                        '"registry.example/loadforge:nope"'))]
    api = FakeKubeAPI(pods=pods)
    try:
        prof = write_profile(tmp_path, "http://127.0.0.1:9")
        out = loadforge("run", prof, "--shards", "2", "--launcher", "kubernetes",
                        "--coordinator-address", f"127.0.0.1:{free_port()}", "--no-preflight",
                        "--quiet", "--out", str(tmp_path / "results"),
                        env={"KUBECONFIG": api.kubeconfig(tmp_path)})
        assert out.returncode == 3, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out.stderr
        assert ("shard 1 cannot start: pod loadforge-x-1-abcde is ImagePullBackOff: Back-off "
                'pulling image "registry.example/loadforge:nope"') in lines[0]
        gets = [p for m, p, _ in api.requests if m == "GET"]
        assert gets and all(p.startswith("/api/v1/namespaces/default/pods?labelSelector=")
                            for p in gets)
        assert [m for m, _, _ in api.requests][-3:] == ["DELETE"] * 3
    finally:
        api.close()


def test_no_cluster_configuration_exits_3_with_one_line(tmp_path):
    prof = write_profile(tmp_path, "http://127.0.0.1:9")
    out = loadforge("run", prof, "--shards", "2", "--launcher", "kubernetes",
                    env={"KUBECONFIG": str(tmp_path / "none")})
    assert out.returncode == 3
    assert "kubernetes: no cluster configuration" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_without_the_kubernetes_package_it_says_how_to_install_it(tmp_path):
    # A `kubernetes` package that fails to import, first on the path: as if not installed.
    (tmp_path / "kubernetes").mkdir()
    (tmp_path / "kubernetes" / "__init__.py").write_text("raise ImportError('not here')\n")
    prof = write_profile(tmp_path, "http://127.0.0.1:9")
    out = loadforge("run", prof, "--shards", "2", "--launcher", "kubernetes",
                    env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 2, out.stderr
    assert "pip install 'loadforge[kubernetes]'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    # --dry-run needs no client.
    assert loadforge("run", prof, "--shards", "2", "--launcher", "kubernetes", "--dry-run",
                     env={"PYTHONPATH": str(tmp_path)}).returncode == 0


# -- what a restricted namespace accepts ------------------------------------------------------

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The restricted Pod Security Standard's rules (baseline's included), checked on a pod
    spec as the admission controller does: what it would refuse, one line per rule broken."""
    out = []
    pod_sc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(f"{flag}")
    for volume in pod.get("volumes") or []:
        kind = next(k for k in volume if k != "name")
        if kind not in ALLOWED_VOLUMES:
            out.append(f"volume {volume['name']} is {kind}")
    if any(s.get("name") not in ("kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                                 "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range",
                                 "net.ipv4.ip_unprivileged_port_start")
           for s in pod_sc.get("sysctls") or []):
        out.append("unsafe sysctls")
    if pod_sc.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    containers = [*(pod.get("containers") or []), *(pod.get("initContainers") or [])]
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation != false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities.drop lacks ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            out.append(f"{name}: runAsNonRoot != true")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp}")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{name}: procMount")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            out.append(f"{name}: hostPort")
        se_type = (sc.get("seLinuxOptions") or {}).get("type")
        if se_type not in (None, "", "container_t", "container_init_t", "container_kvm_t"):
            out.append(f"{name}: seLinux type {se_type}")
    return out


def test_the_rule_checks_catch_what_a_restricted_namespace_refuses():
    # The Job's pods as they were before (no securityContext): refused, for these reasons.
    bare = {"containers": [{"name": "shard", "image": "x"}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}], "hostNetwork": True}
    assert restricted_violations(bare) == [
        "hostNetwork", "volume h is hostPath", "shard: allowPrivilegeEscalation != false",
        "shard: capabilities.drop lacks ALL", "shard: runAsNonRoot != true",
        "shard: seccompProfile None"]


def test_the_pods_pass_the_restricted_standard_and_clean_up_after_themselves(tmp_path):
    prof = write_profile(tmp_path, "http://127.0.0.1:9")          # 1 s of load
    items = dry_run(prof, "--coordinator-address", "10.1.2.3:7100", "--namespace", "loadtest",
                    "--shard-start-timeout", "120s", "--node-selector", "pool=load",
                    "--node-selector", "kubernetes.io/arch=amd64", "--toleration",
                    "dedicated=loadtest:NoSchedule", "--toleration", "spot",
                    "--service-account", "shards", "--image-pull-secret", "regcred",
                    "--image-pull-secret", "mirror.cred")
    version = kubernetes_validate.latest_version()
    for manifest in items.values():
        kubernetes_validate.validate(manifest, version, strict=True)
    job = items["Job"]
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsUser"] == 10001      # the Dockerfile's USER
    assert pod["automountServiceAccountToken"] is False
    # The Job ends by itself should the coordinator die: the plan (1 s) and its request
    # timeout (5 s), the start timeout, the slack; then the TTL deletes it.
    assert job["spec"]["activeDeadlineSeconds"] == 1 + 5 + 120 + kube.DEADLINE_SLACK_S
    assert job["spec"]["ttlSecondsAfterFinished"] == kube.TTL_AFTER_FINISHED_S
    assert pod["nodeSelector"] == {"pool": "load", "kubernetes.io/arch": "amd64"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "loadtest", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists"}]
    assert pod["serviceAccountName"] == "shards"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror.cred"}]
    # The token: from the Secret, never on the command line.
    secret = items["Secret"]
    assert container["env"] == [{"name": "LOADFORGE_SHARD_TOKEN", "valueFrom": {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": "token"}}}]
    assert secret["stringData"]["token"] not in json.dumps(container["command"])
    # The coordinator's Role, bound to its ServiceAccount, in the run's namespace.
    role, binding = items["Role"], items["RoleBinding"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "loadtest"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": "loadtest",
                                    "name": items["ServiceAccount"]["metadata"]["name"]}]


def allowed(role: dict[str, Any], method: str, path: str) -> bool:
    """Whether the Role lets the coordinator make this API call (namespaced resources)."""
    parts = path.split("?")[0].strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    resource = parts[parts.index("namespaces") + 2]
    named = len(parts) > parts.index("namespaces") + 3
    verb = {"POST": "create", "DELETE": "delete", "GET": "get" if named else "list"}[method]
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               for r in role["rules"])


def test_the_role_allows_every_call_the_launcher_makes(nginx, tmp_path):
    pods = Pods()
    api = FakeKubeAPI(on_job=pods)
    pods.api = api
    try:
        prof = write_profile(tmp_path, nginx.url)
        out = loadforge("run", prof, "--shards", "2", "--launcher", "kubernetes",
                        "--coordinator-address", f"127.0.0.1:{free_port()}", "--workers", "1",
                        "--quiet", "--out", str(tmp_path / "results"),
                        env={"KUBECONFIG": api.kubeconfig(tmp_path)})
        assert out.returncode == 0, out.stderr
        assert pods.wait() == [0, 0]
    finally:
        pods.wait()
        api.close()
    role = dry_run(prof, "--coordinator-address", "10.1.2.3")["Role"]
    calls = {(m, p.split("?")[0]) for m, p, _ in api.requests}
    assert {m for m, _ in calls} >= {"POST", "DELETE"}
    assert [c for c in calls if not allowed(role, *c)] == []
    # and the check itself refuses what the Role does not grant
    assert not allowed(role, "DELETE", "/api/v1/namespaces/default/pods/x")


@pytest.mark.parametrize("address", ["127.0.0.1:7070", "[::1]:7070", "localhost:7070"])
def test_a_loopback_coordinator_address_is_exit_2_with_the_fix(tmp_path, address):
    prof = write_profile(tmp_path, "http://127.0.0.1:9")
    out = loadforge("run", prof, "--shards", "2", "--launcher", "kubernetes",
                    "--coordinator-address", address, "--dry-run",
                    env={kube.LOOPBACK_ENV: ""})
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr and out.stdout == ""
    assert "is a loopback address: the pods would dial their own loopback" in lines[0]
    assert "give --coordinator-address with an address of this machine" in lines[0]


def test_a_host_name_that_resolves_to_loopback_is_exit_2_too(tmp_path):
    import socket

    try:
        resolved = socket.gethostbyname(socket.gethostname())
    except OSError:
        pytest.skip("this host's name does not resolve")
    prof = write_profile(tmp_path, "http://127.0.0.1:9")
    out = loadforge("run", prof, "--shards", "2", "--launcher", "kubernetes", "--dry-run",
                    env={kube.LOOPBACK_ENV: ""})
    if not resolved.startswith("127."):
        assert out.returncode == 0, out.stderr
        return
    assert out.returncode == 2, out.stderr
    assert (f"this host's name ({socket.gethostname()}) resolves to {resolved}, which is a "
            "loopback address") in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--launcher", "kubernetes", "--toleration", "gpu:Sometimes", "--dry-run"],
     "--toleration gpu:Sometimes: expected KEY[=VALUE][:EFFECT]"),
    (["--launcher", "kubernetes", "--node-selector", "pool", "--dry-run"],
     "--node-selector pool: expected KEY=VALUE"),
    (["--launcher", "kubernetes", "--image-pull-secret", "Reg_Cred", "--dry-run"],
     "--image-pull-secret Reg_Cred: expected a Kubernetes object name"),
    (["--launcher", "kubernetes", "--service-account", "-x", "--dry-run"],
     "--service-account -x: expected a Kubernetes object name"),
    (["--node-selector", "pool=load"], "--node-selector applies only with --launcher kubernetes"),
    (["--launcher", "external"], "--launcher external needs --coordinator-address HOST:PORT"),
    (["--launcher", "external", "--coordinator-address", "127.0.0.1:27001"],
     "--launcher external: the shards need the run's token"),
    (["--shard-token-file", "t"], "--shard-token-file applies only with --launcher external"),
    (["--shard-start-timeout", "5s"], "--shard-start-timeout applies only with --launcher "
     "kubernetes or external"),
])
def test_bad_scheduling_and_launcher_flags_exit_2_with_one_line(tmp_path, args, message):
    prof = write_profile(tmp_path, "http://127.0.0.1:9")
    out = loadforge("run", prof, "--shards", "2", *args, env={"LOADFORGE_SHARD_TOKEN": ""})
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_shard_without_a_token_is_exit_2_with_the_fix(tmp_path):
    out = loadforge("shard", "--coordinator", "127.0.0.1:9", env={"LOADFORGE_SHARD_TOKEN": ""})
    assert out.returncode == 2, out.stderr
    assert "no shard token: set LOADFORGE_SHARD_TOKEN" in out.stderr
    (tmp_path / "empty").write_text("\n")
    out = loadforge("shard", "--coordinator", "127.0.0.1:9", "--token-file",
                    str(tmp_path / "empty"))
    assert out.returncode == 2 and "the file is empty" in out.stderr


# -- the coordinator in the cluster ------------------------------------------------------------

def test_the_coordinator_in_the_cluster_is_what_kubectl_apply_needs(tmp_path):
    prof = write_profile(tmp_path, "http://10.0.0.9:8080")
    out = loadforge("run", prof, "--shards", "3", "--launcher", "kubernetes",
                    "--coordinator-in-cluster", "--namespace", "loadtest", "--image",
                    "registry.example/loadforge:0.1.0", "--workers", "1", "--toleration",
                    "spot", "--no-preflight", "--results-claim", "loadtest-results",
                    env={kube.LOOPBACK_ENV: ""})
    assert out.returncode == 0, out.stderr
    items = {i["kind"]: i for i in json.loads(out.stdout)["items"]}
    assert sorted(items) == ["ConfigMap", "Job", "Role", "RoleBinding", "ServiceAccount"]
    version = kubernetes_validate.latest_version()
    for manifest in items.values():
        kubernetes_validate.validate(manifest, version, strict=True)
    job = items["Job"]
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["serviceAccountName"] == items["RoleBinding"]["subjects"][0]["name"]
    assert pod["tolerations"] == [{"key": "spot", "operator": "Exists"}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["results"]["persistentVolumeClaim"] == {"claimName": "loadtest-results"}
    assert volumes["profile"]["configMap"]["name"] == items["ConfigMap"]["metadata"]["name"]
    assert items["ConfigMap"]["data"] == {"profile.toml": open(prof).read()}
    container = pod["containers"][0]
    assert container["env"] == [{"name": "POD_IP", "valueFrom": {
        "fieldRef": {"fieldPath": "status.podIP"}}}]
    command = container["command"]
    assert command[:3] == ["loadforge", "run", "/etc/loadforge/profile.toml"]
    # The pod's command line is one the CLI takes: run here, as the kubelet would expand it,
    # with --dry-run, it prints shards that dial the pod's address with the same flags.
    local = [prof if a == "/etc/loadforge/profile.toml" else
             "10.0.0.9" if a == "$(POD_IP)" else a for a in command[1:]]
    inner = loadforge(*local, "--dry-run")
    assert inner.returncode == 0, inner.stderr
    shard_job = next(i for i in json.loads(inner.stdout)["items"] if i["kind"] == "Job")
    shard_pod = shard_job["spec"]["template"]["spec"]
    assert shard_pod["containers"][0]["command"][-1] == "10.0.0.9:7070"
    assert shard_pod["containers"][0]["image"] == "registry.example/loadforge:0.1.0"
    assert shard_job["metadata"]["namespace"] == "loadtest"
    assert shard_pod["tolerations"] == pod["tolerations"]


@pytest.mark.parametrize("args, message", [
    (["--target", "http://10.0.0.9/", "--rate", "10", "--duration", "1s"],
     "--coordinator-in-cluster needs a PROFILE"),
    (["PROFILE", "--coordinator-address", "10.0.0.1"],
     "--coordinator-in-cluster: the shards dial the coordinator's pod IP"),
])
def test_bad_in_cluster_flags_exit_2_with_one_line(tmp_path, args, message):
    prof = write_profile(tmp_path, "http://10.0.0.9:8080")
    args = [prof if a == "PROFILE" else a for a in args]
    out = loadforge("run", *args, "--shards", "2", "--launcher", "kubernetes",
                    "--coordinator-in-cluster")
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = loadforge("run", prof, "--shards", "2", "--results-claim", "r")
    assert out.returncode == 2 and "--results-claim applies only with" in out.stderr
