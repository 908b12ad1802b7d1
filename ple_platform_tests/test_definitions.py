"""The Definitions object: groups, partitions, checks, and GPU dispatch tags rendered into a k8s Job."""

import json
from pathlib import Path

import dagster as dg
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

from ple_platform.core.features.spec import FEATURE_GROUPS
from ple_platform.core.tasks.spec import TASKS
from ple_platform.definitions import load_definitions
from ple_platform.defs.partitions import MONTHLY

defs = load_definitions()


def _specs_by_group():
    graph = defs.resolve_asset_graph()
    out = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        out.setdefault(node.group_name, set()).add(key.to_user_string())
    return graph, out


def test_definitions_load_and_groups():
    dg.Definitions.validate_loadable(defs)
    graph, groups = _specs_by_group()
    assert groups["raw"] == {"raw_customers", "raw_holdings", "raw_transactions"}
    assert groups["features"] == {g.name for g in FEATURE_GROUPS}
    assert groups["training"] == {"ple_teacher", "teacher_evaluation"}
    assert groups["distillation"] == {"distillation_dataset", "model_bundle", *(f"student_{t.name}" for t in TASKS)}
    assert {"challenger_evaluation", "champion_model"} <= groups["governance"]
    for key in graph.get_all_asset_keys():  # every asset is monthly except the one serving champion
        expected = None if key.to_user_string() == "champion_model" else MONTHLY
        assert graph.get(key).partitions_def == expected, key
    assert len(MONTHLY.get_partition_keys()) == 17
    assert MONTHLY.get_partition_keys()[0] == "2015-01-01" and MONTHLY.get_partition_keys()[-1] == "2016-05-01"


def test_students_carry_a_blocking_fidelity_check_and_the_sensor_is_registered():
    graph, _ = _specs_by_group()
    for t in TASKS:
        (check,) = graph.get_check_keys_for_assets([dg.AssetKey(f"student_{t.name}")])
        assert check.name == "fidelity_to_teacher" and graph.get_check_spec(check).blocking
    assert {j.name for j in defs.resolve_sensor_def("champion_challenger_sensor").jobs} == {"promote_challenger",
                                                                                "reevaluate_challenger"}


def test_every_data_asset_has_blocking_partitioned_checks():
    graph, groups = _specs_by_group()
    data_assets = groups["raw"] | groups["features"] | groups["labels"]
    for key in (dg.AssetKey(name) for name in data_assets):
        checks = list(graph.get_check_keys_for_assets([key]))
        assert checks, key
        spec = graph.get_check_spec(checks[0])
        assert spec.partitions_def == MONTHLY


def test_feature_history_windows_are_explicit_partition_mappings():
    graph, _ = _specs_by_group()
    node = graph.get(dg.AssetKey("tda_global"))
    mapping = node.partition_mappings[dg.AssetKey("raw_transactions")]
    assert isinstance(mapping, dg.TimeWindowPartitionMapping)
    assert (mapping.start_offset, mapping.end_offset) == (-11, 0)
    upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
        MONTHLY.subset_with_partition_keys(["2016-05-01"]), MONTHLY, MONTHLY
    ).partitions_subset.get_partition_keys()
    # Month t reads months t-11..t, never t+1.
    assert list(upstream)[0] == "2015-06-01" and list(upstream)[-1] == "2016-05-01"


def test_only_gpu_steps_request_a_gpu_and_the_tag_renders_into_the_step_job():
    """ple_teacher dispatches its fit as a Pipes pod (test_gpu_dispatch.py); mamba_temporal still carries step tags."""
    assets = {a.key.to_user_string(): a for a in defs.assets}
    tagged = {k for k, a in assets.items() if "dagster-k8s/config" in (a.op.tags or {})}
    assert tagged == {"mamba_temporal"}
    tags = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in assets["mamba_temporal"].op.tags.items()}
    user_config = get_user_defined_k8s_config(tags)
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="ple-platform:test", dagster_home="/opt/dagster/home", instance_config_map="dagster-instance"),
        args=["dagster", "api", "execute_step"],
        job_name="ple-step-mamba",
        user_defined_k8s_config=user_config,
    ).to_dict()
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_production_instance_config_targets_kubernetes_and_postgres():
    import yaml

    REPO = Path(__file__).resolve().parents[1]

    cfg = yaml.safe_load((REPO / "infra" / "dagster-k8s.yaml").read_text())
    assert cfg["run_launcher"]["class"] == "K8sRunLauncher"
    assert "postgres" in cfg["storage"]
    assert cfg["concurrency"]["pools"]["default_limit"] == 1
    # Secrets come from the environment / a k8s secret, never from the file.
    assert cfg["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    assert cfg["run_launcher"]["config"]["env_secrets"] == ["ple-secrets"]


def test_every_asset_has_a_code_version_that_follows_its_source(tmp_path, monkeypatch):
    """A hand-kept "1" never changes; each asset's version is a hash of the modules that compute it."""
    import re
    import sys

    from ple_platform.core.versioning import source_version

    graph = defs.resolve_asset_graph()
    versions = {key.to_user_string(): graph.get(key).code_version for key in graph.get_all_asset_keys()}
    assert all(v and re.fullmatch(r"[0-9a-f]{16}", v) for v in versions.values()), versions
    assert versions["raw_customers"] != versions["demographics"] != versions["task_labels"]
    # the hash moves when the source does
    pkg = tmp_path / "vpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "m.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = source_version("vpkg")
    (pkg / "m.py").write_text("X = 2\n")
    assert source_version("vpkg") != before
    sys.modules.pop("vpkg", None)


def test_loading_the_definitions_imports_no_model_library():
    """torch and LightGBM load in the step that uses them, not with the definitions (the UI, the daemon and
    every `dg` command load them; benchmarks/bench_import.py measures the time). Nor does the catalogue of
    installed component types, which would import dagster-aws's components with boto3 and, through them,
    alembic (definitions.load_defs_folder). Fresh interpreter, so nothing this test session imported counts."""
    import subprocess
    import sys

    heavy = ("torch", "lightgbm", "sklearn", "scipy", "pandas", "matplotlib", "dagster_aws", "boto3", "alembic")
    code = ("import sys; from ple_platform.definitions import load_definitions; d = load_definitions(); "
            "assert d.resolve_asset_graph().get_all_asset_keys(); "
            f"print('loaded:' + ','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "loaded:", f"with the definitions: {out.strip()}"
