import subprocess
import sys

import pytest

from flowctl import InvalidArgumentError
from flowctl.cli import main
from flowctl.demo import DemoConfig, run_demo


def test_demo_prints_a_table(capsys):
    assert main(["demo", "--steps", "8", "--resume-step", "3", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "| method | NFE |" in out
    for method in ("A as is", "direct switch", "linear blend", "cosine blend", "adaptive sigmoid", "B from scratch"):
        assert method in out


def test_demo_result_is_consistent():
    result = run_demo(DemoConfig(steps=10, resume_step=4, seeds=2, components=8))
    rows = {r.method.split(" (")[0]: r for r in result.rows}
    assert result.reference_nfe == 10
    assert rows["direct switch"].nfe == 6  # one evaluation per remaining step
    assert rows["linear blend"].nfe > 6  # two evaluations inside the transition
    assert all(r.ssim <= 1.0 for r in result.rows)


def test_demo_bad_arguments_are_clear_errors(capsys):
    assert main(["demo", "--steps", "8", "--resume-step", "8"]) == 2
    assert "resume_step" in capsys.readouterr().err
    with pytest.raises(InvalidArgumentError) as err:
        DemoConfig(steps=0)
    assert err.value.argument == "steps"


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "flowctl", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "demo" in proc.stdout
