"""The single source of truth for the 17 feature groups (SPEC §4): names, widths, columns, sources,
fitted state and consuming experts. Assets, checks, the model's feature router, the students and the
reports all read this list; nothing else may hard-code a group's columns.
"""

from __future__ import annotations

from dataclasses import dataclass

from ple_platform.core.data.schema import PRODUCT_GROUPS, PRODUCT_NAMES

TDA_STATS = ("count", "mean_life", "max_life", "std_life", "entropy", "total_pers", "mean_birth", "mean_death")
LAG_LENGTH = 200
LAG_CHANNELS = ("amount", "mcc", "daygap", "hour")
ROLLING_WINDOWS = (7, 30, 90, 180)
ROLLING_STATS = ("sum", "mean", "std", "count", "active_days")
HMM_MODES = (("journey", 5), ("lifecycle", 5), ("behaviour", 6))
GMM_COMPONENTS = 14
MCC_TOP_N = 30
MAMBA_DIM = 50
PRODUCT_EMBED_DIM = 30
MERCHANT_EMBED_DIM = 6
GRAPH_EMBED_DIM = 45
# Merchant-peer signals of graph_collaborative (core/features/peers.py), in ``peer_product_signals`` order.
PEER_SIGNAL_COLUMNS = (
    tuple(f"gcf_peer_hold_{g}" for g in PRODUCT_GROUPS) + tuple(f"gcf_peer_acq_{g}" for g in PRODUCT_GROUPS)
    + ("gcf_peer_log_weight",)
)
# Strong-tie peers' product-matched acquisitions per task product group (peers.strong_peer_acquisitions).
STRONG_PEER_COLUMNS = tuple(f"gcf_strong_acq_{g}" for g in PRODUCT_GROUPS)
MODEL_DERIVED_SERIES = ("spend", "txn_count", "n_products")
MODEL_DERIVED_STATS = ("ema10", "ema30", "ema50", "vel1", "vel3", "vel6", "tau", "season", "slope")

# Categorical code columns: integer codes, 0 = unknown/unseen (vocabularies are fitted on training months).
CATEGORICAL_COLUMNS = (
    "gender_code",
    "segment_code",
    "province_code",
    "channel_code",
    "age_band_code",
    "income_band_code",
    "suitability_code",
)


@dataclass(frozen=True)
class FeatureGroupSpec:
    name: str
    columns: tuple[str, ...]
    algorithm: str  # one line, shown in the UI and docs
    sources: tuple[str, ...]  # raw tables read (months <= t only)
    lookback_months: int  # how many months of history (including t) the group reads
    fitted: bool  # has state fitted on training months (versioned artifact)
    experts: tuple[str, ...]  # teacher experts that consume the group
    # Columns that may legitimately be all-zero for customers without the source data (e.g. no transactions).
    zero_ok_without: str | None = None

    @property
    def dim(self) -> int:
        return len(self.columns)

    @property
    def table(self) -> str:
        return f"features.{self.name}"


def _cols(prefix: str, n: int, width: int = 3) -> tuple[str, ...]:
    return tuple(f"{prefix}_{i:0{width}d}" for i in range(n))


FEATURE_GROUPS: tuple[FeatureGroupSpec, ...] = (
    FeatureGroupSpec(
        "demographics",
        (
            "age",
            "log_income",
            "income_missing",
            "tenure_months",
            "tenure_unknown",
            "is_active",
            "is_new_customer",
            "has_suitability_profile",
            "province_changed",
            "income_change_log",
        )
        + CATEGORICAL_COLUMNS,
        "Typed demographics with explicit missing/unknown flags; categorical codes from vocabularies fitted on training months",
        ("customers",),
        2,
        True,
        ("deepfm", "towers"),
    ),
    FeatureGroupSpec(
        "product_holdings",
        tuple(f"hold_{p}" for p in PRODUCT_NAMES),
        "Current 0/1 holdings of the 24 products (unknown source values stay NULL-flagged upstream)",
        ("holdings",),
        1,
        False,
        ("deepfm", "lightgcn"),
    ),
    FeatureGroupSpec(
        "txn_behavior",
        (
            "txn_count",
            "log_spend",
            "log_mean_amount",
            "log_max_amount",
            "n_unique_mcc",
            "n_unique_merchants",
            "recency_days",
            "ratio_night",
            "ratio_morning",
            "ratio_afternoon",
            "ratio_evening",
            "weekend_ratio",
            "spend_volatility",
            "days_active",
        ),
        "Month RFM and time-of-day profile of card transactions (DuckDB SQL)",
        ("transactions",),
        1,
        False,
        ("deepfm", "temporal"),
        zero_ok_without="transactions",
    ),
    FeatureGroupSpec(
        "derived_temporal",
        ("acquisitions_12m", "churns_12m", "months_observed", "product_diversity"),
        "Product acquisitions/churns over the customer's last 12 snapshots (DuckDB window functions)",
        ("holdings",),
        12,
        False,
        ("deepfm", "causal"),
    ),
    FeatureGroupSpec(
        "tda_global",
        tuple(f"tdag_h{d}_{s}" for d in (0, 1) for s in TDA_STATS),
        "Vietoris-Rips persistence (gudhi) of each customer's last 12 monthly behaviour vectors; H0/H1 x 8 statistics",
        ("transactions", "holdings"),
        12,
        True,
        ("perslay",),
    ),
    FeatureGroupSpec(
        "tda_local",
        tuple(f"tdal_h0_{s}" for s in TDA_STATS)
        + ("tdal_sup_count", "tdal_sup_max_life", "tdal_sup_total_pers", "tdal_sup_entropy")
        + ("tdal_land1_max", "tdal_land1_l1", "tdal_land2_max", "tdal_land2_l1"),
        "Cubical sublevel/superlevel persistence (gudhi) of the last 90 days of daily spend + persistence landscapes",
        ("transactions",),
        4,
        False,
        ("perslay",),
        zero_ok_without="transactions",
    ),
    FeatureGroupSpec(
        "hmm_states",
        tuple(f"hmm_{m}_p{k}" for m, n in HMM_MODES for k in range(n))
        + tuple(f"hmm_{m}_{s}" for m, _ in HMM_MODES for s in ("state", "dwell", "trans_entropy")),
        "Three Gaussian HMMs fitted on customers' own monthly sequences; forward-filtered posteriors at month t",
        ("transactions", "holdings"),
        12,
        True,
        ("temporal",),
    ),
    FeatureGroupSpec(
        "mamba_temporal",
        _cols("mamba", MAMBA_DIM),
        "Self-supervised Mamba (selective state space) encoder over the last 200 transactions",
        ("transactions",),
        12,
        True,
        ("temporal",),
    ),
    FeatureGroupSpec(
        "product_hierarchy",
        _cols("prodh", PRODUCT_EMBED_DIM) + ("prodh_radius", "prodh_spread", "prodh_drift", "prodh_peer_dist"),
        "Poincare-ball (geoopt) embedding of the product taxonomy; tenure-weighted Einstein midpoint of held products, "
        "its drift from the equal-weight midpoint and its distance to the merchant peers' midpoint",
        ("holdings", "transactions"),
        12,
        True,
        ("lightgcn", "causal"),
    ),
    FeatureGroupSpec(
        "merchant_hierarchy",
        tuple(f"merch_{lvl}_{i:02d}" for lvl in ("l1", "l2", "code") for i in range(MERCHANT_EMBED_DIM))
        + tuple(f"merch_spread_{lvl}" for lvl in ("l1", "l2", "code"))
        + tuple(f"merch_radius_{lvl}" for lvl in ("l1", "l2", "code"))
        + ("merch_loyalty", "merch_gini", "merch_log_n_merchants"),
        "Poincare-ball embedding of the MCC tree (Riemannian Adam); recency/spend-weighted midpoints per level",
        ("transactions",),
        3,
        True,
        ("hgcn",),
        zero_ok_without="transactions",
    ),
    FeatureGroupSpec(
        "graph_collaborative",
        _cols("gcf", GRAPH_EMBED_DIM) + ("gcf_norm", "gcf_degree") + PEER_SIGNAL_COLUMNS + STRONG_PEER_COLUMNS,
        "LightGCN (torch-geometric) trained with BPR on the customer-product graph; inductive customer embeddings; "
        "merchant peers' (customer-merchant-customer graph, 90 days) product-group holdings and acquisitions",
        ("holdings", "transactions"),
        4,
        True,
        ("lightgcn",),
    ),
    FeatureGroupSpec(
        "gmm_clustering",
        tuple(f"gmm_p{k:02d}" for k in range(GMM_COMPONENTS)) + ("gmm_cluster", "gmm_entropy"),
        "Gaussian mixture (K=14, full covariance) fitted on training months: posteriors, cluster id, entropy",
        ("customers", "holdings", "transactions"),
        1,
        True,
        ("deepfm", "ot"),
    ),
    FeatureGroupSpec(
        "model_derived",
        tuple(f"md_{s}_{st}" for s in MODEL_DERIVED_SERIES for st in MODEL_DERIVED_STATS),
        "Per-customer EMAs, velocities, autocorrelation time constants, seasonality and trend along own history",
        ("transactions", "holdings"),
        12,
        False,
        ("temporal", "deepfm"),
    ),
    FeatureGroupSpec(
        "txn_lag_tensor",
        tuple(f"lag_{c}_{i:03d}" for i in range(1, LAG_LENGTH + 1) for c in LAG_CHANNELS),
        "Last 200 transactions x (amount, MCC index, days before snapshot end, hour), most recent first; padding = -1",
        ("transactions",),
        12,
        False,
        ("temporal", "deepfm"),
        zero_ok_without="transactions",
    ),
    FeatureGroupSpec(
        "txn_rolling_stats",
        tuple(f"roll_{w}d_{s}" for w in ROLLING_WINDOWS for s in ROLLING_STATS),
        "Rolling 7/30/90/180-day windows ending at the snapshot: sum, mean, std, count, active days (DuckDB)",
        ("transactions",),
        6,
        False,
        ("deepfm", "causal", "ot"),
        zero_ok_without="transactions",
    ),
    FeatureGroupSpec(
        "product_history_multihot",
        tuple(f"acq6m_{p}" for p in PRODUCT_NAMES),
        "Products acquired within the last 6 months (history only, never the label month)",
        ("holdings",),
        7,
        False,
        ("lightgcn", "deepfm"),
    ),
    FeatureGroupSpec(
        "mcc_top30_multihot",
        tuple(f"mcc_top_{i:02d}" for i in range(MCC_TOP_N)) + ("mcc_top_other",),
        "Presence in the last 90 days of each of the top-30 MCCs (vocabulary fitted on training months) + other",
        ("transactions",),
        4,
        True,
        ("hgcn", "ot"),
        zero_ok_without="transactions",
    ),
)

FEATURE_GROUPS_BY_NAME: dict[str, FeatureGroupSpec] = {g.name: g for g in FEATURE_GROUPS}
TOTAL_FEATURE_WIDTH = sum(g.dim for g in FEATURE_GROUPS)
EXPERTS = ("deepfm", "temporal", "hgcn", "perslay", "lightgcn", "causal", "ot")


def group(name: str) -> FeatureGroupSpec:
    try:
        return FEATURE_GROUPS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown feature group {name!r}; known: {sorted(FEATURE_GROUPS_BY_NAME)}") from None


def all_columns() -> tuple[str, ...]:
    """The 1,211 feature columns in spec order (the order of the teacher's input vector)."""
    return tuple(c for g in FEATURE_GROUPS for c in g.columns)
