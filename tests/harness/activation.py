"""A deploy command that plays NixOS activation from the patched repo itself (TEST stand-in).

There is no NixOS here, so this stands in for `deploy .#newton`; unlike the simpler
stand-ins of the demo and the twenty stack, the app's env file is not written by
the test: it is what the config nixmig patched renders.

    python tests/harness/activation.py CONF.json [PHASE_TO_FAIL ...]

- stage, switch: agenix: ``secrets/SECRET.age`` decrypted with the host's TEST key
  into ``agenix_dir/SECRET`` (0400);
- switch: the ExecStartPre renderer that `nixmig patch` put in the repo is taken out
  of the Nix source (tree-sitter), evaluated with ``nix-instantiate --eval`` (with
  ``lib.escapeShellArg`` and ``config.age.secrets.SECRET.path`` as NixOS gives them),
  its ``/run/UNIT/SECRET.env`` pointed at the app's env file, and run with bash;
  then the app "restarts" (its generation file changes);
- rollback: the previous generation: no env file, no agenix file, the app restarts.

The app side (:class:`Activation`) reads PG_DATABASE_URL from that env file, with the
compose host names (``db:5432``) resolved as the compose network would.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from nixmig.db.writer import Writer

MARKER = "# nixmig: renders "


@dataclass(frozen=True)
class Activation:
    """The stand-in's configuration (written to ``conf``) and the app's view of the host."""

    conf: Path
    repo: Path
    host_key: Path
    agenix_dir: Path
    secret: str
    app_dir: Path
    unit_env_file: str  # where the patched unit renders it on a real host, e.g. /run/twenty/SECRET.env
    fallback_url: str  # the app's URL before the switch (the hardcoded one), already resolved
    hosts: dict[str, str] = field(default_factory=dict)  # "db:5432" -> "10.0.0.2:5432"

    @property
    def env_file(self) -> Path:
        return self.app_dir / "env"

    @property
    def generation_file(self) -> Path:
        return self.app_dir / "generation"

    @property
    def agenix_file(self) -> Path:
        return self.agenix_dir / self.secret

    def write(self) -> Activation:
        self.conf.write_text(
            json.dumps(
                {
                    "repo": str(self.repo),
                    "host_key": str(self.host_key),
                    "agenix_dir": str(self.agenix_dir),
                    "secret": self.secret,
                    "env_file": str(self.env_file),
                    "unit_env_file": self.unit_env_file,
                    "generation_file": str(self.generation_file),
                }
            )
        )
        return self

    def deploy_command(self, fail: Sequence[str] = ()) -> str:
        return " ".join([sys.executable, str(Path(__file__).resolve()), str(self.conf), *fail])

    def app_url(self) -> str:
        """PG_DATABASE_URL from the env file (compose names resolved), else the hardcoded URL."""
        with contextlib.suppress(FileNotFoundError):
            for line in self.env_file.read_text().splitlines():
                if line.startswith("PG_DATABASE_URL="):
                    return self.resolve(line.split("=", 1)[1])
        return self.fallback_url

    def resolve(self, url: str) -> str:
        u = urlsplit(url)
        userinfo, _, hostport = u.netloc.rpartition("@")
        hostport = self.hosts.get(hostport, hostport)
        return urlunsplit(u._replace(netloc=f"{userinfo}@{hostport}" if userinfo else hostport))

    def app_user(self) -> str:
        return urlsplit(self.app_url()).username or ""

    def generation(self) -> int:
        try:
            return int(self.generation_file.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def writer(self, *, reconnect_every: float | None = None) -> Writer:
        return Writer(url_source=self.app_url, generation=self.generation, reconnect_every=reconnect_every)


def renderer_script(repo: Path, secret: str, agenix_path: str) -> str:
    """The bash script of the ExecStartPre renderer in the patched repo, evaluated by Nix."""
    from nixmig.nixsrc.parse import parse
    from nixmig.nixsrc.patch import read_sources
    from nixmig.nixsrc.quote import nix_string

    found: list[tuple[str, bytes]] = []
    for name, src in read_sources(repo).items():
        stack = [parse(src).root_node]
        while stack:
            node = stack.pop()
            if node.type == "indented_string_expression":
                body = src[node.start_byte : node.end_byte]
                if MARKER.encode() in body and secret.encode() in body:
                    found.append((name, body))
                continue
            stack.extend(node.named_children)
    if len(found) != 1:
        raise SystemExit(f"activation: expected one env-file renderer for {secret} in {repo}, found {len(found)}")
    expr = (
        "let\n"
        '  lib.escapeShellArg = s: "\'" + builtins.replaceStrings [ "\'" ] [ "\'\\\\\'\'" ] (toString s) + "\'";\n'
        f"  config.age.secrets.{nix_string(secret)}.path = {nix_string(agenix_path)};\n"
        f"in\n{found[0][1].decode()}\n"
    )
    r = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        raise SystemExit(f"activation: nix-instantiate --eval of the renderer in {found[0][0]} failed: {r.stderr}")
    script = json.loads(r.stdout)
    assert isinstance(script, str)
    return script


def _write_0400(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def _restart_app(gen_file: Path) -> None:
    try:
        gen = int(gen_file.read_text()) + 1
    except (FileNotFoundError, ValueError):
        gen = 1
    gen_file.write_text(str(gen))
    print(f"twenty: restarted (generation {gen})", flush=True)


def main(argv: Sequence[str]) -> int:
    from nixmig.secrets import store
    from nixmig.secrets.age import load_identities

    conf = json.loads(Path(argv[0]).read_text())
    phase = os.environ["NIXMIG_PHASE"]
    agenix = Path(conf["agenix_dir"]) / conf["secret"]
    env_file, gen_file = Path(conf["env_file"]), Path(conf["generation_file"])
    print(f"activating newton ({phase})", flush=True)
    if phase in argv[1:]:
        print(f"error: activation of the new generation failed ({phase}, injected)", flush=True)
        return 1
    if phase in ("stage", "switch"):
        ident = load_identities([Path(conf["host_key"])])
        value = store.show(Path(conf["repo"]) / "secrets" / "secrets.nix", conf["secret"], ident)
        _write_0400(agenix, value.reveal())
        print(f"agenix: decrypted {conf['secret']} to {agenix} (0400)", flush=True)
    if phase == "switch":
        script = renderer_script(Path(conf["repo"]), conf["secret"], str(agenix))
        if conf["unit_env_file"] not in script:
            print(f"error: the renderer does not write {conf['unit_env_file']}", flush=True)
            return 1
        script = script.replace(conf["unit_env_file"], str(env_file))
        r = subprocess.run(["bash", "-s"], input=script.encode(), capture_output=True, check=False)
        if r.returncode != 0:
            print(f"error: ExecStartPre failed: {r.stderr.decode(errors='replace')}", flush=True)
            return 1
        print(f"twenty: ExecStartPre rendered {env_file} from the patched config", flush=True)
        _restart_app(gen_file)
    if phase == "rollback":
        env_file.unlink(missing_ok=True)
        agenix.unlink(missing_ok=True)
        print("newton: back on the previous generation", flush=True)
        _restart_app(gen_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
