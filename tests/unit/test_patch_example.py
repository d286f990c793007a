"""nixmig patch on the worked example: the exact diff, byte-exact edits, parse checks, idempotence, the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc import validate
from nixmig.nixsrc.quote import nix_escape, nix_string
from tests.helpers import EXAMPLE, copy_example, run_cli, snapshot

needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-bin not installed")

SPEC = pt.Spec(secret="twenty-db-password", host="newton", container="twenty-db-1")
MODULE = "modules/system/linux/twenty-crm.nix"
COMPOSE = "modules/system/linux/twenty/arion-compose.nix"
HOST = "hosts/newton/default.nix"

NIXMIG_TOML = """\
[hosts.newton]
address = "newton.example.org"

[services.twenty-db]
host = "newton"
container = "twenty-db-1"
volume = "twenty_db-data"
database = "default"
role = "postgres"

[migrations.twenty-db-password]
service = "twenty-db"
secret = "twenty-db-password"
"""

# What `nixmig patch` prints for the worked example (the hardcoded password masked).
# A "~" line stands for an empty context line (" "), which the linter would strip.
GOLDEN = r"""--- a/hosts/newton/default.nix
+++ b/hosts/newton/default.nix
@@ -15,6 +15,7 @@
~
     database = {
       user = "postgres";
+      passwordFile = config.age.secrets.twenty-db-password.path;
     };
~
     storage.type = "local";
--- a/modules/system/linux/twenty-crm.nix
+++ b/modules/system/linux/twenty-crm.nix
@@ -50,6 +50,10 @@
         file = ../../../secrets/twenty-app-secret.age;
         mode = "0400";
       };
+      twenty-db-password = {
+        file = ../../../secrets/twenty-db-password.age;
+        mode = "0400";
+      };
     };
~
     virtualisation.arion.projects.twenty = {
@@ -63,5 +67,49 @@
         ];
       };
     };
+    # nixmig: the twenty unit renders /run/twenty/twenty-db-password.env (0400, in a 0700
+    # runtime directory) from the agenix secret before arion starts the containers.
+    systemd.services.twenty.serviceConfig = {
+      RuntimeDirectory = "twenty";
+      RuntimeDirectoryMode = "0700";
+      ExecStartPre = [ "${pkgs.writeShellScript "twenty-twenty-db-password-env" ''
+        # nixmig: renders /run/twenty/twenty-db-password.env from the twenty-db-password secret at start.
+        # The password is percent-encoded byte by byte (all but A-Z a-z 0-9 - . _ ~), so any
+        # password makes a valid URL; it is not in the Nix store, and this script puts it in no argv or log.
+        set -euo pipefail
+        umask 0077
+        password_file=${lib.escapeShellArg config.age.secrets.twenty-db-password.path}
+        if [ ! -s "$password_file" ]; then
+          echo "nixmig: $password_file is missing or empty:" 'is the agenix secret twenty-db-password deployed?' >&2
+          exit 1
+        fi
+        hex=$(od -An -v -tx1 -- "$password_file" | tr abcdef ABCDEF)
+        hex=$(echo $hex)
+        while :; do case $hex in *0A) hex=''${hex%0A}; hex=''${hex% } ;; *) break ;; esac; done
+        if [ -z "$hex" ]; then
+          echo "nixmig: $password_file holds only line breaks:" 'is the agenix secret twenty-db-password deployed?' >&2
+          exit 1
+        fi
+        password=
+        for h in $hex; do
+          case $h in
+            3[0-9] | 4[1-9A-F] | 5[0-9A] | 6[1-9A-F] | 7[0-9A] | 2D | 2E | 5F | 7E)
+              printf -v c "\\x$h"
+              password+=$c
+              ;;
+            *) password+=%$h ;;
+          esac
+        done
+        tmp=
+        trap '[ -z "$tmp" ] || rm -f -- "$tmp"' EXIT
+        tmp=$(mktemp -- /run/twenty/twenty-db-password.env.XXXXXX)
+        {
+          printf '%s=%s%s%s\n' PG_DATABASE_URL postgres://postgres: "$password" @db:5432/default
+        } >"$tmp"
+        chmod 0400 -- "$tmp"
+        mv -f -- "$tmp" /run/twenty/twenty-db-password.env
+        tmp=
+      ''}" ];
+    };
   };
 }
--- a/modules/system/linux/twenty/arion-compose.nix
+++ b/modules/system/linux/twenty/arion-compose.nix
@@ -11,11 +11,11 @@
         volumes = [ "server-local-data:/app/packages/twenty-server/.local-storage" ];
         environment = {
           NODE_PORT = "3000";
-          PG_DATABASE_URL = "postgres://postgres:********@db:5432/default";
           SERVER_URL = config.serverUrl;
           REDIS_URL = "redis://redis:6379";
           STORAGE_TYPE = config.storage.type;
         };
+        env_file = [ "/run/twenty/twenty-db-password.env" ];
         depends_on.db.condition = "service_healthy";
         restart = "always";
       };
@@ -26,10 +26,10 @@
       service = {
         command = [ "yarn" "worker:prod" ];
         environment = {
-          PG_DATABASE_URL = "postgres://postgres:********@db:5432/default";
           REDIS_URL = "redis://redis:6379";
           DISABLE_DB_MIGRATIONS = "true";
         };
+        env_file = [ "/run/twenty/twenty-db-password.env" ];
         depends_on.db.condition = "service_healthy";
         restart = "always";
       };
@@ -38,10 +38,13 @@
     db = {
       image.name = "postgres:16";
       service = {
-        volumes = [ "db-data:/var/lib/postgresql/data" ];
+        volumes = [
+          "db-data:/var/lib/postgresql/data"
+          "/run/agenix/twenty-db-password:/run/secrets/twenty-db-password:ro"
+        ];
         environment = {
           POSTGRES_USER = "postgres";
-          POSTGRES_PASSWORD = "********";
+          POSTGRES_PASSWORD_FILE = "/run/secrets/twenty-db-password";
           POSTGRES_DB = "default";
         };
         healthcheck = {
""".replace("\n~\n", "\n \n")


def sources() -> dict[str, bytes]:
    return pt.read_sources(EXAMPLE)


def patched() -> dict[str, bytes]:
    src = sources()
    return {**src, **pt.plan(src, SPEC).results(src)}


def repo_with_config(tmp_path: Path, password: str | None = None, *, encode: bool = True) -> Path:
    repo = copy_example(tmp_path)
    for p in repo.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    if password is not None:
        compose = repo / COMPOSE
        url_password = quote(password, safe="") if encode else password
        compose.write_text(compose.read_text().replace("postgres:postgres@", f"postgres:{nix_escape(url_password)}@"))
        compose.write_text(
            compose.read_text().replace('POSTGRES_PASSWORD = "postgres"', f"POSTGRES_PASSWORD = {nix_string(password)}")
        )
    (repo / "nixmig.toml").write_text(NIXMIG_TOML)
    return repo


def test_worked_example_diff_is_exactly_this() -> None:
    src = sources()
    plan = pt.plan(src, SPEC)
    assert plan.diff(src) == GOLDEN
    assert plan.manual == ()
    assert plan.files == [HOST, MODULE, COMPOSE]


def test_the_issue_checklist() -> None:
    out = patched()
    module, compose, host = (out[f].decode() for f in (MODULE, COMPOSE, HOST))
    # 1. age.secrets entry with the path relative to the module, and passwordFile in the host config
    assert re.search(
        r"twenty-db-password = \{\n\s+file = \.\./\.\./\.\./secrets/twenty-db-password\.age;\n\s+mode = \"0400\";",
        module,
    )
    assert (
        'database = {\n      user = "postgres";\n      passwordFile = config.age.secrets.twenty-db-password.path;'
        in host
    )
    # 2. the database container reads the password from a read-only bind mount
    assert 'POSTGRES_PASSWORD_FILE = "/run/secrets/twenty-db-password";' in compose
    assert '"/run/agenix/twenty-db-password:/run/secrets/twenty-db-password:ro"' in compose
    assert "POSTGRES_PASSWORD =" not in compose
    # 3. URLs gone from environment, env_file on both app services, rendered by the arion unit
    assert "PG_DATABASE_URL" not in compose
    assert compose.count('env_file = [ "/run/twenty/twenty-db-password.env" ];') == 2
    assert "systemd.services.twenty.serviceConfig = {" in module
    assert 'RuntimeDirectory = "twenty";' in module and 'RuntimeDirectoryMode = "0700";' in module
    assert "chmod 0400" in module
    # 4. never readFile, never the password in a Nix string
    for text in out.values():
        assert b"readFile" not in text
    assert b"postgres:postgres@" not in b"".join(out.values())


@needs_nix
def test_every_patched_file_parses_with_nix() -> None:
    src = sources()
    results = pt.plan(src, SPEC).results(src)
    assert validate.check_all(results, use_nix=True) == "nix-instantiate --parse"
    for name, data in results.items():
        proc = subprocess.run(["nix-instantiate", "--parse", "-"], input=data, capture_output=True, check=False)
        assert proc.returncode == 0, (name, proc.stderr.decode())


def test_second_run_changes_nothing() -> None:
    again = pt.plan(patched(), SPEC)
    assert again.edits == ()
    assert again.manual == ()
    assert again.clean


@pytest.mark.parametrize("only", [[HOST], [MODULE], [HOST, MODULE]])
def test_a_partly_patched_tree_converges(only: list[str]) -> None:
    src = sources()
    full = patched()
    partial = {**src, **{f: full[f] for f in only}}
    plan = pt.plan(partial, SPEC)
    assert plan.manual == ()
    assert {**partial, **plan.results(partial)} == full


def test_env_file_without_a_renderer_is_reported() -> None:
    src = sources()
    full = patched()
    partial = {**src, COMPOSE: full[COMPOSE]}
    plan = pt.plan(partial, SPEC)
    assert any("no unit renders" in m.what for m in plan.manual), plan.manual


def test_edits_are_byte_exact_around_comments_and_odd_spacing() -> None:
    src = sources()
    compose = src[COMPOSE].decode()
    odd = compose.replace(
        '          PG_DATABASE_URL = "postgres://postgres:postgres@db:5432/default";\n          SERVER_URL',
        "          # the database\n"
        '          PG_DATABASE_URL   =   "postgres://postgres:postgres@db:5432/default";   # old\n'
        "\n          SERVER_URL",
        1,
    ).replace('NODE_PORT = "3000";', 'NODE_PORT = "3000";\t# tab-separated comment', 1)
    src[COMPOSE] = odd.encode()
    plan = pt.plan(src, SPEC)
    new = plan.results(src)[COMPOSE].decode()
    removed = [ln for ln in odd.splitlines() if ln not in new.splitlines()]
    assert removed == [
        '          PG_DATABASE_URL   =   "postgres://postgres:postgres@db:5432/default";   # old',
        '          PG_DATABASE_URL = "postgres://postgres:postgres@db:5432/default";',
        '        volumes = [ "db-data:/var/lib/postgresql/data" ];',
        '          POSTGRES_PASSWORD = "postgres";',
    ]
    assert "          # the database\n\n          SERVER_URL" in new
    assert 'NODE_PORT = "3000";\t# tab-separated comment' in new
    # every byte outside the edited spans is where it was
    kept = bytearray()
    pos = 0
    for e in sorted((e for e in plan.edits if e.file == COMPOSE), key=lambda e: e.start):
        kept += src[COMPOSE][pos : e.start]
        pos = e.end
    kept += src[COMPOSE][pos:]
    assert _is_subsequence(bytes(kept), new.encode())


def _is_subsequence(small: bytes, big: bytes) -> bool:
    it = iter(big)
    return all(b in it for b in small)


@pytest.mark.parametrize("encoded_in_url", [True, False])
def test_the_password_appears_nowhere_in_the_output(tmp_path: Path, encoded_in_url: bool) -> None:
    # Unencoded, the URL is broken (as the hand-written plan's base64 passwords were): it is found all the same.
    password = "Sup3r/S3cret+=@:%?"
    repo = repo_with_config(tmp_path, password, encode=encoded_in_url)
    encoded = "Sup3r%2FS3cret%2B%3D%40%3A%25%3F"
    plan_out = run_cli("patch", "--repo", str(repo), "--explain")
    json_out = run_cli("patch", "--repo", str(repo), "--json")
    assert plan_out.returncode == 0, plan_out.stderr.decode()
    assert json_out.returncode == 0, json_out.stderr.decode()
    wrote = run_cli("patch", "--repo", str(repo), "--write")
    assert wrote.returncode == 0, wrote.stderr.decode()
    written = b"".join(p.read_bytes() for p in repo.rglob("*.nix"))
    for blob in (plan_out.stdout, plan_out.stderr, json_out.stdout, wrote.stdout, wrote.stderr, written):
        assert password.encode() not in blob
        assert encoded.encode() not in blob
        assert b"Sup3r" not in blob


def test_cli_check_write_check(tmp_path: Path) -> None:
    repo = repo_with_config(tmp_path)
    before = snapshot(repo)
    check = run_cli("patch", "--repo", str(repo), "--check")
    assert check.returncode == 1
    assert "not patched: 9 edits pending in 3 files" in check.stderr.decode()
    assert snapshot(repo) == before
    shown = run_cli("patch", "--repo", str(repo))
    assert shown.returncode == 0
    assert shown.stdout.decode() == GOLDEN
    assert snapshot(repo) == before
    wrote = run_cli("patch", "--repo", str(repo), "--write")
    assert wrote.returncode == 0, wrote.stderr.decode()
    assert "wrote 3 files (9 edits, each checked with nix-instantiate --parse)" in wrote.stderr.decode()
    assert wrote.stdout.decode() == GOLDEN
    after = snapshot(repo)
    assert {k for k in after if after[k] != before[k]} == {HOST, MODULE, COMPOSE}
    assert after[COMPOSE] == patched()[COMPOSE]
    recheck = run_cli("patch", "--repo", str(repo), "--check")
    assert recheck.returncode == 0, recheck.stderr.decode()
    assert "nothing to change: the tree is patched" in recheck.stderr.decode()
    rewrite = run_cli("patch", "--repo", str(repo), "--write")
    assert rewrite.returncode == 0 and rewrite.stdout == b""
    assert snapshot(repo) == after


def test_cli_explain_names_each_literal(tmp_path: Path) -> None:
    repo = repo_with_config(tmp_path)
    out = run_cli("patch", "-c", str(repo / "nixmig.toml"), "--explain")
    assert out.returncode == 0, out.stderr.decode()
    why = out.stdout.decode().split("\nwhy:\n", 1)[1]
    lines = [ln for ln in why.splitlines() if ln.startswith("  ")]
    assert len(lines) == 9
    assert any(ln.startswith(f"  {COMPOSE}:14:11: removes PG_DATABASE_URL") for ln in lines)
    assert any(ln.startswith(f"  {COMPOSE}:44:11: replaces the hardcoded POSTGRES_PASSWORD") for ln in lines)
    assert any(
        ln.startswith(f"  {MODULE}:52:9: declares the agenix secret twenty-db-password")
        and "PG_DATABASE_URL at " + COMPOSE + ":29:29" in ln
        for ln in lines
    )


def test_cli_json(tmp_path: Path) -> None:
    repo = repo_with_config(tmp_path)
    out = run_cli("patch", "--repo", str(repo), "--json")
    assert out.returncode == 0, out.stderr.decode()
    data = json.loads(out.stdout)
    assert data["migration"] == "twenty-db-password"
    assert data["clean"] is False and data["written"] is False
    assert data["files"] == [HOST, MODULE, COMPOSE]
    assert len(data["edits"]) == 9 and data["manual"] == []
    assert data["diff"] == GOLDEN
    assert any("does not exist yet" in n for n in data["notes"])


def test_cli_usage_errors(tmp_path: Path) -> None:
    repo = repo_with_config(tmp_path)
    both = run_cli("patch", "--repo", str(repo), "--write", "--check")
    assert both.returncode == 2
    assert both.stderr.decode().count("\n") == 1
    unknown = run_cli("patch", "--repo", str(repo), "--migration", "nope")
    assert unknown.returncode == 2
    assert "no migration 'nope'" in unknown.stderr.decode()
    missing = run_cli("patch", "--repo", str(tmp_path / "nowhere"))
    assert missing.returncode == 2


def test_stage_config_only_declares_the_secret() -> None:
    """Deploy 1 (stage) gets only age.secrets.NAME: the services keep the old password until switch."""
    src = sources()
    plan = pt.plan(src, SPEC)
    staged = plan.results(src, stage_only=True)
    assert list(staged) == [MODULE]
    after = staged[MODULE].decode()
    assert "file = ../../../secrets/twenty-db-password.age;" in after
    assert "ExecStartPre" not in after and "RuntimeDirectory" not in after
    assert validate.problem(MODULE, staged[MODULE]) is None
    # stage then switch: applying the rest on top gives exactly the full patch
    assert plan.results(src)[MODULE] != staged[MODULE]
