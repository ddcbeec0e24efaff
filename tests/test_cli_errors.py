"""Bad command-line input: one line on stderr, exit status 2, no traceback, refused before any
model is loaded and before anything is written (flowctl/cli.py)."""

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import flowctl.cli as cli
from flowctl import SigmaGrid
from flowctl.cache import CachedGenerator, CacheStore, DiskStore, open_store
from flowctl.errors import CacheStorageError, InvalidArgumentError
from flowctl.systems import PromptedMixtureFlow
from flowctl.text import HashingEncoder

P = "a red circle"
BIG = str(2**64)  # one past the largest seed


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A folder holding a cache with one entry ("cache"), a file ("afile"), an empty folder
    ("adir"), a corrupt cache ("corrupt"), and read-only copies: a cache ("ro-cache") and an
    empty folder ("ro-dir"). Root ignores permissions, so for root ``os.access`` reports the
    read-only ones as the kernel would for anyone else."""
    model = PromptedMixtureFlow(HashingEncoder(), components=6, size=8)
    noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for name in ("cache", "ro-cache"):
        store = CacheStore(device_bytes=1 << 20, host_bytes=0, persistent=DiskStore(tmp_path / name))
        CachedGenerator(model, model.encoder, store, SigmaGrid.create(8, 3.0), namespace="a").generate(P, noise)
        store.persistent.close()
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "adir").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "index.sqlite").write_bytes(b"not a database" * 100)
    (tmp_path / "ro-dir").mkdir()
    read_only = {str(tmp_path / "ro-cache"), str(tmp_path / "ro-dir")}
    for folder in read_only:
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    if os.geteuid() == 0:
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: access(path, mode, **kw) and not (mode & os.W_OK and os.path.abspath(path) in read_only))
    yield tmp_path
    for folder in read_only:
        os.chmod(folder, stat.S_IRWXU)


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command gets as far as a model family's run (or the gmm benchmark)."""

    def refuse(args):
        raise AssertionError(f"flowctl {args.command} reached the model: bad input should have been refused before")

    find = cli.family_for
    monkeypatch.setattr(cli, "family_for", lambda model: dataclasses.replace(find(model), run=refuse))
    monkeypatch.setattr(cli, "_bench_gmm", refuse)


def listing(root: Path) -> list[tuple]:
    """Every file under ``root`` with its size and modification time, and every folder."""
    return sorted((str(p.relative_to(root)), *((p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else ())) for p in root.rglob("*"))


def run(argv: list[str]) -> int:
    """``flowctl.cli.main(argv)``'s exit status (argparse's errors raise SystemExit)."""
    try:
        return cli.main(argv)
    except SystemExit as exit_:
        return exit_.code


# Each case: the command line ({t}: the place's folder) and what its error line must name.
CASES = [
    # output paths
    (["generate", P, "--cache", "{t}/c", "--out", "{t}/missing/a.png"], "no folder"),
    (["generate", P, "--cache", "{t}/c", "--out", "{t}/afile/a.png"], "not a folder"),
    (["generate", P, "--cache", "{t}/c", "--out", "{t}/adir"], "--out"),
    (["generate", P, "--cache", "{t}/c", "--out", "{t}/a"], "image file name"),
    (["generate", P, "--cache", "{t}/c", "--out", "{t}/a.txt"], "image file name"),
    (["generate", P, "--cache", "{t}/c", "--out", ""], "--out"),
    (["generate", P, "--cache", "{t}/c", "--out", "{t}/ro-dir/a.png"], "permission denied"),
    (["continue", P, "--cache", "{t}/cache", "--out", "{t}/x.gif"], "image file name"),
    (["bench", "--out", "{t}/afile"], "a file, not a folder"),
    (["bench", "--out", "{t}/afile/sub"], "not a folder"),
    (["bench", "--out", "{t}/ro-dir/bench"], "read-only"),
    (["bench", "--model", "gmm", "--out", "{t}/ro-dir"], "read-only"),
    # numbers: negative, zero, huge, not finite, not integers
    (["generate", P, "--seed", BIG], "--seed"),
    (["generate", P, "--seed", "-1"], "--seed"),
    (["generate", P, "--seed", "1.5"], "--seed"),
    (["generate", P, "--steps", "0"], "--steps"),
    (["generate", P, "--steps", "1001"], "--steps"),
    (["generate", P, "--steps", "9" * 5000], "--steps"),
    (["generate", P, "--guidance", "-5"], "--guidance"),
    (["generate", P, "--guidance", "nan"], "--guidance"),
    (["continue", P, "--cache", "{t}/cache", "--guidance", "inf"], "--guidance"),
    (["generate", P, "--height", "7"], "--height"),
    (["generate", P, "--width", "24"], "multiple of 16"),
    (["generate", P, "--height", "100000"], "--height"),
    (["generate", P, "--max-sequence-length", "0"], "--max-sequence-length"),
    (["continue", P, "--cache", "{t}/cache", "--budget", "nan"], "--budget"),
    (["continue", P, "--cache", "{t}/cache", "--budget", "-1"], "--budget"),
    (["continue", P, "--cache", "{t}/cache", "--shooting-iterations", "0"], "--shooting-iterations"),
    (["generate", P, "--budget", "2"], "no transition"),
    (["bench", "--budget", "nan"], "--budget"),
    (["bench", "--steps", "0"], "--steps"),
    (["bench", "--seeds", "0"], "--seeds"),
    (["bench", "--seed", BIG], "--seed"),
    (["bench", "--repeats", "-1"], "--repeats"),
    (["bench", "--pairs-per-bucket", "0"], "--pairs-per-bucket"),
    (["bench", "--sweep-pairs", "-1"], "--sweep-pairs"),
    (["bench", "--shooting-iterations", "0"], "--shooting-iterations"),
    (["bench", "--all-pairs", "--pairs-per-bucket", "2"], "--all-pairs"),
    # names: empty, blank, unknown
    (["generate", ""], "prompt"),
    (["generate", " \t"], "prompt"),
    (["generate", P, "--namespace", ""], "--namespace"),
    (["continue", P, "--cache", "{t}/cache", "--namespace", "  "], "--namespace"),
    (["generate", P, "--model", ""], "--model"),
    (["generate", P, "--model", "{t}/nowhere"], "no such checkpoint"),
    (["generate", P, "--model", "{t}/adir"], "model_index.json"),
    (["generate", P, "--policy", "nope"], "--policy"),
    (["continue", P, "--cache", "{t}/cache", "--strategy", "teleport"], "--strategy"),
    (["bench", "--methods", "direct,,x"], "--methods"),
    (["bench", "--methods", "direct,teleport"], "teleport"),
    (["bench", "--methods", "direct,direct"], "--methods"),
    (["generate", P, "--negative-prompt", "blurry", "--guidance", "1"], "--negative-prompt"),
    (["bench", "--model", "gmm", "--guidance", "3"], "gmm"),
    (["generate", P, "--bogus"], "--bogus"),
    (["generate"], "prompt"),
    ([], "command"),
    (["cache"], "cache_command"),
    # devices and dtypes
    (["generate", P, "--device", "tpu"], "--device"),
    (["generate", P, "--device", "cuda:99"], "--device"),
    (["generate", P, "--device", ""], "--device"),
    (["generate", P, "--dtype", "float16"], "float16"),
    (["bench", "--dtype", "float64"], "--dtype"),
    # cache locations
    (["generate", P, "--cache", "{t}/afile"], "is a file"),
    (["generate", P, "--cache", "{t}/afile/sub"], "not a folder"),
    (["generate", P, "--cache", ""], "--cache"),
    (["generate", P, "--cache", "{t}/ro-cache"], "read-only"),
    (["generate", P, "--cache", "{t}/ro-dir/new"], "read-only"),
    (["generate", P, "--cache", "{t}/corrupt"], "not a database"),
    (["generate", P, "--cache", "redis://localhost/0"], "unknown store URL"),
    (["bench", "--cache", "x://"], "unknown store URL"),
    (["continue", P, "--cache", "{t}/nowhere"], "no cache directory"),
    (["continue", P, "--cache", "{t}/ro-cache"], "read-only"),
    (["bench", "--cache", "{t}/afile"], "is a file"),
    (["bench", "--cache", "{t}/ro-cache"], "read-only"),
    (["bench", "--model", "gmm", "--cache", "{t}/corrupt"], "not a database"),
    (["generate", P, "--cache", "postgresql://flowctl@[oops/db"], "not a PostgreSQL connection string"),
    (["generate", P, "--cache", "postgresql://flowctl@127.0.0.1:1/down?connect_timeout=2"], "opening the store failed"),
    # the cache commands
    (["cache", "list", "--cache", "{t}/afile"], "is a file"),
    (["cache", "list", "--cache", "{t}/nowhere"], "no cache directory"),
    (["cache", "list", "--cache", "{t}/corrupt"], "not a database"),
    (["cache", "list", "--cache", "{t}/cache", "--namespace", ""], "--namespace"),
    (["cache", "inspect", "deadbeef", "--cache", "{t}/cache"], "no entry 'deadbeef'"),
    (["cache", "inspect", "", "--cache", "{t}/cache"], "id"),
    (["cache", "clear", "--cache", "{t}/cache"], "--all"),
    (["cache", "clear", "--all", "--cache", "{t}/ro-cache"], "read-only"),
    (["cache", "list", "--cache", "postgresql://flowctl@127.0.0.1:1/down?connect_timeout=2"], "opening the store failed"),
]


@pytest.mark.parametrize("argv, names", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_before_any_model_or_write(argv, names, place, no_model, capsys):
    argv = [a.replace("{t}", str(place)) for a in argv]
    before = listing(place)
    assert run(argv) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowctl") and ": error: " in lines[0], err
    assert names in lines[0] and "Traceback" not in err and out == ""
    assert listing(place) == before  # nothing written, created or deleted


@pytest.mark.parametrize("argv", [
    ["generate", P, "--cache", "{t}/new/cache", "--out", "{t}/a.jpg", "--steps", "1000", "--seed", str(2**64 - 1), "--guidance", "1"],
    ["continue", P, "--cache", "{t}/cache", "--strategy", "secant", "--budget", "0", "--negative-prompt", "", "--height", "4096"],
    ["bench", "--model", "gmm", "--out", "{t}/new/bench", "--cache", "{t}/cache", "--methods", " direct, secant", "--sweep-pairs", "0"],
])
def test_good_input_at_the_ends_of_the_ranges_reaches_the_model(argv, place, no_model):
    with pytest.raises(AssertionError, match="reached the model"):
        run([a.replace("{t}", str(place)) for a in argv])
    assert not (place / "new").exists()


def test_a_read_only_cache_lists_and_inspects_and_refuses_writes(place, capsys):
    ro = str(place / "ro-cache")
    before = listing(place)
    assert run(["cache", "list", "--cache", ro]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == [P]
    assert run(["cache", "inspect", rows[0]["id"], "--cache", ro]) == 0
    assert json.loads(capsys.readouterr().out)["noise_shape"] == [1, 3, 8, 8]
    with pytest.raises(InvalidArgumentError, match="read-only"):
        open_store(ro)
    store = open_store(ro, writable=False)
    with pytest.raises(CacheStorageError):
        store.clear()
    assert [r.prompt for r in store.records()] == [P]
    store.close()
    after = listing(place)
    if os.geteuid() == 0:  # root's read-only SQLite connection can still make the WAL's files there
        after = [f for f in after if not f[0].endswith(("-wal", "-shm"))]
    assert after == before


@pytest.mark.parametrize("argv", [["generate", P, "--steps", "0"], ["generate", P, "--out", "missing/a.png"]])
def test_the_installed_command_prints_no_traceback(argv, tmp_path):
    command = Path(sys.executable).parent / "flowctl"
    if not command.exists():
        pytest.skip("no flowctl console script beside this Python")
    done = subprocess.run([str(command), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("flowctl generate: error: ") and list(tmp_path.iterdir()) == []


def test_a_machine_failure_is_one_line_and_exit_1(place, monkeypatch, capsys):
    def full(args):
        raise OSError(28, "No space left on device")

    find = cli.family_for
    monkeypatch.setattr(cli, "family_for", lambda model: dataclasses.replace(find(model), run=full))
    assert run(["generate", P, "--cache", str(place / "cache"), "--out", str(place / "a.png")]) == 1
    assert capsys.readouterr().err == "flowctl generate: error: [Errno 28] No space left on device\n"
