"""Post-write quality rules for the raw warehouse tables, as SQL that counts offending rows of one month.

Landing validation (``validation.py``) refuses bad files before anything is written; these rules then
prove the stored partition is sound. They back the blocking Dagster asset checks, so a failure stops
every feature downstream of that month.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import duckdb

from ple_platform.core.data.schema import AGE_MAX, AGE_MIN, PRODUCT_NAMES
from ple_platform.core.data.taxonomy import mcc_hierarchy
from ple_platform.core.warehouse import raw_table_columns


@dataclass(frozen=True)
class RawRule:
    name: str
    description: str
    offending_sql: str  # SELECT count(*) ...; placeholders: {t} = qualified table; one ? = the month


def _known_mcc_list() -> str:
    return ", ".join(str(int(c)) for c in mcc_hierarchy().codes)


def _unique() -> str:
    return "SELECT count(*) - count(DISTINCT customer_id) FROM {t} WHERE month = ?"


RAW_RULES: dict[str, tuple[RawRule, ...]] = {
    "customers": (
        RawRule("unique_customer_month", "Each customer appears once per snapshot month", _unique()),
        RawRule(
            "plausible_ages",
            f"Ages are NULL or within {AGE_MIN}..{AGE_MAX}",
            f"SELECT count(*) FROM {{t}} WHERE month = ? AND age IS NOT NULL AND (age < {AGE_MIN} OR age > {AGE_MAX})",
        ),
        RawRule(
            "non_negative_income",
            "Incomes are NULL (unknown) or finite and non-negative",
            "SELECT count(*) FROM {t} WHERE month = ? AND income IS NOT NULL AND (isnan(income) OR isinf(income) OR income < 0)",
        ),
    ),
    "holdings": (
        RawRule("unique_customer_month", "Each customer appears once per snapshot month", _unique()),
        RawRule(
            "binary_product_flags",
            "Product flags are 0, 1 or NULL (unknown)",
            "SELECT count(*) FROM {t} WHERE month = ? AND ("
            + " OR ".join(f'"{p}" NOT IN (0, 1)' for p in PRODUCT_NAMES)
            + ")",
        ),
        RawRule(
            "customers_known",
            "Every holdings row belongs to a customer of the same snapshot",
            "SELECT count(*) FROM {t} h ANTI JOIN raw.customers c ON c.customer_id = h.customer_id AND c.month = h.month WHERE h.month = ?",
        ),
    ),
    "transactions": (
        RawRule(
            "finite_non_negative_amounts",
            "Amounts are finite and >= 0",
            "SELECT count(*) FROM {t} WHERE month = ? AND (amount IS NULL OR isnan(amount) OR isinf(amount) OR amount < 0)",
        ),
        RawRule(
            "known_mcc_codes",
            "MCC codes belong to the shipped ISO 18245 hierarchy",
            "SELECT count(*) FROM {t} WHERE month = ? AND mcc NOT IN (" + "__MCC__" + ")",
        ),
        RawRule(
            "months_in_order",
            "Every timestamp falls inside the partition month",
            "SELECT count(*) FROM {t} WHERE month = ? AND (ts < month OR ts >= month + INTERVAL 1 MONTH)",
        ),
        RawRule(
            "customers_known",
            "Every transaction belongs to a customer of the same snapshot",
            "SELECT count(*) FROM (SELECT DISTINCT customer_id, month FROM {t} WHERE month = ?) x "
            "ANTI JOIN raw.customers c ON c.customer_id = x.customer_id AND c.month = x.month",
        ),
    ),
}


@dataclass(frozen=True)
class RuleResult:
    name: str
    description: str
    passed: bool
    offending_rows: int


def schema_offences(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """Differences between the stored table's columns/types and the canonical schema."""
    actual = [(r[0], r[1]) for r in con.execute(f"DESCRIBE raw.{table}").fetchall()]
    expected = raw_table_columns(table)
    if actual == expected:
        return []
    a, e = dict(actual), dict(expected)
    out = [f"missing column {c}" for c in e if c not in a]
    out += [f"unexpected column {c}" for c in a if c not in e]
    out += [f"{c}: {a[c]} != {e[c]}" for c in e if c in a and a[c] != e[c]]
    return out or ["column order differs"]


def run_rules(con: duckdb.DuckDBPyConnection, table: str, month: date) -> list[RuleResult]:
    out = []
    offences = schema_offences(con, table)
    out.append(RuleResult("schema_and_dtypes", "; ".join(offences) or "Columns and types match the canonical schema", not offences, len(offences)))
    for rule in RAW_RULES[table]:
        sql = rule.offending_sql.replace("{t}", f"raw.{table}").replace("__MCC__", _known_mcc_list())
        (n,) = con.execute(sql, [month]).fetchall()[0]
        out.append(RuleResult(rule.name, rule.description, n == 0, int(n)))
    return out


def check_names(table: str) -> list[str]:
    return ["schema_and_dtypes"] + [r.name for r in RAW_RULES[table]]
