"""``e2ekit ctr deploy``: a Dockerfile and Kubernetes manifests that train the run config as a
KubeRay RayJob onto a shared snapshot volume and serve what it publishes, autoscaled.

Why manifests from Python dicts: every value a user gives (image, namespace, sizes) goes
through ``yaml.safe_dump``, so none can break the YAML or add keys. The folder appears whole
(staged, then swapped in); ``--apply`` checks for kubectl before anything is written and asks
the API server to accept every object (a server-side dry run) before it creates one.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess
import tempfile
from argparse import ArgumentParser, Namespace
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from e2ekit.core.config import dump_yaml
from e2ekit.core.errors import ConfigError, E2EError
from e2ekit.core.fileio import replace_folder
from e2ekit.core.logs import log
from e2ekit.core.verbs import load_run_config
from e2ekit.ctr.config import BUILTIN_PREFIX, KV_EMBEDDED, CtrConfig

__all__ = ["cmd_deploy", "deploy_flags", "render"]

APP = "e2ekit-ctr"
UID = 10001  # the image's non-root user
RAY_VERSION = "2.60.0"
REDIS_IMAGE = "redis:7.4-alpine"
REDIS_URL = "redis://redis:6379"
CONFIG_DIR = "/config"
SNAPSHOTS_DIR = "/snapshots"
RUN_DIR = f"{SNAPSHOTS_DIR}/run"
SERVING = "serving"  # export.snapshots, relative to the run folder
SERVING_DIR = f"{RUN_DIR}/{SERVING}"
HEAD_CPU, HEAD_MEMORY = "1", "4Gi"  # the head runs no training (num-cpus 0): Ray's services
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a namespace: a DNS-1123 label
IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}")
# Go's YAML 1.1 (kubectl) reads these bare words as booleans; PyYAML does not quote them
GO_BOOLS = frozenset({"y", "Y", "n", "N"})


# -- YAML -----------------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    """Block style for multi-line text (the config in the ConfigMap), quotes for the words
    kubectl would read as booleans; no anchors (a shared dict is written out each time)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    if value in GO_BOOLS:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    return dumper.represent_str(value)


_Dumper.add_representer(str, _str)


def to_yaml(*docs: dict[str, Any]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


# -- objects --------------------------------------------------------------------------------------
def _meta(name: str, component: str, namespace: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": _labels(component)}
    if namespace:
        meta["namespace"] = namespace
    return meta


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": component}


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID}


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _volumes() -> list[dict[str, Any]]:
    return [
        {"name": "config", "configMap": {"name": f"{APP}-config"}},
        {"name": "snapshots", "persistentVolumeClaim": {"claimName": f"{APP}-snapshots"}},
    ]


def _mounts(read_only: bool = False) -> list[dict[str, Any]]:
    return [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "snapshots", "mountPath": SNAPSHOTS_DIR, "readOnly": read_only},
    ]


def _ray_pod(image: str, role: str, cpu: str, memory: str) -> dict[str, Any]:
    """A Ray node's pod: the image, the config and snapshot volumes, shared memory for the
    object store."""
    resources = {"cpu": cpu, "memory": memory}
    return {
        "metadata": {"labels": _labels(f"ray-{role}")},
        "spec": {
            "securityContext": _pod_security(),
            "containers": [
                {
                    "name": f"ray-{role}",
                    "image": image,
                    "resources": {"requests": resources, "limits": resources},
                    "securityContext": _container_security(),
                    "volumeMounts": [
                        *_mounts(),
                        {"name": "dshm", "mountPath": "/dev/shm"},
                    ],
                }
            ],
            "volumes": [*_volumes(), {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        },
    }


def ray_cluster_spec(cfg: CtrConfig, image: str) -> dict[str, Any]:
    """Head (no training slots, so the entrypoint lands on a worker) and one autoscaled CPU
    worker group."""
    d = cfg.deploy
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "headGroupSpec": {
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": _ray_pod(image, "head", HEAD_CPU, HEAD_MEMORY),
        },
        "workerGroupSpecs": [
            {
                "groupName": "cpu",
                "replicas": d.min_workers,
                "minReplicas": d.min_workers,
                "maxReplicas": d.max_workers,
                "rayStartParams": {},
                "template": _ray_pod(image, "worker", str(d.worker_cpus), d.worker_memory),
            }
        ],
    }


def train_command() -> list[str]:
    return [
        "e2ekit",
        "ctr",
        "train",
        "-c",
        f"{CONFIG_DIR}/config.yaml",
        "--out",
        RUN_DIR,
        "-o",
        f"export.snapshots={SERVING}",
    ]


def serve_command(cfg: CtrConfig) -> list[str]:
    command = [
        "e2ekit",
        "ctr",
        "serve",
        "-c",
        f"{CONFIG_DIR}/config.yaml",
        "--model",
        SERVING_DIR,
        "-o",
        "serve.host=0.0.0.0",
        "-o",
        f"serve.watch_s={cfg.serve.watch_s:g}",
    ]
    if cfg.deploy.redis:
        command += ["-o", f"infer.kv={REDIS_URL}"]
    return command


def rayjob(cfg: CtrConfig, image: str, namespace: str | None) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _meta(f"{APP}-train", "train", namespace),
        "spec": {
            "entrypoint": shlex.join(train_command()),
            "entrypointNumCpus": cfg.deploy.worker_cpus,  # on a worker: the head has none
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "rayClusterSpec": ray_cluster_spec(cfg, image),
        },
    }


def raycluster(cfg: CtrConfig, image: str, namespace: str | None) -> dict[str, Any]:
    """The training job's cluster on its own, for interactive use (not in the kustomization:
    the RayJob brings up and tears down its own)."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": _meta(f"{APP}-ray", "ray", namespace),
        "spec": ray_cluster_spec(cfg, image),
    }


def server(cfg: CtrConfig, image: str, namespace: str | None) -> list[dict[str, Any]]:
    """Deployment (waits for the first published version), Service and CPU autoscaler."""
    d = cfg.deploy
    name = f"{APP}-server"
    port = cfg.serve.port
    probe = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10}
    wait = f"until [ -f {SERVING_DIR}/deploy.yaml ]; do echo waiting for a version; sleep 10; done"
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, "server", namespace),
        "spec": {
            "selector": {"matchLabels": _labels("server")},
            "template": {
                "metadata": {"labels": _labels("server")},
                "spec": {
                    "securityContext": _pod_security(),
                    "terminationGracePeriodSeconds": math.ceil(cfg.serve.graceful_timeout_s) + 5,
                    "initContainers": [
                        {
                            "name": "wait-for-version",
                            "image": image,
                            "command": ["sh", "-c", wait],
                            "securityContext": _container_security(),
                            "volumeMounts": _mounts(read_only=True),
                        }
                    ],
                    "containers": [
                        {
                            "name": "server",
                            "image": image,
                            "command": serve_command(cfg),
                            "ports": [{"name": "http", "containerPort": port}],
                            "resources": {
                                "requests": {"cpu": d.server_cpu, "memory": d.server_memory},
                                "limits": {"memory": d.server_memory},
                            },
                            "startupProbe": {**probe, "failureThreshold": 60},
                            "readinessProbe": {**probe, "failureThreshold": 3},
                            "livenessProbe": {**probe, "failureThreshold": 6},
                            "securityContext": _container_security(),
                            "volumeMounts": _mounts(read_only=True),
                        }
                    ],
                    "volumes": _volumes(),
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, "server", namespace),
        "spec": {
            "selector": _labels("server"),
            "ports": [{"name": "http", "port": port, "targetPort": "http"}],
        },
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(name, "server", namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": d.server_replicas_min,
            "maxReplicas": d.server_replicas_max,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": d.server_cpu_target,
                        },
                    },
                }
            ],
        },
    }
    return [deployment, service, hpa]


def redis(namespace: str | None) -> list[dict[str, Any]]:
    """One Redis without persistence: the snapshot volume holds every version, and servers
    write the layers Redis lacks when they load a version."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("redis", "redis", namespace),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": _labels("redis")},
            "template": {
                "metadata": {"labels": _labels("redis")},
                "spec": {
                    "containers": [
                        {
                            "name": "redis",
                            "image": REDIS_IMAGE,
                            "args": ["--save", "", "--appendonly", "no"],
                            "ports": [{"name": "redis", "containerPort": 6379}],
                            "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 5},
                        }
                    ]
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta("redis", "redis", namespace),
        "spec": {
            "selector": _labels("redis"),
            "ports": [{"name": "redis", "port": 6379, "targetPort": "redis"}],
        },
    }
    return [deployment, service]


def snapshots_pvc(cfg: CtrConfig, namespace: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany"],  # the trainer writes, every server reads
        "resources": {"requests": {"storage": cfg.deploy.snapshot_volume_size}},
    }
    if cfg.deploy.storage_class:
        spec["storageClassName"] = cfg.deploy.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(f"{APP}-snapshots", "snapshots", namespace),
        "spec": spec,
    }


def configmap(config_text: str, namespace: str | None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(f"{APP}-config", "config", namespace),
        "data": {"config.yaml": config_text},
    }


def _pins() -> dict[str, str]:
    """The versions this e2ekit requires of torch and torchvision (``==`` pins)."""
    pins: dict[str, str] = {}
    for req in metadata.requires("e2ekit") or []:
        m = re.fullmatch(r"(torch|torchvision)\s*==\s*([\w.]+)", req.split(";")[0].strip())
        if m:
            pins[m.group(1)] = m.group(2)
    return pins


def package_version() -> str:
    return metadata.version("e2ekit")


def dockerfile(cfg: CtrConfig) -> str:
    version = package_version()
    pins = _pins()
    torch = " ".join(f"{n}=={v}" for n, v in sorted(pins.items())) or "torch torchvision"
    port = int(cfg.serve.port)
    health = (
        "import urllib.request; "
        f"urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=4)"
    )
    serve = ["e2ekit", "ctr", "serve", "--model", SERVING_DIR, "-o", "serve.host=0.0.0.0"]
    lines = [
        "# e2ekit ctr: one image for the Ray training job and the server (`e2ekit ctr deploy`)",
        "FROM python:3.11-slim",
        "ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
        "# torch from the CPU wheel index first, at the version e2ekit pins: PyPI's default",
        "# wheel bundles CUDA libraries (gigabytes) that CPU training and serving never load.",
        f"RUN pip install --index-url {TORCH_CPU_INDEX} {torch}",
        "# e2ekit itself (or COPY a wheel from `pip wheel --no-deps .` and install that), and",
        "# Ray at the version the RayJob's rayVersion names",
        f'RUN pip install "e2ekit=={version}" "ray[default]=={RAY_VERSION}"',
        f"RUN useradd --create-home --uid {UID} --user-group e2ekit",
        f"USER {UID}",
        "WORKDIR /home/e2ekit",
        f"EXPOSE {port}",
        "HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \\",
        f'  CMD ["python", "-c", "{health}"]',
        f"CMD {json.dumps(serve)}",
        "",
    ]
    return "\n".join(lines)


def kustomization(files: list[str], namespace: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
    }
    if namespace:
        doc["namespace"] = namespace
    doc["resources"] = files
    return doc


# -- the whole folder -----------------------------------------------------------------------------
def deploy_config(cfg: CtrConfig) -> CtrConfig:
    """The run config the cluster runs: checked for what a pod can do, infer.kv on the
    in-cluster Redis when deploy.redis."""
    if cfg.train.mode == "ddp":
        raise ConfigError(
            "train.mode=ddp needs torchrun ranks; the deployed job trains in one Ray "
            "entrypoint process: use train.mode=sync or async"
        )
    if cfg.serve.port == 0:
        raise ConfigError("serve.port=0 picks a free port; a Service needs a fixed one")
    if cfg.deploy.redis:
        if cfg.infer.kv not in (KV_EMBEDDED, REDIS_URL):
            raise ConfigError(
                f"infer.kv={cfg.infer.kv} with deploy.redis=true: the deployment runs its own "
                "Redis; set deploy.redis=false to serve from that store instead"
            )
        cfg = cfg.model_copy(update={"infer": cfg.infer.model_copy(update={"kv": REDIS_URL})})
    for split in ("train", "val", "test"):
        path = getattr(cfg.data, split)
        if path and not path.startswith(BUILTIN_PREFIX):
            log.warning(
                "data.%s=%s: the training pod reads it there; put it on the snapshot volume "
                "(%s/...) or in the image",
                split,
                path,
                SNAPSHOTS_DIR,
            )
    return cfg


def render(cfg: CtrConfig, image: str, namespace: str | None) -> dict[str, str]:
    """Every file of the deploy folder by name, from a resolved config."""
    cfg = deploy_config(cfg)
    config_text = dump_yaml(cfg)
    files: dict[str, str] = {"Dockerfile": dockerfile(cfg), "config.yaml": config_text}
    resources: dict[str, str] = {}
    if namespace:
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        resources["namespace.yaml"] = to_yaml(ns)
    resources["configmap.yaml"] = to_yaml(configmap(config_text, namespace))
    resources["snapshots-pvc.yaml"] = to_yaml(snapshots_pvc(cfg, namespace))
    if cfg.deploy.redis:
        resources["redis.yaml"] = to_yaml(*redis(namespace))
    resources["rayjob.yaml"] = to_yaml(rayjob(cfg, image, namespace))
    resources["server.yaml"] = to_yaml(*server(cfg, image, namespace))
    files.update(resources)
    files["raycluster.yaml"] = to_yaml(raycluster(cfg, image, namespace))
    files["kustomization.yaml"] = to_yaml(kustomization(list(resources), namespace))
    return files


def _check_names(image: str, namespace: str | None) -> None:
    if not IMAGE.fullmatch(image):
        raise E2EError(f"--image {image!r}: not an image reference (name[:tag][@digest])")
    if namespace is not None and not NAME.fullmatch(namespace):
        raise E2EError(
            f"--namespace {namespace!r}: not a namespace name (lowercase letters, digits and "
            "'-', at most 63, starting and ending with a letter or digit)"
        )


def _out_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise E2EError(f"--out {out}: exists and is not a folder; give a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise E2EError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")


def write_folder(files: dict[str, str], out: Path) -> None:
    """All files into a hidden folder beside ``out``, then swapped in whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, text in files.items():
            (staged / name).write_text(text, encoding="utf-8")
        staged.chmod(0o755)  # mkdtemp's 0700 would follow the folder into place
        replace_folder(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def _kubectl(kubectl: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([kubectl, *args], capture_output=True, text=True, check=False)


def apply(kubectl: str, out: Path) -> str:
    """A server-side dry run of every object first, so a refused one (KubeRay's RayJob kind
    not installed, a quota) stops the apply before anything is created."""
    for extra in (["--dry-run=server"], []):
        done = _kubectl(kubectl, "apply", "-k", str(out), *extra)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            why = lines[-1] if lines else f"exit status {done.returncode}"
            stage = "refused the manifests (nothing applied)" if extra else "failed"
            raise E2EError(f"kubectl apply -k {out} {stage}: {why}; the files are in {out}")
    return (done.stdout or "").strip()


def cmd_deploy(kit: Any, args: Namespace) -> dict[str, Any]:
    if not args.out:
        raise E2EError("--out is required: the folder to write the Dockerfile and manifests to")
    out = Path(args.out)
    image = args.image or f"e2ekit:{package_version()}"
    namespace = args.namespace
    _check_names(image, namespace)
    _out_folder(out, bool(args.overwrite))
    kubectl = None
    if args.apply:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise E2EError("--apply needs kubectl on PATH, and none was found; nothing written")
    cfg, _ = load_run_config(kit, args)
    files = render(cfg, image, namespace)
    write_folder(files, out)
    summary: dict[str, Any] = {
        "out": str(out),
        "files": sorted(files),
        "image": image,
        "namespace": namespace,
        "build": f"docker build -t {shlex.quote(image)} {shlex.quote(str(out))}",
        "apply": f"kubectl apply -k {shlex.quote(str(out))}",
        "applied": False,
    }
    if kubectl is not None:
        log.info("%s", apply(kubectl, out))
        summary["applied"] = True
    return summary


def deploy_flags(p: ArgumentParser) -> None:
    p.add_argument("--image", help="container image the pods run (default: e2ekit:<version>)")
    p.add_argument("--namespace", help="Kubernetes namespace for every object (made if missing)")
    p.add_argument(
        "--apply",
        action="store_true",
        help="then run `kubectl apply -k OUT` (a server-side dry run first)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the files already in --out")
