"""Faults and bad input: key misuse in production, CLI misuse, raw ids in messages, implausible landing data."""

from __future__ import annotations

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
