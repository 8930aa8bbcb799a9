"""RBAC-lite: a user gets exactly what its Role grants, judged by kubectl and the client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from modelrepo.testing.cluster import LocalCluster
from modelrepo.testing.cluster.kube_exec import run_exec
from modelrepo.testing.cluster.manifests import busybox_pod

ROLE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: helper-user}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [pods/exec]
  verbs: [create]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  resourceNames: [models]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-helper-user}
subjects: [{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}]
roleRef: {kind: Role, name: helper-user, apiGroup: rbac.authorization.k8s.io}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    with LocalCluster() as c:
        c.create_pvc("models")
        c.create_pvc("other")
        manifest = tmp_path_factory.mktemp("rbac") / "role.yaml"
        manifest.write_text(ROLE)
        c.kubectl("apply", "-f", str(manifest), check=True)
        yield c, c.add_user("alice")


def test_kubectl_as_the_user(cluster: tuple[LocalCluster, Path]) -> None:
    c, alice = cluster
    pod = json.dumps(busybox_pod("alices-helper", claim="models"))
    assert c.kubectl("create", "-f", "-", input=pod, kubeconfig=alice).returncode == 0
    c.wait_for_pod("alices-helper")
    listed = c.kubectl("get", "pods", "-o", "name", check=True, kubeconfig=alice).stdout
    assert "pod/alices-helper" in listed
    assert c.kubectl("exec", "alices-helper", "--", "true", kubeconfig=alice).returncode == 0
    denied = c.kubectl("get", "secrets", kubeconfig=alice)
    assert denied.returncode == 1
    assert (
        'secrets is forbidden: User "alice" cannot list resource "secrets" in API group ""'
        ' in the namespace "default"'
    ) in denied.stderr
    assert c.kubectl("get", "pvc", "models", kubeconfig=alice).returncode == 0
    assert "forbidden" in c.kubectl("get", "pvc", "other", kubeconfig=alice).stderr
    assert (
        c.kubectl("auth", "can-i", "create", "pods/exec", kubeconfig=alice).stdout.strip() == "yes"
    )
    assert c.kubectl("auth", "can-i", "delete", "pvc", kubeconfig=alice).stdout.strip() == "no"
    whoami = c.kubectl("auth", "whoami", "-o", "json", check=True, kubeconfig=alice).stdout
    assert json.loads(whoami)["status"]["userInfo"]["username"] == "alice"
    assert "forbidden" in c.kubectl("get", "pods", "-n", "kube-system", kubeconfig=alice).stderr


def test_python_client_as_the_user(cluster: tuple[LocalCluster, Path]) -> None:
    c, alice = cluster
    core = client.CoreV1Api(config.new_client_from_config(str(alice)))
    c.create(busybox_pod("for-exec"))
    c.wait_for_pod("for-exec")
    assert run_exec(core, "for-exec", ["echo", "ok"]).stdout == b"ok\n"
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_persistent_volume_claim("models", "default")
    assert err.value.status == 403
    assert json.loads(err.value.body)["reason"] == "Forbidden"
