"""One builder per feature group: read month t (and earlier) from the warehouse, load or fit the group's
training-month state, run the group's algorithm, and return an (N, dim) float32 matrix in spec order.

``build_group(name, ctx)`` is what the Dagster feature assets call; everything here is plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Callable

import duckdb
import numpy as np

from ple_platform.core.data.taxonomy import mcc_hierarchy, product_tree
from ple_platform.core.features import tabular
from ple_platform.core.features.fits import Fit, FitPolicy, FitRecord, FitStore
from ple_platform.core.features.panel import (
    Population,
    daily_spend,
    holding_tenure,
    holdings_matrix,
    last_transactions,
    monthly_panel,
    population,
    subsample,
    transactions_window,
)
from ple_platform.core.reporting import json_ready
from ple_platform.core.runtime import compute_threads
from ple_platform.core.features.spec import (
    GMM_COMPONENTS,
    GRAPH_EMBED_DIM,
    HMM_MODES,
    MERCHANT_EMBED_DIM,
    PRODUCT_EMBED_DIM,
    group,
)

FIT_SAMPLE = 20_000  # customers per fit: enough for stable estimates, bounded cost at 1M customers
# The Mamba encoder is the one expensive fit (~20 ms per customer-epoch on one CPU core at this size):
# it is fitted on a smaller sample; on the GPU profile the same code runs through the mamba-ssm kernel.
MAMBA_FIT_SAMPLE = 2_000
MAMBA_CONFIG = {"d_model": 32, "d_state": 8, "n_layers": 2}
TDA_METRICS = ("log_spend", "log_count", "log_mean_amount", "n_unique_mcc", "days_active", "n_products", "weekend_ratio", "ratio_evening")
HMM_METRICS = {
    "journey": ("n_unique_mcc", "n_unique_merchants", "log_count", "recency_days", "days_active"),
    "lifecycle": ("n_products", "log_spend", "log_mean_amount", "acquisitions", "churns"),
    "behaviour": ("ratio_night", "ratio_morning", "ratio_afternoon", "ratio_evening", "weekend_ratio"),
}


@dataclass
class BuildContext:
    con: duckdb.DuckDBPyConnection
    month: date
    policy: FitPolicy
    fits: FitStore
    seed: int = 7
    fit_sample: int = FIT_SAMPLE
    tree_epochs: int = 600  # Poincare tree embeddings (static fits); tests use fewer
    mamba_fit_sample: int = MAMBA_FIT_SAMPLE
    records: list[FitRecord] = field(default_factory=list)

    @cached_property
    def pop(self) -> Population:
        return population(self.con, self.month)

    @property
    def fit_month(self) -> date:
        return self.policy.fit_month(self.month)

    def fit(self, name: str, fit_fn: Callable[[list[date]], Fit], static: bool = False, window: int | None = None) -> Fit:
        """Load or compute the fit of ``name`` for this month's anchor; static fits ignore the data.
        ``window`` limits the recorded (and passed) fit months to the last ``window`` months up to the anchor."""
        months = [] if static else self.policy.fit_months(self.month)[-(window or 0):]
        key = "static" if static else self.fit_month.isoformat()
        fit, record = self.fits.get_or_fit(name, key, months, lambda: fit_fn(months))
        self.records.append(record)
        return fit

    def fit_population(self) -> Population:
        return subsample(population(self.con, self.fit_month), self.fit_sample)


@dataclass
class GroupOutput:
    values: np.ndarray
    fit_records: list[FitRecord]
    diagrams: dict[str, np.ndarray] | None = None


def _standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (x - mean) / np.where(std > 0, std, 1.0)


def _stack(panel: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    return np.stack([panel[n] for n in names], axis=-1)


# --- builders -------------------------------------------------------------------------------------------------


def _demographics(ctx: BuildContext) -> GroupOutput:
    arrays, meta = ctx.fit("demographics", lambda months: ({}, tabular.fit_demographics_vocab(ctx.con, months)))
    return GroupOutput(tabular.demographics(ctx.con, ctx.pop, meta), ctx.records)


def _tda_global(ctx: BuildContext) -> GroupOutput:
    from ple_platform.core.features.topology import fit_point_scaler, tda_global_features

    def fit(months):
        panel, mask = monthly_panel(ctx.con, ctx.fit_population(), 12)
        mean, std = fit_point_scaler(_stack(panel, TDA_METRICS), mask)
        return {"mean": mean, "std": std}, {"metrics": list(TDA_METRICS)}

    arrays, _ = ctx.fit("tda_global", fit)
    panel, mask = monthly_panel(ctx.con, ctx.pop, 12)
    stats, diagrams = tda_global_features(_standardise(_stack(panel, TDA_METRICS), arrays["mean"], arrays["std"]), mask)
    return GroupOutput(stats.astype(np.float32), ctx.records, diagrams)


def _tda_local(ctx: BuildContext) -> GroupOutput:
    from ple_platform.core.features.topology import tda_local_features

    stats, diagrams = tda_local_features(np.log1p(daily_spend(ctx.con, ctx.pop, 90)))
    return GroupOutput(stats.astype(np.float32), ctx.records, diagrams)


def _hmm(ctx: BuildContext) -> GroupOutput:
    from ple_platform.core.features.hmm import GaussianHMM, fit_hmm_modes, hmm_group_features

    def inputs(pop: Population) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        panel, mask = monthly_panel(ctx.con, pop, 12)
        return {mode: (_stack(panel, HMM_METRICS[mode]), mask) for mode, _ in HMM_MODES}

    def fit(months):
        models = fit_hmm_modes(inputs(ctx.fit_population()), base_seed=ctx.seed)
        arrays = {f"{mode}.{k}": v for mode, m in models.items() for k, v in m.to_arrays().items()}
        return arrays, {"metrics": {m: list(v) for m, v in HMM_METRICS.items()}}

    arrays, _ = ctx.fit("hmm_states", fit)
    models = {
        mode: GaussianHMM.from_arrays({k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{mode}.")})
        for mode, _ in HMM_MODES
    }
    return GroupOutput(hmm_group_features(models, inputs(ctx.pop)).astype(np.float32), ctx.records)


def _mamba(ctx: BuildContext) -> GroupOutput:
    from ple_platform.core.features.mamba import encode, fit_mamba_encoder

    def fit(months):
        seqs = last_transactions(ctx.con, subsample(ctx.fit_population(), ctx.mamba_fit_sample), 12)
        state, metrics = fit_mamba_encoder(seqs, seed=ctx.seed, epochs=2, batch_size=128, device=_torch_device(), **MAMBA_CONFIG)
        return {k: v.detach().cpu().numpy() for k, v in state.items()}, {"loss_history": metrics["loss_history"], "config": metrics["config"]}

    arrays, _ = ctx.fit("mamba_temporal", fit)
    values = encode(arrays, last_transactions(ctx.con, ctx.pop, 12), batch_size=512, device=_torch_device())
    return GroupOutput(values.astype(np.float32), ctx.records)


def _torch_device() -> str:
    """CUDA when the step landed on a GPU node (k8s profile), else CPU (the embedded default)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _product_hierarchy(ctx: BuildContext) -> GroupOutput:
    from ple_platform.core.features.hyperbolic import fit_poincare_tree, product_hierarchy_history_features
    from ple_platform.core.features.peers import merchant_peer_graph

    tree, leaves = product_tree()

    def fit(_months):
        emb, metrics = fit_poincare_tree(tree, PRODUCT_EMBED_DIM, epochs=ctx.tree_epochs, seed=ctx.seed)
        return {"node_emb": emb}, {"metrics": _jsonable(metrics)}

    arrays, _ = ctx.fit("product_hierarchy", fit, static=True)
    values = product_hierarchy_history_features(
        holdings_matrix(ctx.con, ctx.pop), holding_tenure(ctx.con, ctx.pop, group("product_hierarchy").lookback_months),
        arrays["node_emb"][leaves], merchant_peer_graph(ctx.con, ctx.pop),
    )
    return GroupOutput(values.astype(np.float32), ctx.records)


def _merchant_hierarchy(ctx: BuildContext) -> GroupOutput:
    from ple_platform.core.features.hyperbolic import fit_poincare_tree, merchant_hierarchy_features

    h = mcc_hierarchy()

    def fit(_months):
        emb, metrics = fit_poincare_tree(h.tree, MERCHANT_EMBED_DIM, epochs=ctx.tree_epochs, seed=ctx.seed)
        return {"node_emb": emb}, {"metrics": _jsonable(metrics)}

    arrays, _ = ctx.fit("merchant_hierarchy", fit, static=True)
    t = transactions_window(ctx.con, ctx.pop, 3)
    values = merchant_hierarchy_features(
        t["customer_idx"], t["mcc_idx"], t["amount"], t["age_days"], t["merchant_key"], len(ctx.pop), arrays["node_emb"], h
    )
    return GroupOutput(values.astype(np.float32), ctx.records)


def _edges(holdings: np.ndarray) -> np.ndarray:
    c, p = np.nonzero(holdings > 0)
    return np.stack([c, p], axis=1).astype(np.int64)


def _graph_collaborative(ctx: BuildContext) -> GroupOutput:
    from ple_platform.core.features.lightgcn import fit_lightgcn, lightgcn_customer_features
    from ple_platform.core.features.peers import (
        group_holdings_and_acquisitions,
        merchant_peer_graph,
        peer_product_signals,
        product_holdings_and_acquisitions,
        strong_peer_acquisitions,
        strong_tie_graph,
    )

    def fit(months):
        fit_pop = ctx.fit_population()
        state, metrics = fit_lightgcn(
            _edges(holdings_matrix(ctx.con, fit_pop)), len(fit_pop), dim=GRAPH_EMBED_DIM, epochs=30, seed=ctx.seed
        )
        return state, {"metrics": _jsonable(metrics)}

    state, _ = ctx.fit("graph_collaborative", fit, window=1)
    holdings = holdings_matrix(ctx.con, ctx.pop)
    # Customers are folded into the fit month's graph (months <= t): same holdings, same embedding every month.
    fit_pop = ctx.fit_population()
    reference = (_edges(holdings_matrix(ctx.con, fit_pop)), len(fit_pop))
    values = lightgcn_customer_features(state, _edges(holdings), len(ctx.pop), reference=reference)
    # The embedding is a function of the customer's own bits; the peer columns bring in the neighbourhood.
    held, acquired = group_holdings_and_acquisitions(ctx.con, ctx.pop)
    peers = peer_product_signals(merchant_peer_graph(ctx.con, ctx.pop), held, acquired)
    # Product-matched acquisitions over strong ties: the peer-influence signal the group-level shares confound.
    strong = strong_peer_acquisitions(strong_tie_graph(ctx.con, ctx.pop), *product_holdings_and_acquisitions(ctx.con, ctx.pop))
    return GroupOutput(np.concatenate([values, peers, strong], axis=1).astype(np.float32), ctx.records)


def _gmm_inputs(con: duckdb.DuckDBPyConnection, pop: Population) -> np.ndarray:
    panel, _ = monthly_panel(con, pop, 1)
    demo = tabular.demographics(con, pop, {"gender": [], "segment": [], "province": [], "channel": [], "suitability": [], "income_edges": []})
    return np.concatenate([np.stack([v[:, -1] for v in panel.values()], axis=1), demo[:, :5]], axis=1)


def _gmm(ctx: BuildContext) -> GroupOutput:
    from ple_platform.core.features.mixture import fit_gmm, gmm_features

    def fit(months):
        per_month = max(ctx.fit_sample // len(months), 1)
        # A different salt per month: the fit sees different customers each month, not the same sample 12 times.
        x = np.concatenate([_gmm_inputs(ctx.con, subsample(population(ctx.con, m), per_month, salt=i)) for i, m in enumerate(months)])
        return fit_gmm(x, GMM_COMPONENTS, seed=ctx.seed), {"n_fit_rows": int(len(x))}

    arrays, _ = ctx.fit("gmm_clustering", fit)
    return GroupOutput(gmm_features(arrays, _gmm_inputs(ctx.con, ctx.pop)).astype(np.float32), ctx.records)


def _model_derived(ctx: BuildContext) -> GroupOutput:
    panel, mask = monthly_panel(ctx.con, ctx.pop, 12)
    return GroupOutput(tabular.model_derived(panel, mask), ctx.records)


def _txn_lag_tensor(ctx: BuildContext) -> GroupOutput:
    seqs = last_transactions(ctx.con, ctx.pop, 12)
    return GroupOutput(seqs.reshape(len(ctx.pop), -1), ctx.records)


def _mcc_top30(ctx: BuildContext) -> GroupOutput:
    _, meta = ctx.fit("mcc_top30_multihot", lambda months: ({}, {"vocabulary": tabular.fit_mcc_vocabulary(ctx.con, months)}))
    return GroupOutput(tabular.mcc_top30_multihot(ctx.con, ctx.pop, meta["vocabulary"]), ctx.records)


def _simple(fn: Callable[[duckdb.DuckDBPyConnection, Population], np.ndarray]) -> Callable[[BuildContext], GroupOutput]:
    return lambda ctx: GroupOutput(fn(ctx.con, ctx.pop), ctx.records)


def _jsonable(metrics: dict) -> dict:
    """The fit's scalar metrics as JSON (arrays are state, kept out of the record)."""
    return json_ready({k: v for k, v in metrics.items() if not isinstance(v, np.ndarray)})


BUILDERS: dict[str, Callable[[BuildContext], GroupOutput]] = {
    "demographics": _demographics,
    "product_holdings": _simple(tabular.product_holdings),
    "txn_behavior": _simple(tabular.txn_behavior),
    "derived_temporal": _simple(tabular.derived_temporal),
    "tda_global": _tda_global,
    "tda_local": _tda_local,
    "hmm_states": _hmm,
    "mamba_temporal": _mamba,
    "product_hierarchy": _product_hierarchy,
    "merchant_hierarchy": _merchant_hierarchy,
    "graph_collaborative": _graph_collaborative,
    "gmm_clustering": _gmm,
    "model_derived": _model_derived,
    "txn_lag_tensor": _txn_lag_tensor,
    "txn_rolling_stats": _simple(tabular.txn_rolling_stats),
    "product_history_multihot": _simple(tabular.product_history_multihot),
    "mcc_top30_multihot": _mcc_top30,
}


def build_group(name: str, ctx: BuildContext) -> GroupOutput:
    spec = group(name)
    with compute_threads():
        out = BUILDERS[name](ctx)
    if out.values.shape != (len(ctx.pop), spec.dim):
        raise ValueError(f"feature group {name}: builder returned shape {out.values.shape}, spec says ({len(ctx.pop)}, {spec.dim})")
    return out
