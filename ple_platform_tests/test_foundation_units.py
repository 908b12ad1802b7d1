"""Pseudonymisation, settings, artifact store and warehouse partition helpers."""

from datetime import date

import duckdb
import pytest

from ple_platform.core.governance.audit.pseudonymise import (
    DEV_KEY,
    MissingSecretError,
    hmac_sql,
    pseudonymisation_key,
    pseudonymise,
)
from ple_platform.core.settings import Settings, SettingsError
from ple_platform.core.storage import ArtifactNotFound, LocalArtifactStore, sha256_bytes
from ple_platform.core.warehouse import ensure_raw_table, partition_content_hash, replace_partition


@pytest.mark.parametrize("key", [b"k", b"a-much-longer-secret-key" * 4, DEV_KEY])
def test_sql_hmac_matches_python_hmac(key):
    ids = ["S0000001", "12345", "ñandú", ""]
    con = duckdb.connect()
    got = [r[0] for r in con.execute(f"SELECT {hmac_sql('x', key)} FROM unnest(?) t(x)", [ids]).fetchall()]
    assert got == [pseudonymise(i, key) for i in ids]
    assert len(set(got)) == len(ids)


def test_pseudonym_depends_on_key():
    assert pseudonymise("S1", b"key-a") != pseudonymise("S1", b"key-b")


def test_production_refuses_missing_key():
    with pytest.raises(MissingSecretError, match="PLE_PSEUDONYMISATION_KEY"):
        pseudonymisation_key({"PLE_ENV": "prod"})
    assert pseudonymisation_key({"PLE_ENV": "dev"}) == DEV_KEY
    assert pseudonymisation_key({"PLE_ENV": "prod", "PLE_PSEUDONYMISATION_KEY": "s3cret" * 6}) == b"s3cret" * 6


def test_settings_defaults_and_errors(tmp_path):
    s = Settings.from_env({"PLE_DATA_DIR": str(tmp_path)})
    assert (s.start_month, s.end_month) == (date(2015, 1, 1), date(2016, 5, 1))
    assert s.warehouse_path == str(tmp_path / "warehouse.duckdb")
    assert s.duckdb_memory_limit == "4GB"
    with pytest.raises(SettingsError, match="PLE_LANDING_KIND"):
        Settings.from_env({"PLE_LANDING_KIND": "csv"})
    with pytest.raises(SettingsError, match="before"):
        Settings.from_env({"PLE_START_MONTH": "2016-01", "PLE_END_MONTH": "2015-01"})


def test_local_artifact_store_roundtrip(tmp_path):
    store = LocalArtifactStore(tmp_path)
    uri, digest = store.put("fits/gmm/2015-12-01.npz", b"payload")
    assert digest == sha256_bytes(b"payload") and store.get("fits/gmm/2015-12-01.npz") == b"payload"
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ArtifactNotFound):
        store.get("missing")
    with pytest.raises(ValueError, match="relative"):
        store.put("../escape", b"x")


def test_replace_partition_is_atomic_and_scoped():
    con = duckdb.connect()
    t = ensure_raw_table(con, "transactions")
    row = "SELECT 'c' AS customer_id, DATE '{m}' AS month, TIMESTAMP '{m} 10:00:00' AS ts, {a} AS amount, 5411::SMALLINT AS mcc, 'm1' AS merchant_id"
    replace_partition(con, t, date(2015, 1, 1), row.format(m="2015-01-01", a=1.0))
    replace_partition(con, t, date(2015, 2, 1), row.format(m="2015-02-01", a=2.0))
    jan = partition_content_hash(con, t, date(2015, 1, 1))
    # A failing replacement leaves the month exactly as it was.
    with pytest.raises(duckdb.Error):
        replace_partition(con, t, date(2015, 2, 1), "SELECT 1/0 AS nope")
    assert con.execute(f"SELECT amount FROM {t} WHERE month = '2015-02-01'").fetchall() == [(2.0,)]
    # Re-writing February does not touch January; the same rows give the same hash.
    replace_partition(con, t, date(2015, 2, 1), row.format(m="2015-02-01", a=3.0))
    assert partition_content_hash(con, t, date(2015, 1, 1)) == jan
    assert con.execute(f"SELECT count(*) FROM {t}").fetchone() == (2,)


def test_json_ready_converts_numpy_dates_enums_and_chooses_what_nan_becomes():
    import enum
    import json

    import numpy as np

    from ple_platform.core.reporting import json_ready

    class Route(enum.Enum):
        DISTILL = "distill"

    value = {"auc": np.float32(0.75), "n": np.int64(3), "ok": np.bool_(True), "route": Route.DISTILL,
             "month": date(2016, 1, 1), "ids": np.array([1, 2]), "pair": (1, float("nan")), 7: {"x"}}
    out = json_ready(value)
    assert out == {"auc": 0.75, "n": 3, "ok": True, "route": "distill", "month": "2016-01-01", "ids": [1, 2],
                   "pair": [1, None], "7": ["x"]}
    assert json.loads(json.dumps(out, allow_nan=False)) == out  # strict JSON, a round trip is equal
    assert type(out["n"]) is int and type(out["ok"]) is bool
    assert json_ready({"a": 0.123456789}, digits=5) == {"a": 0.12346}
    with pytest.raises(ValueError, match=r"^payload\['m'\]\[1\]: nan is not valid JSON"):
        json_ready({"m": [1.0, float("nan")]}, "payload", nonfinite="raise")
    with pytest.raises(ValueError, match=r"^payload: key 3 is a int"):
        json_ready({3: 1}, "payload", keys="raise")
    class EvidenceShapeError(ValueError):
        pass

    with pytest.raises(EvidenceShapeError, match=r"^payload\['o'\]: object value"):
        json_ready({"o": object()}, "payload", error=EvidenceShapeError)


def test_md_table_escapes_cells_that_would_break_the_table():
    from ple_platform.core.reporting import md_table

    table = md_table(["task", "detail"], [("churn", "a | b\nc"), ("x", 0.5)])
    lines = table.splitlines()
    assert lines[:2] == ["| task | detail |", "|---|---|"]
    assert lines[2] == "| churn | a \\| b c |" and lines[3] == "| x | 0.5 |"
    assert len(lines) == 4 and all(line.count(" | ") == 1 for line in lines[2:])  # each row keeps two cells
