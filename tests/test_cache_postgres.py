"""PostgresStore on a real PostgreSQL with pgvector: the session's throwaway server (conftest's
``postgres_url``), one schema per test. Never skipped: if the server cannot start, these fail."""

import subprocess
import sys
import threading
import uuid
import warnings
from pathlib import Path

import psycopg
import pytest
import torch
from psycopg.conninfo import make_conninfo

from flowctl import SigmaGrid
from flowctl.cache import codec
from flowctl.cache.entry import CacheEntry, CacheKey, CacheMissError, unit_embedding
from flowctl.cache.persistent import PersistentStore
from flowctl.cache import CacheCorruptionWarning
from flowctl.cache.postgres import PostgresStore, local_server
from flowctl.errors import CacheFullError, CacheStorageError, InvalidArgumentError, MissingDependencyError, ShapeError

GRID = SigmaGrid.create(12, 3.0, mu=0.5, time_shift="linear")
KEY = CacheKey.for_grid("model-a", GRID, shape=(1, 4, 8, 8), dtype="float32", guidance=4.5)
OTHER_KEY = CacheKey.for_grid("model-b", GRID, shape=(1, 4, 8, 8), dtype="float32", guidance=4.5)


def make_entry(seed, *, key=KEY, steps=(0, 3, 6), namespace="default", entry_id=None, embedding=None, created=None):
    """A deterministic entry of ``seed`` (the child processes rebuild them)."""
    gen = torch.Generator().manual_seed(seed)
    generator_state = gen.get_state()
    noise = torch.randn(key.shape, generator=gen)
    # Step 0 is the noise itself: the codec must store it twice (safetensors refuses shared memory).
    states = {k: noise if k == 0 else torch.randn(key.shape, generator=gen) for k in steps}
    velocities = {steps[-1]: torch.randn(key.shape, generator=gen)}
    vector = torch.randn(16, generator=gen)
    return CacheEntry(
        key,
        f"prompt {seed}",
        vector if embedding is None else embedding,
        states,
        noise,
        generator_state,
        velocities,
        namespace=namespace,
        entry_id=f"e{seed:04d}" if entry_id is None else entry_id,
        created=1000.0 + seed if created is None else created,
    )


def assert_same(a, b):
    assert (a.entry_id, a.namespace, a.prompt, a.created, a.key) == (b.entry_id, b.namespace, b.prompt, b.created, b.key)
    assert a.grid.key == b.grid.key and torch.equal(a.grid.values, b.grid.values)
    assert a.cached_steps == b.cached_steps and list(a.velocities) == list(b.velocities)
    for k in a.states:
        assert a.states[k].dtype == b.states[k].dtype and torch.equal(a.states[k], b.states[k])
    assert all(torch.equal(a.velocities[k], b.velocities[k]) for k in a.velocities)
    for name in ("noise", "embedding", "generator_state"):
        assert torch.equal(getattr(a, name), getattr(b, name))


@pytest.fixture
def schema(postgres_url):
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture
def admin(postgres_url):
    """A raw connection as the server's superuser."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def store(postgres_url, schema):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheCorruptionWarning)
        with PostgresStore(postgres_url, schema=schema) as s:
            yield s


def test_a_put_round_trips_bit_for_bit(store, postgres_url, schema, admin):
    assert isinstance(store, PersistentStore) and store.dim is None and len(store) == 0
    entries = [make_entry(1), make_entry(2, namespace="ns"), make_entry(3, steps=(0, 11))]
    for entry in entries:
        store.put(entry)
    assert store.dim == 16 and len(store) == 3 and "e0002" in store and "e0009" not in store and 5 not in store
    reopened = PostgresStore(postgres_url, schema=schema)  # another handle, as another worker has
    for entry in entries:
        assert_same(reopened.get(entry.entry_id, entry.namespace), entry)
    reopened.close()
    records = store.records()
    assert [r.entry_id for r in records] == ["e0001", "e0002", "e0003"]  # oldest first
    assert records[2].steps == (0, 11) and records[0].nbytes == entries[0].nbytes
    assert torch.equal(records[1].embedding, entries[1].embedding) and records[0].key == KEY
    assert [r.entry_id for r in store.records("ns")] == ["e0002"]
    assert admin.execute(f"SELECT hits FROM {schema}.entries WHERE entry_id = 'e0001'").fetchone() == (1,)
    with pytest.raises(CacheMissError):
        store.get("e0001", "ns")  # ids are looked up in the namespace asked
    store.delete("e0001", "default")
    with pytest.raises(CacheMissError):
        store.delete("e0001", "default")
    assert "e0001" not in store and len(store) == 2


def test_a_put_replaces_in_its_namespace_and_refuses_another_namespaces_id(store):
    original = make_entry(1)
    store.put(original)
    store.get("e0001", "default")
    replacement = make_entry(5, entry_id="e0001")
    store.put(replacement)
    assert_same(store.get("e0001", "default"), replacement) and len(store) == 1
    with pytest.raises(InvalidArgumentError, match="another namespace") as info:
        store.put(make_entry(7, namespace="bob", entry_id="e0001"))
    assert info.value.argument == "entry"
    assert_same(store.get("e0001", "default"), replacement)  # untouched
    with pytest.raises(CacheMissError):
        store.get("e0001", "bob")
    assert len(store) == 1 and store.records("bob") == []


def test_nearest_is_exact_and_respects_key_and_namespaces(store):
    query = torch.randn(16, generator=torch.Generator().manual_seed(99))
    close = query + 0.1 * torch.randn(16, generator=torch.Generator().manual_seed(5))
    store.put(make_entry(1, embedding=close))
    store.put(make_entry(2))  # a random embedding
    store.put(make_entry(3, key=OTHER_KEY, embedding=query))  # identical, under another key
    store.put(make_entry(4, namespace="other", embedding=query))  # identical, in another namespace
    match = store.nearest(query, KEY, ["default"])
    entry = make_entry(1, embedding=close)
    q = unit_embedding("query", query)  # the unit float32 vector the store searches with
    assert match.entry_id == "e0001" and match.namespace == "default" and match.prompt == "prompt 1"
    assert match.steps == (0, 3, 6)
    assert match.similarity == float(entry.embedding.double() @ q.double())  # exact, float64
    assert store.nearest(query, KEY, ["default", "other"]).entry_id == "e0004"
    assert store.nearest(query, OTHER_KEY, ["default"]).entry_id == "e0003"
    assert store.nearest(query, KEY, ["nobody"]) is None and store.nearest(query, KEY, []) is None
    # Ties go to the most recently created.
    store.put(make_entry(5, embedding=close, created=5000.0))
    store.put(make_entry(6, embedding=close, created=500.0))
    assert store.nearest(query, KEY, ["default"]).entry_id == "e0005"
    with pytest.raises(ShapeError):
        store.nearest(torch.randn(8), KEY, ["default"])
    with pytest.raises(InvalidArgumentError):
        store.nearest(query, KEY, "default")  # a string is not a list of namespaces


def test_the_dimension_is_fixed_by_the_first_put_or_by_dim(store, postgres_url, schema, admin):
    assert store.nearest(torch.randn(16), KEY, ["default"]) is None  # no dimension yet
    for _ in range(8):  # psycopg prepares a statement on its 5th use
        assert store.records() == []
        with pytest.raises(CacheMissError):
            store.get("e0001", "default")
    with PostgresStore(postgres_url, schema=schema) as other:
        other.put(make_entry(1))  # fixes the dimension under the first handle's prepared statements
    assert [r.entry_id for r in store.records()] == ["e0001"]
    assert_same(store.get("e0001", "default"), make_entry(1))
    assert store.nearest(make_entry(1).embedding, KEY, ["default"]).entry_id == "e0001"
    with pytest.raises(ShapeError):
        store.put(make_entry(2, embedding=torch.randn(8)))
    assert len(store) == 1
    with pytest.raises(ShapeError):
        PostgresStore(postgres_url, schema=schema, dim=32)
    index = admin.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = 'entries_embedding'", (schema,)).fetchone()
    assert "hnsw" in index[0] and "vector_cosine_ops" in index[0]
    other = f"{schema}_d"
    try:
        fixed = PostgresStore(postgres_url, schema=other, dim=8)
        assert fixed.dim == 8 and fixed.nearest(torch.randn(8), KEY, ["default"]) is None
        with pytest.raises(ShapeError):
            fixed.put(make_entry(1))
        fixed.close()
    finally:
        admin.execute(f"DROP SCHEMA IF EXISTS {other} CASCADE")


CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from test_cache_postgres import assert_same, make_entry
from flowctl.cache.postgres import PostgresStore

store = PostgresStore({url!r}, schema={schema!r})
mine = range({first}, {first} + 50)
for seed in mine:
    store.put(make_entry(seed))
deadline = time.monotonic() + 60
while len(store) < 100 and time.monotonic() < deadline:
    time.sleep(0.05)
for seed in [*range(0, 50), *range(100, 150)]:
    assert_same(store.get(f"e{{seed:04d}}", "default"), make_entry(seed))
print(len(store))
"""


def test_two_processes_lose_nothing_and_see_each_other(postgres_url, schema):
    # They also race to create the schema and to fix its dimension.
    tests = str(Path(__file__).parent)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD.format(tests=tests, url=postgres_url, schema=schema, first=first)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent.parent,
        )
        for first in (0, 100)
    ]
    results = [child.communicate(timeout=120) for child in children]
    for child, (out, err) in zip(children, results):
        assert child.returncode == 0, "\n".join(e for _, e in results)
        assert out.strip() == "100"
    with PostgresStore(postgres_url, schema=schema) as store:
        assert len(store) == 100 and not store.quarantined


def test_concurrent_creators_agree(postgres_url, schema):
    """Handles opened at once on a new schema: one creates it, one fixes the dimension."""
    barrier, errors = threading.Barrier(4), []

    def work(seed):
        try:
            barrier.wait()
            with PostgresStore(postgres_url, schema=schema) as s:
                s.put(make_entry(seed))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with PostgresStore(postgres_url, schema=schema) as s:
        assert len(s) == 4 and s.dim == 16


def test_threads_share_a_handle(store):
    def work(first):
        for seed in range(first, first + 10):
            store.put(make_entry(seed))
            assert store.get(f"e{seed:04d}", "default").prompt == f"prompt {seed}"

    threads = [threading.Thread(target=work, args=(first,)) for first in (0, 10, 20, 30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 40


TAMPER = {
    "namespace": "SET namespace = 'evil'",
    "prompt": "SET prompt = 'an edited prompt'",
    "embedding": "SET embedding = (SELECT embedding FROM {s}.entries WHERE entry_id = 'e0002')",
    "key": "SET key = replace(key, 'model-a', 'model-z')",
    "steps": "SET steps = '{{0,3}}'",
    "created": "SET created = created + 1",
    "mac": "SET mac = 'sha256:0000'",
    "data": "SET data = set_byte(data, length(data) - 100, 255 - get_byte(data, length(data) - 100))",
}


@pytest.mark.parametrize("field", list(TAMPER))
def test_a_tampered_row_is_quarantined_not_served(postgres_url, schema, admin, field):
    store = PostgresStore(postgres_url, schema=schema)
    store.put(make_entry(1))
    store.put(make_entry(2))
    admin.execute(f"UPDATE {schema}.entries {TAMPER[field].format(s=schema)} WHERE entry_id = 'e0001'")
    with pytest.warns(UserWarning, match="e0001 quarantined") as caught:
        with pytest.raises(CacheMissError, match="quarantined"):
            store.get("e0001", "default")
    assert caught[0].category is CacheCorruptionWarning
    assert "e0001" in store.quarantined and "e0001" not in store
    assert (field if field != "data" else "verification") in store.quarantined["e0001"]
    moved = admin.execute(f"SELECT entry_id, reason, length(data) FROM {schema}.quarantine").fetchall()
    assert len(moved) == 1 and moved[0][0] == "e0001" and moved[0][1] == store.quarantined["e0001"] and moved[0][2] > 0
    assert_same(store.get("e0002", "default"), make_entry(2))  # the others are served
    with pytest.raises(CacheMissError):
        store.get("e0001", "default")  # now simply absent
    store.close()


def test_a_secret_signs_entries_and_a_wrong_one_is_refused_on_opening(postgres_url, schema, admin):
    signed = PostgresStore(postgres_url, schema=schema, secret="s3cret")
    entry = make_entry(1)
    signed.put(entry)
    signed.close()
    reopened = PostgresStore(postgres_url, schema=schema, secret=b"s3cret")
    assert_same(reopened.get("e0001", "default"), entry)
    for wrong in ("other", None):
        with pytest.raises(InvalidArgumentError) as info:
            PostgresStore(postgres_url, schema=schema, secret=wrong)
        assert info.value.argument == "secret"
    # An entry signed without the secret (a forgery) fails verification: quarantined.
    forged = codec.encode(make_entry(2, entry_id="e0001"), b"not the secret")
    admin.execute(f"UPDATE {schema}.entries SET data = %s, mac = %s WHERE entry_id = 'e0001'", (forged.data, forged.mac))
    with pytest.warns(UserWarning, match="quarantined"):
        with pytest.raises(CacheMissError):
            reopened.get("e0001", "default")
    assert "HMAC" in reopened.quarantined["e0001"]
    reopened.close()


def test_a_store_without_a_secret_takes_one_only_while_empty(postgres_url, schema):
    plain = PostgresStore(postgres_url, schema=schema)
    plain.put(make_entry(1))
    with pytest.raises(InvalidArgumentError, match="without a secret"):
        PostgresStore(postgres_url, schema=schema, secret="s3cret")
    plain.clear()
    adopted = PostgresStore(postgres_url, schema=schema, secret="s3cret")
    adopted.put(make_entry(2))
    assert adopted.get("e0002", "default").prompt == "prompt 2"
    with pytest.raises(InvalidArgumentError, match="secret"):
        PostgresStore(postgres_url, schema=schema)
    plain.close()
    adopted.close()


def test_clear_one_namespace_or_all(store):
    for seed, namespace in ((1, "a"), (2, "a"), (3, "b")):
        store.put(make_entry(seed, namespace=namespace))
    assert store.clear("a") == 2 and [r.entry_id for r in store.records()] == ["e0003"]
    assert store.clear("a") == 0
    assert store.clear() == 1 and len(store) == 0


def test_evict_lru(store):
    for seed in range(5):
        store.put(make_entry(seed))
    size = make_entry(0).nbytes
    store.get("e0000", "default")  # used last: it stays
    assert store.evict(10 * size, "lru") == 0
    assert store.evict(3 * size, "lru") == 2
    assert sorted(r.entry_id for r in store.records()) == ["e0000", "e0003", "e0004"]
    assert store.evict(0) == 3 and len(store) == 0


def test_evict_benefit_ties_by_lru(store):
    # Two cached steps each (equal sizes); benefit = hits x last step / 12.
    for seed, steps in ((0, (0, 6)), (1, (0, 9)), (2, (0, 3)), (3, (0, 11))):
        store.put(make_entry(seed, steps=steps))
    for entry_id in ("e0002", "e0002", "e0002", "e0001", "e0000", "e0000"):
        store.get(entry_id, "default")
    # benefits: e0000 2 x 6/12 = 1, e0001 1 x 9/12 = 0.75, e0002 3 x 3/12 = 0.75 (used before e0001), e0003 0
    size = make_entry(0, steps=(0, 6)).nbytes
    assert store.evict(3 * size, "benefit") == 1 and "e0003" not in store
    assert store.evict(2 * size, "benefit") == 1 and "e0002" not in store
    assert sorted(r.entry_id for r in store.records()) == ["e0000", "e0001"]
    with pytest.raises(InvalidArgumentError):
        store.evict(0, "fifo")


def test_row_level_security_isolates_tenant_roles(postgres_url, schema, admin):
    owner = PostgresStore(postgres_url, schema=schema)
    owner.put(make_entry(1, namespace="alpha"))
    owner.put(make_entry(2, namespace="beta"))
    alpha = owner.create_tenant("alpha", "pw-alpha")
    owner.create_tenant("beta", "pw-beta")
    # (The test server trusts local connections, so the password is not checked here.)
    tenant_url = make_conninfo(postgres_url, user=alpha, password="pw-alpha")
    entries = f"{schema}.entries"
    with psycopg.connect(tenant_url, autocommit=True) as raw:
        assert raw.execute("SELECT current_user").fetchone() == (alpha,)
        assert raw.execute(f"SELECT entry_id, namespace FROM {entries}").fetchall() == [("e0001", "alpha")]
        assert raw.execute(f"UPDATE {entries} SET prompt = 'mine now' WHERE namespace = 'beta'").rowcount == 0
        assert raw.execute(f"DELETE FROM {entries} WHERE entry_id = 'e0002'").rowcount == 0
        columns = "prompt, key, embedding, steps, nbytes, created, mac, data"
        copy = f"INSERT INTO {entries} (entry_id, namespace, {columns}) SELECT 'x1', %s, {columns} FROM {entries}"
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            raw.execute(copy, ("beta",))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            raw.execute(f"UPDATE {entries} SET namespace = 'beta' WHERE entry_id = 'e0001'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            raw.execute(f"ALTER TABLE {entries} NO FORCE ROW LEVEL SECURITY")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            raw.execute(f"INSERT INTO {schema}.tenants VALUES (current_user, 'beta')")
        assert raw.execute(f"SELECT namespace FROM {schema}.tenants").fetchall() == [("alpha",)]
        raw.execute(copy, ("alpha",))  # its own namespace: allowed
    beta_rows = admin.execute(f"SELECT entry_id, prompt FROM {entries} WHERE namespace = 'beta'").fetchall()
    assert beta_rows == [("e0002", "prompt 2")]
    # A worker that connects as the tenant: PostgresStore works unchanged, within its namespace.
    with PostgresStore(tenant_url, schema=schema) as worker:
        assert len(worker) == 2 and "e0002" not in worker
        assert_same(worker.get("e0001", "alpha"), make_entry(1, namespace="alpha"))
        with pytest.raises(CacheMissError):
            worker.get("e0002", "beta")
        with pytest.raises(InvalidArgumentError):
            worker.put(make_entry(3, namespace="beta"))
        with pytest.raises(InvalidArgumentError):
            worker.put(make_entry(2, namespace="alpha"))  # beta's id
        assert worker.nearest(make_entry(2).embedding, KEY, ["alpha", "beta"]).namespace == "alpha"
        assert worker.evict(0) == 2 and worker.clear() == 0
    assert [r.entry_id for r in owner.records()] == ["e0002"]
    owner.close()


def test_an_unreachable_server_is_a_typed_one_line_error(tmp_path):
    with pytest.raises(CacheStorageError) as info:
        PostgresStore(f"postgresql://postgres@/postgres?host={tmp_path}&connect_timeout=2")
    assert not isinstance(info.value, CacheFullError)
    assert "\n" not in str(info.value) and "opening the store failed" in str(info.value)


def test_a_lost_connection_is_a_storage_error_and_the_next_call_reconnects(postgres_url, schema, admin):
    application = f"flowctl-{schema}"
    store = PostgresStore(make_conninfo(postgres_url, application_name=application), schema=schema)
    entry = make_entry(1)
    store.put(entry)
    admin.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE application_name = %s", (application,))
    with pytest.raises(CacheStorageError) as info:
        store.get("e0001", "default")
    assert "\n" not in str(info.value) and "reading an entry failed" in str(info.value)
    assert_same(store.get("e0001", "default"), entry)  # reconnected; nothing was lost
    assert not store.quarantined
    store.close()
    with pytest.raises(CacheStorageError, match="closed"):
        len(store)


def test_a_stopped_server_is_a_storage_error(tmp_path):
    with local_server(tmp_path) as url:
        store = PostgresStore(url)
        store.put(make_entry(1))
    with pytest.raises(CacheStorageError) as info:
        store.get("e0001", "default")
    assert "\n" not in str(info.value)
    with pytest.raises(CacheStorageError):
        len(store)
    with local_server(tmp_path) as url:  # the data survived the restart
        assert_same(store.get("e0001", "default"), make_entry(1))
        with PostgresStore(url) as again:
            assert again.records()[0].entry_id == "e0001"
    store.close()


def test_a_full_disk_is_a_cache_full_error_and_writes_nothing(store, schema, admin):
    store.put(make_entry(1))
    # What PostgreSQL raises when it cannot extend a file (SQLSTATE 53100, disk_full).
    admin.execute(
        f"CREATE FUNCTION {schema}.disk_full() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = '53100'; END $$"
    )
    admin.execute(f"CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON {schema}.entries FOR EACH ROW EXECUTE FUNCTION {schema}.disk_full()")
    for entry in (make_entry(2), make_entry(5, entry_id="e0001")):
        with pytest.raises(CacheFullError) as info:
            store.put(entry)
        assert "\n" not in str(info.value) and "No space left" in str(info.value)
    assert_same(store.get("e0001", "default"), make_entry(1))  # still reads (the hit is not counted)
    assert len(store) == 1 and store.clear() == 1


def test_without_psycopg_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingDependencyError, match=r"pip install flowctl\[postgres\]"):
        PostgresStore("postgresql://nobody@/nowhere")
