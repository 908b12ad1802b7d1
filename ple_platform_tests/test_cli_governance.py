"""`ple-platform audit verify` and `ple-platform approve` as an auditor and a risk officer use them."""

import duckdb

from ple_platform.cli import main
from ple_platform.core.governance.audit.log import AuditEvent, AuditLog, audit_key
from ple_platform.core.governance.audit.store import GovernanceStore


def _log(tmp_path, monkeypatch, n=5):
    db = tmp_path / "governance.duckdb"
    monkeypatch.setenv("PLE_GOVERNANCE_DB", str(db))
    monkeypatch.setenv("PLE_DATA_DIR", str(tmp_path))
    log = AuditLog(GovernanceStore(db), audit_key())
    for i in range(n):
        log.append(AuditEvent.TRAINING, f"teacher/2016-0{i + 1}-01", {"epochs": i})
    return db


def test_audit_verify_ok_then_names_the_edited_entry(tmp_path, monkeypatch, capsys):
    db = _log(tmp_path, monkeypatch)
    assert main(["audit", "verify"]) == 0
    assert "OK" in capsys.readouterr().out
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE audit_log SET payload = '{\"epochs\":99}' WHERE seq = 3")
    assert main(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert "3" in out and "OK" not in out


def test_audit_verify_detects_a_deleted_entry(tmp_path, monkeypatch, capsys):
    db = _log(tmp_path, monkeypatch)
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM audit_log WHERE seq = 2")
    assert main(["audit", "verify"]) == 1
    assert "2" in capsys.readouterr().out


def test_approve_unknown_version_is_a_clear_error(tmp_path, monkeypatch, capsys):
    _log(tmp_path, monkeypatch, n=1)
    assert main(["approve", "v2016.05-deadbeef00", "--approver", "risk.officer@bank"]) == 2
    err = capsys.readouterr().err
    assert "v2016.05-deadbeef00" in err
