import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowctl.cache.search import EmbeddingIndex
from flowctl.errors import InvalidArgumentError, ShapeError


def unit(rng, n, d=24):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(vectors, created, live, q):
    """The exact answer: best cosine, ties to the latest created."""
    best = max(live, key=lambda i: (float(vectors[i].astype(np.float64) @ q.astype(np.float64)), created[i]))
    return str(best)


@settings(max_examples=40)
@given(seed=st.integers(0, 2**31 - 1), ops=st.lists(st.tuples(st.booleans(), st.integers(0, 59)), min_size=1, max_size=120))
def test_exact_search_equals_brute_force_under_adds_and_removals(seed, ops):
    rng = np.random.default_rng(seed)
    vectors, created = unit(rng, 60), rng.integers(0, 5, 60).astype(float)  # ties in creation time too
    index, live = EmbeddingIndex(), set()
    for add, i in ops:
        if add:
            index.add("g", str(i), vectors[i], created[i])
            live.add(i)
        else:
            index.remove(str(i))
            live.discard(i)
        assert len(index) == len(live)
    for q in unit(rng, 5):
        found = index.nearest(q, ["g"])
        if not live:
            assert found is None
        else:
            assert found[0] == brute(vectors, created, live, q)
            assert found[1] == pytest.approx(float(vectors[int(found[0])] @ q), abs=1e-6)


def test_identical_embeddings_go_to_the_most_recent():
    v = unit(np.random.default_rng(0), 1)[0]
    index = EmbeddingIndex()
    for i, t in enumerate((3.0, 9.0, 5.0)):
        index.add("g", f"e{i}", v, t)
    assert index.nearest(v, ["g"])[0] == "e1"


def test_groups_are_separate_and_searched_together_when_named():
    rng = np.random.default_rng(1)
    v = unit(rng, 2)
    index = EmbeddingIndex()
    index.add(("k", "alice"), "a", v[0], 0.0)
    index.add(("k", "bob"), "b", v[1], 0.0)
    assert index.nearest(v[1], [("k", "alice")])[0] == "a"  # bob's is never seen from alice's
    assert index.nearest(v[1], [("k", "alice"), ("k", "bob")])[0] == "b"
    assert index.nearest(v[1], [("other", "alice")]) is None
    with pytest.raises(ShapeError):
        index.nearest(v[0][:5], [("k", "alice")])
    with pytest.raises(ShapeError):
        index.add(("k", "alice"), "c", v[0][:5], 0.0)


def test_the_graph_proposes_and_exact_scores_decide():
    rng = np.random.default_rng(2)
    vectors = unit(rng, 3000, d=32)
    exact, approx = EmbeddingIndex(), EmbeddingIndex(ann="always", candidates=64)
    ids = [str(i) for i in range(3000)]
    exact.add_many("g", ids, vectors, np.arange(3000.0))
    approx.add_many("g", ids[:2000], vectors[:2000], np.arange(2000.0))
    approx.wait()  # the graph is built in the background; until then search is exact
    assert approx._groups["g"].graph is not None
    for i in range(2000, 3000):  # the rest one by one: into the tail, then a few at a time into the graph
        approx.add("g", ids[i], vectors[i], float(i))
    for i in range(0, 3000, 7):
        approx.remove(ids[i])
        exact.remove(ids[i])
    queries = unit(rng, 100, d=32)
    pairs = [(exact.nearest(q, ["g"]), approx.nearest(q, ["g"])) for q in queries]
    agree = sum(e[0] == a[0] for e, a in pairs)
    assert agree >= 95  # recall@1 of the candidates
    for q, (e, a) in zip(queries, pairs):  # whatever wins, its similarity is the exact one
        assert a[1] == pytest.approx(float(vectors[int(a[0])].astype(np.float64) @ q.astype(np.float64)), abs=1e-12) and a[1] <= e[1] + 1e-12


def test_bad_mode_is_typed():
    with pytest.raises(InvalidArgumentError):
        EmbeddingIndex(ann="sometimes")


def test_changes_during_a_background_build_are_kept():
    rng = np.random.default_rng(3)
    vectors = unit(rng, 6000, d=32)
    exact, approx = EmbeddingIndex(), EmbeddingIndex(ann="always")
    ids = [str(i) for i in range(6000)]
    for index in (exact, approx):
        index.add_many("g", ids[:4000], vectors[:4000], np.arange(4000.0))  # approx: a build starts
    for index in (exact, approx):  # while it runs: removals, replacements and new entries
        for i in range(0, 4000, 5):
            index.remove(ids[i])
        for i in range(1, 4000, 5):
            index.add("g", ids[i], vectors[4000 + i // 5], 9000.0 + i)
        index.add_many("g", ids[5000:], vectors[5000:], np.arange(5000.0, 6000.0))
    approx.wait()
    assert approx._groups["g"].graph is not None and len(approx) == len(exact) == 4200
    for q in unit(rng, 100, d=32):  # nothing stale is found, nothing live is lost
        e, a = exact.nearest(q, ["g"]), approx.nearest(q, ["g"])
        assert a[0] in exact and a[1] <= e[1] + 1e-12
        hit = exact.nearest(vectors[5500], ["g"])
        assert approx.nearest(vectors[5500], ["g"]) == hit
