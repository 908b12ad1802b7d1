"""Every asset's key, group, partitioning, upstream mappings, checks, automation condition and freshness policy
against a committed snapshot.

A change to the asset graph must be deliberate: regenerate with
``pytest ple_platform_tests/test_definitions_snapshot.py --update-definitions-snapshot`` and commit the diff.
"""

import difflib
import json
from pathlib import Path

import dagster as dg

from ple_platform.definitions import load_definitions

SNAPSHOT = Path(__file__).parent / "data" / "definitions_snapshot.json"


def _partitioning(pdef) -> str | None:
    if pdef is None:
        return None
    if isinstance(pdef, dg.TimeWindowPartitionsDefinition):
        keys = pdef.get_partition_keys()
        return f"{type(pdef).__name__}({keys[0]}..{keys[-1]}, {len(keys)} partitions, {pdef.timezone})"
    return type(pdef).__name__


def _mapping(mapping) -> str:
    if isinstance(mapping, dg.TimeWindowPartitionMapping):
        return f"TimeWindow({mapping.start_offset}, {mapping.end_offset})"
    return type(mapping).__name__


def graph_snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    out = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        checks = []
        for ck in sorted(graph.get_check_keys_for_assets([key]), key=lambda c: c.name):
            spec = graph.get_check_spec(ck)
            checks.append(f"{ck.name} ({'blocking' if spec.blocking else 'non-blocking'}, "
                          f"{'partitioned' if spec.partitions_def else 'unpartitioned'})")
        out[key.to_user_string()] = {
            "group": node.group_name,
            "partitioning": _partitioning(node.partitions_def),
            "deps": {p.to_user_string(): _mapping(node.partition_mappings[p]) if p in node.partition_mappings
                     else "default" for p in sorted(node.parent_keys, key=lambda k: k.to_user_string())},
            "checks": checks,
            "automation": node.automation_condition.get_label() if node.automation_condition else None,
            "freshness": repr(node.freshness_policy) if node.freshness_policy else None,
        }
    return out


def test_asset_graph_matches_the_committed_snapshot(request):
    actual = json.dumps(graph_snapshot(load_definitions()), indent=2, sort_keys=True) + "\n"
    if request.config.getoption("--update-definitions-snapshot"):
        SNAPSHOT.write_text(actual)
    expected = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
    diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                        "committed snapshot", "current definitions"))
    assert not diff, ("the asset graph differs from ple_platform_tests/data/definitions_snapshot.json; if the change "
                      f"is intended, rerun with --update-definitions-snapshot and commit it:\n{diff}")
