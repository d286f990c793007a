"""An exact fingerprint of a PostgreSQL cluster, to prove a copy equal to its source.

What it covers, read over the local socket (SQL on stdin, nothing written):

- every user table of every database: its row count and a checksum of its rows,
  streamed in one pass: each row's text (under fixed session settings,
  nixmig.db.ops.CONTENT_SETTINGS: the two servers' time zone, DateStyle or
  extra_float_digits may differ, the latter across major versions by default) is
  hashed (``hashtextextended``, 64 bits) and the hashes are summed exactly
  (sum(bigint) is numeric). The sum does not depend on the rows' order, so no sort is
  needed (no primary key, collation or 1 GB string limit to worry about): two tables
  get the same checksum when they hold the same multiset of rows, and a changed,
  missing or extra row goes unseen with a chance of about 2^-64. One hash reads at
  half the cost of two summed as numeric (bench/restore_check.py measures the same
  query: 0.32x pg_dump -Fc). Both servers run on one host, so the hash function
  (PostgreSQL's, stable across versions since hash partitioning depends on it) is
  the same on both sides;
- every sequence's last value (``-`` when it was never called);
- every relation's kind, owner and ACL, every function's owner, every constraint,
  every table's NOT NULL columns (from pg_attribute: PostgreSQL 18 also lists them in
  pg_constraint, as ``contype 'n'``, which 17 and older do not, so those are left out),
  schema, extension (by name: versions differ across major versions), the count of
  large objects (objects that belong to an extension are left out);
- the cluster: databases (owner, encoding, collation, ctype, ACL, connection limit),
  roles (attributes) and their passwords (as an md5 of the stored verifier, kept in a
  Secret, never printed), memberships, per-role settings, the ALTER SYSTEM settings,
  and md5 of pg_hba.conf and pg_ident.conf.

:func:`compare` names every difference in words without a value that could be secret.
:meth:`Fingerprint.digest` hashes the data part (tables, sequences, large objects)
into one value the journal keeps, to tell later whether the data changed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from nixmig.db.ops import CONTENT_SETTINGS, DatabaseError, psql
from nixmig.db.ops import USER_SCHEMAS as USER_SCHEMAS
from nixmig.db.rebuild import FREEZE_BLOCK
from nixmig.db.runtime import Runtime
from nixmig.db.sql import literal
from nixmig.remote.base import Transport
from nixmig.sensitive import Secret

# objects created by an extension are the extension's business (its version may differ)
NOT_EXTENSION = """NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = {catalog}::regclass
  AND d.objid = {oid} AND d.deptype = 'e')"""

# (S608: constants of this module, no input in them)
TABLES_SQL = rf"""
SELECT format(
  $q$SELECT 'table', %L, count(*) || ' ' || coalesce(sum(hashtextextended(t::text, 0)), 0)
     FROM ONLY %I.%I AS t$q$,
  n.nspname || '.' || c.relname, n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND {USER_SCHEMAS} AND {NOT_EXTENSION.format(catalog="'pg_class'", oid="c.oid")}
ORDER BY 1 \gexec
"""  # noqa: S608

DATABASE_SQL = f"""
SELECT 'sequence', schemaname || '.' || sequencename, coalesce(last_value::text, '-')
FROM pg_sequences ORDER BY 2;
SELECT 'relation', n.nspname || '.' || c.relname,
       concat_ws(' ', c.relkind, pg_get_userbyid(c.relowner), coalesce(c.relacl::text, '-'))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'i', 'I') AND {USER_SCHEMAS}
  AND {NOT_EXTENSION.format(catalog="'pg_class'", oid="c.oid")}
ORDER BY 2;
SELECT 'function', p.oid::regprocedure::text, pg_get_userbyid(p.proowner)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE {USER_SCHEMAS} AND {NOT_EXTENSION.format(catalog="'pg_proc'", oid="p.oid")}
ORDER BY 2;
SELECT 'constraint', n.nspname || '.' || c.conname || ' on ' || coalesce(c.conrelid::regclass::text, '-'),
       c.contype::text
FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
WHERE {USER_SCHEMAS} AND c.contype <> 'n' ORDER BY 2;
SELECT 'not-null', n.nspname || '.' || c.relname, string_agg(quote_ident(a.attname), ',' ORDER BY a.attnum)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE a.attnotnull AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') AND {USER_SCHEMAS}
  AND {NOT_EXTENSION.format(catalog="'pg_class'", oid="c.oid")}
GROUP BY 2 ORDER BY 2;
SELECT 'schema', n.nspname, pg_get_userbyid(n.nspowner) FROM pg_namespace n
WHERE {USER_SCHEMAS} AND {NOT_EXTENSION.format(catalog="'pg_namespace'", oid="n.oid")} ORDER BY 2;
SELECT 'extension', extname, '' FROM pg_extension ORDER BY 2;
SELECT 'largeobjects', 'count', count(*)::text FROM pg_largeobject_metadata;
"""  # noqa: S608

CLUSTER_SQL_TEMPLATE = r"""
SELECT 'database', datname, concat_ws(' ', pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate,
       datctype, datconnlimit, coalesce(datacl::text, '-'))
FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 2;
SELECT 'role', rolname, concat_ws(' ', rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,
       rolreplication, rolbypassrls, rolconnlimit, coalesce(rolvaliduntil::text, '-'))
FROM pg_authid WHERE rolname !~ '^pg_' ORDER BY 2;
SELECT 'password', rolname, md5(coalesce(rolpassword, '')) FROM pg_authid WHERE rolname !~ '^pg_' ORDER BY 2;
SELECT 'member', r.rolname || ' to ' || m.rolname, am.admin_option::text
FROM pg_auth_members am JOIN pg_authid r ON r.oid = am.roleid JOIN pg_authid m ON m.oid = am.member
WHERE m.rolname !~ '^pg_' ORDER BY 2;
SELECT 'role-setting', coalesce(d.datname, '*') || ' ' || coalesce(r.rolname, '*'), array_to_string(s.setconfig, ' ')
FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_authid r ON r.oid = s.setrole
ORDER BY 2;
SELECT 'alter-system', name, coalesce(setting, '-') FROM pg_file_settings
WHERE sourcefile = current_setting('data_directory') || '/postgresql.auto.conf' AND error IS NULL ORDER BY 2;
SELECT 'file', 'pg_hba.conf', md5(replace(pg_read_file(current_setting('hba_file')), {freeze}, ''));
SELECT 'file', 'pg_ident.conf', md5(pg_read_file(current_setting('ident_file')));
"""
# (rebuild's freeze, a fixed block at the top of pg_hba.conf, is not part of what is compared)
CLUSTER_SQL = CLUSTER_SQL_TEMPLATE.replace("{freeze}", literal(FREEZE_BLOCK))

DATABASES_SQL = "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1;"

DATA_KINDS = ("table", "sequence", "largeobjects")
CLUSTER = "*"  # the "database" of cluster-wide items


@dataclass(frozen=True)
class Fingerprint:
    """``items``: "DB/kind/name" -> value ("*" for the cluster's items). Passwords apart, masked."""

    items: dict[str, str]
    passwords: dict[str, Secret] = field(default_factory=dict, repr=False)

    def tables(self) -> dict[str, int]:
        """Row count of every table, "db/schema.table" -> rows."""
        out = {}
        for key, value in self.items.items():
            db, kind, name = split_key(key)
            if kind == "table":
                out[f"{db}/{name}"] = int(value.split(" ", 1)[0])
        return out

    def digest(self) -> str:
        """sha256 of the data items (tables, sequences, large objects), in key order."""
        h = hashlib.sha256()
        for key in sorted(self.items):
            if split_key(key)[1] in DATA_KINDS:
                h.update(f"{key}\t{self.items[key]}\n".encode())
        return h.hexdigest()


def key_of(db: str, kind: str, name: str) -> str:
    """ "DB/kind/name", with ``%`` and ``/`` in DB escaped (a database may be named
    ``postgresql://x``): split_key finds DB, kind and name again, and the data of such a
    database counts in the digest. Other names are kept as they are (journaled digests stay valid)."""
    return f"{db.replace('%', '%25').replace('/', '%2F')}/{kind}/{name}"


def split_key(key: str) -> tuple[str, str, str]:
    db, kind, name = key.split("/", 2)
    return re.sub("%(25|2F)", lambda m: "%" if m.group(1) == "25" else "/", db), kind, name


def databases(t: Transport, rt: Runtime) -> list[str]:
    """The databases a copy must carry: every one that accepts connections, templates aside."""
    return [ln for ln in psql(t, rt, DATABASES_SQL, database="template1").splitlines() if ln]


def parse(out: str, db: str) -> tuple[dict[str, str], dict[str, Secret]]:
    items: dict[str, str] = {}
    passwords: dict[str, Secret] = {}
    for line in out.splitlines():
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DatabaseError(f"unexpected fingerprint line in {db!r}: {len(parts)} fields")
        kind, name, value = parts
        if kind == "password":
            passwords[name] = Secret(value)
            continue
        items[key_of(db, kind, name)] = value
    return items, passwords


def take(t: Transport, rt: Runtime, dbs: Iterable[str] | None = None) -> Fingerprint:
    """The fingerprint of the cluster behind ``rt`` (databases: ``dbs``, default all of them)."""
    names = list(dbs) if dbs is not None else databases(t, rt)
    items, passwords = parse(psql(t, rt, CLUSTER_SQL, database="template1"), CLUSTER)
    for db in names:
        more, _ = parse(psql(t, rt, CONTENT_SETTINGS + DATABASE_SQL + TABLES_SQL, database=db), db)
        items.update(more)
    return Fingerprint(items, passwords)


def compare(old: Fingerprint, new: Fingerprint, *, skip_password: str | None = None) -> list[str]:
    """Every difference between ``old`` and ``new`` in words (no value that may be secret).

    ``skip_password``: the role whose password is meant to differ (checked apart)."""
    out: list[str] = []
    for key in sorted(old.items.keys() | new.items.keys()):
        db, kind, name = split_key(key)
        where = name if db == CLUSTER else f"{db}: {name}"
        a, b = old.items.get(key), new.items.get(key)
        if a == b:
            continue
        if b is None:
            out.append(f"{kind} {where} is missing from the copy")
        elif a is None:
            out.append(f"{kind} {where} is in the copy only")
        elif kind == "table":
            na, nb = a.split(" ", 1)[0], b.split(" ", 1)[0]
            out.append(
                f"table {where}: {na} rows in the old database, {nb} in the copy"
                if na != nb
                else f"table {where}: same {na} rows, different content"
            )
        elif kind == "file":
            out.append(f"{name} differs")
        else:
            out.append(f"{kind} {where}: {a!r} in the old database, {b!r} in the copy")
    for role in sorted(old.passwords.keys() | new.passwords.keys()):
        if role == skip_password:
            continue
        if old.passwords.get(role) != new.passwords.get(role):
            out.append(f"role {role}: the stored password differs")
    return out
