"""`nixmig scan`: the walk, the three output formats, exit codes, and what is never printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nixmig.cli.scan import RULE_IDS, to_sarif
from nixmig.nixsrc.walk import PARALLEL_THRESHOLD, discover, scan_files, scan_paths
from tests.helpers import copy_example, run_cli

pytestmark = pytest.mark.unit

SECRET = "Sup3r-Secret-Value-918"
COMPOSE = "modules/system/linux/twenty/arion-compose.nix"


def out(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode() + proc.stderr.decode()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The worked example, plus a distinctive secret, a broken file and things to skip."""
    root = copy_example(tmp_path)
    (root / "extra.nix").write_text(f'{{ services.app.settings.api_token = "{SECRET}"; }}\n')
    (root / "broken.nix").write_text('{\n  a = "x";\n  b = ;\n}\n')
    git = root / ".git" / "hooks"
    git.mkdir(parents=True)
    (git / "leak.nix").write_text('{ password = "in-git"; }\n')
    store = tmp_path / "store"
    store.mkdir()
    (store / "store.nix").write_text('{ password = "in-store"; }\n')
    (root / "result").symlink_to(store)
    (root / "linked.nix").symlink_to(store / "store.nix")
    return root


def json_report(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def test_json_on_the_worked_example(tmp_path: Path) -> None:
    root = copy_example(tmp_path)
    proc = run_cli("scan", "--format", "json", cwd=root)
    assert proc.returncode == 0, out(proc)
    report = json_report(proc)
    assert report["files_scanned"] == 5
    env = "services.{}.service.environment"
    got = [(f["file"], f["line"], f["column"], f["kind"], f["attribute"]) for f in report["findings"]]
    assert got == [
        (COMPOSE, 14, 50, "url-credential", env.format("server") + ".PG_DATABASE_URL"),
        (COMPOSE, 29, 50, "url-credential", env.format("worker") + ".PG_DATABASE_URL"),
        (COMPOSE, 44, 32, "password", env.format("db") + ".POSTGRES_PASSWORD"),
    ]
    assert {f["secret_name"] for f in report["findings"]} == {"twenty-db-password"}
    assert all(f["value"] == {"masked": "********", "length": 8} for f in report["findings"])


def test_walk_skips_git_and_symlinks_and_reports_broken_files(repo: Path) -> None:
    proc = run_cli("scan", str(repo), "--json")
    assert proc.returncode == 0, out(proc)
    report = json_report(proc)
    files = {Path(f["file"]).name for f in report["findings"]}
    assert files == {"arion-compose.nix", "extra.nix"}
    assert report["files_scanned"] == 7  # 5 of the example + extra.nix + broken.nix
    assert report["symlinks_skipped"] == 2
    assert [(Path(p["file"]).name, p["line"]) for p in report["problems"]] == [("broken.nix", 3)]
    stderr = proc.stderr.decode().strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith(f"nixmig: {repo / 'broken.nix'}:3:"), stderr
    assert "syntax error" in stderr[0]


@pytest.mark.parametrize("fmt", ["text", "json", "sarif"])
def test_the_value_is_never_printed(repo: Path, fmt: str) -> None:
    proc = run_cli("scan", ".", "--format", fmt, cwd=repo)
    assert proc.returncode == 0, out(proc)
    assert SECRET not in out(proc)
    assert SECRET[:8] not in out(proc)
    assert "api_token" in out(proc)  # the finding itself is there


def test_text_table(repo: Path) -> None:
    proc = run_cli("scan", ".", cwd=repo)
    text = proc.stdout.decode()
    assert f"{COMPOSE}:44:32" in text
    assert "services.db.service.environment.POSTGRES_PASSWORD" in text
    assert "twenty-db-password" in text
    assert "******** (8 chars)" in text
    assert "4 findings in 2 of 7 files, 1 not parsed, 2 symlinks skipped" in text


def test_exit_codes(repo: Path, tmp_path: Path) -> None:
    assert run_cli("scan", str(repo), "--fail-on-findings").returncode == 1
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "ok.nix").write_text('{ services.x.passwordFile = "/run/agenix/x"; }\n')
    proc = run_cli("scan", str(clean), "--fail-on-findings")
    assert proc.returncode == 0, out(proc)
    assert "No hardcoded secrets" in proc.stdout.decode()
    assert run_cli("scan", str(clean), "--format", "xml").returncode == 2
    assert run_cli("scan", str(clean), "--json", "--format", "sarif").returncode == 2
    missing = run_cli("scan", str(tmp_path / "nope"))
    assert missing.returncode == 2
    lines = missing.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "Traceback" not in lines[0]


def test_sarif_for_github_code_scanning(repo: Path) -> None:
    proc = run_cli("scan", ".", "--format", "sarif", cwd=repo)
    assert proc.returncode == 0, out(proc)
    sarif = json.loads(proc.stdout)
    assert sarif["version"] == "2.1.0"
    assert sarif["$schema"].endswith("sarif-2.1.0.json")
    (run,) = sarif["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == list(RULE_IDS.values())
    for r in rules:
        assert r["shortDescription"]["text"] and r["defaultConfiguration"]["level"] in ("error", "note")
        assert float(r["properties"]["security-severity"]) > 0
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == repo.resolve().as_uri() + "/"
    results = run["results"]
    assert len(results) == 4
    for res in results:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        loc = res["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uriBaseId"] == "%SRCROOT%"
        assert not loc["artifactLocation"]["uri"].startswith(("/", "file:", "./"))
        region = loc["region"]
        assert region["startLine"] >= 1 and region["startColumn"] >= 1
        assert (region["endLine"], region["endColumn"]) >= (region["startLine"], region["startColumn"])
        assert res["message"]["text"] and res["partialFingerprints"]
    db = next(r for r in results if "POSTGRES_PASSWORD" in r["message"]["text"])
    assert db["ruleId"] == "nix/hardcoded-password" and db["level"] == "error"
    assert db["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == COMPOSE
    assert db["locations"][0]["physicalLocation"]["region"]["startLine"] == 44
    assert db["locations"][0]["physicalLocation"]["region"]["startColumn"] == 32
    notes = run["invocations"][0]["toolExecutionNotifications"]
    assert len(notes) == 1
    assert notes[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "broken.nix"


def test_sarif_uri_outside_the_root_is_absolute(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a b.nix").write_text('{ password = "pw-outside"; }\n')
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    sarif = to_sarif(scan_paths([str(elsewhere)]), cwd)
    loc = sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert loc == {"uri": (elsewhere / "a b.nix").as_uri()}
    inside = to_sarif(scan_paths([str(elsewhere)]), tmp_path)
    loc = inside["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert loc == {"uri": "elsewhere/a%20b.nix", "uriBaseId": "%SRCROOT%"}


def test_discover_explicit_files_and_order(repo: Path) -> None:
    files, skipped = discover([str(repo / "extra.nix"), str(repo / "modules"), str(repo / "linked.nix")])
    assert files[0] == str(repo / "extra.nix")
    assert files[1:] == sorted(files[1:])
    assert skipped == 1
    assert all(not Path(f).is_symlink() for f in files)


def test_parallel_scan_gives_the_same_result(tmp_path: Path) -> None:
    n = PARALLEL_THRESHOLD + 50
    for i in range(n):
        d = tmp_path / f"d{i // 100}"
        d.mkdir(exist_ok=True)
        body = f'{{ services.s{i}.password = "pw-{i % 7}"; url = "redis://:r{i}@cache/0"; }}\n'
        (d / f"m{i:04d}.nix").write_text(body if i % 50 else "{ broken = ; }\n")
    files, _ = discover([str(tmp_path)])
    serial = scan_files(files, jobs=1)
    parallel = scan_files(files, jobs=2)
    assert [f.to_dict() for f in parallel.findings] == [f.to_dict() for f in serial.findings]
    assert parallel.problems == serial.problems
    assert len(serial.problems) == len(range(0, n, 50))
    assert len(serial.findings) == 2 * (n - len(serial.problems))


def test_help_does_not_import_the_scanner() -> None:
    code = (
        "import sys, nixmig.cli\n"
        "print(sorted(m for m in ('tree_sitter', 'rich', 'nixmig.nixsrc.scan', 'nixmig.nixsrc.walk') "
        "if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert proc.stdout.decode().strip() == "[]"
    help_text = run_cli("scan", "--help").stdout.decode()
    assert "--fail-on-findings" in help_text and "--format" in help_text


def test_unreadable_directory_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.nix").write_text('{ password = "pw-a"; }\n')
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "b.nix").write_text('{ password = "pw-b"; }\n')
    real_scandir = os.scandir

    def scandir(path: str) -> Any:
        if os.path.basename(path) == "locked":  # root reads a 0000 directory anyway: fake the error
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    run = scan_paths([str(tmp_path)], jobs=1)
    assert [Path(f.file).name for f in run.findings] == ["a.nix"]
    assert [(p.file, p.message) for p in run.problems] == [
        (str(tmp_path / "locked"), "directory not scanned: Permission denied")
    ]


def test_a_sql_file_a_nix_file_names_is_scanned_once(tmp_path: Path) -> None:
    """initialScript = ./db/init.sql (18C/02): the SQL goes into the Nix store with the module; scan read only
    .nix files and saw nothing. Its role password is a finding at its own line, once however many name it."""
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "init.sql").write_text("-- roles\nCREATE ROLE shop WITH LOGIN PASSWORD 'shop-sql-77';\n")
    (tmp_path / "db" / "other.sql").write_text("CREATE ROLE x WITH LOGIN PASSWORD 'not-named-by-nix';\n")
    (tmp_path / "a.nix").write_text("{ ... }: { services.postgresql.initialScript = ./db/init.sql; }\n")
    (tmp_path / "b.nix").write_text('{ pkgs, ... }: { x = pkgs.writeText "i" (builtins.readFile ./db/init.sql); }\n')
    run = scan_paths([str(tmp_path)])
    (f,) = run.findings
    assert (f.file, f.line, f.col, f.attr_path, f.length) == (
        str(tmp_path / "db/init.sql"),
        2,
        39,
        "PASSWORD of role shop",
        11,
    )
    assert f.secret_name == "shop-db-password" and run.files_scanned == 3  # two .nix files, one SQL file
    proc = run_cli("scan", "--format", "json", "--fail-on-findings", str(tmp_path))
    assert b"shop-sql-77" not in proc.stdout and b'"rule": "sql"' in proc.stdout and proc.returncode == 1
