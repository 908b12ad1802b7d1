"""`ple-platform demo` end to end at a reduced size: the newcomer's first command must keep working.

The same command and code path as `make demo` (generate -> raw/features/labels for every month -> two model months
-> promotion sensor -> recommendations + compliance report -> ops/audit reviews), on a 4,000-customer panel over seven months, in a
subprocess with its own Dagster home; then `registry` and `audit verify` as a user would run them. Smaller panels
can have months with fewer than five lending acquisitions, which the labels' learnability check rightly blocks.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_POLICY = {"allow_insufficient_fairness": True, "allow_unevaluable_tasks": True, "fairness_mode": "no_regression"}


def _cli(args, env, timeout):
    return subprocess.run([sys.executable, "-m", "ple_platform.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.timeout(2600)
def test_demo_command_runs_the_whole_chain(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLE_")}
    env.update({"DAGSTER_HOME": str(home), "PLE_DATA_DIR": str(tmp_path / "data"),
                "PLE_START_MONTH": "2015-01-01", "PLE_END_MONTH": "2015-07-01", "PLE_FIT_END_MONTH": "2015-01-01",
                "PLE_PROMOTION_POLICY": json.dumps(DEMO_POLICY)})
    demo = _cli(["demo", "--customers", "4000", "--seed", "7"], env, timeout=2400)
    out = demo.stdout
    assert demo.returncode == 0, f"demo failed (exit {demo.returncode}):\n{out[-6000:]}\n{demo.stderr[-4000:]}"
    assert "Traceback" not in out + demo.stderr
    assert "nanobind" not in demo.stderr, "DuckDB bindings printed leak noise at interpreter exit"
    assert "FAILED" not in out

    # every group for every month, both model months, progress on the long stages
    for group in ("raw", "features", "labels"):
        assert f"group {group}" in out
    assert out.count("ok      ") >= 3 * 7 - 1  # labels of the newest month wait for month t+1
    for month in ("2015-06", "2015-07"):
        assert f"{month}  ok" in out, f"model month {month} did not finish:\n{out[-4000:]}"
    assert "teacher 2015-07 epoch 1/" in out  # teacher progress (samples, samples/s)
    assert "students 2015-07 13/13" in out  # students n/13

    # the promotion decision with reasons: the first bundle becomes champion, the second is promoted or rejected
    decisions = [line for line in out.splitlines() if line.strip().startswith("sensor: ")]
    assert len(decisions) >= 2, out[-4000:]
    assert "champion: v2015.0" in out
    assert "recommendations:" in out and "compliance_report:" in out
    # the month's ops and audit reviews, rules only without a key, with a verdict (never a silent pass)
    reviews = [line.strip() for line in out.splitlines() if line.strip().startswith(("ops_review 2015-07:",
                                                                                      "audit_review 2015-07:"))]
    assert len(reviews) == 2 and all(line.endswith("(rules only)") for line in reviews), out[-3000:]
    assert all(line.split(": ")[1].split(" ")[0] in ("PASS", "WARN", "insufficient", "FAIL") for line in reviews)

    registry = _cli(["registry"], env, timeout=120)
    assert registry.returncode == 0, registry.stderr
    assert "champion: v2015.0" in registry.stdout
    assert registry.stdout.count(" decision ") >= 2  # each bundle's decision, with its reasons
    verify = _cli(["audit", "verify"], env, timeout=120)
    assert verify.returncode == 0 and "OK" in verify.stdout, verify.stdout + verify.stderr
    assert "nanobind" not in verify.stderr
