"""The backup's own pipeline at full speed: nixmig's CPU for a dump streamed over a real sshd.

bench/migrate.py times a whole apply, where pg_dump (~9 MiB/s on the e2e stack) sets the
pace and this machine's other tenants move the wall times by ±20 %. This measures only
what nixmig adds to the dump, on a loaded machine too: the phases.backup pipeline
(Backup._dump: the stream read over SSH, age encryption, sha256, the file, the
test-decryption) fed by `cat` of a 91 MiB random file (the size of the 200 MiB database's
dump) through a real sshd on 127.0.0.1, the operator's identity given as apply -i does.
The table-of-contents reader is `head -c 4096` (pg_restore --list reads the archive's
table of contents and stops). It prints, per run, the wall time, the CPU of this process
(all its threads) and of the sshd processes.

    .venv/bin/python bench/backup_pipe.py [--runs 5] [--mib 91]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nixmig.config import Host
from nixmig.phases.backup import Backup
from nixmig.remote.ssh import SshTransport
from nixmig.secrets import age
from nixmig.secrets import recipients as rcp
from tests.harness.sshd import sshd_factory_context


def sshd_cpu() -> dict[str, float]:
    """CPU seconds of each sshd process (the connection's own included), by pid."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")].startswith("sshd"):
            fields = stat.rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def used(before: dict[str, float], after: dict[str, float]) -> float:
    """What the sshd processes alive through a run used in it (others' servers come and go)."""
    return sum(after[pid] - before[pid] for pid in after.keys() & before.keys())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=91, help="size of the streamed dump (MiB, default 91)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nixmig-bench-pipe-") as tmp, sshd_factory_context() as factory:
        data = Path(tmp) / "dump"
        data.write_bytes(os.urandom(args.mib << 20))
        srv = factory()
        pub = Path(f"{srv.identity}.pub").read_text().strip()
        host = Host(srv.host, srv.port, srv.user, str(srv.identity), str(srv.known_hosts))
        t = SshTransport.connect(host)
        runtime = types.SimpleNamespace(
            pg_dump=lambda _snapshot: ["cat", "--", str(data)],
            pg_restore_list=lambda: ["sh", "-c", "head -c 4096 >/dev/null"],
        )
        ctx = types.SimpleNamespace(
            identities=age.load_identities([srv.identity]),
            operator_recipients=[rcp.parse(pub)],
            t=t,
            runtime=runtime,
            emit=print,
        )
        walls, cpus, sshds = [], [], []
        try:
            for i in range(args.runs):
                out = Path(tmp) / f"out{i}.partial"
                cpu, wall, sshd = time.process_time(), time.perf_counter(), sshd_cpu()
                sink, _ = Backup()._dump(ctx, out, None)  # type: ignore[arg-type]
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
                sshds.append(used(sshd, sshd_cpu()))
                assert sink.size > args.mib << 20
                out.unlink()
        finally:
            t.close()

    def shown(xs: list[float]) -> str:
        return f"{statistics.median(xs):.2f}s ({min(xs):.2f}-{max(xs):.2f})"

    print(
        f"{args.mib} MiB through the backup pipeline, {args.runs} runs, median (range): wall {shown(walls)}, "
        f"nixmig's CPU {shown(cpus)}, sshd's CPU {shown(sshds)}; load {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
