"""The canonical monthly schema every source is mapped to, and the one product table used everywhere.

A *month* is identified by its first day (``date(2016, 5, 1)``), which is also the Dagster partition key
(``"2016-05-01"``). Tables:

* ``customers``    one row per (customer_id, month) present in that snapshot
* ``holdings``     one row per (customer_id, month): the 24 Santander products as 0/1 (NULL = unknown)
* ``transactions`` card transactions whose timestamp falls inside the month
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pyarrow as pa


@dataclass(frozen=True)
class Product:
    index: int
    name: str  # English name used in every table and report
    kaggle_code: str  # Santander column is f"ind_{kaggle_code}_fin_ult1" / f"ind_{kaggle_code}_ult1"
    group: str  # task product group (deposits, investments, accounts, lending, payments, other)

    @property
    def santander_column(self) -> str:
        return SANTANDER_PRODUCT_COLUMNS[self.kaggle_code]


# Order = Santander's column order; the index is the product id used in tensors and graph nodes.
PRODUCTS: tuple[Product, ...] = tuple(
    Product(i, name, code, group)
    for i, (name, code, group) in enumerate(
        [
            ("saving", "ahor", "other"),
            ("guarantee", "aval", "other"),
            ("current_account", "cco", "accounts"),
            ("derivative", "cder", "other"),
            ("payroll_account", "cno", "accounts"),
            ("junior_account", "ctju", "accounts"),
            ("mas_particular", "ctma", "accounts"),
            ("particular_account", "ctop", "accounts"),
            ("particular_plus", "ctpp", "accounts"),
            ("short_deposit", "deco", "deposits"),
            ("medium_deposit", "deme", "deposits"),
            ("long_deposit", "dela", "deposits"),
            ("e_account", "ecue", "accounts"),
            ("funds", "fond", "investments"),
            ("mortgage", "hip", "lending"),
            ("pension_plan", "plan", "investments"),
            ("loans", "pres", "lending"),
            ("taxes", "reca", "payments"),
            ("credit_card", "tjcr", "payments"),
            ("securities", "valo", "investments"),
            ("home_account", "viv", "accounts"),
            ("payroll", "nomina", "payments"),
            ("pensions", "nom_pens", "other"),
            ("direct_debit", "recibo", "payments"),
        ]
    )
)
PRODUCT_NAMES: tuple[str, ...] = tuple(p.name for p in PRODUCTS)
N_PRODUCTS = len(PRODUCTS)

# Santander's columns carry a "_fin" infix except the last three (nomina, nom_pens, recibo).
SANTANDER_PRODUCT_COLUMNS: dict[str, str] = {
    p.kaggle_code: (f"ind_{p.kaggle_code}_ult1" if p.kaggle_code in {"nomina", "nom_pens", "recibo"} else f"ind_{p.kaggle_code}_fin_ult1")
    for p in PRODUCTS
}

# Task product groups, in the class order used by nba_primary (class 0 = no acquisition).
PRODUCT_GROUPS: tuple[str, ...] = ("deposits", "investments", "accounts", "lending", "payments", "other")
PRODUCTS_BY_GROUP: dict[str, tuple[str, ...]] = {
    g: tuple(p.name for p in PRODUCTS if p.group == g) for g in PRODUCT_GROUPS
}
INVESTMENT_PRODUCTS: frozenset[str] = frozenset(PRODUCTS_BY_GROUP["investments"]) | {"derivative"}
# Products that define a "core" relationship: losing one of them is a churn signal.
CORE_PRODUCTS: tuple[str, ...] = ("current_account", "payroll_account", "particular_account", "e_account", "payroll")

GENDERS = ("F", "M")
SEGMENTS = ("01-TOP", "02-PARTICULARES", "03-UNIVERSITARIO")
CHANNELS = tuple(f"CH{i:03d}" for i in range(12))  # acquisition channels used by the synthetic source
SUITABILITY_PROFILES = ("conservative", "balanced", "growth")
AGE_MIN, AGE_MAX = 18, 110
# Documented plausibility ranges of landing values (docs/architecture.md, "Raw landing rules"). Wide enough for
# every real source seen (Kaggle renta reaches 2.9e7, antiguedad 256 months), narrow enough that a unit or
# sentinel error (1e300, -999999) fails ingest instead of overflowing features downstream.
AMOUNT_MAX = 1_000_000.0  # one card transaction, EUR
INCOME_MAX = 100_000_000.0  # yearly gross income, EUR
TENURE_MAX_MONTHS = 1200  # 100 years
JOIN_DATE_MIN = date(1900, 1, 1)  # join dates run from here to the end of the snapshot month (none in the future)

# --- Arrow schemas of the canonical tables (what a landing file must contain, exactly these types) ----------

CUSTOMERS_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("month", pa.date32(), nullable=False),
        pa.field("age", pa.int16()),
        pa.field("gender", pa.string()),
        pa.field("province", pa.string()),
        pa.field("channel", pa.string()),
        pa.field("segment", pa.string()),
        pa.field("income", pa.float64()),
        pa.field("join_date", pa.date32()),
        pa.field("tenure_months", pa.int32()),
        pa.field("is_active", pa.bool_()),
        pa.field("suitability_profile", pa.string()),
    ]
)

HOLDINGS_SCHEMA = pa.schema(
    [pa.field("customer_id", pa.string(), nullable=False), pa.field("month", pa.date32(), nullable=False)]
    + [pa.field(name, pa.int8()) for name in PRODUCT_NAMES]
)

TRANSACTIONS_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us"), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("mcc", pa.int16(), nullable=False),
        pa.field("merchant_id", pa.string(), nullable=False),
    ]
)

# Ground truth of the synthetic source: never read by a feature; benchmarks only.
GROUND_TRUTH_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("month", pa.date32(), nullable=False),
        pa.field("persona", pa.string()),
        pa.field("latent_wealth", pa.float32()),
        pa.field("latent_activity", pa.float32()),
        pa.field("latent_risk", pa.float32()),
        pa.field("latent_digital", pa.float32()),
        pa.field("latent_loyalty", pa.float32()),
        pa.field("intent_travel", pa.float32()),
        pa.field("intent_housing", pa.float32()),
        pa.field("intent_saving", pa.float32()),
        pa.field("intent_investing", pa.float32()),
        pa.field("intent_family", pa.float32()),
        pa.field("intent_digital", pa.float32()),
        pa.field("life_event", pa.string()),
        # Planted mechanisms (docs/data.md §4.1), each acting on the hazards of the next month.
        pa.field("community", pa.int32()),
        pa.field("mech_burst", pa.bool_()),
        pa.field("mech_sibling_shift", pa.bool_()),
        pa.field("mech_peer_products", pa.int32()),  # bit j: a peer acquired PRODUCT_NAMES[j] this month
        pa.field("routine_weekday", pa.int8()),  # weekly grocery routine, 0 = Monday; NULL = none
        pa.field("mech_routine_break", pa.bool_()),
    ]
)

TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "customers": CUSTOMERS_SCHEMA,
    "holdings": HOLDINGS_SCHEMA,
    "transactions": TRANSACTIONS_SCHEMA,
    "ground_truth": GROUND_TRUTH_SCHEMA,
}
RAW_TABLES: tuple[str, ...] = ("customers", "holdings", "transactions")


def month_start(d: date) -> date:
    return date(d.year, d.month, 1)


def add_months(d: date, n: int) -> date:
    y, m = divmod(d.month - 1 + n, 12)
    return date(d.year + y, m + 1, 1)


def month_range(start: date, end: date) -> list[date]:
    """Inclusive list of month starts from ``start`` to ``end``."""
    out, cur = [], month_start(start)
    while cur <= month_start(end):
        out.append(cur)
        cur = add_months(cur, 1)
    return out


def parse_month(text: str) -> date:
    """Accept ``2016-05``, ``2016-05-01`` or ``2016-05-28`` and return the month start."""
    parts = text.strip().split("-")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a month: {text!r} (expected YYYY-MM or YYYY-MM-DD)")
    if not 1 <= int(parts[1]) <= 12 or not 1 <= int(parts[0]) <= 9999:
        raise ValueError(f"not a month: {text!r} (the month must be 01..12)")
    return date(int(parts[0]), int(parts[1]), 1)
