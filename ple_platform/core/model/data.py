"""Warehouse -> teacher input: monthly feature matrices, the training-month scaler and deterministic batches.

* ``load_month(con, month)`` reads one month of the 17 ``features.<group>`` tables (inner join on
  ``customer_id``, customers sorted), the raw lag tensor as ``txn_seq`` (N, 200, 4), the persistence diagrams of
  ``features.tda_diagrams`` padded to (N, P, 4) + mask, the 0/1 holdings and, when stored, the 13 labels of
  ``labels.task_labels`` (float64, NaN = undefined). Everything is columnar (DuckDB -> Arrow -> numpy); several
  months are written straight into one pre-allocated set of arrays (``load_months``), so concatenating twelve
  training months never holds two copies.
* ``FeatureScaler`` is fitted on training months only and *conditions* the columns for a network: signed log1p on
  amount-like columns (training |values| > ``LOG_MAGNITUDE``), float64 mean/std (std floor), clip to +-``CLIP``;
  0/1 flags and integer codes (``unscaled_columns``) pass unchanged, the lag tensor's MCC/hour codes are zeroed in
  the tabular view (``dropped_columns``: they enter through ``txn_seq``, embedded). The same fitted scaler (its
  arrays travel in the teacher checkpoint) transforms training, evaluation, distillation and scoring rows.
* ``TeacherData.from_split(con, split)`` loads the train / validation / test / score parts of a ``TimeSplit``,
  fits the scaler on train only and serves ``batches(part, ...)``: ``f(epoch)`` yielding
  ``(Batch, labels)`` as ``train_teacher`` expects (``ple_platform.core.model.batch`` is the contract).

Memory: data are float32 everywhere. The ``txn_lag_tensor`` group (800 of the 1,211 columns) is stored once, as
the raw ``txn_seq``; its standardised form is computed per batch (B x 800, negligible), so a 20k-customer x
12-month training set costs ~N x ((1,211 + 4P + 24) x 4 + P + 104 labels) bytes, not twice the lag tensor.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from datetime import date
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ple_platform.core.features.spec import (
    CATEGORICAL_COLUMNS,
    FEATURE_GROUPS,
    LAG_CHANNELS,
    LAG_LENGTH,
    all_columns,
)
from ple_platform.core.model.batch import DIAGRAM_MASK_KEY, DIAGRAMS_KEY, HOLDINGS_KEY, SEQ_KEY, Batch
from ple_platform.core.tasks.spec import TASKS
from ple_platform.core.tasks.split import TimeSplit

log = logging.getLogger(__name__)

LAG_GROUP = "txn_lag_tensor"
HOLDINGS_GROUP = "product_holdings"
DIAGRAM_TABLE = "features.tda_diagrams"
LABEL_TABLE = "labels.task_labels"
DIAGRAM_KINDS = ("global", "local")  # kind code = index: 0 = global Rips, 1 = local cubical
MAX_DIAGRAM_POINTS = 64
STD_FLOOR = 1e-4  # a column whose training std is below this is centred only (std 1), never blown up
CLIP = 5.0  # conditioned columns are clipped to +-5 training std: a heavy tail cannot reach |z| ~ 150
LOG_MAGNITUDE = 20.0  # a non-flag column whose training |values| exceed this is amount-like: signed log1p first
# Channels of the lag tensor that are integer codes with -1 = padding (kept raw in the standardised group).
UNSCALED_LAG_CHANNELS = ("mcc", "hour")
PARTS = ("train", "validation", "test", "score")
Part = Literal["train", "validation", "test", "score"]
Labels = dict[str, torch.Tensor]

_GROUP_NAMES = tuple(g.name for g in FEATURE_GROUPS)
_STORED_GROUPS = tuple(g for g in FEATURE_GROUPS if g.name != LAG_GROUP)  # the lag group lives in txn_seq
_N_CHANNELS = len(LAG_CHANNELS)
_LAG_COLUMNS = next(g.columns for g in FEATURE_GROUPS if g.name == LAG_GROUP)  # (lag, channel) order


class MissingDataError(LookupError):
    """A table or a month the loader needs is not in the warehouse; the message names both."""


# --------------------------------------------------------------------------------------------------- columns


@lru_cache(maxsize=1)
def unscaled_columns() -> frozenset[str]:
    """Columns the scaler leaves as they are.

    * ``CATEGORICAL_COLUMNS`` (demographic codes, 0 = unknown): arbitrary integer labels. The model embeds them
      (``TabularInput`` rounds them to indices), so shifting/scaling would break the lookup and the 0 = unknown
      convention.
    * the ``mcc`` and ``hour`` channels of ``txn_lag_tensor``: an MCC index and an hour of day are codes, not
      magnitudes, and -1 in them is the padding sentinel that tells a real transaction from an empty slot;
      standardising would erase the sentinel (the -1 of a sparse late lag maps to ~0, the value of a real code).
    """
    lag = {f"lag_{c}_{i:03d}" for i in range(1, LAG_LENGTH + 1) for c in UNSCALED_LAG_CHANNELS}
    return frozenset(CATEGORICAL_COLUMNS) | frozenset(lag)


@lru_cache(maxsize=1)
def dropped_columns() -> frozenset[str]:
    """The lag tensor's MCC index and hour columns: codes, never magnitudes. The tabular view zeroes them; they
    reach the model through ``txn_seq``, where the temporal, HGCN and OT experts embed or bucket them."""
    return frozenset(f"lag_{c}_{i:03d}" for i in range(1, LAG_LENGTH + 1) for c in UNSCALED_LAG_CHANNELS)


def _signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _offsets() -> dict[str, slice]:
    out, start = {}, 0
    for g in FEATURE_GROUPS:
        out[g.name] = slice(start, start + g.dim)
        start += g.dim
    return out


GROUP_SLICES: dict[str, slice] = _offsets()


# ------------------------------------------------------------------------------------------------- month data


@dataclass
class MonthData:
    """Rows = (customer, month) pairs, sorted by customer within each month, months in load order.

    ``groups`` holds 16 groups as float32 (N, dim); ``txn_lag_tensor`` is not stored there but derived from the raw
    ``txn_seq`` by ``group()`` (a view when raw, standardised on access when ``scaler`` is set). After
    ``FeatureScaler.transform`` the groups are standardised and ``scaler`` is the scaler used; ``txn_seq``,
    ``diagrams`` and ``holdings`` always stay raw (the Batch contract).
    """

    customer_ids: np.ndarray  # (N,) object (str)
    months: np.ndarray  # (N,) datetime64[D], the snapshot month of each row
    groups: dict[str, np.ndarray]  # 16 groups (all but txn_lag_tensor), float32 (N, dim), C order
    txn_seq: np.ndarray  # (N, 200, 4) float32 raw lag tensor, padding -1
    diagrams: np.ndarray  # (N, P, 4) float32 (birth, death, dim, kind), real points first, padding 0
    diagram_mask: np.ndarray  # (N, P) bool
    holdings: np.ndarray  # (N, 24) float32 0/1
    labels: dict[str, np.ndarray] | None  # task -> (N,) float64, NaN = undefined; None = no labels loaded
    scaler: FeatureScaler | None = None
    diagram_points: np.ndarray | None = field(default=None, repr=False)  # (N,) int32 stored points before the cap

    def __len__(self) -> int:
        return len(self.customer_ids)

    @property
    def n_rows(self) -> int:
        return len(self.customer_ids)

    @property
    def month_list(self) -> tuple[date, ...]:
        return tuple(m.astype(object) for m in np.unique(self.months))

    @property
    def standardised(self) -> bool:
        return self.scaler is not None

    def group(self, name: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Float32 (n, dim) values of a group (standardised if ``scaler`` is set) for ``rows`` (default all).

        For ``txn_lag_tensor`` this computes from ``txn_seq``: a view when raw and ``rows`` is a slice/None, a new
        array otherwise."""
        rows = slice(None) if rows is None else rows
        if name == LAG_GROUP:
            seq = self.txn_seq[rows]
            flat = seq.reshape(seq.shape[0], -1)
            return self.scaler.transform_group(LAG_GROUP, flat) if self.scaler is not None else flat
        if name not in self.groups:
            raise KeyError(f"unknown feature group {name!r}; known: {_GROUP_NAMES}")
        return self.groups[name][rows]

    def matrix(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """(n, 1,211) float32 of every group in spec order (the tabular models' input: LightGBM baselines and
        students). Raw data give raw values (what reasons quote); column names are ``all_columns()``."""
        return np.hstack([self.group(g.name, rows) for g in FEATURE_GROUPS])

    def select(self, rows: np.ndarray) -> MonthData:
        """A new MonthData with the given rows (a copy)."""
        rows = np.asarray(rows)
        return replace(
            self,
            customer_ids=self.customer_ids[rows],
            months=self.months[rows],
            groups={k: v[rows] for k, v in self.groups.items()},
            txn_seq=self.txn_seq[rows],
            diagrams=self.diagrams[rows],
            diagram_mask=self.diagram_mask[rows],
            holdings=self.holdings[rows],
            labels=None if self.labels is None else {k: v[rows] for k, v in self.labels.items()},
            diagram_points=None if self.diagram_points is None else self.diagram_points[rows],
        )

    def to_batch(self, rows: np.ndarray) -> Batch:
        """The ``Batch`` of ``rows`` (fresh float32 tensors; diagrams trimmed to the batch's most points, >= 1)."""
        rows = np.asarray(rows, dtype=np.int64)
        batch: Batch = {}
        for g in FEATURE_GROUPS:
            if g.name != LAG_GROUP:
                batch[g.name] = torch.from_numpy(self.groups[g.name][rows])
        seq = self.txn_seq[rows]
        flat = seq.reshape(len(rows), -1)
        lag = self.scaler.transform_group(LAG_GROUP, flat) if self.scaler is not None else flat.copy()
        batch[LAG_GROUP] = torch.from_numpy(lag)
        batch = {g.name: batch[g.name] for g in FEATURE_GROUPS}  # spec order
        batch[SEQ_KEY] = torch.from_numpy(seq)
        mask = self.diagram_mask[rows]
        p = max(int(mask.sum(axis=1).max(initial=0)), 1)
        batch[DIAGRAMS_KEY] = torch.from_numpy(np.ascontiguousarray(self.diagrams[rows, :p]))
        batch[DIAGRAM_MASK_KEY] = torch.from_numpy(np.ascontiguousarray(mask[:, :p]))
        batch[HOLDINGS_KEY] = torch.from_numpy(self.holdings[rows])
        return batch

    def label_tensors(self, rows: np.ndarray) -> Labels:
        """{task: float32 (B,) with NaN = undefined}; {} when the data have no labels (the score month)."""
        if self.labels is None:
            return {}
        return {k: torch.from_numpy(v[rows].astype(np.float32)) for k, v in self.labels.items()}

    def nbytes(self) -> int:
        arrays = [*self.groups.values(), self.txn_seq, self.diagrams, self.diagram_mask, self.holdings, self.months]
        arrays += list(self.labels.values()) if self.labels else []
        return int(sum(a.nbytes for a in arrays))


# ------------------------------------------------------------------------------------------------ warehouse IO


def _arrow(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None = None) -> pa.Table:
    return con.sql(sql, params=params).to_arrow_table()


class _Registered:
    """An Arrow table registered on the connection under a unique name for the duration of a ``with``."""

    def __init__(self, con: duckdb.DuckDBPyConnection, table: pa.Table):
        self.con, self.table, self.name = con, table, f"_ple_ids_{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> str:
        self.con.register(self.name, self.table)
        return self.name

    def __exit__(self, *exc) -> None:
        self.con.unregister(self.name)


def _existing_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute("SELECT table_schema, table_name FROM information_schema.tables").fetchall()
    return {f"{schema}.{name}" for schema, name in rows}


def _check_months(con: duckdb.DuckDBPyConnection, months: Sequence[date]) -> None:
    """Every group table and the diagram table exist and hold rows for each month; raise naming the first gap."""
    existing = _existing_tables(con)
    for table in [g.table for g in FEATURE_GROUPS] + [DIAGRAM_TABLE]:
        if table not in existing:
            raise MissingDataError(
                f"{table} does not exist in the warehouse (needed for month {months[0]:%Y-%m}); "
                f"materialize the feature assets first"
            )
    union = " UNION ALL ".join(
        f"SELECT '{g.table}' AS t, month, count(*) AS n FROM {g.table} WHERE month IN (SELECT unnest($ms)) GROUP BY month"
        for g in FEATURE_GROUPS
    )
    counts = {(t, m): n for t, m, n in con.execute(union, {"ms": list(months)}).fetchall()}
    kinds = {(m, k): n for m, k, n in con.execute(
        f"SELECT month, kind, count(*) FROM {DIAGRAM_TABLE} WHERE month IN (SELECT unnest($ms)) GROUP BY ALL",
        {"ms": list(months)}).fetchall()}
    for month in months:
        for g in FEATURE_GROUPS:
            if not counts.get((g.table, month)):
                raise MissingDataError(
                    f"{g.table} has no rows for month {month:%Y-%m}; materialize partition {month} of {g.name}"
                )
        for kind in DIAGRAM_KINDS:
            if not kinds.get((month, kind)):
                raise MissingDataError(
                    f"{DIAGRAM_TABLE} has no '{kind}' points for month {month:%Y-%m}; "
                    f"materialize partition {month} of tda_{kind}"
                )
    unknown = {k for _, k in kinds} - set(DIAGRAM_KINDS)
    if unknown:
        raise ValueError(f"{DIAGRAM_TABLE} months {months[0]:%Y-%m}..{months[-1]:%Y-%m}: unknown diagram kinds {sorted(unknown)}")


def months_customer_ids(con: duckdb.DuckDBPyConnection, months: Sequence[date], max_per_month: int | None = None,
                        seed: int = 0) -> list[np.ndarray]:
    """Per month, the sorted customer ids present in all 17 group tables (inner join), optionally cut to the
    ``max_per_month`` that ``subsample_customers`` picks; one query for all months. Raises MissingDataError."""
    months = list(months)
    _check_months(con, months)
    inter = " INTERSECT ".join(
        f"SELECT month, customer_id FROM {g.table} WHERE month IN (SELECT unnest($ms))" for g in FEATURE_GROUPS)
    params: dict = {"ms": months}
    pick = ""
    if max_per_month is not None:  # the same order as subsample_customers: md5(seed:id), then id
        pick = ("QUALIFY row_number() OVER (PARTITION BY month ORDER BY md5($seed || ':' || customer_id), "
                "customer_id) <= $k")
        params.update(seed=str(int(seed)), k=int(max_per_month))
    t = _arrow(con, f"SELECT month, customer_id FROM ({inter}) {pick} ORDER BY month, customer_id", params)
    got = t.column("month").to_numpy(zero_copy_only=False).astype("datetime64[D]")
    ids = t.column("customer_id").to_numpy(zero_copy_only=False).astype(object)
    demo = dict(con.execute("SELECT month, count(*) FROM features.demographics WHERE month IN (SELECT unnest($ms)) "
                            "GROUP BY month", {"ms": months}).fetchall())
    out = [ids[got == np.datetime64(m, "D")] for m in months]
    for m, sel in zip(months, out):
        if max_per_month is None and len(sel) < demo.get(m, 0):
            log.warning("month %s: %d of %d customers are missing from at least one feature group and are dropped",
                        m, demo[m] - len(sel), demo[m])
    return out


def month_customer_ids(con: duckdb.DuckDBPyConnection, month: date) -> np.ndarray:
    """Sorted customer ids present in all 17 group tables for ``month`` (inner join); raises MissingDataError."""
    return months_customer_ids(con, [month])[0]


def subsample_customers(ids: np.ndarray, max_per_month: int | None, seed: int = 0) -> np.ndarray:
    """The (sorted) ``max_per_month`` customers of ``ids`` that come first in seeded pseudonym order.

    The order is md5(f"{seed}:{customer_id}"): deterministic, independent of storage order and the same in every
    month, so a subsample keeps following the same customers through time (a panel, not 12 unrelated samples).
    """
    ids = np.asarray(ids, dtype=object)
    if max_per_month is None or len(ids) <= max_per_month:
        return np.sort(ids)
    con = duckdb.connect()
    try:
        con.register("ids", pa.table({"customer_id": pa.array(ids.tolist(), pa.string())}))
        picked = _arrow(
            con,
            "SELECT customer_id FROM ids ORDER BY md5($seed || ':' || customer_id), customer_id LIMIT $k",
            {"seed": str(int(seed)), "k": int(max_per_month)},
        ).column(0)
    finally:
        con.close()
    return np.sort(picked.to_numpy(zero_copy_only=False).astype(object))


# One query reads a table for several months at once (a feature table is a few row groups: a per-month query
# scans and binds the whole table every time; the 800-column lag table took ~3 s per month). Months are batched so
# one result stays near this many cells (float32: 256 MiB) — at most one month at 1M customers.
MAX_QUERY_CELLS = 1 << 26


def _month_chunks(sizes: Sequence[int], width: int) -> list[slice]:
    """Consecutive month index ranges whose rows x ``width`` stay under MAX_QUERY_CELLS (always >= 1 month)."""
    chunks, start, cells = [], 0, 0
    for j, n in enumerate(sizes):
        if j > start and cells + n * width > MAX_QUERY_CELLS:
            chunks.append(slice(start, j))
            start, cells = j, 0
        cells += n * width
    chunks.append(slice(start, len(sizes)))
    return chunks


def _diagram_points(con: duckdb.DuckDBPyConnection, ids_view: str, max_points: int) -> dict[str, np.ndarray]:
    """Points of the registered rows (month, customer): row index i, slot r (0-based, most persistent first,
    capped), birth, death, dim, kind code; plus the uncapped per-row count."""
    kind_code = "CASE kind " + " ".join(f"WHEN '{k}' THEN {i}" for i, k in enumerate(DIAGRAM_KINDS)) + " END"
    t = _arrow(con, f"""
        WITH pts AS (
            SELECT ids.i, d.birth, d.death, d.dim, {kind_code} AS kind_code
            FROM {DIAGRAM_TABLE} d JOIN {ids_view} ids ON d.month = ids.month AND d.customer_id = ids.customer_id),
        ranked AS (
            SELECT *,
                   row_number() OVER (PARTITION BY i
                                      ORDER BY death - birth DESC, kind_code, dim, birth, death) - 1 AS r,
                   count(*) OVER (PARTITION BY i) AS n
            FROM pts)
        SELECT i, r, n, birth, death, dim, kind_code FROM ranked WHERE r < $cap""", {"cap": max_points})
    return {c: t.column(c).to_numpy() for c in t.column_names}


def _fill_group(con, ids_view: str, rows: slice, table: str, columns: tuple[str, ...], span: str,
                out: np.ndarray) -> None:
    """Write ``columns`` of ``table`` for the registered rows (row i -> ``out[i - rows.start]``) into ``out``."""
    cols = ", ".join(f'f."{c}"' for c in columns)
    t = _arrow(con, f"SELECT ids.i, {cols} FROM {table} f JOIN {ids_view} ids "
                    f"ON f.month = ids.month AND f.customer_id = ids.customer_id ORDER BY ids.i")
    i = t.column(0).to_numpy()
    if len(i) != rows.stop - rows.start or not np.array_equal(i, np.arange(rows.start, rows.stop)):
        raise ValueError(f"{table} months {span}: rows do not match the customers (duplicate customer_id rows?)")
    for j, c in enumerate(columns):
        col = t.column(j + 1)
        if col.null_count:
            raise ValueError(f"{table} months {span}: column {c} has {col.null_count} NULLs (features are never NULL)")
        out[:, j] = col.to_numpy()
    if not np.isfinite(out).all():
        bad = [columns[j] for j in np.flatnonzero(~np.isfinite(out).all(axis=0))[:5]]
        raise ValueError(f"{table} months {span}: non-finite values in {bad}")


def _labelled_months(con, months: Sequence[date]) -> set[date]:
    if LABEL_TABLE not in _existing_tables(con):
        return set()
    return {m for (m,) in con.execute(f"SELECT DISTINCT month FROM {LABEL_TABLE} WHERE month IN (SELECT unnest($ms))",
                                      {"ms": list(months)}).fetchall()}


def _fill_labels(con, ids_view: str, rows: slice, span: str, out: dict[str, np.ndarray]) -> None:
    """NaN-initialised ``out`` (indexed like the registered rows, from ``rows.start``) <- their labels."""
    cols = ", ".join(f'l."{t.name}"' for t in TASKS)
    t = _arrow(con, f"SELECT ids.i, {cols} FROM {ids_view} ids JOIN {LABEL_TABLE} l "
                    f"ON l.month = ids.month AND l.customer_id = ids.customer_id")
    i = t.column("i").to_numpy()
    if len(np.unique(i)) != len(i):
        raise ValueError(f"{LABEL_TABLE} months {span}: duplicate customer_id rows")
    for task in TASKS:
        out[task.name][i - rows.start] = pc.fill_null(t.column(task.name).cast(pa.float64()), float("nan")).to_numpy()


def _rows_table(months: Sequence[date], per_month: Sequence[np.ndarray], start: int) -> pa.Table:
    ids = np.concatenate(per_month) if per_month else np.array([], dtype=object)
    month = np.repeat(np.array(months, dtype="datetime64[D]"), [len(x) for x in per_month])
    return pa.table({"month": pa.array(month, pa.date32()), "customer_id": pa.array(ids.tolist(), pa.string()),
                     "i": pa.array(np.arange(start, start + len(ids), dtype=np.int64))})


def load_months(con: duckdb.DuckDBPyConnection, months: Sequence[date], *, labels: bool | Literal["require"] = True,
                max_customers: int | None = None, sample_seed: int = 0,
                max_points: int = MAX_DIAGRAM_POINTS) -> MonthData:
    """Several months stacked into one pre-allocated MonthData (rows: month by month, customers sorted).

    ``labels``: True = load when stored (None for the whole set if any month lacks them), "require" = raise
    MissingDataError naming the month without labels, False = never read. ``max_customers``: per-month subsample
    (``subsample_customers``). ``max_points``: diagram cap, keeping the most persistent points.

    Each table is read once per batch of months (``MAX_QUERY_CELLS``), joined on (month, customer_id) to a
    registered table of the wanted rows, so cost follows the rows read, not months x tables.
    """
    months = list(months)
    if not months:
        raise ValueError("load_months needs at least one month")
    per_month = months_customer_ids(con, months, max_customers, sample_seed)
    sizes = [len(ids) for ids in per_month]
    n = sum(sizes)
    if labels:
        have = _labelled_months(con, months)
        missing = [m for m in months if m not in have]
        if missing and labels == "require":
            raise MissingDataError(f"{LABEL_TABLE} has no rows for month {missing[0]:%Y-%m}; "
                                   f"materialize task_labels {missing[0]}")
        all_labelled = not missing
    else:
        all_labelled = False
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    width = max(g.dim for g in FEATURE_GROUPS)
    chunks = _month_chunks(sizes, width)

    groups = {g.name: np.empty((n, g.dim), np.float32) for g in _STORED_GROUPS}
    txn_seq = np.empty((n, LAG_LENGTH, _N_CHANNELS), np.float32)
    label_arrays = {t.name: np.full(n, np.nan) for t in TASKS} if all_labelled else None
    month_col = np.repeat(np.array(months, dtype="datetime64[D]"), sizes)
    points = []
    for ch in chunks:
        rows = slice(int(offsets[ch.start]), int(offsets[ch.stop]))
        span = f"{months[ch.start]:%Y-%m}..{months[ch.stop - 1]:%Y-%m}"
        with _Registered(con, _rows_table(months[ch], per_month[ch], rows.start)) as view:
            points.append(_diagram_points(con, view, max_points))
            for g in _STORED_GROUPS:
                _fill_group(con, view, rows, g.table, g.columns, span, groups[g.name][rows])
            # column order = (lag, channel): the reshape is a view of the slice
            _fill_group(con, view, rows, f"features.{LAG_GROUP}", _LAG_COLUMNS, span,
                        txn_seq[rows].reshape(rows.stop - rows.start, -1))
            if label_arrays is not None:
                _fill_labels(con, view, rows, span, {k: v[rows] for k, v in label_arrays.items()})

    pts = {k: np.concatenate([p[k] for p in points]) for k in points[0]}
    p = max(int(pts["r"].max()) + 1 if len(pts["r"]) else 1, 1)
    diagrams = np.zeros((n, p, 4), np.float32)
    n_points = np.zeros(n, np.int32)
    i, r = pts["i"].astype(np.int64), pts["r"].astype(np.int64)
    diagrams[i, r] = np.stack([pts["birth"], pts["death"], pts["dim"], pts["kind_code"]], axis=1)
    n_points[i] = pts["n"]
    mask = np.arange(p)[None, :] < np.minimum(n_points, p)[:, None]
    ids_all = np.concatenate(per_month) if len(per_month) > 1 else per_month[0]
    return MonthData(
        customer_ids=ids_all, months=month_col, groups=groups, txn_seq=txn_seq, diagrams=diagrams,
        diagram_mask=mask, holdings=groups[HOLDINGS_GROUP].copy(), labels=label_arrays,
        diagram_points=n_points,
    )


def load_month(con: duckdb.DuckDBPyConnection, month: date, *, labels: bool = True, max_customers: int | None = None,
               sample_seed: int = 0, max_points: int = MAX_DIAGRAM_POINTS) -> MonthData:
    """One month; ``labels`` is None in the result when ``labels.task_labels`` has no rows for the month."""
    return load_months(con, [month], labels=labels, max_customers=max_customers, sample_seed=sample_seed,
                       max_points=max_points)


# ------------------------------------------------------------------------------------------------------ scaler


class FeatureScaler:
    """Per-column standardisation of the 1,211 feature columns, fitted on training months only.

    ``mean``/``std`` are float64 over ``all_columns()``; unscaled columns (``unscaled_columns()``) have mean 0 and
    std 1 so one formula, ``(x - mean) / std`` in float32, leaves them bit-identical. Std floor: a column whose
    training std is below ``std_floor`` (constant on the training months, e.g. a lag slot no training customer
    reaches) gets std 1, i.e. it is centred but not scaled: dividing by a tiny std would map any later deviation
    to a huge value instead of the 0 a constant column should give.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, scaled: np.ndarray, n_rows: int,
                 std_floor: float = STD_FLOOR, log: np.ndarray | None = None, clip: float = CLIP):
        k = len(all_columns())
        mean, std, scaled = np.asarray(mean, np.float64), np.asarray(std, np.float64), np.asarray(scaled, bool)
        if mean.shape != (k,) or std.shape != (k,) or scaled.shape != (k,):
            raise ValueError(f"scaler arrays must have shape ({k},) (the spec's columns); "
                             f"got {mean.shape}, {std.shape}, {scaled.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError("scaler mean/std must be finite and std > 0")
        log = np.zeros(k, bool) if log is None else np.asarray(log, bool)
        if log.shape != (k,) or (log & ~scaled).any():
            raise ValueError(f"scaler log mask must have shape ({k},) and mark scaled columns only")
        if not clip > 0:
            raise ValueError(f"scaler clip must be > 0, got {clip}")
        self.mean, self.std, self.scaled, self.log, self.clip = mean, std, scaled, log, float(clip)
        self.n_rows, self.std_floor = int(n_rows), float(std_floor)
        self._mean32 = {g: mean[s].astype(np.float32) for g, s in GROUP_SLICES.items()}
        self._std32 = {g: std[s].astype(np.float32) for g, s in GROUP_SLICES.items()}
        self._log_idx = {g: np.flatnonzero(log[s]) for g, s in GROUP_SLICES.items()}
        bound = np.where(scaled, self.clip, np.inf).astype(np.float32)
        self._bounds32 = {g: (-bound[s], bound[s]) for g, s in GROUP_SLICES.items()}
        dropped = np.array([c in dropped_columns() for c in all_columns()])
        self._drop_idx = {g: np.flatnonzero(dropped[s]) for g, s in GROUP_SLICES.items()}

    @classmethod
    def fit(cls, months: Sequence[MonthData], std_floor: float = STD_FLOOR, chunk_rows: int = 4096,
            clip: float = CLIP) -> FeatureScaler:
        """Fit on raw (unstandardised) training data in float64 over row chunks (bounded memory): one pass finds
        the 0/1 flag columns and the amount-like ones (``LOG_MAGNITUDE``), two more give mean/std of the
        (log-)values."""
        months = list(months)
        if any(md.standardised for md in months):
            raise ValueError("FeatureScaler.fit needs raw MonthData, got standardised data")
        n = sum(md.n_rows for md in months)
        if n < 2:
            raise ValueError(f"FeatureScaler.fit needs at least 2 training rows, got {n}")
        skip = unscaled_columns()
        cols = all_columns()
        scaled = np.array([c not in skip for c in cols])
        log = np.zeros(len(cols), bool)
        mean, std = np.zeros(len(cols)), np.ones(len(cols))

        def chunks(name):
            for md in months:
                for s in range(0, md.n_rows, chunk_rows):
                    yield md.group(name, slice(s, s + chunk_rows))

        for g in FEATURE_GROUPS:
            sl = GROUP_SLICES[g.name]
            binary, ones, zeros, peak = np.ones(g.dim, bool), np.zeros(g.dim, bool), np.zeros(g.dim, bool), np.zeros(g.dim)
            for x in chunks(g.name):
                binary &= ((x == 0) | (x == 1)).all(axis=0)
                ones |= (x == 1).any(axis=0)
                zeros |= (x == 0).any(axis=0)
                peak = np.maximum(peak, np.abs(x).max(axis=0, initial=0.0))
            # 0/1 flags stay 0/1; a column constant on the training months is not a flag (it is centred and
            # clipped, so a value it first takes later cannot enter raw).
            keep = scaled[sl] & ~(binary & ones & zeros)
            scaled[sl] = keep
            log[sl] = keep & (peak > LOG_MAGNITUDE)
            g_log = np.flatnonzero(log[sl])

            def values(x, g_log=g_log):
                x = x.astype(np.float64)
                x[:, g_log] = _signed_log1p(x[:, g_log])
                return x

            total = np.zeros(g.dim)
            for x in chunks(g.name):
                total += values(x).sum(axis=0)
            mu = total / n
            sq = np.zeros(g.dim)
            for x in chunks(g.name):
                sq += np.square(values(x) - mu).sum(axis=0)
            sd = np.sqrt(sq / n)
            sd = np.where(sd < std_floor, 1.0, sd)
            mean[sl] = np.where(keep, mu, 0.0)
            std[sl] = np.where(keep, sd, 1.0)
        return cls(mean, std, scaled, n, std_floor, log=log, clip=clip)

    def transform_group(self, name: str, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Conditioned float32 copy of a group's (n, dim) values (or written into ``out``, which may be ``x``):
        signed log1p on amount-like columns, standardise, clip to +-``clip``; flags and codes pass unchanged,
        except the lag tensor's MCC/hour codes, which are zeroed (``DROPPED_LAG_CHANNELS``)."""
        out = np.empty(x.shape, np.float32) if out is None else out
        if out is not x:
            out[...] = x
        idx = self._log_idx[name]
        if len(idx):
            out[:, idx] = _signed_log1p(out[:, idx])
        np.subtract(out, self._mean32[name], out=out)
        np.divide(out, self._std32[name], out=out)
        lo, hi = self._bounds32[name]
        np.clip(out, lo, hi, out=out)
        drop = self._drop_idx[name]
        if len(drop):
            out[:, drop] = 0.0
        return out

    def transform(self, md: MonthData, inplace: bool = False) -> MonthData:
        """Standardised MonthData (``scaler`` = self). ``inplace`` overwrites the groups of ``md`` (no copy; ``md``
        must not be used afterwards). ``txn_seq``, diagrams, holdings and labels are shared, not copied."""
        if md.standardised:
            raise ValueError("MonthData is already standardised")
        groups = {
            name: self.transform_group(name, x, out=x if inplace else None) for name, x in md.groups.items()
        }
        return replace(md, groups=groups, scaler=self)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (safetensors-ready): mean, std (float64), scaled (uint8), n_rows, std_floor."""
        return {"mean": self.mean.copy(), "std": self.std.copy(), "scaled": self.scaled.astype(np.uint8),
                "log": self.log.astype(np.uint8), "clip": np.array([self.clip]),
                "n_rows": np.array([self.n_rows], np.int64), "std_floor": np.array([self.std_floor])}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> FeatureScaler:
        return cls(np.asarray(arrays["mean"]), np.asarray(arrays["std"]), np.asarray(arrays["scaled"]).astype(bool),
                   int(np.asarray(arrays["n_rows"]).reshape(-1)[0]),
                   float(np.asarray(arrays.get("std_floor", [STD_FLOOR])).reshape(-1)[0]),
                   log=np.asarray(arrays["log"]).astype(bool) if "log" in arrays else None,
                   clip=float(np.asarray(arrays.get("clip", [np.inf])).reshape(-1)[0]))

    @property
    def content_hash(self) -> str:
        """SHA-256 of the column names and the fitted arrays: equal hashes = identical standardisation."""
        h = hashlib.sha256("\n".join(all_columns()).encode())
        for a in (self.mean, self.std, self.scaled.astype(np.uint8), self.log.astype(np.uint8)):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(f"{self.n_rows}|{self.std_floor!r}|{self.clip!r}".encode())
        return h.hexdigest()

    def __repr__(self) -> str:
        return (f"FeatureScaler(n_rows={self.n_rows}, scaled={int(self.scaled.sum())}/{len(self.scaled)}, "
                f"log={int(self.log.sum())}, clip={self.clip}, "
                f"hash={self.content_hash[:12]})")


# --------------------------------------------------------------------------------------------------- teacher data


@dataclass
class TeacherData:
    """The four parts of a ``TimeSplit`` (train = all training months stacked), standardised with a scaler fitted
    on the training part only. The test month's labels are loaded for the test part and nothing else; the score
    month's labels are never read (they need month t+1)."""

    split: TimeSplit
    scaler: FeatureScaler
    parts: dict[str, MonthData]

    @classmethod
    def from_split(cls, con: duckdb.DuckDBPyConnection, split: TimeSplit, *,
                   max_customers_per_month: int | None = None, sample_seed: int = 0,
                   max_points: int = MAX_DIAGRAM_POINTS,
                   parts: Sequence[str] = PARTS) -> TeacherData:
        """Load the parts (default all four; "train" is always loaded, it fits the scaler)."""
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; known: {PARTS}")
        kw = dict(max_customers=max_customers_per_month, sample_seed=sample_seed, max_points=max_points)
        train = load_months(con, split.train, labels="require", **kw)
        scaler = FeatureScaler.fit([train])
        loaded = {"train": scaler.transform(train, inplace=True)}
        months = {"validation": split.validation, "test": split.test, "score": split.score}
        for part in PARTS[1:]:
            if part in parts:
                raw = load_months(con, [months[part]], labels=False if part == "score" else "require", **kw)
                loaded[part] = scaler.transform(raw, inplace=True)
        return cls(split, scaler, loaded)

    def part(self, part: str) -> MonthData:
        try:
            return self.parts[part]
        except KeyError:
            raise KeyError(f"part {part!r} not loaded; loaded: {sorted(self.parts)}") from None

    def batch_indices(self, part: str, batch_size: int, shuffle: bool, seed: int, epoch: int) -> list[np.ndarray]:
        """Row indices of each batch of ``epoch``: a permutation seeded by (seed, epoch) or the stored order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = self.part(part).n_rows
        order = np.random.default_rng([int(seed), int(epoch)]).permutation(n) if shuffle else np.arange(n)
        return [order[s:s + batch_size] for s in range(0, n, batch_size)]

    def batches(self, part: Part, batch_size: int = 1024, shuffle: bool | None = None,
                seed: int = 0) -> Callable[[int], Iterator[tuple[Batch, Labels]]]:
        """``f(epoch)`` yielding ``(Batch, labels)`` over every row of ``part`` exactly once; ``shuffle`` defaults
        to True for "train" only. The same (seed, epoch) gives the same batches; labels are {} for "score"."""
        md = self.part(part)
        shuffle = (part == "train") if shuffle is None else shuffle

        def epoch_batches(epoch: int = 0) -> Iterator[tuple[Batch, Labels]]:
            for rows in self.batch_indices(part, batch_size, shuffle, seed, epoch):
                yield md.to_batch(rows), md.label_tensors(rows)

        return epoch_batches

    def subsample_customers(self, max_per_month: int, seed: int = 0) -> TeacherData:
        """Every part restricted, month by month, to the customers ``subsample_customers`` picks (the same rule as
        ``from_split(max_customers_per_month=...)``); the scaler stays the one fitted on the full training part."""
        out = {}
        for name, md in self.parts.items():
            keep = np.zeros(md.n_rows, bool)
            for m in np.unique(md.months):
                in_month = md.months == m
                picked = subsample_customers(md.customer_ids[in_month], max_per_month, seed)
                keep[in_month] = np.isin(md.customer_ids[in_month], picked)
            out[name] = md.select(np.flatnonzero(keep))
        return replace(self, parts=out)

    def nbytes(self) -> int:
        return sum(md.nbytes() for md in self.parts.values())

    def summary(self) -> dict[str, object]:
        return {
            "split": self.split.as_dict(),
            "rows": {k: v.n_rows for k, v in self.parts.items()},
            "diagram_width": {k: int(v.diagrams.shape[1]) for k, v in self.parts.items()},
            "bytes": self.nbytes(),
            "scaler_hash": self.scaler.content_hash,
        }
