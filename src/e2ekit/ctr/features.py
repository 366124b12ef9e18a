"""``data.schema``: which columns a CTR file has, how each becomes model input, and crosses.

A schema names every column of a delimited text file: the label, dense (real-valued)
features, sparse (categorical) ones, multi-valued sparse ones (``a|b|c``, pooled into one
field) and ignored ones; per sparse column its own hash size and embedding dim; and declared
crosses (hashed crossed columns, Wide&Deep's wide part), one more field each. ``columns:
criteo`` is Criteo's 13 counts + 26 categoricals, read by the Criteo readers of
``data.format``. The schema decides the model's :class:`FeatureLayout`, so readers, models,
exports and servers agree on slots and fields by construction.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from e2ekit.core.schema import Strict
from e2ekit.ctr.data.criteo import mix64
from e2ekit.ctr.models.layout import CRITEO_DENSE, CRITEO_SLOTS, FeatureLayout

CRITEO = "criteo"
KINDS = ("label", "dense", "sparse", "multi", "ignore")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
_U64 = np.uint64


class SchemaColumn(Strict):
    """One column of the file, in file order."""

    name: str = Field(description="column name (letters, digits, _ . -); crosses refer to it")
    type: Literal["label", "dense", "sparse", "multi", "ignore"] = Field(
        description="label (0/1), dense (a number), sparse (one category), multi (several "
        "categories joined by sep, pooled into one field), ignore (read and dropped)"
    )
    hash_size: int | None = Field(
        None, ge=2, description="sparse/multi: hash buckets of this column; default model.hash_size"
    )
    embed_dim: int | None = Field(
        None, ge=1, description="sparse/multi: embedding dim of this column; default the model's"
    )
    sep: str = Field("|", min_length=1, description="multi: separator between values")
    max_len: int = Field(
        8, ge=1, le=1024, description="multi: values kept per row (the first ones)"
    )
    transform: Literal["none", "log1p"] = Field(
        "none", description="dense: none (as written) or log1p (log(x + 1) for x >= 0, else 0)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"{value!r}: a column name is a letter or _ then letters, digits, _ . - "
                "(at most 64)"
            )
        return value

    @model_validator(mode="after")
    def _keys_fit_type(self) -> SchemaColumn:
        # compared with the defaults, not model_fields_set: a dumped config lists every key
        fields = {k for k, f in type(self).model_fields.items() if getattr(self, k) != f.default}
        allowed = {
            "label": set(),
            "ignore": set(),
            "dense": {"transform"},
            "sparse": {"hash_size", "embed_dim"},
            "multi": {"hash_size", "embed_dim", "sep", "max_len"},
        }[self.type]
        extra = sorted(fields - allowed - {"name", "type"})
        if extra:
            raise ValueError(
                f"column {self.name!r} ({self.type}): {', '.join(extra)} does nothing for a "
                f"{self.type} column; remove it"
            )
        return self


class SchemaCross(Strict):
    """A hashed crossed column: one category per combination of its columns' values."""

    columns: list[str] = Field(min_length=2, description="two or more sparse columns")
    hash_size: int | None = Field(None, ge=2, description="buckets; default model.hash_size")
    embed_dim: int | None = Field(None, ge=1, description="embedding dim; default the model's")

    @property
    def name(self) -> str:
        return "_x_".join(self.columns)


class FeatureSchema(Strict):
    """``data.schema``: the file's columns (or ``criteo``) and the declared crosses."""

    columns: Literal["criteo"] | list[SchemaColumn] = Field(
        CRITEO,
        description="criteo (label, I1..I13, C1..C26 via data.format) or the file's columns "
        "in order",
    )
    delimiter: str = Field(
        "\t", min_length=1, max_length=1, description="custom columns: the field separator"
    )
    header: bool = Field(
        False,
        description="custom columns: the first line of each file "
        "names the columns (checked against the schema, then skipped)",
    )
    crosses: list[SchemaCross] = Field(
        default_factory=list, description="hashed crossed columns, one more field each"
    )

    @field_validator("crosses", mode="before")
    @classmethod
    def _short_crosses(cls, value: Any) -> Any:
        # ``crosses: [[a, b]]`` is short for ``crosses: [{columns: [a, b]}]``
        if isinstance(value, list):
            return [{"columns": c} if isinstance(c, list) else c for c in value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSchema:
        custom = isinstance(self.columns, list)
        if not custom:
            for key in ("delimiter", "header"):
                if getattr(self, key) != type(self).model_fields[key].default:
                    raise ValueError(
                        f"{key} applies to custom columns; criteo files follow data.format"
                    )
            names = {f"C{i}" for i in range(1, CRITEO_SLOTS + 1)}
            kinds = dict.fromkeys(names, "sparse")
        else:
            seen: set[str] = set()
            for col in self.columns:
                if col.name in seen:
                    raise ValueError(f"column {col.name!r} appears twice")
                seen.add(col.name)
            types = [c.type for c in self.columns]
            if types.count("label") > 1:
                raise ValueError("more than one label column")
            if "sparse" not in types and "multi" not in types:
                raise ValueError("a CTR schema needs at least one sparse or multi column")
            if self.delimiter in ("\n", "\r", '"'):
                raise ValueError(f"delimiter {self.delimiter!r} cannot separate fields")
            for col in self.columns:
                if col.type == "multi" and self.delimiter in col.sep:
                    raise ValueError(f"column {col.name!r}: sep {col.sep!r} contains the delimiter")
            kinds = {c.name: c.type for c in self.columns}
        for cross in self.crosses:
            for name in cross.columns:
                if name not in kinds:
                    raise ValueError(f"cross {cross.columns}: no column {name!r}")
                if kinds[name] != "sparse":
                    raise ValueError(
                        f"cross {cross.columns}: {name!r} is a {kinds[name]} column; crosses "
                        "combine single-valued sparse columns"
                    )
            if len(set(cross.columns)) != len(cross.columns):
                raise ValueError(f"cross {cross.columns} names a column twice")
        return self

    # -- derived ------------------------------------------------------------------------------
    @property
    def custom(self) -> bool:
        return isinstance(self.columns, list)

    def of_type(self, *types: str) -> list[SchemaColumn]:
        return [c for c in self.columns if c.type in types] if self.custom else []  # type: ignore[union-attr]

    def sparse_names(self) -> list[str]:
        """Names of the sparse and multi columns, in file order (the base fields)."""
        if not self.custom:
            return [f"C{i}" for i in range(1, CRITEO_SLOTS + 1)]
        return [c.name for c in self.of_type("sparse", "multi")]

    def layout(self, hash_size: int) -> FeatureLayout:
        """Slots and fields of this schema; ``hash_size`` where a column sets none."""
        slot_hash: list[int] = []
        slot_field: list[int] = []
        names: list[str] = []
        dims: list[int] = []
        if self.custom:
            num_dense = len(self.of_type("dense"))
            for col in self.of_type("sparse", "multi"):
                slots = col.max_len if col.type == "multi" else 1
                slot_hash += [col.hash_size or hash_size] * slots
                slot_field += [len(names)] * slots
                names.append(col.name)
                dims.append(col.embed_dim or 0)
        else:
            num_dense = CRITEO_DENSE
            for name in self.sparse_names():
                slot_hash.append(hash_size)
                slot_field.append(len(names))
                names.append(name)
                dims.append(0)
        for cross in self.crosses:
            slot_hash.append(cross.hash_size or hash_size)
            slot_field.append(len(names))
            names.append(cross.name)
            dims.append(cross.embed_dim or 0)
        return FeatureLayout(
            num_dense=num_dense,
            slot_hash=tuple(slot_hash),
            slot_field=tuple(slot_field),
            field_names=tuple(names),
            field_dims=tuple(dims) if any(dims) else None,
        )

    def cross_sources(self) -> list[list[int]]:
        """Per cross, the slot index of each of its columns among the base slots."""
        layout = self.layout(2)
        first_slot = {
            name: int(np.flatnonzero(np.asarray(layout.slot_field) == f)[0])
            for f, name in enumerate(layout.field_names)
        }
        return [[first_slot[name] for name in cross.columns] for cross in self.crosses]


def add_crosses(sparse: np.ndarray, schema: FeatureSchema, layout: FeatureLayout) -> np.ndarray:
    """Append one hashed cross bucket per declared cross to ``sparse (B, base slots)``.

    The cross of buckets ``(a, b, ...)`` is a 64-bit mix of them and the cross's index, so a
    combination gets its own row while its columns' rows stay shared; a row missing any of
    the columns (bucket 0) has the cross missing too.
    """
    if not schema.crosses:
        return sparse
    base = sparse.shape[1]
    out = np.empty((sparse.shape[0], base + len(schema.crosses)), dtype=np.int64)
    out[:, :base] = sparse
    with np.errstate(over="ignore"):
        for k, sources in enumerate(schema.cross_sources()):
            h = np.full(sparse.shape[0], _U64(0x9E3779B97F4A7C15) * _U64(k + 1), np.uint64)
            missing = np.zeros(sparse.shape[0], dtype=bool)
            for slot in sources:
                ids = sparse[:, slot]
                missing |= ids == 0
                h = mix64(h ^ ids.astype(np.uint64))
            size = layout.slot_hash[base + k]
            bucket = (h % _U64(size - 1)).astype(np.int64) + 1
            out[:, base + k] = np.where(missing, 0, bucket)
    return out


def schema_of(cfg: Any) -> FeatureSchema:
    """The config's schema (``data.schema`` unset: plain Criteo)."""
    return cfg.data.schema if cfg.data.schema is not None else FeatureSchema()


def layout_of(cfg: Any) -> FeatureLayout:
    """The model layout a ctr config trains: its schema with ``model.hash_size`` as default."""
    return schema_of(cfg).layout(cfg.model.hash_size)
