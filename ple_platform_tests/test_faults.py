"""Faults and bad input: key misuse in production, CLI misuse, raw ids in messages, implausible landing data."""

from __future__ import annotations

from pathlib import Path

import pytest

from ple_platform.core.secrets import (
    DEV_AUDIT_KEY, DEV_PSEUDONYMISATION_KEY, MIN_KEY_BYTES, MissingSecretError, audit_key_material,
    check_production_keys, pseudonymisation_key_material)
from ple_platform.core.settings import Settings

GOOD = "k" * MIN_KEY_BYTES
PROD_OK = {"PLE_ENV": "prod", "PLE_PSEUDONYMISATION_KEY": GOOD, "PLE_AUDIT_KEY": GOOD + "-audit"}


@pytest.mark.parametrize("var, value, why", [
    ("PLE_PSEUDONYMISATION_KEY", None, "is not set"),
    ("PLE_PSEUDONYMISATION_KEY", DEV_PSEUDONYMISATION_KEY.decode(), "published development pseudonymisation key"),
    ("PLE_PSEUDONYMISATION_KEY", DEV_AUDIT_KEY.decode(), "published development audit key"),
    ("PLE_PSEUDONYMISATION_KEY", "k" * (MIN_KEY_BYTES - 1), f"is {MIN_KEY_BYTES - 1} bytes"),
    ("PLE_AUDIT_KEY", None, "is not set"),
    ("PLE_AUDIT_KEY", DEV_AUDIT_KEY.decode(), "published development audit key"),
    ("PLE_AUDIT_KEY", DEV_PSEUDONYMISATION_KEY.decode(), "published development pseudonymisation key"),
    ("PLE_AUDIT_KEY", "short", "is 5 bytes"),
])
def test_production_refuses_dev_and_short_keys(var, value, why):
    env = dict(PROD_OK)
    if value is None:
        del env[var]
    else:
        env[var] = value
    for check in (check_production_keys, Settings.from_env):
        with pytest.raises(MissingSecretError) as err:
            check(env)
        msg = str(err.value)
        assert msg.startswith(var) and why in msg and "\n" not in msg
        assert not value or value not in msg  # the key itself is never echoed


def test_definitions_refuse_to_load_in_production_with_a_dev_key(tmp_path):
    """The code location (what `dagster dev` / the k8s deployment loads) does not start with a published key."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PLE_ENV": "prod", "PLE_DATA_DIR": str(tmp_path), "PLE_AUDIT_KEY": GOOD,
           "PLE_PSEUDONYMISATION_KEY": DEV_PSEUDONYMISATION_KEY.decode()}
    code = "from ple_platform.definitions import load_definitions; load_definitions()"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "MissingSecretError: PLE_PSEUDONYMISATION_KEY is the published development pseudonymisation key" in proc.stderr


def test_key_sources_are_recorded():
    s = Settings.from_env(PROD_OK)
    assert (s.pseudonymisation_key_source, s.audit_key_source) == ("env:PLE_PSEUDONYMISATION_KEY", "env:PLE_AUDIT_KEY")
    dev = Settings.from_env({})
    assert (dev.pseudonymisation_key_source, dev.audit_key_source) == ("dev_default", "dev_default")
    assert pseudonymisation_key_material({}).value == DEV_PSEUDONYMISATION_KEY
    assert audit_key_material({"PLE_AUDIT_KEY": "x"}).source == "env:PLE_AUDIT_KEY"  # dev accepts any key
    assert GOOD not in repr(pseudonymisation_key_material(PROD_OK))


def test_compliance_report_states_both_key_sources():
    from ple_platform.core.governance.compliance.report import build_report
    from ple_platform_tests.test_compliance_report import _controls, full_evidence

    ev = full_evidence()
    ev.audit = dict(ev.audit, key_source="env:PLE_AUDIT_KEY")
    ev.data["pseudonymisation"]["key_source"] = "env:PLE_PSEUDONYMISATION_KEY"
    controls = _controls(build_report(ev))
    assert controls["FSS-REC-01"]["facts"]["key_source"] == "env:PLE_AUDIT_KEY"
    assert controls["FSS-DATA-01"]["facts"]["pseudonymisation"]["key_source"] == "env:PLE_PSEUDONYMISATION_KEY"
    assert controls["FSS-DATA-01"]["status"] != "fail"


# --- CLI user errors: one line naming what and why, exit code 2 -------------------------------------------


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PLE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PLE_GOVERNANCE_DB", str(tmp_path / "governance.duckdb"))
    for var in ("PLE_ENV", "PLE_START_MONTH", "PLE_END_MONTH", "PLE_PSEUDONYMISATION_KEY", "PLE_AUDIT_KEY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _user_error(capsys, argv, *expected):
    from ple_platform.cli import main

    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith(f"ple-platform {argv[0]}: ")
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["materialize", "--group", "raw", "--months", "2016-05..2016-01"], ("2016-05..2016-01", "reversed")),
    (["generate", "--months", "2016-05..2016-01"], ("2016-05..2016-01", "reversed")),
    (["materialize", "--group", "raw", "--months", "2030-01"], ("2030-01", "outside the configured partitions")),
    (["materialize", "--group", "raw", "--months", "2014-06..2015-02"], ("2014-06", "outside")),
    (["materialize", "--group", "raw", "--months", "2016-13"], ("'2016-13'", "01..12")),
    (["generate", "--months", "may..june"], ("'may'", "YYYY-MM")),
    (["materialize", "--group", "raw", "nosuch", "--months", "2015-01"], ("nosuch", "unknown asset group", "raw")),
    (["approve", "v2016.05-deadbeef00", "--approver", "risk.officer@bank"], ("v2016.05-deadbeef00", "is unknown")),
])
def test_cli_user_errors_are_one_line_exit_2(cli_env, capsys, argv, expected):
    if argv[0] == "generate":
        argv = [*argv, "--out", str(cli_env / "landing")]
    _user_error(capsys, argv, *expected)
    assert not (cli_env / "landing").exists()  # nothing was written


@pytest.mark.parametrize("argv", [["registry"], ["audit", "verify"], ["materialize", "--group", "raw"],
                                  ["generate", "--customers", "10"]])
def test_cli_production_without_keys_is_one_line(cli_env, capsys, monkeypatch, argv):
    monkeypatch.setenv("PLE_ENV", "prod")
    _user_error(capsys, argv, "PLE_PSEUDONYMISATION_KEY is not set")
    monkeypatch.setenv("PLE_PSEUDONYMISATION_KEY", GOOD)
    monkeypatch.setenv("PLE_AUDIT_KEY", DEV_AUDIT_KEY.decode())
    _user_error(capsys, argv, "PLE_AUDIT_KEY is the published development audit key")


def test_documented_setting_defaults_match_the_code():
    import re
    from pathlib import Path

    s = Settings.from_env({})
    docs = Path(__file__).resolve().parents[1] / "docs"
    for name in ("architecture.md", "operations.md"):
        text = (docs / name).read_text()
        fit = re.search(r"^\| `PLE_FIT_END_MONTH` \| `([0-9-]+)`", text, re.M)
        assert fit and fit.group(1) == f"{s.fit_end_month:%Y-%m}", (name, fit and fit.group(1))
        mem = re.search(r"^\| `PLE_DUCKDB_MEMORY_LIMIT` \| `([^`]+)`", text, re.M)
        assert mem and mem.group(1) == s.duckdb_memory_limit, name


# --- no raw customer id in run storage -----------------------------------------------------------------------


def _grep_tree(root, needle: str) -> list[str]:
    from pathlib import Path

    return [str(p) for p in Path(root).rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def _copy_landing(landing_dir, dst, month="2015-01-01"):
    import shutil

    for table in ("customers", "holdings", "transactions"):
        (dst / table).mkdir(parents=True)
        shutil.copy(landing_dir / table / f"month={month}.parquet", dst / table)
    return dst


def _rewrite(path, edit):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    schema = pa.schema([f.with_nullable(True) for f in pq.read_schema(path)])
    pq.write_table(pa.Table.from_pylist(edit(rows), schema=schema), path)
    return rows


@pytest.mark.parametrize("case", ["synthetic_duplicate", "synthetic_null_merchant", "santander_duplicate"])
def test_validation_failure_leaves_no_raw_id_in_run_storage(case, platform_env, landing_dir, tmp_path, monkeypatch):
    import csv
    from pathlib import Path

    import dagster as dg

    from ple_platform.core.governance.audit.pseudonymise import DEV_KEY, pseudonymise
    from ple_platform.defs.raw.assets import raw_assets
    from ple_platform.defs.resources import LandingZoneResource, build_resources

    monkeypatch.delenv("PLE_PSEUDONYMISATION_KEY", raising=False)
    if case.startswith("synthetic"):
        bad = _copy_landing(landing_dir, tmp_path / "bad")
        if case == "synthetic_duplicate":
            rows = _rewrite(bad / "customers" / "month=2015-01-01.parquet", lambda r: r + [dict(r[5])])
            raw_id = rows[5]["customer_id"]
        else:
            def null_merchant(r):
                r[3]["merchant_id"] = None
                return r
            raw_id = _rewrite(bad / "transactions" / "month=2015-01-01.parquet", null_merchant)[3]["customer_id"]
        landing = LandingZoneResource(kind="synthetic", path=str(bad))
    else:
        sample = Path(__file__).parent / "data" / "santander_train_ver2_sample.csv"
        with sample.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        rows.append(list(rows[2]))
        raw_id = rows[2][1]
        path = tmp_path / "train_ver2.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(rows)
        landing = LandingZoneResource(kind="santander", path=str(path))
    home = tmp_path / "dagster_home"
    home.mkdir()
    instance = dg.DagsterInstance.local_temp(tempdir=str(home))
    try:
        result = dg.materialize(raw_assets, partition_key="2015-01-01", instance=instance, raise_on_error=False,
                                resources={**build_resources(platform_env), "landing": landing})
        assert not result.success
        message = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    finally:
        instance.dispose()
    assert pseudonymise(raw_id, DEV_KEY) in message and "customer pseudonym(s)" in message, message
    assert raw_id not in message
    assert _grep_tree(home, pseudonymise(raw_id, DEV_KEY))  # the failure did reach run storage ...
    assert _grep_tree(home, raw_id) == []  # ... without the source id


# --- deterministic fit artifacts -------------------------------------------------------------------------------


def test_fit_artifacts_are_byte_identical_across_runs(tmp_path):
    """Two clean fits of the same inputs store the same bytes: the fit's timing never enters the artifact."""
    import duckdb

    from ple_platform.core.features.fits import FitStore, decode_fit
    from ple_platform.core.features.hyperbolic import fit_poincare_tree
    from ple_platform.core.storage import artifact_store_from_uri
    from ple_platform.core.data.taxonomy import product_tree

    tree, _ = product_tree()
    digests, metas = [], []
    for run in ("a", "b"):
        store = artifact_store_from_uri(str(tmp_path / run))
        with duckdb.connect() as con:
            def fit():
                emb, metrics = fit_poincare_tree(tree, 4, epochs=3, seed=7)
                assert metrics["seconds"] > 0  # the fit does measure its time ...
                return {"node_emb": emb}, {"metrics": metrics}
            (arrays, meta), record = FitStore(store, con).get_or_fit("product_hierarchy", "static", [], fit)
        digests.append(record.sha256)
        metas.append(decode_fit(store.get("feature_fits/product_hierarchy/static.safetensors"))[1])
    assert digests[0] == digests[1]
    assert "seconds" not in metas[0]["metrics"] and metas[0] == metas[1]  # ... but does not store it
    assert metas[0]["metrics"]["epochs"] == 3


def test_a_fit_is_recomputed_when_an_input_month_changes_and_reused_when_it_does_not(tmp_path):
    """Fit lineage: a fit stores the content hashes of the raw partitions it was computed from; a month re-ingested
    with other rows (a corrected bad month) gets a new fit, an identical re-ingest reuses the stored one."""
    import duckdb
    import numpy as np

    from ple_platform.core.features.fits import FitStore
    from ple_platform.core.storage import artifact_store_from_uri
    from ple_platform.core.warehouse import (ensure_raw_table, partition_content_hash, record_partition_hash,
                                             replace_partition)

    from datetime import date

    store = artifact_store_from_uri(str(tmp_path / "artifacts"))
    months = [date(2015, 1, 1), date(2015, 2, 1)]
    calls = []

    def fit():
        calls.append(1)
        return {"w": np.arange(3, dtype=np.float32)}, {}

    def ingest(con, month, income):
        qualified = ensure_raw_table(con, "customers")
        n = replace_partition(con, qualified, month,
                              f"BY NAME SELECT 'c1' AS customer_id, DATE '{month}' AS month, {income} AS income")
        record_partition_hash(con, qualified, month, partition_content_hash(con, qualified, month), n)

    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        for m in months:
            ingest(con, m, 100.0)
        fits = FitStore(store, con)
        assert not fits.get_or_fit("g", "2015-02-01", months, fit)[1].reused
        assert fits.get_or_fit("g", "2015-02-01", months, fit)[1].reused and len(calls) == 1
        ingest(con, months[1], 100.0)  # identical rows again: same lineage
        assert fits.get_or_fit("g", "2015-02-01", months, fit)[1].reused and len(calls) == 1
        ingest(con, months[1], 250.0)  # the month corrected (or replaced): the fit must not be reused
        record = fits.get_or_fit("g", "2015-02-01", months, fit)[1]
        assert not record.reused and len(calls) == 2
        # A month without a recorded hash is hashed from its rows, so a direct write is caught too.
        con.execute("DELETE FROM raw.partition_hashes")
        con.execute("UPDATE raw.customers SET income = 999 WHERE month = ?", [months[0]])
        assert not fits.get_or_fit("g", "2015-02-01", months, fit)[1].reused and len(calls) == 3


# --- audit: emptied, missing, rolled back, wrong path, forged anchor, broken middle -------------------------------


AUDIT_KEY = b"faults-audit-key-0123456789abcdef"


def _audit(path, n=5):
    from ple_platform.core.governance.audit.log import AuditEvent, AuditLog
    from ple_platform.core.governance.audit.store import GovernanceStore

    log = AuditLog(GovernanceStore(path), AUDIT_KEY)
    for i in range(n):
        log.append(AuditEvent.TRAINING, f"teacher/{i}", {"i": i})
    return log


def _sql(path, sql):
    import duckdb

    with duckdb.connect(str(path)) as con:
        con.execute(sql)


def _fresh(path):
    from ple_platform.core.governance.audit.log import AuditLog
    from ple_platform.core.governance.audit.store import GovernanceStore

    return AuditLog(GovernanceStore(path), AUDIT_KEY)


@pytest.mark.parametrize("tamper, reason", [
    ("empty_rows_and_head", "emptied: the anchor records 5 entries, the store holds 0"),
    ("delete_file", "is missing, but its anchor records 5 entries"),
    ("rollback_to_copy", "rolled back to an older copy: the anchor records 5 entries, the store holds 3"),
    ("forge_anchor", "MAC mismatch (anchor forged"),
    ("replace_store", "entry 5: hash differs from the anchored one"),
])
def test_audit_erasure_and_replacement_fail_verification(tmp_path, tamper, reason):
    import json
    import shutil

    from ple_platform.core.governance.audit.log import AuditIntegrityError

    db = tmp_path / "governance.duckdb"
    if tamper == "rollback_to_copy":
        _audit(db, 3)
        shutil.copy(db, tmp_path / "old.duckdb")
        _audit(db, 2)
        shutil.copy(tmp_path / "old.duckdb", db)
    elif tamper == "replace_store":
        _audit(db, 5)
        _audit(tmp_path / "other.duckdb", 5)  # same key, same shape, different entries (other timestamps)
        shutil.copy(tmp_path / "other.duckdb", db)
    else:
        log = _audit(db, 5)
        if tamper == "empty_rows_and_head":
            _sql(db, "DELETE FROM audit_log; DELETE FROM audit_head")
        elif tamper == "delete_file":
            db.unlink()
        else:
            anchor = json.loads(log.anchor_path.read_text())
            log.anchor_path.write_text(json.dumps({**anchor, "seq": 2}))
    result = _fresh(db).verify()
    assert not result.ok and reason in result.reason, result.reason
    if db.exists():
        with pytest.raises(AuditIntegrityError):
            _fresh(db).append("report", "x", {})


def test_audit_verify_of_a_wrong_path_fails_and_creates_nothing(tmp_path, monkeypatch, capsys):
    from ple_platform.cli import main

    wrong = tmp_path / "typo" / "governance.duckdb"
    result = _fresh(wrong).verify()
    assert not result.ok and "no audit log at" in result.reason and "PLE_GOVERNANCE_DB" in result.reason
    monkeypatch.setenv("PLE_GOVERNANCE_DB", str(wrong))
    assert main(["audit", "verify"]) == 1
    assert "no audit log at" in capsys.readouterr().out
    assert not wrong.exists() and not wrong.parent.exists()


def test_append_refuses_a_chain_broken_in_the_middle(tmp_path):
    from ple_platform.core.governance.audit.log import AuditIntegrityError

    db = tmp_path / "governance.duckdb"
    _audit(db, 6)
    _sql(db, "UPDATE audit_log SET payload = '{\"i\":99}' WHERE seq = 3")
    with pytest.raises(AuditIntegrityError, match="entry 3: hash mismatch"):
        _fresh(db).append("report", "x", {})
    # An edit after the anchor is caught incrementally by a writer that already verified the chain.
    db2 = tmp_path / "g2.duckdb"
    log = _audit(db2, 3)
    _sql(db2, "UPDATE audit_log SET payload = '{\"i\":7}' WHERE seq = 3")
    with pytest.raises(AuditIntegrityError, match="entry 3 does not verify"):
        log.append("report", "x", {})


def test_an_intact_anchored_log_still_verifies_and_extends(tmp_path):
    db = tmp_path / "governance.duckdb"
    log = _audit(db, 4)
    log.append_many([("report", "r", {"k": 1}, "system")] * 3)
    result = _fresh(db).verify()
    assert result.ok and result.n_entries == 7, result.reason


def _hold_write_lock(path, seconds):
    """A separate process holding DuckDB's write lock on ``path`` (DuckDB locks per process)."""
    import subprocess
    import sys

    code = ("import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
            "con.execute('CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS x'); print('locked', flush=True); "
            "time.sleep(float(sys.argv[2]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lineage_waits_for_a_writer_and_then_reads(tmp_path):
    from ple_platform.cli import read_only_warehouse

    db = tmp_path / "warehouse.duckdb"
    writer = _hold_write_lock(db, 1.5)
    said = []
    with read_only_warehouse(db, wait_s=30, poll_s=0.2, echo=said.append) as con:
        assert con.execute("SELECT x FROM t").fetchone() == (1,)
    writer.wait()
    assert len(said) == 1 and "a materialization is writing it" in said[0]


def test_lineage_against_a_locked_warehouse_is_one_line_exit_2(cli_env, capsys, monkeypatch):
    import ple_platform.cli as cli

    db = cli_env / "warehouse.duckdb"
    monkeypatch.setenv("PLE_WAREHOUSE", str(db))
    monkeypatch.setattr(cli, "LINEAGE_WAIT_S", 0.5)
    writer = _hold_write_lock(db, 20)
    try:
        assert cli.main(["lineage", "v2016.05-deadbeef00"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "Traceback" not in "\n".join(err)
        assert err[-1].startswith("ple-platform lineage: ") and "is locked by a running materialization" in err[-1]
    finally:
        writer.kill()
        writer.wait()


def test_a_defect_is_not_reported_as_a_user_error(cli_env, monkeypatch):
    """Only errors a user can fix are one-line exit 2; an unexpected ValueError from inside keeps its traceback."""
    import ple_platform.cli as cli

    def broken(args):
        raise ValueError("bug deep inside")

    monkeypatch.setattr(cli, "cmd_registry", broken)
    with pytest.raises(ValueError, match="bug deep inside"):
        cli.main(["registry"])


_HOLD_POOL = """
import time, dagster as dg
from ple_platform.run_recovery import launch_tags

@dg.asset(pool="duckdb_warehouse")
def holds_the_warehouse():
    print("holding", flush=True)
    time.sleep(600)

dg.materialize([holds_the_warehouse], instance=dg.DagsterInstance.get(), tags=launch_tags())
"""
# The same, launched as the UI's daemon or a script would: without the CLI's process tags.
_HOLD_POOL_UNTAGGED = _HOLD_POOL.replace(", tags=launch_tags()", "")


def _start_pool_holder(tmp_path, monkeypatch, script=None):
    """A Dagster instance with the warehouse pool (limit 1) in ``tmp_path``, and a process running a
    materialization that holds the pool's slot (returned; it prints "holding" once it has the slot)."""
    import os
    import subprocess
    import sys

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("concurrency:\n  pools:\n    default_limit: 1\ntelemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return subprocess.Popen([sys.executable, "-c", script or _HOLD_POOL], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "DAGSTER_HOME": str(home)})


@pytest.mark.slow  # starts a run process that holds the pool and SIGKILLs it
@pytest.mark.parametrize("launched_by", ["cli", "untagged"])
def test_a_killed_run_is_recovered_and_the_next_run_gets_the_pool(tmp_path, monkeypatch, launched_by):
    """SIGKILL a run holding the warehouse pool: its slot stays claimed (the defect); recovery fails the dead run
    with a message naming the pid, frees the slot, and the next run of a pool asset completes."""
    import os
    import signal
    import time

    import dagster as dg

    from ple_platform.run_recovery import recover_dead_runs

    proc = _start_pool_holder(tmp_path, monkeypatch, _HOLD_POOL if launched_by == "cli" else _HOLD_POOL_UNTAGGED)
    try:
        assert proc.stdout.readline().strip() == "holding"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with dg.DagsterInstance.get() as instance:
        held = instance.event_log_storage.get_concurrency_info("duckdb_warehouse").claimed_slots
        assert len(held) == 1, "precondition: the killed run still holds its slot"
        dead = held[0].run_id
        lines: list[str] = []
        done = recover_dead_runs(instance, echo=lines.append)
        assert [r.run_id for r in done] == [dead] and done[0].freed_pools == ("duckdb_warehouse",)
        assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
        assert len(lines) == 1 and f"pid {proc.pid}" in lines[0] and "gone" in lines[0]
        assert not instance.event_log_storage.get_concurrency_info("duckdb_warehouse").claimed_slots
        assert recover_dead_runs(instance, echo=lines.append) == []  # idempotent

        @dg.asset(pool="duckdb_warehouse")
        def writes_the_warehouse():
            return 1

        t0 = time.monotonic()
        assert dg.materialize([writes_the_warehouse], instance=instance).success
        assert time.monotonic() - t0 < 60


@pytest.mark.slow  # starts a run process that holds the pool
@pytest.mark.parametrize("launched_by", ["cli", "untagged"])
def test_a_live_run_is_not_recovered(tmp_path, monkeypatch, launched_by):
    import os
    import signal

    import dagster as dg

    from ple_platform.run_recovery import recover_dead_runs, slot_holders

    proc = _start_pool_holder(tmp_path, monkeypatch, _HOLD_POOL if launched_by == "cli" else _HOLD_POOL_UNTAGGED)
    try:
        assert proc.stdout.readline().strip() == "holding"
        with dg.DagsterInstance.get() as instance:
            assert recover_dead_runs(instance, echo=lambda line: None) == []
            holders = slot_holders(instance, "duckdb_warehouse")
            assert len(holders) == 1 and f"(pid {proc.pid})" in holders[0]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


# --- SIGKILL mid-write, then a rerun -----------------------------------------------------------------------------


def _cli_env(root: Path, landing: Path) -> dict:
    import os

    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((Path(__file__).parents[1] / "dagster.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLE_")}
    return {**env, "DAGSTER_HOME": str(home), "PLE_DATA_DIR": str(root), "PLE_LANDING": str(landing),
            "PLE_LANDING_KIND": "synthetic", "PLE_START_MONTH": "2015-01-01", "PLE_END_MONTH": "2015-06-01",
            "PLE_FIT_END_MONTH": "2015-01-01", "PLE_COMPUTE_THREADS": "1"}


def _cli(env: dict, *args: str, kill_after_line: str | None = None, delay_s: float = 0.0, timeout_s: float = 600):
    """Run ``ple-platform`` with ``env``; with ``kill_after_line``, SIGKILL it ``delay_s`` after a line containing
    that text appears (mid-write). Returns (returncode, output)."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "ple_platform.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.monotonic() + timeout_s
    for line in proc.stdout:
        lines.append(line)
        if kill_after_line and kill_after_line in line:
            time.sleep(delay_s)
            proc.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "".join(lines)
    proc.wait(timeout=timeout_s)
    return proc.returncode, "".join(lines)


def _stored_hashes(root: Path, tables: list[str]) -> dict:
    import duckdb

    from ple_platform.core.warehouse import partition_content_hash

    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        return {(t, m): partition_content_hash(con, t, m) for t in tables
                for (m,) in con.execute(f"SELECT DISTINCT month FROM {t} ORDER BY 1").fetchall()}


@pytest.mark.slow
def test_sigkill_mid_raw_and_mid_features_then_a_rerun_completes_with_a_clean_runs_hashes(tmp_path, landing_dir):
    """A materialization SIGKILLed while it writes (raw month 2 of 2; then the features group) leaves its pool
    slot held: the rerun of the same command recovers the dead run, completes within a bounded time, and stores
    exactly what an uninterrupted run stores (content hashes of every partition compared)."""
    import time

    months = ["--months", "2015-01..2015-02"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for root in (clean, killed):
        root.mkdir()
    clean_env, killed_env = _cli_env(clean, landing_dir), _cli_env(killed, landing_dir)
    for group in ("raw", "features"):
        rc, out = _cli(clean_env, "materialize", "--group", group, *months)
        assert rc == 0, out
    tables = ["raw.customers", "raw.holdings", "raw.transactions", "features.demographics", "features.txn_behavior"]
    expected = _stored_hashes(clean, tables)

    rc, out = _cli(killed_env, "materialize", "--group", "raw", *months, kill_after_line="2015-01 (1/2)", delay_s=0.5)
    assert rc == -9, out
    t0 = time.monotonic()
    rc, out = _cli(killed_env, "materialize", "--group", "raw", *months, timeout_s=300)
    assert rc == 0, out
    rc, out = _cli(killed_env, "materialize", "--group", "features", *months, kill_after_line="group features",
                   delay_s=8.0)
    assert rc == -9, out
    rc, out = _cli(killed_env, "materialize", "--group", "features", *months, timeout_s=600)
    assert rc == 0, out
    assert time.monotonic() - t0 < 900
    assert _stored_hashes(killed, tables) == expected


@pytest.mark.slow  # starts the CLI and a pool-holding run process
def test_a_command_waiting_for_a_held_pool_says_so_and_stops_on_ctrl_c(tmp_path, monkeypatch, landing_dir):
    """A live run holds the warehouse pool: ``ple-platform materialize`` names the holder, waits, and SIGINT ends
    it within seconds with exit code 130 (a run waiting inside Dagster's executor ignored Ctrl-C for > 30 s)."""
    import signal
    import subprocess
    import sys
    import time

    holder = _start_pool_holder(tmp_path, monkeypatch)
    try:
        assert holder.stdout.readline().strip() == "holding"
        env = {**_cli_env(tmp_path / "platform", landing_dir), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
        proc = subprocess.Popen([sys.executable, "-m", "ple_platform.cli", "materialize", "--group", "raw",
                                 "--months", "2015-01"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        waiting = ""
        for line in proc.stdout:
            if "waiting for pool duckdb_warehouse" in line:
                waiting = line
                break
        assert f"(pid {holder.pid})" in waiting, waiting
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
        assert time.monotonic() - t0 < 10
        assert "interrupted (Ctrl-C)" in proc.stderr.read()
    finally:
        holder.kill()
        holder.wait()
