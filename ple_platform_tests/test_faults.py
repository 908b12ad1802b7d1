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
