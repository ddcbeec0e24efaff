import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from flowctl import InvalidArgumentError
from flowctl.cache import DiskStore
from flowctl.bench.pairs import PromptPair
from flowctl.bench.report import markdown, summary, to_json, write_outputs
from flowctl.bench.runner import FEWER, NOOP, BenchConfig, run_benchmark
from flowctl.bench.command import QUICK
from flowctl.cli import main
from flowctl.text import HashingEncoder

# HashingEncoder similarities are shared-word fractions: these pairs all hit under "nirvana"
PAIRS = (
    PromptPair("a large red circle on a blue background", "a large red circle on a blue background", ">0.95"),
    PromptPair("a small green square on a white background", "a small green square on a white background at noon", "0.90-0.95"),
)


@pytest.fixture(scope="module")
def result():
    config = replace(BenchConfig(**QUICK), policy="nirvana", steps=8, shooting_iterations=1, components=8, size=8)
    return run_benchmark(config, encoder=HashingEncoder(), pairs=PAIRS)


def test_every_method_runs_on_every_pair(result):
    methods = [m.name for m in result.config.methods()]
    for pair in range(len(PAIRS)):
        names = [r.method for r in result.runs if r.pair == pair and not r.sweep]
        assert names[0] == NOOP and names[1:-1] == methods and names[-1].startswith(FEWER)
    assert any(r.sweep for r in result.runs)


def test_runs_count_what_they_ran(result):
    n = result.config.steps
    for r in result.runs:
        if r.method == "direct switch":
            assert r.nfe == {"forward": n - r.resume_step} and r.speedup_nfe(n) == n / (n - r.resume_step)
        if r.method.startswith(FEWER):
            assert r.nfe == {"forward": n - r.resume_step} and r.lookup == 0.0
        assert math.isclose(r.speedup, r.scratch / (r.lookup + r.seconds)) or r.seconds == 0
    same_prompt = [r for r in result.runs if r.pair == 0 and r.method == "direct switch" and not r.sweep]
    assert same_prompt[0].psnr == math.inf  # B = A: the continuation is the reference itself
    assert result.cost["relative"]["forward"] == 1.0 and result.cost["seconds"]["jvp"] > 0


def test_report_json_and_files(result, tmp_path):
    text = markdown(result)
    for heading in ("## Table 1", "## Table 2", "## Goals", "## Sweep"):
        assert heading in text
    data = json.loads(json.dumps(to_json(result)))
    assert len(data["runs"]) == len(result.runs) and data["encoder"] == "hashing-bow-512"
    s = summary(result)
    assert [row["bucket"] for row in s["table2"]] == [">0.95", "0.90-0.95"]
    paths = write_outputs(result, tmp_path)
    assert paths["grid.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ET.fromstring(paths["speedup_psnr.svg"].read_text())
    assert paths["report.md"].read_text() == text


def test_bad_configs_are_typed_errors():
    for kwargs, argument in (({"steps": 2}, "steps"), ({"policy": "fast"}, "policy"), ({"sweep": (1.5,)}, "sweep")):
        with pytest.raises(InvalidArgumentError) as err:
            BenchConfig(**kwargs)
        assert err.value.argument == argument


def test_cli_quick_run_writes_its_outputs(tmp_path, capsys):
    pytest.importorskip("sentence_transformers")
    assert main(["bench", "--model", "gmm", "--quick", "--out", str(tmp_path)]) == 0
    assert "## Table 2: by similarity" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} == {"results.json", "report.md", "speedup_psnr.svg", "grid.png"}
    assert main(["bench", "--model", "gmm", "--quick", "--policy", "fast", "--out", str(tmp_path)]) == 2
    assert "policy" in capsys.readouterr().err


def test_cli_bench_keeps_its_runs_in_a_given_store(tmp_path, capsys):
    pytest.importorskip("sentence_transformers")
    cache = tmp_path / "cache"
    assert main(["bench", "--model", "gmm", "--quick", "--out", str(tmp_path / "out"), "--cache", str(cache)]) == 0
    records = DiskStore(cache).records()
    assert records and {r.namespace for r in records} == {"flowctl-bench"}
    assert "## Table 2: by similarity" in capsys.readouterr().out


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "flowctl", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "bench" in proc.stdout


def test_methods_are_compared_at_equal_cost(result):
    runs = [r for r in result.runs if not r.sweep and r.pair == 1]
    direct = next(r for r in runs if r.method == "direct switch")
    secant = next(r for r in runs if r.method == "secant correction")
    # one evaluation more than the direct switch: its equal-cost baseline resumes one step earlier
    assert secant.nfe_equivalents == direct.nfe_equivalents + 1
    earlier = [r for r in result.runs if r.method == "direct switch" and r.pair == 1 and r.resume_step == direct.resume_step - 1]
    assert secant.equal_cost_psnr is not None and direct.equal_cost_psnr == direct.psnr
    if earlier:  # a sweep point at that step measured the same continuation
        assert math.isclose(secant.equal_cost_psnr, earlier[0].psnr)
    goals = summary(result)["goals"]
    near = goals["near_direct_cost"]["0.90-0.95"]["secant correction"]
    assert near["extra_nfe"] == 1.0 and near["fallbacks"] == secant.fallbacks
    assert math.isclose(near["margin_db"], secant.psnr - direct.psnr)
    assert set(goals["largest_speedup_at_seed_psnr"]) >= {"direct switch", "secant correction"}
