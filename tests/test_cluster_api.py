"""LocalCluster's REST API judged by the real ``kubernetes`` client: objects, errors, watch,
pods' lifecycle, Jobs, Services/Endpoints, namespaces."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from modelrepo.testing.cluster import LocalCluster
from modelrepo.testing.cluster.manifests import busybox_pod, job


@pytest.fixture(scope="module")
def api_client(cluster: LocalCluster) -> client.ApiClient:
    return config.new_client_from_config(str(cluster.kubeconfig))


@pytest.fixture(scope="module")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="module")
def batch(api_client: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(api_client)


def _status(exc: ApiException) -> dict[str, Any]:
    return json.loads(exc.body)


def _wait(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def test_discovery_and_version(api_client: client.ApiClient, cluster: LocalCluster) -> None:
    version = client.VersionApi(api_client).get_code()
    assert version.git_version == f"v{cluster.version}.0"
    groups = {g.name for g in client.ApisApi(api_client).get_api_versions().groups}
    assert {"batch", "apps", "rbac.authorization.k8s.io"} <= groups
    resources = client.CoreV1Api(api_client).get_api_resources().resources
    names = {r.name: r for r in resources}
    assert names["pods"].short_names == ["po"] and "create" in names["pods/exec"].verbs
    assert names["persistentvolumeclaims"].short_names == ["pvc"]


def test_unauthenticated_requests_are_refused(cluster: LocalCluster) -> None:
    configuration = client.Configuration()
    config.load_kube_config(str(cluster.kubeconfig), client_configuration=configuration)
    configuration.api_key = {}  # the cluster's CA, but no token
    anonymous = client.CoreV1Api(client.ApiClient(configuration))
    with pytest.raises(ApiException) as err:
        anonymous.list_namespaced_pod("default")
    assert err.value.status == 401


def test_pvc_created_through_the_api_is_bound_to_a_host_folder(
    core: client.CoreV1Api, cluster: LocalCluster
) -> None:
    core.create_namespaced_persistent_volume_claim(
        "default",
        {
            "metadata": {"name": "api-claim"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    pvc = _wait(
        lambda: (
            (p := core.read_namespaced_persistent_volume_claim("api-claim", "default")).status.phase
            == "Bound"
            and p
        )
    )
    assert pvc.status.access_modes == ["ReadWriteMany"]
    assert pvc.status.capacity == {"storage": "1Gi"}
    path = cluster.pvc_path("api-claim")
    assert path is not None and path.is_dir()
    core.delete_namespaced_persistent_volume_claim("api-claim", "default")
    _wait(lambda: not path.exists())


def test_errors_are_shaped_like_the_real_server(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod("missing", "default")
    body = _status(err.value)
    assert err.value.status == 404
    assert body["reason"] == "NotFound" and body["message"] == 'pods "missing" not found'
    assert body["details"] == {"name": "missing", "kind": "pods"}

    core.create_namespaced_config_map("default", {"metadata": {"name": "dup"}})
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("default", {"metadata": {"name": "dup"}})
    assert err.value.status == 409 and _status(err.value)["reason"] == "AlreadyExists"

    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(
            "default", {"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "c"}]}}
        )
    body = _status(err.value)
    assert err.value.status == 422 and body["reason"] == "Invalid"
    fields = {c["field"] for c in body["details"]["causes"]}
    assert "metadata.name" in fields

    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(
            "default", {"metadata": {"name": "noimage"}, "spec": {"containers": [{"name": "c"}]}}
        )
    causes = _status(err.value)["details"]["causes"]
    assert causes == [
        {
            "reason": "FieldValueRequired",
            "message": "Required value",
            "field": "spec.containers[0].image",
        }
    ]

    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("nowhere", {"metadata": {"name": "x"}})
    assert err.value.status == 404
    assert _status(err.value)["message"] == 'namespaces "nowhere" not found'

    cm = core.read_namespaced_config_map("dup", "default")
    cm.metadata.resource_version = "1"
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_config_map("dup", "default", cm)
    assert err.value.status == 409 and _status(err.value)["reason"] == "Conflict"


def test_metadata_and_selectors(core: client.CoreV1Api) -> None:
    for name, labels in (
        ("sel-a", {"tier": "a", "team": "x"}),
        ("sel-b", {"tier": "b"}),
        ("sel-c", {"tier": "c", "team": "y"}),
    ):
        core.create_namespaced_config_map("default", {"metadata": {"name": name, "labels": labels}})
    created = core.read_namespaced_config_map("sel-a", "default").metadata
    assert created.uid and created.resource_version and created.creation_timestamp

    def names(**kw: str) -> list[str]:
        items = core.list_namespaced_config_map("default", **kw).items
        return sorted(i.metadata.name for i in items if i.metadata.name.startswith("sel-"))

    assert names(label_selector="tier=a") == ["sel-a"]
    assert names(label_selector="tier!=a") == ["sel-b", "sel-c"]
    assert names(label_selector="tier in (a, c)") == ["sel-a", "sel-c"]
    assert names(label_selector="tier notin (a)") == ["sel-b", "sel-c"]
    assert names(label_selector="team") == ["sel-a", "sel-c"]
    assert names(label_selector="!team") == ["sel-b"]
    assert names(field_selector="metadata.name=sel-b") == ["sel-b"]
    assert names(field_selector="metadata.name!=sel-b", label_selector="team=y") == ["sel-c"]


def test_patch_flavours(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "patched", "labels": {"a": "1"}}, "data": {"k": "v"}}
    )
    core.patch_namespaced_config_map(
        "patched", "default", {"metadata": {"labels": {"b": "2"}}, "data": {"k": None}}
    )
    cm = core.read_namespaced_config_map("patched", "default")
    assert cm.metadata.labels == {"a": "1", "b": "2"} and not cm.data
    # a list body is sent as a JSON patch (RFC 6902)
    core.patch_namespaced_config_map(
        "patched",
        "default",
        [
            {"op": "add", "path": "/data", "value": {"x": "y"}},
            {"op": "remove", "path": "/metadata/labels/a"},
        ],
    )
    cm = core.read_namespaced_config_map("patched", "default")
    assert cm.data == {"x": "y"} and cm.metadata.labels == {"b": "2"}


def test_strategic_merge_keeps_list_items_by_name(api_client: client.ApiClient) -> None:
    apps = client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {"name": "a", "image": "busybox"},
                            {"name": "b", "image": "busybox"},
                        ]
                    },
                },
            },
        },
    )
    apps.patch_namespaced_deployment(
        "web",
        "default",
        {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "busybox:1.36"}]}}}},
    )
    containers = apps.read_namespaced_deployment("web", "default").spec.template.spec.containers
    assert [(c.name, c.image) for c in containers] == [("a", "busybox"), ("b", "busybox:1.36")]


def test_watch_sees_a_pods_lifecycle(core: client.CoreV1Api) -> None:
    seen: list[tuple[str, str]] = []
    core.create_namespaced_pod(
        "default", busybox_pod("short", restart_policy="Never", command=["sh", "-c", "sleep 0.3"])
    )
    w = watch.Watch()
    for event in w.stream(
        core.list_namespaced_pod,
        "default",
        field_selector="metadata.name=short",
        timeout_seconds=20,
    ):
        seen.append((event["type"], event["object"].status.phase))
        if (
            event["object"].status.phase == "Succeeded"
            and event["type"] == "MODIFIED"
            and event["object"].metadata.deletion_timestamp is None
        ):
            core.delete_namespaced_pod("short", "default")
        if event["type"] == "DELETED":
            w.stop()
    phases = [p for _, p in seen]
    assert phases[0] == "Pending"
    assert "Running" in phases and "Succeeded" in phases
    assert seen[-1][0] == "DELETED"


def test_watch_resumes_from_a_resource_version(core: client.CoreV1Api) -> None:
    listing = core.list_namespaced_config_map("default")
    core.create_namespaced_config_map("default", {"metadata": {"name": "later"}})
    w = watch.Watch()
    events = []
    for event in w.stream(
        core.list_namespaced_config_map,
        "default",
        resource_version=listing.metadata.resource_version,
        timeout_seconds=5,
    ):
        events.append((event["type"], event["object"].metadata.name))
        if event["object"].metadata.name == "later":
            w.stop()
    assert events == [("ADDED", "later")]


def test_pod_status_fields(core: client.CoreV1Api, cluster: LocalCluster) -> None:
    core.create_namespaced_pod("default", busybox_pod("status", claim="models"))
    pod = cluster.wait_for_pod("status")
    status = core.read_namespaced_pod("status", "default").status
    assert status.pod_ip.startswith("127.") and status.host_ip == "127.0.0.1"
    conditions = {c.type: c.status for c in status.conditions}
    assert conditions["Ready"] == "True" and conditions["PodScheduled"] == "True"
    container = status.container_statuses[0]
    assert container.ready and container.state.running.started_at
    assert pod["spec"]["nodeName"] == "local-node"
    other = cluster.get("Pod", "status")
    assert other is not None
    ips = {p["status"].get("podIP") for p in cluster.list("Pod") if p["status"].get("podIP")}
    assert len(ips) == len([p for p in cluster.list("Pod") if p["status"].get("podIP")])


def test_failed_container_reports_exit_code(core: client.CoreV1Api, cluster: LocalCluster) -> None:
    core.create_namespaced_pod(
        "default",
        busybox_pod("fails", restart_policy="Never", command=["sh", "-c", "echo oops; exit 7"]),
    )
    cluster.wait_for_pod("fails", phase="Failed")
    terminated = (
        core.read_namespaced_pod("fails", "default").status.container_statuses[0].state.terminated
    )
    assert terminated.exit_code == 7 and terminated.reason == "Error"
    assert core.read_namespaced_pod_log("fails", "default") == "oops\n"


def test_restart_policy_always_restarts(core: client.CoreV1Api, cluster: LocalCluster) -> None:
    core.create_namespaced_pod("default", busybox_pod("crashy", command=["sh", "-c", "exit 1"]))

    def restarted() -> bool:
        pod = cluster.get("Pod", "crashy")
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or [{}]
        return statuses[0].get("restartCount", 0) >= 1

    _wait(restarted)
    assert cluster.get("Pod", "crashy")["status"]["phase"] == "Running"  # type: ignore[index]
    core.delete_namespaced_pod("crashy", "default", grace_period_seconds=0)


def test_missing_command_is_a_start_error(core: client.CoreV1Api, cluster: LocalCluster) -> None:
    core.create_namespaced_pod(
        "default", busybox_pod("nocmd", restart_policy="Never", command=["no-such-binary"])
    )
    cluster.wait_for_pod("nocmd", phase="Failed")
    terminated = (
        core.read_namespaced_pod("nocmd", "default").status.container_statuses[0].state.terminated
    )
    assert terminated.reason == "StartError" and terminated.exit_code == 128
    assert "no-such-binary" in terminated.message


def test_pod_active_deadline(core: client.CoreV1Api, cluster: LocalCluster) -> None:
    core.create_namespaced_pod("default", busybox_pod("deadline", active_deadline_seconds=1))
    pod = cluster.wait_for_pod("deadline", phase="Failed", timeout=10)
    assert pod["status"]["reason"] == "DeadlineExceeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137, pod


def test_pod_waits_for_its_claim(core: client.CoreV1Api, cluster: LocalCluster) -> None:
    core.create_namespaced_pod("default", busybox_pod("needs-claim", claim="late"))
    time.sleep(0.5)
    pod = cluster.get("Pod", "needs-claim")
    assert pod is not None and pod["status"]["phase"] == "Pending"
    scheduled = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert (
        scheduled["status"] == "False"
        and 'persistentvolumeclaim "late" not found' in scheduled["message"]
    )
    cluster.create_pvc("late")
    cluster.wait_for_pod("needs-claim")


def test_deleting_a_pod_kills_it(core: client.CoreV1Api, cluster: LocalCluster) -> None:
    core.create_namespaced_pod("default", busybox_pod("doomed"))
    cluster.wait_for_pod("doomed")
    deleted = core.delete_namespaced_pod("doomed", "default", grace_period_seconds=5)
    assert deleted.metadata.deletion_timestamp is not None
    _wait(lambda: cluster.get("Pod", "doomed") is None, timeout=10)


def test_job_succeeds_and_is_cleaned_up_after_ttl(
    batch: client.BatchV1Api, core: client.CoreV1Api, cluster: LocalCluster
) -> None:
    batch.create_namespaced_job(
        "default",
        job(
            "writer",
            claim="models",
            ttl_seconds_after_finished=1,
            command=["sh", "-c", "echo written > /models/from-job; echo finished"],
        ),
    )
    done = _wait(
        lambda: (j := batch.read_namespaced_job("writer", "default")).status.succeeded and j
    )
    assert [c.type for c in done.status.conditions] == ["SuccessCriteriaMet", "Complete"]
    assert done.status.completion_time is not None
    pods = core.list_namespaced_pod("default", label_selector="job-name=writer").items
    assert len(pods) == 1 and pods[0].metadata.owner_references[0].kind == "Job"
    assert core.read_namespaced_pod_log(pods[0].metadata.name, "default") == "finished\n"
    path = cluster.pvc_path("models")
    assert path is not None and (path / "from-job").read_text() == "written\n"
    _wait(
        lambda: (
            not batch.list_namespaced_job("default", field_selector="metadata.name=writer").items
        )
    )
    _wait(lambda: not core.list_namespaced_pod("default", label_selector="job-name=writer").items)


def test_job_fails_after_backoff_limit(batch: client.BatchV1Api, core: client.CoreV1Api) -> None:
    manifest = job("broken", command=["sh", "-c", "echo bad input >&2; exit 4"])
    manifest["spec"]["backoffLimit"] = 1
    batch.create_namespaced_job("default", manifest)
    failed = _wait(
        lambda: any(
            c.type == "Failed"
            for c in (batch.read_namespaced_job("broken", "default").status.conditions or [])
        )
    )
    assert failed
    status = batch.read_namespaced_job("broken", "default").status
    assert status.failed == 2
    assert {c.reason for c in status.conditions} == {"BackoffLimitExceeded"}
    pods = core.list_namespaced_pod("default", label_selector="job-name=broken").items
    assert {p.status.container_statuses[0].state.terminated.exit_code for p in pods} == {4}
    batch.delete_namespaced_job("broken", "default", propagation_policy="Background")
    _wait(lambda: not core.list_namespaced_pod("default", label_selector="job-name=broken").items)


def test_job_active_deadline_and_orphaning_delete(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    batch.create_namespaced_job(
        "default", job("slow", command=["sleep", "30"], active_deadline_seconds=1)
    )
    _wait(
        lambda: any(
            c.type == "Failed" and c.reason == "DeadlineExceeded"
            for c in (batch.read_namespaced_job("slow", "default").status.conditions or [])
        ),
        timeout=10,
    )
    batch.create_namespaced_job("default", job("kept", command=["true"]))
    _wait(lambda: batch.read_namespaced_job("kept", "default").status.succeeded)
    batch.delete_namespaced_job("kept", "default")  # no policy: batch/v1 orphans its pods
    time.sleep(0.3)
    pods = core.list_namespaced_pod("default", label_selector="job-name=kept").items
    assert len(pods) == 1 and not pods[0].metadata.owner_references


def test_service_endpoints_follow_pods(core: client.CoreV1Api, cluster: LocalCluster) -> None:
    core.create_namespaced_service(
        "default",
        {
            "metadata": {"name": "echo"},
            "spec": {"selector": {"app": "echo"}, "ports": [{"port": 8000}]},
        },
    )
    for name in ("echo-1", "echo-2"):
        core.create_namespaced_pod("default", busybox_pod(name, labels={"app": "echo"}))

    def ips() -> set[str]:
        ep = core.read_namespaced_endpoints("echo", "default")
        return {a.ip for s in ep.subsets or [] for a in s.addresses or []}

    expected = _wait(lambda: len(ips()) == 2 and ips())
    pods = {
        p.status.pod_ip
        for p in core.list_namespaced_pod("default", label_selector="app=echo").items
    }
    assert expected == pods
    assert core.read_namespaced_endpoints("echo", "default").subsets[0].ports[0].port == 8000
    core.delete_namespaced_pod("echo-1", "default", grace_period_seconds=0)
    _wait(lambda: len(ips()) == 1)
    kubernetes = core.read_namespaced_service("kubernetes", "default")
    assert kubernetes.spec.cluster_ip == "10.96.0.1"


def test_namespace_deletion_removes_its_content(
    core: client.CoreV1Api, cluster: LocalCluster
) -> None:
    core.create_namespace({"metadata": {"name": "scratch"}})
    _wait(lambda: core.list_namespaced_service_account("scratch").items)
    core.create_namespaced_pod("scratch", busybox_pod("inside"))
    cluster.wait_for_pod("inside", "scratch")
    ns = core.delete_namespace("scratch")
    assert ns["status"]["phase"] == "Terminating"  # returned as a plain object
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("scratch", {"metadata": {"name": "late"}})
    assert err.value.status == 403
    _wait(
        lambda: not [n for n in core.list_namespace().items if n.metadata.name == "scratch"],
        timeout=15,
    )


def test_secret_env_and_security_context(core: client.CoreV1Api, cluster: LocalCluster) -> None:
    core.create_namespaced_secret(
        "default", {"metadata": {"name": "creds"}, "string_data": {"key": "s3cr3t"}}
    )
    pod = busybox_pod(
        "envpod",
        restart_policy="Never",
        env={"PLAIN": "value"},
        security_context={"runAsUser": 1000, "runAsGroup": 3000},
        command=["sh", "-c", "echo $PLAIN $SECRET $(id -u) $(id -g) $HOSTNAME"],
    )
    pod["spec"]["containers"][0]["env"].append(
        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}}
    )
    core.create_namespaced_pod("default", pod)
    cluster.wait_for_pod("envpod", phase="Succeeded")
    assert core.read_namespaced_pod_log("envpod", "default") == "value s3cr3t 1000 3000 envpod\n"
