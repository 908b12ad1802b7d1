"""The raw group materialized for real: checks, idempotent partition rewrites, bad input isolation."""

import shutil
from pathlib import Path
from datetime import date

import dagster as dg
import duckdb
import pyarrow.parquet as pq

from ple_platform.core.settings import Settings
from ple_platform.core.warehouse import partition_content_hash
from ple_platform.defs.raw.assets import raw_assets
from ple_platform.defs.resources import build_resources
from ple_platform_tests.conftest import materialize


def _hash(settings, table, month):
    with duckdb.connect(settings.warehouse_path, read_only=True) as con:
        return partition_content_hash(con, f"raw.{table}", month), con.execute(
            f"SELECT count(*) FROM raw.{table} WHERE month = ?", [month]
        ).fetchone()[0]


def test_raw_months_materialize_with_green_checks(platform_env, resources, landing_dir):
    for month in ("2015-01-01", "2015-02-01"):
        result = materialize(raw_assets, month, resources)
        assert result.success
        checks = result.get_asset_check_evaluations()
        assert len(checks) == 4 + 4 + 5 and all(c.passed for c in checks), [c.check_name for c in checks if not c.passed]
    mats = {m.asset_key.path[-1]: m for m in result.get_asset_materialization_events()}
    meta = mats["raw_transactions"].materialization.metadata
    landing_rows = pq.read_metadata(landing_dir / "transactions" / "month=2015-02-01.parquet").num_rows
    assert meta["dagster/row_count"].value == landing_rows > 0
    assert len(meta["content_hash"].value) == 64
    with duckdb.connect(platform_env.warehouse_path, read_only=True) as con:
        ids = con.execute("SELECT customer_id FROM raw.customers LIMIT 5").fetchall()
        # Stored ids are keyed-HMAC pseudonyms, never the source system's customer numbers.
        assert all(len(i) == 20 and not i.startswith("S") for (i,) in ids)
        orphans = con.execute(
            "SELECT count(*) FROM raw.transactions t ANTI JOIN raw.customers c USING (customer_id, month)"
        ).fetchone()[0]
        assert orphans == 0


def test_warehouse_connections_are_memory_bounded(resources):
    with resources["warehouse"].get_connection() as con:
        limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    assert limit.replace(" ", "").upper().startswith(("3.7GIB", "4.0GB", "3.7GB", "4GB"))


def test_rematerializing_a_month_replaces_exactly_that_month(platform_env, resources):
    for month in ("2015-01-01", "2015-02-01"):
        assert materialize(raw_assets, month, resources).success
    before = {(t, m): _hash(platform_env, t, m) for t in ("customers", "transactions") for m in (date(2015, 1, 1), date(2015, 2, 1))}
    assert materialize(raw_assets, "2015-02-01", resources).success
    after = {(t, m): _hash(platform_env, t, m) for t in ("customers", "transactions") for m in (date(2015, 1, 1), date(2015, 2, 1))}
    assert after == before


def test_bad_month_fails_clearly_and_leaves_other_months_untouched(platform_env, resources, landing_dir, tmp_path, monkeypatch):
    assert materialize(raw_assets, "2015-01-01", resources).success
    jan = _hash(platform_env, "transactions", date(2015, 1, 1))

    # A landing copy whose March transactions carry negative amounts.
    bad = tmp_path / "bad_landing"
    shutil.copytree(landing_dir, bad)
    f = bad / "transactions" / "month=2015-03-01.parquet"
    table = pq.read_table(f)
    amounts = table.column("amount").to_pylist()
    amounts[0], amounts[1] = -5.0, -1.0
    pq.write_table(table.set_column(table.schema.get_field_index("amount"), "amount", [amounts]), f)
    from ple_platform.defs.resources import LandingZoneResource

    bad_resources = {**resources, "landing": LandingZoneResource(kind="synthetic", path=str(bad))}
    result = materialize(raw_assets, "2015-03-01", bad_resources)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert "month=2015-03-01.parquet" in message and "amount" in message
    assert "2 offending row(s)" in message and "amount_finite_non_negative" in message
    assert _hash(platform_env, "transactions", date(2015, 1, 1)) == jan
    assert _hash(platform_env, "transactions", date(2015, 3, 1))[1] == 0


def test_source_without_transactions_marks_transaction_groups_unavailable(platform_env, resources, landing_dir, tmp_path):
    """A landing zone with no transactions table: raw_transactions and the groups built on it say
    'unavailable' (metadata + warning checks) and store nothing, instead of zero-filling."""
    import shutil

    from ple_platform.defs.features.assets import feature_assets
    from ple_platform.defs.resources import LandingZoneResource

    csv = tmp_path / "train_ver2.csv"
    shutil.copy(Path(__file__).parent / "data" / "santander_train_ver2_sample.csv", csv)
    res = {**resources, "landing": LandingZoneResource(kind="santander", path=str(csv))}
    month = "2015-01-01"
    result = materialize(raw_assets, month, res)
    assert result.success
    txn = next(m for m in result.get_asset_materialization_events() if m.asset_key.path[-1] == "raw_transactions")
    assert txn.materialization.metadata["available"].value is False
    by_name = {a.key.path[-1]: a for a in feature_assets}
    out = materialize([by_name["txn_behavior"], by_name["product_holdings"]], month, res)
    assert out.success
    meta = {m.asset_key.path[-1]: m.materialization.metadata for m in out.get_asset_materialization_events()}
    assert meta["txn_behavior"]["available"].value is False and "raw.transactions" in meta["txn_behavior"]["reason"].value
    assert meta["product_holdings"]["available"].value is True
    with duckdb.connect(platform_env.warehouse_path) as con:
        assert con.execute("SELECT count(*) FROM features.txn_behavior").fetchall()[0][0] == 0
    warn = [c for c in out.get_asset_check_evaluations() if c.asset_key.path[-1] == "txn_behavior"]
    assert warn and all(not c.passed and c.severity.value == "WARN" for c in warn)


def _audit_entries(settings):
    from ple_platform.core.governance.audit.log import AuditLog, audit_key
    from ple_platform.core.governance.audit.store import GovernanceStore

    result = AuditLog(GovernanceStore(settings.governance_db), audit_key()).verify()
    assert result.ok, result.reason
    return result.n_entries


def test_a_write_the_audit_log_refuses_is_not_stored(platform_env, resources, monkeypatch):
    """Validate and audit before commit: with a foreign audit key the append is refused and the month keeps its
    previous rows; the control (the right audit key) shows the same rewrite would have changed them."""
    raw_customers = next(a for a in raw_assets if a.key.path[-1] == "raw_customers")

    assert materialize([raw_customers], "2015-01-01", resources).success
    before, n_entries = _hash(platform_env, "customers", date(2015, 1, 1)), _audit_entries(platform_env)
    other_pseudonyms = "another-pseudonymisation-key-of-32-bytes-or-more"
    monkeypatch.setenv("PLE_PSEUDONYMISATION_KEY", other_pseudonyms)
    monkeypatch.setenv("PLE_AUDIT_KEY", "a-foreign-audit-key-that-did-not-write-this-chain")
    # Resources are chosen from the environment when the definitions load (keys as dg.EnvVar): load again.
    result = materialize([raw_customers], "2015-01-01", build_resources(platform_env))
    assert not result.success
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    while error.cause is not None:
        error = error.cause
    assert "audit log does not verify" in error.message, error.message
    assert _hash(platform_env, "customers", date(2015, 1, 1)) == before
    monkeypatch.delenv("PLE_AUDIT_KEY")
    assert _audit_entries(platform_env) == n_entries
    # Control: the right audit key lets the same rewrite through, and it does change the stored month.
    assert materialize([raw_customers], "2015-01-01", build_resources(platform_env)).success
    assert _hash(platform_env, "customers", date(2015, 1, 1)) != before
    assert _audit_entries(platform_env) == n_entries + 1


def test_a_month_failing_a_rule_after_the_write_is_rolled_back(platform_env, resources, monkeypatch):
    """A rule that fails on the written rows (here forced) refuses the month before it is visible: no rows
    change, no audit entry is written, and the failure names the rule."""
    from ple_platform.core.data import raw_checks
    raw_customers = next(a for a in raw_assets if a.key.path[-1] == "raw_customers")

    assert materialize([raw_customers], "2015-01-01", resources).success
    before, n_entries = _hash(platform_env, "customers", date(2015, 1, 1)), _audit_entries(platform_env)
    real = raw_checks.run_rules

    def one_rule_fails(con, table, month):
        results = real(con, table, month)
        return [results[0].__class__(results[0].name, "forced failure", False, 3), *results[1:]]

    monkeypatch.setattr(raw_checks, "run_rules", one_rule_fails)
    monkeypatch.setenv("PLE_PSEUDONYMISATION_KEY", "another-pseudonymisation-key-of-32-bytes-or-more")
    result = materialize([raw_customers], "2015-01-01", build_resources(platform_env))  # a rewrite that differs
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "refused, nothing written" in message and "'schema_and_dtypes' failed on 3 row(s)" in message, message
    assert _hash(platform_env, "customers", date(2015, 1, 1)) == before
    assert _audit_entries(platform_env) == n_entries


def test_a_feature_month_failing_a_blocking_check_is_rolled_back(platform_env, resources, monkeypatch):
    """Features are checked inside the write's transaction: a month whose blocking check fails (here forced on a
    rebuild) is refused with the check named, and the month keeps the rows it had (the control: a rebuild that
    passes stores them again)."""
    from ple_platform.core.features import quality
    from ple_platform.defs.features.assets import feature_assets

    month = "2015-01-01"
    assert materialize(raw_assets, month, resources).success
    group = next(a for a in feature_assets if a.key.path[-1] == "product_holdings")
    assert materialize([group], month, resources).success
    before = _hash(platform_env, "customers", date(2015, 1, 1))
    with duckdb.connect(platform_env.warehouse_path, read_only=True) as con:
        stored = partition_content_hash(con, "features.product_holdings", date(2015, 1, 1))
    real = quality.evaluate

    def one_blocking_check_fails(*args, **kwargs):
        results = real(*args, **kwargs)
        first = next(r for r in results if r.blocking)
        return [quality.QualityResult(first.name, False, "forced failure", {}, True) if r is first else r
                for r in results]

    import dataclasses

    import ple_platform.defs.features.assets as feature_module

    real_build = feature_module.build_group

    def shifted(name, ctx):  # other values, so a committed rebuild would change the stored rows
        out = real_build(name, ctx)
        return dataclasses.replace(out, values=out.values + 1.0)

    monkeypatch.setattr(quality, "evaluate", one_blocking_check_fails)
    monkeypatch.setattr(feature_module, "build_group", shifted)
    result = materialize([group], month, resources)
    assert not result.success
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    while error.cause is not None:
        error = error.cause
    assert "refused, nothing written" in error.message and "forced failure" in error.message, error.message
    with duckdb.connect(platform_env.warehouse_path, read_only=True) as con:
        assert partition_content_hash(con, "features.product_holdings", date(2015, 1, 1)) == stored
        assert con.execute("SELECT count(*) FROM features.product_holdings").fetchone()[0] > 0
    monkeypatch.setattr(quality, "evaluate", real)  # control: the same shifted rebuild, passing, is stored
    assert materialize([group], month, resources).success
    with duckdb.connect(platform_env.warehouse_path, read_only=True) as con:
        assert partition_content_hash(con, "features.product_holdings", date(2015, 1, 1)) != stored
    assert _hash(platform_env, "customers", date(2015, 1, 1)) == before


RANGE = ("2015-01-01", "2015-03-01")
RANGE_MONTHS = [date(2015, m, 1) for m in (1, 2, 3)]
RANGE_TAGS = {"dagster/asset_partition_range_start": RANGE[0], "dagster/asset_partition_range_end": RANGE[1]}


def test_a_month_range_is_one_run_storing_what_per_month_runs_store(platform_env, resources, tmp_path, landing_dir):
    assert all(a.backfill_policy == dg.BackfillPolicy.single_run() for a in raw_assets)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(raw_assets, resources=resources, instance=instance, tags=RANGE_TAGS)
    assert result.success and len(instance.get_runs()) == 1
    ranged = {(t, m): _hash(platform_env, t, m) for t in ("customers", "holdings", "transactions") for m in RANGE_MONTHS}

    # Every month has its own materialization with its own content hash, and its own check results.
    mats = [e.materialization for e in result.get_asset_materialization_events()]
    assert sorted((m.asset_key.path[-1], m.partition) for m in mats) == sorted(
        (f"raw_{t}", m.isoformat()) for t in ("customers", "holdings", "transactions") for m in RANGE_MONTHS)
    with duckdb.connect(platform_env.warehouse_path, read_only=True) as con:
        for m in mats:
            table, month = m.asset_key.path[-1].removeprefix("raw_"), date.fromisoformat(m.partition)
            assert m.metadata["content_hash"].value == partition_content_hash(con, f"raw.{table}", month)
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 3 * (4 + 4 + 5) and all(c.passed for c in checks)
    assert {c.partition for c in checks} == {m.isoformat() for m in RANGE_MONTHS}

    # Control: the same months one run each, on a fresh warehouse.
    env = {"PLE_DATA_DIR": str(tmp_path / "per_month"), "PLE_LANDING": str(landing_dir), "PLE_LANDING_KIND": "synthetic"}
    per_month_settings = Settings.from_env(env)
    per_month = build_resources(per_month_settings)
    for m in RANGE_MONTHS:
        assert materialize(raw_assets, m.isoformat(), per_month).success
    assert ranged == {(t, m): _hash(per_month_settings, t, m) for t, m in ranged}
    # One ingest entry per table and month either way, in a log that verifies.
    assert _audit_entries(platform_env) == _audit_entries(per_month_settings) >= 9


def test_a_failing_month_in_a_range_keeps_the_earlier_months_and_rolls_itself_back(platform_env, resources,
                                                                                    landing_dir, tmp_path):
    bad_landing = tmp_path / "landing"
    shutil.copytree(landing_dir, bad_landing)
    path = bad_landing / "transactions" / "month=2015-02-01.parquet"
    table = pq.read_table(path)
    amounts = table.column("amount").to_pylist()
    amounts[0] = -5.0
    pq.write_table(table.set_column(table.schema.get_field_index("amount"), "amount", [amounts]), path)
    env = {"PLE_DATA_DIR": str(tmp_path / "wh"), "PLE_LANDING": str(bad_landing), "PLE_LANDING_KIND": "synthetic"}
    settings = Settings.from_env(env)
    result = dg.materialize(raw_assets, resources=build_resources(settings), instance=dg.DagsterInstance.ephemeral(),
                            tags=RANGE_TAGS, raise_on_error=False)
    assert not result.success
    assert _hash(settings, "transactions", date(2015, 1, 1))[1] > 0  # committed before the failing month
    assert _hash(settings, "transactions", date(2015, 2, 1))[1] == 0  # rolled back
