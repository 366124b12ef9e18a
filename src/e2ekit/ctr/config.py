"""The ctr kit's config schema (PaddleRec / ElasticCTR names where they exist)."""

from __future__ import annotations

import re
import warnings
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from e2ekit.core.schema import (
    ExportConfig,
    InferConfig,
    OptimConfig,
    RunConfig,
    Strict,
    TrainConfig,
)
from e2ekit.core.serve.settings import ServeSettings
from e2ekit.ctr.features import CRITEO, FeatureSchema
from e2ekit.ctr.ps.config import PsConfig, ps_problems

BUILTIN_PREFIX = "builtin:"
QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
KV_EMBEDDED = "embedded"
KV_URL_SCHEMES = ("redis://", "rediss://", "unix://")


class CtrModel(Strict):
    type: str = Field(
        "deepfm",
        description="lr, fm, dnn, wide_deep, deepfm, dcn, dcn_v2, fwfm, autoint (+_tiny)",
    )
    hash_size: int = Field(
        2**18,
        ge=2,
        description="hash buckets PER SLOT (all slots share one table; bucket 0 = missing); "
        "data.schema columns and crosses may set their own",
    )
    embed_dim: int | None = Field(None, ge=1, description="default: the model's")
    mlp_dims: list[int] | None = Field(None, description="hidden widths; default: the model's")
    num_layers: int | None = Field(
        None, ge=1, description="dcn / dcn_v2 cross layers; autoint attention layers"
    )
    dropout: float = Field(0.0, ge=0, lt=1)


class BuiltinCriteo(Strict):
    """The generated data behind ``builtin:train`` / ``builtin:val`` / ``builtin:test``."""

    train_rows: int = Field(400_000, ge=1)
    val_rows: int = Field(100_000, ge=1)
    test_rows: int = Field(20_000, ge=1)
    seed: int = 0
    ctr: float = Field(0.12, ge=0.01, le=0.5)


# ``data.schema`` is the name users know (TFX, Feast, PaddleRec); pydantic's deprecated
# BaseModel.schema() method is what it shadows, which nothing here calls.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

    class CtrData(Strict):
        schema: FeatureSchema | None = Field(  # type: ignore[assignment]
            None,
            description="the files' columns (label, dense, sparse, multi, ignore), per-column hash "
            "sizes and dims, and declared crosses; null or criteo = Criteo's 13 + 26 columns",
        )
        train: str | None = Field(
            "builtin:train", description="file, folder or glob; or builtin:train"
        )
        val: str | None = "builtin:val"
        test: str | None = None
        format: Literal["auto", "criteo", "criteo_csv", "slots"] = Field(
            "auto", description="criteo: TSV; criteo_csv: CSV with header; slots: 'label slot:id'"
        )
        max_bad_rows: int | None = Field(
            None, ge=0, description="fail after this many malformed rows; unset: count and go on"
        )
        shuffle_buffer: int = Field(0, ge=0, description="rows held for shuffling; 0 = file order")
        prefetch: int = Field(2, ge=0, description="batches parsed ahead in a background thread")
        cache: bool = Field(
            False,
            description="parse each file of the splits once into .npy columns (train parses "
            "them before the first pass; later passes and runs memory-map them); not with "
            "train --stream, whose partitions are each read once",
        )
        cache_dir: str | None = Field(
            None,
            description="where data.cache keeps parsed files; default: ctr-parsed in the "
            "data cache ($E2EKIT_DATA or ~/.cache/e2ekit/data)",
        )
        builtin: BuiltinCriteo = BuiltinCriteo()

        @field_validator("schema", mode="before")
        @classmethod
        def _named_schema(cls, value: Any) -> Any:
            if isinstance(value, str):
                if value != CRITEO:
                    raise ValueError(
                        f"{value!r}: the shipped schema is {CRITEO}; other files need a mapping "
                        "with columns (see README, 'Any feature schema')"
                    )
                return {}
            return value


class SparseOptim(Strict):
    """The slot table's own optimizer (fused row-wise updates, see ctr/engine/row_optim.py)."""

    type: Literal["adagrad", "rowwise_adagrad", "adam", "sgd"] = "adam"
    lr: float | None = Field(None, gt=0, description="default: optim.lr")
    eps: float = Field(1e-8, gt=0)
    initial_accumulator: float = Field(0.0, ge=0, description="adagrad types")
    weight_decay: float = Field(0.0, ge=0)


class CtrTrain(TrainConfig):
    mode: Literal["sync", "async", "ddp", "ps"] = Field(
        "sync",
        description="sync: one process, large batches; async: Hogwild worker processes on "
        "shared tables; ddp: torchrun ranks, all-reduced dense grads and gathered row grads; "
        "ps: Ray worker actors pulling rows from and pushing gradients to server actors (ps.*)",
    )
    workers: int = Field(2, ge=1, description="async: worker processes")
    threads: int | None = Field(
        None, ge=1, description="torch threads per process; default: cores / processes"
    )
    batch_size: int = Field(4096, ge=1, description="per process")
    drop_last: bool = Field(False, description="drop a short last batch (always under ddp)")
    eval_batch_size: int | None = Field(16384, ge=1)
    log_interval: int = Field(50, ge=1)
    metric: str | None = "auc"
    metric_mode: Literal["max", "min"] = "max"


class StreamConfig(Strict):
    """``train --stream DIR``: time-partitioned folders ``DIR/YYYYMMDD/HH/`` with a donefile."""

    donefile: str = Field("_SUCCESS", description="a partition is complete once this exists")
    poll_seconds: float = Field(10.0, gt=0)
    idle_timeout: float = Field(
        0.0, ge=0, description="stop after this long with no new partition; 0 = when caught up"
    )
    eval_before_train: bool = Field(True, description="progressive validation on each partition")
    export_each: bool = Field(True, description="export the model after every partition")
    keep_checkpoints: int = Field(3, ge=1, description="partition checkpoints kept")
    evict_after: int = Field(
        0, ge=0, description="reset table rows not seen for N partitions; 0 = never"
    )
    max_partitions: int | None = Field(None, ge=1, description="stop after training this many")


class CtrExport(ExportConfig):
    sample_batch: int = Field(8, ge=1, description="rows in the export's sample inputs")
    snapshots: str | None = Field(
        None,
        description="folder (relative to the run folder) that training publishes a servable "
        "version into after every pass and streaming partition: a base table, then deltas of "
        "the rows changed since; null = off",
    )
    snapshot_compact_every: int | None = Field(
        None,
        ge=1,
        description="with export.snapshots: after this many deltas in a row the next version "
        "is a merged base, so a reader stacks at most this many layers; null = never",
    )
    snapshot_keep: int = Field(
        5,
        ge=1,
        description="with export.snapshots: after each version the folder keeps the newest "
        "this many versions and the layers their chains read (a kept delta's base stays); "
        "older ones, with their dense models, are removed",
    )


class CtrInfer(InferConfig):
    kv: str = Field(
        KV_EMBEDDED,
        description="where predict and serve look table rows up: embedded (the snapshot's "
        "memory-mapped files) or redis://host:port[/db] (comma-separated URLs shard the keys; "
        "the snapshot's layers are written into Redis first)",
    )

    @field_validator("kv")
    @classmethod
    def _kv_spec(cls, value: str) -> str:
        text = value.strip()
        urls = [u.strip() for u in text.split(",")]
        if text == KV_EMBEDDED or (text and all(u.startswith(KV_URL_SCHEMES) for u in urls)):
            return text
        raise ValueError(
            f"{value!r} is not a store: use {KV_EMBEDDED} or redis://host:port[/db] "
            "(comma-separate several URLs to shard the keys)"
        )


class CtrServe(ServeSettings):
    watch_s: float = Field(
        2.0,
        ge=0,
        description="how often (seconds) the server checks a snapshot folder for a newer "
        "version and swaps it in (table and dense model together); 0 = serve the version "
        "it started with",
    )


class CtrDeploy(Strict):
    """``ctr deploy``: the sizes and parts of the Kubernetes manifests it writes."""

    min_workers: int = Field(1, ge=0, description="Ray worker pods kept up (autoscaler floor)")
    max_workers: int = Field(4, ge=1, description="Ray worker pods at most (autoscaler ceiling)")
    worker_cpus: int = Field(
        4, ge=1, description="CPUs of each Ray worker pod; the training entrypoint reserves them"
    )
    worker_memory: str = Field("8Gi", description="memory of each Ray worker")
    server_replicas_min: int = Field(1, ge=1, description="server pods at least (autoscaler)")
    server_replicas_max: int = Field(4, ge=1, description="server pods at most (autoscaler)")
    server_cpu: str = Field("1", description="CPU request of each server pod")
    server_memory: str = Field("2Gi", description="memory of each server pod")
    server_cpu_target: int = Field(
        70, ge=1, description="average CPU use (% of server_cpu) the server autoscaler aims at"
    )
    redis: bool = Field(
        True,
        description="true: a Redis Deployment + Service and infer.kv pointed at it; false: "
        "infer.kv as configured (embedded: the snapshot files on the shared volume)",
    )
    snapshot_volume_size: str = Field(
        "20Gi", description="size of the shared snapshot volume (ReadWriteMany)"
    )
    storage_class: str | None = Field(
        None,
        description="storage class of the snapshot volume (one that offers ReadWriteMany); "
        "null = the cluster's default",
    )

    @field_validator("worker_memory", "server_cpu", "server_memory", "snapshot_volume_size")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not QUANTITY.fullmatch(value):
            raise ValueError(
                "not a Kubernetes quantity: digits, then optionally one unit (milli m, "
                "binary Ki/Mi/Gi/Ti, decimal k/M/G/T), no space"
            )
        return value

    @field_validator("storage_class")
    @classmethod
    def _class_name(cls, value: str | None) -> str | None:
        if value is not None and not DNS_NAME.fullmatch(value):
            raise ValueError("not a storage class name: lowercase letters, digits, '-' and '.'")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> CtrDeploy:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"min_workers ({self.min_workers}) must not exceed max_workers ({self.max_workers})"
            )
        if self.server_replicas_min > self.server_replicas_max:
            raise ValueError(
                f"server_replicas_min ({self.server_replicas_min}) must not exceed "
                f"server_replicas_max ({self.server_replicas_max})"
            )
        return self


class CtrConfig(RunConfig):
    unsupported = {
        "train.ema.enabled": "the slot table is updated sparsely, row by row; an EMA copy "
        "would cost a pass over the whole table every step",
        "train.ema.decay": "ctr keeps no EMA of the weights (see train.ema.enabled)",
        "train.ema.warmup_steps": "ctr keeps no EMA of the weights (see train.ema.enabled)",
        "train.num_workers": "files are parsed in a background thread; use data.prefetch "
        "(batches read ahead) and train.threads",
        "train.channels_last": "CTR models have no convolutions",
        "train.grad_accum": "ctr trains with large batches instead; raise train.batch_size",
        "serve.max_image_pixels": "ctr requests carry no images",
        "train.time_budget": "ctr trains in its own loop (sync, async, ddp, ps and --stream), "
        "whose passes follow the data files rather than a fitted step count; bound a run "
        "with train.max_steps or train.epochs",
    }

    model: CtrModel = CtrModel()  # type: ignore[assignment]
    data: CtrData = CtrData()  # type: ignore[assignment]
    train: CtrTrain = CtrTrain()
    optim: OptimConfig = OptimConfig(type="adam", lr=1e-3)
    sparse_optim: SparseOptim = SparseOptim()
    stream: StreamConfig = StreamConfig()
    export: CtrExport = CtrExport()  # type: ignore[assignment]
    infer: CtrInfer = CtrInfer()
    serve: CtrServe = CtrServe()
    deploy: CtrDeploy = CtrDeploy()
    ps: PsConfig = PsConfig()

    @model_validator(mode="after")
    def _checks(self) -> CtrConfig:
        problems = ps_problems(self)
        if problems:
            raise ValueError(problems[0])
        schema = self.data.schema
        if schema is not None and schema.custom:
            if self.data.format != "auto":
                raise ValueError(
                    f"data.format={self.data.format}: formats describe Criteo files; with "
                    "data.schema columns the files are read as the schema says (its "
                    "delimiter and header); remove data.format"
                )
            for split in ("train", "val", "test"):
                value = getattr(self.data, split)
                if value and value.startswith(BUILTIN_PREFIX):
                    raise ValueError(
                        f"data.{split}={value} is generated Criteo data, which does not have "
                        "the columns data.schema names; point it at your files"
                    )
        if self.train.mode == "async" and self.train.hooks:
            raise ValueError(
                "train.hooks: Hogwild workers step in other processes, where hooks cannot "
                "run; use train.mode=sync or ddp with hooks"
            )
        if self.train.mode == "async" and self.train.eval_interval:
            raise ValueError(
                "train.eval_interval: async passes run in worker processes and evaluate "
                "when each pass ends; use train.mode=sync or ddp to evaluate every N steps"
            )
        if self.train.mode == "async" and self.train.save_interval:
            raise ValueError(
                "train.save_interval: an async pass saves when it ends; use "
                "train.mode=sync or ddp for step-interval saves"
            )
        return self
