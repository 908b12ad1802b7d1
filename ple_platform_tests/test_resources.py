"""Settings and secrets reach assets as Dagster resources, and every run-config default is its core default."""

import ast
import dataclasses
from pathlib import Path

import dagster as dg
import pytest

from ple_platform.core.distillation.fidelity import FidelityThresholds
from ple_platform.core.distillation.students import StudentConfig, fit_task_students
from ple_platform.core.governance.compliance.evidence_settings import EvidenceSettings
from ple_platform.core.governance.promotion.challenger import evaluate_challenger
from ple_platform.core.governance.promotion.flow import approve_challenger
from ple_platform.core.model.assessment_settings import AssessmentSettings
from ple_platform.core.model.baselines import DEFAULT_PARAMS
from ple_platform.core.model.ple_config import PLEConfig
from ple_platform.core.model.teacher import TeacherSettings, fit_teacher
from ple_platform.core.reasons_llm.batch import rewrite_month
from ple_platform.core.secrets import MissingSecretError
from ple_platform.core.settings import ENV_VARS, Settings
from ple_platform.defs.distillation.assets import StudentRunConfig
from ple_platform.defs.governance.promotion import ApprovalConfig, ChallengerEvaluationConfig, PromotionRunConfig
from ple_platform.defs.governance.reports import ComplianceReportConfig
from ple_platform.defs.governance.rewrites import RecommendationRewritesConfig
from ple_platform.defs.resources import GovernanceResource, PlatformSettings, build_resources
from ple_platform.defs.training.assets import EvaluationRunConfig, TeacherRunConfig

DEFS = Path(__file__).resolve().parents[1] / "ple_platform" / "defs"
STRONG = "s" * 40


def _field_default(owner, name):
    if dataclasses.is_dataclass(owner):
        f = {f.name: f for f in dataclasses.fields(owner)}[name]
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()
    import inspect
    return inspect.signature(owner).parameters[name].default


# Every defaulted run-config field -> where core keeps that knob's default. A new field must be added here.
CORE_SOURCE = {
    TeacherRunConfig: {"max_customers_per_month": TeacherSettings, "epochs": TeacherSettings,
                       "batch_size": TeacherSettings, "seed": TeacherSettings, "expert_kind": TeacherSettings,
                       "expert_dim": PLEConfig, "n_layers": PLEConfig, "resume": fit_teacher},
    EvaluationRunConfig: {"n_boot": AssessmentSettings, "lgb_num_boost_round": AssessmentSettings,
                          "lgb_early_stopping": AssessmentSettings, "train_vanilla_ple": (AssessmentSettings, "train_vanilla"),
                          "lgb_max_bin": (DEFAULT_PARAMS, "max_bin"), "lgb_num_leaves": (DEFAULT_PARAMS, "num_leaves")},
    StudentRunConfig: {"temperature": StudentConfig, "alpha": StudentConfig, "num_boost_round": StudentConfig,
                       "early_stopping_rounds": StudentConfig, "selection_rounds": StudentConfig,
                       "keep_share": fit_task_students, "n_boot": fit_task_students,
                       "max_bin": (DEFAULT_PARAMS, "max_bin"), "num_leaves": (DEFAULT_PARAMS, "num_leaves"),
                       **{k: FidelityThresholds for k in ("max_auc_gap", "min_spearman", "min_topk_agreement",
                                                          "max_ece", "min_teacher_std", "min_teacher_auc")},
                       "route": None},  # platform-only: "auto" routes by validation evidence
    ChallengerEvaluationConfig: {"n_boot": evaluate_challenger, "min_group_size": evaluate_challenger},
    ComplianceReportConfig: {"n_boot": EvidenceSettings, "min_group_size": EvidenceSettings},
    ApprovalConfig: {"note": approve_challenger},
    PromotionRunConfig: {},
    RecommendationRewritesConfig: {"max_rank": rewrite_month, "workers": rewrite_month},
}


def test_every_run_config_default_is_its_core_default():
    """One default per knob: the launchpad's default and the core default are the same value (students once ran
    400 boosting rounds from the UI and 1000 when core was called directly)."""
    found = {c for c in dg.Config.__subclasses__() if c.__module__.startswith("ple_platform.defs")}
    assert found == set(CORE_SOURCE), found ^ set(CORE_SOURCE)
    for config, sources in CORE_SOURCE.items():
        defaulted = {n for n, f in config.model_fields.items() if not f.is_required()}
        assert defaulted == set(sources), (config.__name__, defaulted ^ set(sources))
        for name, source in sources.items():
            if source is None:
                continue
            owner, core_name = source if isinstance(source, tuple) else (source, name)
            expected = owner[core_name] if isinstance(owner, dict) else _field_default(owner, core_name)
            assert config.model_fields[name].default == expected, (config.__name__, name)
    assert StudentRunConfig().num_boost_round == StudentConfig().num_boost_round


def test_settings_resource_mirrors_core_settings_with_the_same_defaults(tmp_path):
    """Each resource field is a ``Settings.from_values`` argument with the same default, and the resource built
    from an environment gives back exactly the settings ``Settings.from_env`` reads from it."""
    assert set(PlatformSettings.model_fields) == set(ENV_VARS)
    import inspect
    core = inspect.signature(Settings.from_values).parameters
    assert {n: f.default for n, f in PlatformSettings.model_fields.items()} == {n: core[n].default for n in ENV_VARS}
    env = {"PLE_DATA_DIR": str(tmp_path), "PLE_START_MONTH": "2015-03-01", "PLE_END_MONTH": "2015-09-01",
           "PLE_REQUIRE_APPROVAL": "yes", "PLE_PROMOTION_POLICY": '{"min_tasks_improved": 2}',
           "PLE_LANDING_KIND": "santander", "PLE_LANDING_TRANSACTIONS": str(tmp_path / "t.csv")}
    settings = Settings.from_env(env)
    assert build_resources(settings, env)["settings"].settings() == settings
    assert PlatformSettings(data_dir=str(tmp_path)).settings() == Settings.from_env({"PLE_DATA_DIR": str(tmp_path)})


def test_hmac_keys_come_through_env_var_resolved_when_the_run_starts(tmp_path, monkeypatch):
    """In production the keys are ``dg.EnvVar``s: not copied into the resource at load time, read when the run
    starts, and held to core/secrets.py's rules there too."""
    monkeypatch.setenv("PLE_ENV", "prod")
    monkeypatch.setenv("PLE_AUDIT_KEY", "a" * 40)
    monkeypatch.setenv("PLE_PSEUDONYMISATION_KEY", "p" * 40)
    resources = build_resources(Settings.from_env({"PLE_DATA_DIR": str(tmp_path), "PLE_ENV": "prod",
                                                   "PLE_AUDIT_KEY": "a" * 40, "PLE_PSEUDONYMISATION_KEY": "p" * 40}))
    seen = {}

    @dg.asset
    def probe(settings: PlatformSettings, governance: GovernanceResource):
        seen.update(audit=settings.audit_key_bytes(), pseudo=settings.pseudonymisation_key_bytes(),
                    log_key=governance.audit_log()._key, source=settings.settings().audit_key_source)

    monkeypatch.setenv("PLE_AUDIT_KEY", STRONG)  # rotated after the definitions loaded
    assert dg.materialize([probe], resources=resources).success
    assert seen == {"audit": STRONG.encode(), "pseudo": b"p" * 40, "log_key": STRONG.encode(),
                    "source": "env:PLE_AUDIT_KEY"}
    monkeypatch.setenv("PLE_AUDIT_KEY", "short")
    result = dg.materialize([probe], resources=resources, raise_on_error=False)
    assert not result.success
    with pytest.raises(MissingSecretError, match="PLE_AUDIT_KEY is 5 bytes"):
        PlatformSettings(env="prod", audit_key="short").audit_key_bytes()


def test_dev_keys_default_without_configuration(tmp_path, monkeypatch):
    """Outside production an unset key is the documented dev default (no EnvVar that would fail the run)."""
    for var in ("PLE_AUDIT_KEY", "PLE_PSEUDONYMISATION_KEY", "PLE_ENV"):
        monkeypatch.delenv(var, raising=False)
    platform = build_resources(Settings.from_env({"PLE_DATA_DIR": str(tmp_path)}))["settings"]
    from ple_platform.core.secrets import DEV_AUDIT_KEY, DEV_PSEUDONYMISATION_KEY
    assert (platform.audit_key_bytes(), platform.pseudonymisation_key_bytes()) == (DEV_AUDIT_KEY,
                                                                                   DEV_PSEUDONYMISATION_KEY)


def _env_reads_in_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            text = ast.unparse(node) if isinstance(node, (ast.Call, ast.Attribute)) else ""
            if (isinstance(node, ast.Call) and text.split("(")[0].endswith(".from_env")) or \
                    (isinstance(node, ast.Attribute) and text in ("os.environ", "os.getenv")):
                found.append(f"{path.name}:{node.lineno} in {fn.name}: {text[:60]}")
    return found


def test_no_asset_or_sensor_body_reads_the_environment():
    """Settings reach steps and sensors only as resources; the environment is read where resources are chosen
    (``build_resources``) and for definition-time facts at module level (partitions, sensor interval)."""
    reads = [r for p in sorted(DEFS.rglob("*.py")) for r in _env_reads_in_functions(p)]
    assert all("in build_resources" in r or "in _env_var_if_needed" in r for r in reads), reads
    assert any("resources.py" in r for r in reads)  # the scan does see env reads
