"""The optional monthly batch rewrite (``recommendation_rewrites``) through the real asset, the real SDK and the
local Messages-API stand-in: L2 stored next to L1 when the gate passes, a scripted bad reply and a 529 kept as L1
with the reason, every verdict audit-logged, a rerun served from the shared cache without model calls, and
without a key "rewrite not configured" with nothing written."""

from datetime import date

import dagster as dg
import duckdb
import pytest

from ple_platform.core.governance.audit.log import AuditEvent
from ple_platform.core.recommend.monthly import _DDL as RECS_DDL
from ple_platform.core.recommend.monthly import TABLE as RECS
from ple_platform.core.serving.evidence import rewrite_verdicts
from ple_platform.defs.governance.rewrites import NOT_CONFIGURED, recommendation_rewrites
from ple_platform.core.reasons_llm.config import LLMConfig
from ple_platform.defs.resources import GovernanceResource, LLMResource, WarehouseResource
from ple_platform_tests.messages_standin import Reply, StandIn
from ple_platform_tests.test_reasons_llm import BAD, GOOD, l1_for

MONTH = "2015-06-01"
RUN = {"ops": {"recommendation_rewrites": {"config": {"workers": 1}}}}  # one at a time: scripted reply order


@pytest.fixture
def env(tmp_path):
    wh = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(wh)) as con:
        con.execute("CREATE SCHEMA governance")
        con.execute(RECS_DDL)
        for rid, rank, product in (("r1", 1, "credit_card"), ("r2", 2, "funds")):
            con.execute(f"INSERT INTO {RECS} VALUES (?, ?, 'c1', ?, ?, 0.5, 't', '{{}}', ?, ?, '[]', 'v1', 'sha')",
                        [rid, date.fromisoformat(MONTH), rank, product, l1_for(product, "en").text,
                         l1_for(product, "ko").text])
    gov = GovernanceResource(path=str(tmp_path / "governance.duckdb"))
    return {"resources": {"warehouse": WarehouseResource(database=str(wh)), "governance": gov}, "wh": wh, "gov": gov}


def _llm() -> LLMResource:
    """The LLM resource as the environment (set by each test) configures it, built when the run starts."""
    config = LLMConfig.from_env()
    return LLMResource.from_config(config, config.api_key)


def _run(env):
    result = dg.materialize([recommendation_rewrites], partition_key=MONTH, resources={**env["resources"], "llm": _llm()},
                            run_config=RUN, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    return result.asset_materializations_for_node("recommendation_rewrites")[0].metadata


def _stored(env):
    with duckdb.connect(str(env["wh"])) as con:
        return con.execute("SELECT recommendation_id, lang, level, fallback, rule_ids, cache_hit, text, l1_text FROM "
                           "governance.recommendation_rewrites ORDER BY recommendation_id, lang").fetchall()


def test_batch_rewrite_stores_l2_falls_back_audits_and_reuses_the_cache(env, tmp_path, monkeypatch):
    with StandIn() as standin:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-not-real")
        monkeypatch.setenv("PLE_LLM_BASE_URL", standin.url)
        monkeypatch.setenv("PLE_LLM_CACHE", str(tmp_path / "rewrites.duckdb"))
        # r1 en, r1 ko: good rewrites; r2 en: a guaranteed-return claim; r2 ko: overloaded (529).
        standin.push(Reply(GOOD["en"]), Reply(GOOD["ko"]), Reply(BAD["guaranteed"][0]), Reply(status=529))
        meta = _run(env)
        assert (meta["status"].value, meta["rows"].value, meta["l2"].value, meta["cache_hits"].value) == (
            "rewritten", 4, 2, 0)
        assert meta["fallbacks"].value == {"gate": 1, "overloaded": 1}
        rows = _stored(env)
        assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
            ("r1", "en", "L2", None), ("r1", "ko", "L2", None), ("r2", "en", "L1", "gate"),
            ("r2", "ko", "L1", "overloaded")]
        assert rows[0][6] == GOOD["en"] and rows[0][7] == l1_for("credit_card", "en").text  # L2 next to L1
        assert rows[2][6] == rows[2][7] == l1_for("funds", "en").text and "guaranteed_return" in rows[2][4]
        assert len(standin.requests) == 4
        entries = env["gov"].audit_log().entries(event=AuditEvent.REASON_REWRITE)
        assert len(entries) == 4 and all("customer_id" not in e.payload for e in entries)
        assert {(e.payload["recommendation_id"], e.payload["lang"], e.payload["level"]) for e in entries} == {
            ("r1", "en", "L2"), ("r1", "ko", "L2"), ("r2", "en", "L1"), ("r2", "ko", "L1")}

        # Rerun (a new process's Rewriter): r1 from the shared cache, r2 (never cached) asks again.
        standin.push(Reply(GOOD["en"][:60], stop_reason="max_tokens"), Reply(BAD["injection"][0]))
        meta = _run(env)
        assert (meta["rows"].value, meta["l2"].value, meta["cache_hits"].value) == (4, 2, 2)
        assert len(standin.requests) == 6 and len(_stored(env)) == 4  # the month replaced, not appended
        assert [r[5] for r in _stored(env)] == [True, True, False, False]
    v = rewrite_verdicts(env["gov"].audit_log(), MONTH)  # what the compliance report's gate control reads
    assert (v["verdicts"], v["passed"], v["cache_hits"]) == (8, 4, 2)
    assert v["fallbacks"] == {"gate": 2, "overloaded": 1, "truncated": 1}
    assert v["failed_by_rule"]["guaranteed_return"] == 1 and v["failed_by_rule"]["injection_echo"] == 1


def test_without_a_key_the_batch_rewrite_is_not_configured_and_writes_nothing(env):
    meta = _run(env)
    assert (meta["status"].value, meta["rows"].value) == (NOT_CONFIGURED, 0)
    with duckdb.connect(str(env["wh"])) as con:
        assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = "
                           "'recommendation_rewrites'").fetchall() == [(0,)]
    assert env["gov"].audit_log().entries(event=AuditEvent.REASON_REWRITE) == []


def test_a_month_without_recommendations_fails_naming_it(env, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-not-real")
    with pytest.raises(dg.Failure, match="no recommendations stored for 2015-07"):
        dg.materialize([recommendation_rewrites], partition_key="2015-07-01", resources={**env["resources"], "llm": _llm()},
                       run_config=RUN, instance=dg.DagsterInstance.ephemeral())
