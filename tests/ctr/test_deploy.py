"""``e2ekit ctr deploy``: the folder it writes, every Kubernetes object valid offline against
the Kubernetes OpenAPI schemas, the KubeRay RayJob against the fields its CRD requires, the
config's deploy knobs reaching the manifests, and the refusals (a used --out, --apply without
kubectl) leaving nothing behind."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ..conftest import ROOT

TINY = str(ROOT / "configs" / "ctr" / "tiny.yaml")
K8S_VERSION = "1.33.0"  # the schemas the manifests must fit (kubernetes-validate's copy)
CORE_FILES = ("configmap.yaml", "snapshots-pvc.yaml", "redis.yaml", "server.yaml")
ALWAYS = {
    "Dockerfile",
    "config.yaml",
    "kustomization.yaml",
    "configmap.yaml",
    "snapshots-pvc.yaml",
    "raycluster.yaml",
    "rayjob.yaml",
    "server.yaml",
}


def deploy(cli: Any, out: Path, *extra: str) -> tuple[int, str, str]:
    return cli("ctr", "deploy", "-c", TINY, "--out", out, *extra)


def docs(out: Path, name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((out / name).read_text()) if d is not None]


def by_kind(out: Path, name: str) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs(out, name)}


def pod(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def server_command(out: Path) -> list[str]:
    return pod(by_kind(out, "server.yaml")["Deployment"])["containers"][0]["command"]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from e2ekit.core.cli import main

    out = tmp_path_factory.mktemp("deploy") / "k8s"
    assert main(["ctr", "deploy", "-c", TINY, "--out", str(out), "--namespace", "ctr-prod"]) == 0
    return out


def test_writes_the_files_and_the_kustomization_lists_the_applied_ones(written: Path) -> None:
    names = {p.name for p in written.iterdir()}
    assert names == ALWAYS | {"namespace.yaml", "redis.yaml"}
    kust = docs(written, "kustomization.yaml")[0]
    assert kust["kind"] == "Kustomization" and kust["namespace"] == "ctr-prod"
    assert set(kust["resources"]) == {
        "namespace.yaml",
        "configmap.yaml",
        "snapshots-pvc.yaml",
        "redis.yaml",
        "rayjob.yaml",
        "server.yaml",
    }  # raycluster.yaml is for interactive use: the RayJob brings up its own cluster
    config = yaml.safe_load((written / "config.yaml").read_text())
    assert (
        docs(written, "configmap.yaml")[0]["data"]["config.yaml"]
        == (written / "config.yaml").read_text()
    )
    assert config["model"]["type"] == "deepfm_tiny"
    dockerfile = (written / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM python:3.11-slim" in dockerfile
    assert "download.pytorch.org/whl/cpu torch==" in dockerfile
    assert "USER 10001" in dockerfile and "EXPOSE 8000" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/health" in dockerfile
    for name in names - {"Dockerfile", "config.yaml"}:
        for doc in docs(written, name):
            if doc["kind"] not in ("Namespace", "Kustomization"):
                assert doc["metadata"]["namespace"] == "ctr-prod", name


def test_core_manifests_validate_against_the_kubernetes_schemas(written: Path) -> None:
    kinds = []
    for name in ("namespace.yaml", *CORE_FILES):
        for doc in docs(written, name):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on an error
            kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(
        [
            "Namespace",
            "ConfigMap",
            "PersistentVolumeClaim",
            "Deployment",
            "Service",
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
        ]
    )
    # the pod templates inside the Ray objects are Kubernetes pods too
    for name in ("rayjob.yaml", "raycluster.yaml"):
        doc = docs(written, name)[0]
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        templates = [spec["headGroupSpec"]["template"]] + [
            g["template"] for g in spec["workerGroupSpecs"]
        ]
        for template in templates:
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
            kubernetes_validate.validate({**wrapped, "template": template}, K8S_VERSION, True)


def test_invalid_objects_are_caught_by_the_validator() -> None:
    """The validator in use is strict: an unknown field is an error, not ignored."""
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "datta": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def check_ray_cluster_spec(spec: dict[str, Any]) -> None:
    """The fields KubeRay's ray.io/v1 CRD requires of a cluster spec (raycluster_types.go)."""
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    assert head["template"]["spec"]["containers"][0]["image"]
    assert spec["workerGroupSpecs"], "no worker group"
    for group in spec["workerGroupSpecs"]:
        assert isinstance(group["groupName"], str) and group["groupName"]
        assert isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["template"]["spec"]["containers"][0]["image"]
    assert isinstance(spec["enableInTreeAutoscaling"], bool)


def test_rayjob_has_what_the_kuberay_crd_requires(written: Path) -> None:
    job = docs(written, "rayjob.yaml")[0]
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"] == (
        "e2ekit ctr train -c /config/config.yaml --out /snapshots/run -o export.snapshots=serving"
    )
    check_ray_cluster_spec(spec["rayClusterSpec"])
    assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    cluster = docs(written, "raycluster.yaml")[0]
    assert cluster["kind"] == "RayCluster" and cluster["spec"] == spec["rayClusterSpec"]
    for template in (
        spec["rayClusterSpec"]["headGroupSpec"]["template"],
        spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"],
    ):
        mounts = {m["mountPath"] for m in template["spec"]["containers"][0]["volumeMounts"]}
        assert {"/config", "/snapshots"} <= mounts
        claims = [v.get("persistentVolumeClaim") for v in template["spec"]["volumes"]]
        assert {"claimName": "e2ekit-ctr-snapshots"} in claims


def test_server_serves_the_published_versions_behind_probes_and_an_autoscaler(
    written: Path,
) -> None:
    objects = by_kind(written, "server.yaml")
    container = pod(objects["Deployment"])["containers"][0]
    assert server_command(written)[:7] == [
        "e2ekit",
        "ctr",
        "serve",
        "-c",
        "/config/config.yaml",
        "--model",
        "/snapshots/run/serving",
    ]
    assert "serve.host=0.0.0.0" in container["command"]
    assert "serve.watch_s=2" in container["command"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["requests"]["cpu"] == "1"
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == objects["Deployment"]["metadata"]["name"]
    pvc = docs(written, "snapshots-pvc.yaml")[0]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_deploy_keys_change_the_manifests(cli: Any, tmp_path: Path) -> None:
    """Each deploy key, set away from its default, shows up where it acts."""
    cases: list[tuple[str, Any, str]] = [
        ("deploy.min_workers", 2, "rayjob.yaml"),
        ("deploy.max_workers", 7, "rayjob.yaml"),
        ("deploy.worker_cpus", 3, "rayjob.yaml"),
        ("deploy.worker_memory", "3Gi", "rayjob.yaml"),
        ("deploy.server_replicas_min", 2, "server.yaml"),
        ("deploy.server_replicas_max", 9, "server.yaml"),
        ("deploy.server_cpu", "250m", "server.yaml"),
        ("deploy.server_memory", "3Gi", "server.yaml"),
        ("deploy.server_cpu_target", 55, "server.yaml"),
        ("deploy.snapshot_volume_size", "7Gi", "snapshots-pvc.yaml"),
        ("deploy.storage_class", "nfs-client", "snapshots-pvc.yaml"),
    ]
    base = tmp_path / "base"
    assert deploy(cli, base)[0] == 0
    seen = {}
    for i, (key, value, name) in enumerate(cases):
        out = tmp_path / f"case{i}"
        code, _, err = deploy(cli, out, "-o", f"{key}={json.dumps(value)}")
        assert code == 0, err
        assert docs(out, name) != docs(base, name), key
        seen[key] = docs(out, name)
    workers = seen["deploy.min_workers"][0]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert (workers["minReplicas"], workers["replicas"]) == (2, 2)
    workers = seen["deploy.max_workers"][0]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["maxReplicas"] == 7
    job = seen["deploy.worker_cpus"][0]["spec"]
    limits = job["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert limits["resources"]["limits"]["cpu"] == "3" and job["entrypointNumCpus"] == 3
    hpa = {d["kind"]: d for d in seen["deploy.server_cpu_target"]}["HorizontalPodAutoscaler"]
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 55
    hpa = {d["kind"]: d for d in seen["deploy.server_replicas_max"]}["HorizontalPodAutoscaler"]
    assert hpa["spec"]["maxReplicas"] == 9
    pvc = seen["deploy.snapshot_volume_size"][0]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "7Gi"
    assert seen["deploy.storage_class"][0]["spec"]["storageClassName"] == "nfs-client"


def test_redis_off_serves_from_the_embedded_store(cli: Any, written: Path, tmp_path: Path) -> None:
    assert "infer.kv=redis://redis:6379" in server_command(written)
    on = yaml.safe_load((written / "config.yaml").read_text())
    assert on["infer"]["kv"] == "redis://redis:6379"
    off = tmp_path / "off"
    code, _, err = deploy(cli, off, "-o", "deploy.redis=false")
    assert code == 0, err
    assert not (off / "redis.yaml").exists()
    assert "redis.yaml" not in docs(off, "kustomization.yaml")[0]["resources"]
    assert not any(a.startswith("infer.kv=") for a in server_command(off))
    assert yaml.safe_load((off / "config.yaml").read_text())["infer"]["kv"] == "embedded"


def test_a_used_out_is_refused_unless_overwrite(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code, _, err = deploy(cli, out)
    assert code == 1 and "not empty" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    code, _, err = deploy(cli, out, "--overwrite")
    assert code == 0, err
    assert not (out / "mine.txt").exists() and (out / "rayjob.yaml").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["k8s"]  # no staging folder left


def test_apply_without_kubectl_is_one_line_and_writes_nothing(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    out = tmp_path / "k8s"
    code, _, err = deploy(cli, out, "--apply")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "kubectl" in lines[0], err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def fake_kubectl(folder: Path, dry_run_status: int) -> Path:
    """A kubectl that logs its arguments; its server-side dry run exits ``dry_run_status``."""
    folder.mkdir()
    log = folder / "calls.log"
    script = folder / "kubectl"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        'case "$*" in *--dry-run=server*) '
        f'[ {dry_run_status} = 0 ] || {{ echo "no matches for kind RayJob" >&2; '
        f"exit {dry_run_status}; }};; esac\n"
        "echo applied\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return log


def test_apply_dry_runs_first_and_stops_on_a_refusal(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_ok = tmp_path / "ok"
    log = fake_kubectl(bin_ok, 0)
    monkeypatch.setenv("PATH", f"{bin_ok}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "k8s"
    code, stdout, err = deploy(cli, out, "--apply")
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["applied"] is True
    assert log.read_text().splitlines() == [
        f"apply -k {out} --dry-run=server",
        f"apply -k {out}",
    ]
    bin_bad = tmp_path / "bad"
    log = fake_kubectl(bin_bad, 1)
    monkeypatch.setenv("PATH", f"{bin_bad}{os.pathsep}{os.environ['PATH']}")
    code, _, err = deploy(cli, tmp_path / "k8s2", "--apply")
    assert code == 1 and "nothing applied" in err and "RayJob" in err
    assert log.read_text().splitlines() == [f"apply -k {tmp_path / 'k8s2'} --dry-run=server"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("-o", "train.mode=ddp"), "train.mode=ddp"),
        (("-o", "serve.port=0"), "serve.port=0"),
        (("-o", "deploy.min_workers=5"), "min_workers"),
        (("-o", "infer.kv=redis://elsewhere:6379"), "deploy.redis=false"),
        (("--namespace", "Bad_Name"), "--namespace"),
    ],
)
def test_refusals_leave_no_folder(cli: Any, tmp_path: Path, extra: tuple, message: str) -> None:
    out = tmp_path / "k8s"
    code, _, err = deploy(cli, out, *extra)
    assert code == 1 and message in err, err
    assert not out.exists()


def test_user_values_cannot_break_the_yaml(cli: Any, tmp_path: Path) -> None:
    """An image name YAML would read as a boolean stays a string."""
    out = tmp_path / "k8s"
    assert deploy(cli, out, "--image", "y")[0] == 0
    assert 'image: "y"' in (out / "server.yaml").read_text()
    assert pod(by_kind(out, "server.yaml")["Deployment"])["containers"][0]["image"] == "y"
