import json

import pytest
import torch

from flowctl import SigmaGrid
from flowctl.cache import CachedGenerator, CacheStore, DiskStore
from flowctl.cli import main
from flowctl.systems import PromptedMixtureFlow
from flowctl.text import HashingEncoder


@pytest.fixture
def cache_dir(tmp_path):
    model = PromptedMixtureFlow(HashingEncoder(), components=6, size=8)
    noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for namespace, prompt in (("alice", "a red circle"), ("alice", "a zebra"), ("bob", "a blue square")):
        store = CacheStore(device_bytes=1 << 20, host_bytes=0, persistent=DiskStore(tmp_path))
        CachedGenerator(model, model.encoder, store, SigmaGrid.create(8, 3.0), namespace=namespace).generate(prompt, noise)
    return tmp_path


def test_list_inspect_and_clear(cache_dir, capsys):
    assert main(["cache", "list", "--cache", str(cache_dir)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["a red circle", "a zebra", "a blue square"]
    assert {r["namespace"] for r in rows} == {"alice", "bob"} and all(r["encoder"] == "hashing-bow-512" for r in rows)

    assert main(["cache", "inspect", rows[0]["id"], "--cache", str(cache_dir)]) == 0
    shown = json.loads(capsys.readouterr().out)
    grid = SigmaGrid.create(8, 3.0)
    for k, at in shown["at_steps"].items():
        assert at["sigma"] == float(grid.t(int(k))) and at["timestep"] == float(grid.timestep(int(k)))
    assert shown["noise_shape"] == [1, 3, 8, 8]

    assert main(["cache", "clear", "--cache", str(cache_dir), "--namespace", "alice"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": 2, "left": 1}
    assert [r.prompt for r in DiskStore(cache_dir).records()] == ["a blue square"]


def test_bad_input_is_a_clear_error(cache_dir, tmp_path, capsys):
    assert main(["cache", "list", "--cache", str(tmp_path / "nowhere")]) == 2
    assert "no cache directory" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
    assert main(["cache", "inspect", "deadbeef", "--cache", str(cache_dir)]) == 2
    assert "no entry 'deadbeef'" in capsys.readouterr().err
    assert main(["cache", "clear", "--cache", str(cache_dir)]) == 2  # neither --namespace nor --all
    assert "--all" in capsys.readouterr().err and len(DiskStore(cache_dir)) == 3


def test_the_cache_commands_take_a_postgresql_url(postgres_url, capsys):
    from flowctl.cache import PostgresStore

    model = PromptedMixtureFlow(HashingEncoder(), components=6, size=8)
    noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    persistent = PostgresStore(postgres_url)  # the default schema, as the command line opens it
    persistent.clear()
    for namespace, prompt in (("alice", "a red circle"), ("bob", "a blue square")):
        store = CacheStore(device_bytes=1 << 20, host_bytes=0, persistent=persistent)
        CachedGenerator(model, model.encoder, store, SigmaGrid.create(8, 3.0), namespace=namespace).generate(prompt, noise)
    assert main(["cache", "list", "--cache", postgres_url]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["namespace"], r["prompt"]) for r in rows] == [("alice", "a red circle"), ("bob", "a blue square")]
    assert main(["cache", "inspect", rows[1]["id"], "--cache", postgres_url]) == 0
    assert json.loads(capsys.readouterr().out)["noise_shape"] == [1, 3, 8, 8]
    assert main(["cache", "clear", "--cache", postgres_url, "--namespace", "alice"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": 1, "left": 1}
    persistent.clear()
    persistent.close()
