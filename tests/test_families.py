import json

import pytest

import flowctl.families as families
from flowctl.cli import main
from flowctl.errors import InvalidArgumentError, MissingDependencyError
from flowctl.families import family_for


def test_the_sd3_family_is_found_by_entry_point(tmp_path):
    assert family_for("embedded").name == "sd3"
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    assert family_for(str(tmp_path)).name == "sd3"


@pytest.mark.parametrize(
    "index, message",
    [(None, "no model_index.json"), ("{not json", "unreadable"), (json.dumps({"_class_name": "KandinskyPipeline"}), "no installed model family runs")],
)
def test_a_directory_no_family_runs_is_a_clear_error(tmp_path, index, message):
    if index is not None:
        (tmp_path / "model_index.json").write_text(index)
    with pytest.raises(InvalidArgumentError, match=message):
        family_for(str(tmp_path))


def test_a_family_that_cannot_load_names_its_extra(tmp_path, monkeypatch):
    class Broken:
        name = "flux"

        def load(self):
            raise ImportError("No module named 'diffusers'")

    monkeypatch.setattr(families, "entry_points", lambda group: [Broken()])
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(MissingDependencyError, match=r"flowctl\[flux\]"):
        family_for(str(tmp_path))


def test_the_command_line_reports_an_unknown_model_in_one_line(tmp_path, capsys):
    assert main(["generate", "a red circle", "--model", str(tmp_path / "nowhere"), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "no such checkpoint directory" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()
