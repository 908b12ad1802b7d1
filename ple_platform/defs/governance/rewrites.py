"""Optional monthly batch rewrite of the stored recommendation reasons (group ``governance``):
``recommendation_rewrites``, after ``recommendations``. No automation condition: it runs only when asked for
(``ple-platform materialize --assets recommendation_rewrites`` or the UI), as each reason may cost a model call.

Thin wiring: the rewrite path is ``core/reasons_llm`` (the same ``Rewriter`` as serving, with the shared cache
of ``PLE_LLM_CACHE``); the month's reasons are read, rewritten with the warehouse released, every verdict is
audit-logged (``reason_rewrite``) and only then the rows are stored next to the L1 text. Without an API key the
asset records "rewrite not configured" and writes nothing: that is a normal state, not a failure.
"""

from datetime import date

import dagster as dg

from ple_platform.core.governance.audit.log import AuditEvent
from ple_platform.core.reasons_llm.batch import (TABLE, BatchRewriteError, rewrite_month, stored_reasons,
                                                 write_rewrites)
from ple_platform.core.reasons_llm.rewrite import Rewriter
from ple_platform.core.recommend.monthly import LANGS
from ple_platform.core.versioning import source_version
from ple_platform.defs.core_defaults import core_default
from ple_platform.defs.partitions import MONTHLY
from ple_platform.defs.raw.assets import WAREHOUSE_POOL
from ple_platform.defs.resources import GovernanceResource, LLMResource, WarehouseResource

CODE_VERSION = source_version("ple_platform.core.reasons_llm", __name__)
NOT_CONFIGURED = "rewrite not configured"


class RecommendationRewritesConfig(dg.Config):
    max_rank: int | None = core_default(rewrite_month, "max_rank")  # rewrite only ranks <= max_rank (None: all 7)
    workers: int = core_default(rewrite_month, "workers")  # concurrent model calls


@dg.asset(group_name="governance", partitions_def=MONTHLY, deps=["recommendations"], pool=WAREHOUSE_POOL,
          kinds={"duckdb"}, owners=["team:ml-platform"], code_version=CODE_VERSION,
          metadata={"dagster/table_name": TABLE})
def recommendation_rewrites(context: dg.AssetExecutionContext, config: RecommendationRewritesConfig,
                            warehouse: WarehouseResource, governance: GovernanceResource,
                            llm: LLMResource) -> dg.MaterializeResult:
    """L2 rewrites of month t's EN/KO reasons behind the safety gate (L1 kept, with the reason, on any
    failure), stored next to the L1 text; every verdict audit-logged; "rewrite not configured" without a key."""
    month = date.fromisoformat(context.partition_key)
    llm_config = llm.config()
    if not llm_config.has_key:
        context.log.info(f"{NOT_CONFIGURED}: set ANTHROPIC_API_KEY (or PLE_LLM_API_KEY); nothing written")
        return dg.MaterializeResult(metadata={"status": NOT_CONFIGURED, "rows": 0})
    with warehouse.get_connection() as con:
        rows = stored_reasons(con, month, config.max_rank, LANGS)
    try:
        batch = rewrite_month(rows, month, Rewriter(llm_config), max_rank=config.max_rank, workers=config.workers)
    except BatchRewriteError as err:
        raise dg.Failure(description=str(err)) from None
    actor = f"dagster-run:{context.run.run_id}"
    # Audited before stored: a row without its audit entry cannot exist (the append fails closed).
    governance.audit_log().append_many([
        (AuditEvent.REASON_REWRITE, f"recommendation_rewrites/{month.isoformat()}/{e['recommendation_id']}/"
                                    f"{e['lang']}", e, actor) for e in batch.audit_events])
    with warehouse.get_connection() as con:
        n = write_rewrites(con, batch)
    return dg.MaterializeResult(metadata={
        "status": "rewritten", "rows": n, "dagster/row_count": n, "l2": batch.l2,
        "share_l2": round(batch.l2 / n, 6) if n else 0.0, "cache_hits": batch.cache_hits,
        "fallbacks": dg.MetadataValue.json(batch.fallbacks), "failed_by_rule": dg.MetadataValue.json(batch.failed_by_rule),
        "model": llm_config.model, "prompt_version": llm_config.prompt_version, "audit_entries": len(batch.audit_events)})
