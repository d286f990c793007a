"""Assemble a PostgreSQL container root filesystem from the host's Debian binaries.

No registry is reachable here, so the e2e tier's ``nixmig-test/postgres:15``
image is made with ``docker import`` from a tarball built by :func:`write_rootfs`:
the server and client binaries, every shared library ``ldd`` reports for them
and for the server's modules, the share/ and lib/ dirs, timezone data, the
C.UTF-8 locale, dash as /bin/sh plus the few coreutils the entrypoint needs,
setpriv to drop root, and an /etc/passwd with postgres (999:999) like the
official image. :func:`build_inputs_hash` fingerprints all of that so the image
is rebuilt only when an input changed.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

PG_MAJOR = "15"
PG_APT_PACKAGE = f"postgresql-{PG_MAJOR}"
PG_BINDIR = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
PG_LIBDIR = Path(f"/usr/lib/postgresql/{PG_MAJOR}/lib")
PG_SHAREDIR = Path(f"/usr/share/postgresql/{PG_MAJOR}")
PG_BINARIES = (
    "postgres", "initdb", "pg_ctl", "psql", "pg_dump", "pg_dumpall", "pg_restore", "pg_isready",
)  # fmt: skip
# (binary, apt package) for the shell and tools the entrypoint and tests use
TOOLS = (
    ("/usr/bin/dash", "dash"),
    ("/usr/bin/setpriv", "util-linux"),
    ("/usr/bin/locale", "libc-bin"),  # initdb runs `locale -a` to fill pg_collation
    *(
        (f"/usr/bin/{name}", "coreutils")
        for name in (
            "cat", "chmod", "chown", "cp", "date", "env", "head", "id", "ln", "ls", "mkdir",
            "mktemp", "mv", "rm", "sleep", "sort", "tail", "touch", "tr", "true", "false", "wc",
        )
    ),
)  # fmt: skip
# the LLVM JIT (110 MB of libLLVM; the server runs without it) and the extension build kit
LIB_EXCLUDE = ("bitcode", "pgxs", "llvmjit.so", "llvmjit_types.bc")
POSTGRES_UID = POSTGRES_GID = 999
ENTRYPOINT = Path(__file__).with_name("docker-entrypoint.sh")
DOCKER_CHANGES = (
    f"ENV PATH=/usr/lib/postgresql/{PG_MAJOR}/bin:/usr/local/bin:/usr/bin:/bin",
    "ENV PGDATA=/var/lib/postgresql/data",
    "ENV LANG=C.UTF-8",
    'ENTRYPOINT ["docker-entrypoint.sh"]',
    'CMD ["postgres"]',
    "EXPOSE 5432",
    "VOLUME /var/lib/postgresql/data",
    # engine 20.10 rejects STOPSIGNAL in `docker import --change`: containers that
    # want the official image's SIGINT (fast shutdown) must set stop_signal themselves
)
IMAGE_REPOSITORY = "nixmig-test/postgres"
IMAGE_TAG = f"{IMAGE_REPOSITORY}:{PG_MAJOR}"
INPUTS_LABEL = "nixmig.test.build-inputs"


class MissingInput(RuntimeError):
    """A host file the image needs is absent; the message names the apt package."""


@dataclass
class Rootfs:
    """Entries of the image's root filesystem, keyed by absolute path in the image."""

    files: dict[str, Path] = field(default_factory=dict)  # image path -> host file
    data: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # generated (content, mode)
    links: dict[str, str] = field(default_factory=dict)  # image path -> symlink target
    dirs: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (mode, uid)

    def add_host_path(self, path: str) -> None:
        """Add a host file as it is reached through ``path``, following symlinks."""
        seen = 0
        current = path
        while seen < 40:
            seen += 1
            real_dir = os.path.realpath(os.path.dirname(current))
            full = os.path.join(real_dir, os.path.basename(current))
            if full in self.files or full in self.links:
                return
            if os.path.islink(full):
                target = os.readlink(full)
                self.links[full] = target
                current = os.path.join(real_dir, target)
                continue
            if not os.path.isfile(full):
                raise MissingInput(f"{path}: not a file on the host")
            self.files[full] = Path(full)
            return
        raise MissingInput(f"{path}: symlink loop")

    def add_tree(self, root: Path, exclude: Iterable[str] = ()) -> None:
        """Add a host directory tree; symlinks inside it are kept as symlinks."""
        skip = set(exclude)
        for dirpath, dirnames, filenames in os.walk(root):
            real_dir = os.path.realpath(dirpath)
            if dirpath == str(root):
                dirnames[:] = [d for d in dirnames if d not in skip]
                filenames = [f for f in filenames if f not in skip]
            for name in sorted(filenames + dirnames):
                full = os.path.join(real_dir, name)
                if os.path.islink(full):
                    self.links[full] = os.readlink(full)
                elif os.path.isfile(full):
                    self.files[full] = Path(full)
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]

    def fingerprint(self, extra: bytes = b"") -> str:
        h = hashlib.sha256(extra)
        for p, src in sorted(self.files.items()):
            st = src.stat()
            h.update(f"F {p} {st.st_size} {st.st_mtime_ns} {st.st_mode:o}\n".encode())
        for p, (content, mode) in sorted(self.data.items()):
            h.update(f"D {p} {mode:o} {hashlib.sha256(content).hexdigest()}\n".encode())
        for p, target in sorted(self.links.items()):
            h.update(f"L {p} {target}\n".encode())
        for p, (mode, uid) in sorted(self.dirs.items()):
            h.update(f"T {p} {mode:o} {uid}\n".encode())
        return h.hexdigest()


def ldd_closure(binary: str) -> list[str]:
    """Absolute paths of the shared objects (and loader) ``binary`` needs."""
    proc = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        if "not a dynamic executable" in proc.stdout + proc.stderr:
            return []
        raise MissingInput(f"ldd {binary} failed: {proc.stderr.strip()}")
    out: list[str] = []
    for line in proc.stdout.splitlines():
        if "not found" in line:
            raise MissingInput(f"{binary} needs a library the host lacks: {line.strip()}")
        for word in line.split():
            if word.startswith("/"):
                out.append(word)
    return out


def _require(path: Path | str, package: str) -> str:
    if not os.path.exists(path):
        raise MissingInput(f"{path} is missing: run `apt-get install {package}` (as root)")
    return str(path)


def assemble() -> Rootfs:
    """Collect the image's contents from the host (no copying yet)."""
    fs = Rootfs()
    executables = [_require(PG_BINDIR / b, PG_APT_PACKAGE) for b in PG_BINARIES]
    executables += [_require(p, pkg) for p, pkg in TOOLS]
    _require(PG_SHAREDIR, PG_APT_PACKAGE)
    _require(PG_LIBDIR, PG_APT_PACKAGE)
    _require("/usr/share/zoneinfo/Etc/UTC", "tzdata")
    for exe in executables:
        fs.add_host_path(exe)
        for lib in ldd_closure(exe):
            fs.add_host_path(lib)
    fs.add_tree(PG_SHAREDIR)
    fs.add_tree(PG_LIBDIR, exclude=LIB_EXCLUDE)
    for module in sorted(m for m in PG_LIBDIR.glob("*.so") if m.name not in LIB_EXCLUDE):
        for lib in ldd_closure(str(module)):
            fs.add_host_path(lib)
    fs.add_tree(Path("/usr/share/zoneinfo"))
    if Path("/usr/lib/locale/C.utf8").is_dir():
        fs.add_tree(Path("/usr/lib/locale/C.utf8"))

    # merged /usr like Debian 12
    for name in ("bin", "sbin", "lib", "lib64"):
        fs.links[f"/{name}"] = f"usr/{name}"
    fs.links["/usr/bin/sh"] = "dash"
    fs.links["/var/run"] = "../run"
    fs.links["/etc/localtime"] = "/usr/share/zoneinfo/Etc/UTC"
    for d in ("/dev", "/proc", "/sys", "/etc", "/root", "/run", "/var", "/var/lib",
              "/usr/local/bin", "/docker-entrypoint-initdb.d"):  # fmt: skip
        fs.dirs[d] = (0o755, 0)
    fs.dirs["/tmp"] = (0o1777, 0)
    fs.dirs["/var/lib/postgresql"] = (0o755, POSTGRES_UID)
    fs.dirs["/var/lib/postgresql/data"] = (0o700, POSTGRES_UID)
    fs.dirs["/run/postgresql"] = (0o3777, POSTGRES_UID)
    fs.data["/etc/passwd"] = (
        b"root:x:0:0:root:/root:/bin/sh\n"
        b"postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/sh\n"
        b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        0o644,
    )
    fs.data["/etc/group"] = (b"root:x:0:\npostgres:x:999:\nnogroup:x:65534:\n", 0o644)
    fs.data["/etc/nsswitch.conf"] = (b"passwd: files\ngroup: files\nhosts: files dns\n", 0o644)
    for name in ("hosts", "hostname", "resolv.conf"):  # docker bind-mounts these
        fs.data[f"/etc/{name}"] = (b"", 0o644)
    fs.data["/usr/local/bin/docker-entrypoint.sh"] = (ENTRYPOINT.read_bytes(), 0o755)
    return fs


def build_inputs_hash(fs: Rootfs) -> str:
    """Fingerprint of everything that goes into the image, including this builder."""
    return fs.fingerprint(Path(__file__).read_bytes() + "\n".join(DOCKER_CHANGES).encode())


def _parents(path: str) -> list[str]:
    return [str(p) for p in reversed(PurePosixPath(path).parents) if str(p) != "/"]


def write_rootfs(fs: Rootfs, out: Path) -> None:
    """Write the root filesystem as an uncompressed tarball for ``docker import``."""
    all_paths = [*fs.files, *fs.data, *fs.links, *fs.dirs]
    dirs = dict(fs.dirs)
    for p in all_paths:
        for parent in _parents(p):
            if parent not in fs.links:
                dirs.setdefault(parent, (0o755, 0))

    def info(path: str, kind: bytes, mode: int, uid: int = 0) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(path.lstrip("/"))
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, mode, uid, uid, 0
        ti.uname = ti.gname = "postgres" if uid == POSTGRES_UID else "root"
        return ti

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(dirs):
            mode, uid = dirs[p]
            tar.addfile(info(p, tarfile.DIRTYPE, mode, uid))
        for p in sorted(fs.links):
            ti = info(p, tarfile.SYMTYPE, 0o777)
            ti.linkname = fs.links[p]
            tar.addfile(ti)
        for p in sorted(fs.files):
            src = fs.files[p]
            st = src.stat()
            ti = info(p, tarfile.REGTYPE, st.st_mode & 0o755)
            ti.size = st.st_size
            with src.open("rb") as fh:
                tar.addfile(ti, fh)
        for p in sorted(fs.data):
            content, mode = fs.data[p]
            ti = info(p, tarfile.REGTYPE, mode)
            ti.size = len(content)
            tar.addfile(ti, io.BytesIO(content))
