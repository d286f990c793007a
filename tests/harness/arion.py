"""A deploy command that plays NixOS activation and arion's ``up`` of the database service (TEST stand-in).

There is no NixOS or arion here. This runs the activation stand-in first
(tests/harness/activation.py: agenix, the env file rendered by the patched
ExecStartPre, the app restart), then does for the ``db`` service what
``docker compose up`` does when its configuration changed:

- the compose file of the repo (``modules/…/arion-compose.nix``) is evaluated with
  ``nix-instantiate --eval`` (``pkgs``/``lib`` unused by it, ``config`` given), so the
  volume and image are what the patched Nix says, not what a test wrote;
- a volume mount names a key of ``docker-compose.volumes``: its docker name is its
  ``name``, else the key for an ``external`` volume, else ``PROJECT_KEY``; an external
  volume that does not exist stops the deploy (compose refuses to create it);
- when the running ``twenty-db-1`` mounts another volume or runs another image, it is
  stopped (SIGINT: a clean shutdown) and created again with the compose file's
  environment, mounts and image; else it is left alone.

Only the volume and the image are compared (compose compares the whole config); the
command is the harness's (fsync off, as tests/e2e/twenty_stack.py starts it). Image
names the test machine cannot have (``postgres:16``) map to local images via ``images``.

    python tests/harness/arion.py CONF.json [PHASE_TO_FAIL ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import docker  # noqa: TID251  (test harness, not product code)
import docker.errors  # noqa: TID251

if __package__ in (None, ""):  # run as a script by the deploy command
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.harness import activation

DATA_DIR = "/var/lib/postgresql/data"
COMMAND = ["postgres", "-c", "fsync=off", "-c", "synchronous_commit=off"]
TEST_LABEL = "nixmig.test"


def evaluate(compose: Path) -> dict[str, Any]:
    expr = (
        f"let c = import {compose} {{ pkgs = {{ }}; lib = {{ }}; "
        'config = { port = 3000; serverUrl = "http://localhost:3000"; storage.type = "local"; }; }; '
        "in { project = c.project.name; db = c.services.db; volumes = c.docker-compose.volumes or { }; }"
    )
    r = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"arion: cannot evaluate {compose}: {r.stderr.strip()}")
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def up_db(conf: dict[str, Any]) -> int:
    c = evaluate(Path(conf["compose"]))
    client = docker.DockerClient(base_url=conf["docker_host"], version="auto")
    mounts: dict[str, dict[str, str]] = {}
    volume = None
    for m in c["db"]["service"].get("volumes", []):
        parts = m.split(":")
        src, dst, mode = parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"
        if src.startswith("/"):
            mounts[src] = {"bind": dst, "mode": mode}
            continue
        decl = c["volumes"].get(src)
        if decl is None:
            print(f"error: service db refers to undefined volume {src}", flush=True)
            return 1
        name = decl.get("name") or (src if decl.get("external") else f"{c['project']}_{src}")
        if decl.get("external"):
            try:
                client.volumes.get(name)
            except docker.errors.NotFound:
                print(f"error: external volume {name!r} not found", flush=True)
                return 1
        mounts[name] = {"bind": dst, "mode": mode}
        if dst == DATA_DIR:
            volume = name
    image_name = c["db"]["image"]["name"]
    ref = conf["images"].get(image_name, image_name)  # what this host has under that name
    image = client.images.get(ref)
    container = conf["container"]
    try:
        cur = client.containers.get(container)
    except docker.errors.NotFound:
        cur = None
    if cur is not None:
        have = {m.get("Name") for m in cur.attrs.get("Mounts", []) if m.get("Type") == "volume"}
        if volume in have and cur.image is not None and cur.image.id == image.id and cur.status == "running":
            print(f"arion: {container} up to date", flush=True)
            return 0
        cur.stop(timeout=60)
        cur.remove()
    env = {k: str(v) for k, v in c["db"]["service"].get("environment", {}).items()}
    new = client.containers.run(
        ref,
        COMMAND,
        name=container,
        detach=True,
        environment=env,
        volumes=mounts,
        labels={TEST_LABEL: "1", "com.docker.compose.project": c["project"], "com.docker.compose.service": "db"},
        stop_signal="SIGINT",
    )
    deadline = time.monotonic() + 90
    while new.exec_run(["pg_isready", "-q", "-h", "127.0.0.1"], user="postgres").exit_code != 0:
        new.reload()
        if new.status != "running" or time.monotonic() > deadline:
            print(f"error: {container} did not start: {new.logs(tail=10).decode(errors='replace')}", flush=True)
            return 1
        time.sleep(0.2)
    print(f"arion: {container} recreated on volume {volume} ({image_name})", flush=True)
    return 0


def main(argv: Sequence[str]) -> int:
    rc = activation.main(argv)
    if rc != 0:
        return rc
    return up_db(json.loads(Path(argv[0]).read_text()))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
