"""What nixmig wrote into the repo's Nix files, and the originals it keeps for rollback.

Under STATE/patch/MIGRATION/ (0700; STATE is the repo's .nixmig/):
- ``originals/NAME.orig``: each file as it was before nixmig first patched it;
- ``manifest.json``: the sha256 of each original, and of every content nixmig wrote
  into each file (the stage config, the full patch);
- ``written/NAME.written``: the last content nixmig wrote there (to show what changed since);
- ``edited/NAME.STAMP``: a file's content a forced rollback overwrote.

Every file here is written atomically (temp file, fsync, rename, fsync of the directory),
and a digest is recorded before the file it describes is written: a run killed anywhere
leaves a manifest that still describes the files. An original whose digest does not
match (truncated, edited) is never used.

Rollback restores a file only when it holds what nixmig wrote; one edited since (by hand,
by another tool) stops the rollback before any change, with a diff (secrets masked) and
the choices: `--force` (the edited version is kept under edited/), or edit it back.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixmig import fsutil
from nixmig.errors import NixmigError
from nixmig.sensitive import MASK

DIFF_LINES = 40  # per file, in the refusal


class RepoChanged(NixmigError):
    """A file nixmig patched was changed since: restoring its original would drop that change."""


class OriginalDamaged(NixmigError):
    """A saved original does not match its digest: it is never used."""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Verdict:
    name: str
    action: str  # "restore", "same" (already the original), "edited", "damaged", "unknown"
    current: bytes | None
    original: bytes | None


class PatchState:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def originals_dir(self) -> Path:
        return self.root / "originals"

    def exists(self) -> bool:
        return self.originals_dir.is_dir()

    # --- manifest -----------------------------------------------------------------

    def _manifest(self) -> dict[str, Any]:
        path = self.root / "manifest.json"
        if not path.exists():
            return {"originals": {}, "written": {}}
        try:
            raw = json.loads(path.read_text())
            return {"originals": dict(raw.get("originals") or {}), "written": dict(raw.get("written") or {})}
        except (OSError, ValueError, AttributeError) as exc:
            raise OriginalDamaged(
                f"unreadable manifest ({exc})",
                where=path,
                hint="restore the files by hand from version control; the originals are not used",
            ) from None

    def _save(self, manifest: Mapping[str, Any]) -> None:
        self._mkdir(self.root)
        fsutil.write_atomic(self.root / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode(), 0o600)

    def _mkdir(self, path: Path) -> None:
        """``path`` and its parents up to the state dir, 0700, each new one fsynced into its parent."""
        fsutil.mkdir_durable(path, 0o700, parents_mode=0o700)

    # --- at apply -------------------------------------------------------------------

    def keep_original(self, name: str, data: bytes) -> None:
        """Save ``data`` as NAME's original unless one is saved already: its digest first, then the file."""
        keep = self.originals_dir / f"{name}.orig"  # not *.nix: no tool should take these for sources
        manifest = self._manifest()
        if keep.exists() and name in manifest["originals"]:
            return
        if keep.exists() and keep.read_bytes() != data:  # an older nixmig's, with no digest
            return  # left for restore to judge (no digest: never used without --force)
        manifest["originals"][name] = digest(data)
        self._save(manifest)
        self._mkdir(keep.parent)
        fsutil.write_atomic(keep, data, 0o600)

    def will_write(self, files: Mapping[str, bytes]) -> None:
        """Record what nixmig is about to write into the repo (before it does)."""
        manifest = self._manifest()
        for name, data in files.items():
            seen = manifest["written"].setdefault(name, [])
            if digest(data) not in seen:
                seen.append(digest(data))
        self._save(manifest)
        for name, data in files.items():
            last = self.root / "written" / f"{name}.written"
            self._mkdir(last.parent)
            fsutil.write_atomic(last, data, 0o600)

    def originals(self) -> dict[str, bytes]:
        """Every saved original, checked against its digest (OriginalDamaged otherwise)."""
        out = {}
        for v in self._verdicts(None):
            if v.action == "damaged":
                raise OriginalDamaged(
                    f"the saved original of {v.name} does not match its digest: not used",
                    where=self.originals_dir / f"{v.name}.orig",
                    hint=f"put {v.name} back by hand (from version control) and remove the saved original",
                )
            if v.original is not None:
                out[v.name] = v.original
        return out

    # --- at rollback ----------------------------------------------------------------

    def _verdicts(self, repo: Path | None) -> list[Verdict]:
        manifest = self._manifest()
        names = set(manifest["originals"])
        if self.originals_dir.is_dir():
            names |= {
                k.relative_to(self.originals_dir).as_posix().removesuffix(".orig")
                for k in self.originals_dir.rglob("*.orig")
            }
        out = []
        for name in sorted(names):
            keep = self.originals_dir / f"{name}.orig"
            original = keep.read_bytes() if keep.is_file() else None
            want = manifest["originals"].get(name)
            current = None
            if repo is not None and (repo / name).is_file():
                current = (repo / name).read_bytes()
            if original is None or (want is not None and digest(original) != want):
                out.append(Verdict(name, "damaged", current, None))
            elif repo is not None and current == original:
                out.append(Verdict(name, "same", current, original))
            elif want is None:
                out.append(Verdict(name, "unknown", current, original))
            elif repo is None or (current is not None and digest(current) in manifest["written"].get(name, [])):
                out.append(Verdict(name, "restore", current, original))
            else:
                out.append(Verdict(name, "edited", current, original))
        return out

    def check(self, repo: Path, *, force: bool, emit: Callable[[str], None]) -> list[Verdict]:
        """What restore would do; without ``force`` a file edited since nixmig wrote it (or
        an original that cannot be trusted) stops it here, a diff of each shown first."""
        verdicts = self._verdicts(repo)
        bad = [v for v in verdicts if v.action in ("edited", "damaged", "unknown")]
        if not bad or force:
            return verdicts
        for v in bad:
            emit(self._explain(v))
            if v.action == "edited":
                for line in self.diff(v):
                    emit(line)
        names = ", ".join(v.name for v in bad[:4]) + (" …" if len(bad) > 4 else "")
        raise RepoChanged(
            f"{len(bad)} file(s) nixmig patched changed since, or have no trustworthy original: {names}; "
            "nothing was rolled back",
            where=repo,
            hint="see the diff above; edit them back (to what nixmig wrote, or to the original) and run rollback "
            "again, or `nixmig rollback --force` to restore the originals anyway (the edited versions are kept in "
            f"{self.root / 'edited'})",
        )

    def _explain(self, v: Verdict) -> str:
        match v.action:
            case "edited":
                return f"{v.name}: changed since nixmig wrote it" if v.current is not None else f"{v.name}: removed"
            case "damaged":
                return f"{v.name}: the saved original is missing or does not match its digest: never used"
            case _:
                return f"{v.name}: no record of what nixmig wrote there (patched by an older nixmig)"

    def diff(self, v: Verdict) -> list[str]:
        """What changed since nixmig wrote the file (else since the original), secrets masked."""
        last = self.root / "written" / f"{v.name}.written"
        before = last.read_bytes() if last.is_file() else (v.original or b"")
        label = "as nixmig wrote it" if last.is_file() else "original"
        a, b = _masked_lines(before, v.name), _masked_lines(v.current or b"", v.name)
        if a is None or b is None:
            sm = difflib.SequenceMatcher(a=before.splitlines(), b=(v.current or b"").splitlines(), autojunk=False)
            spans = [f"lines {j1 + 1}-{j2}" for tag, _i1, _i2, j1, j2 in sm.get_opcodes() if tag != "equal"]
            return [f"    (does not parse: its lines are not shown) changed: {', '.join(spans[:8]) or 'removed'}"]
        lines = list(difflib.unified_diff(a, b, f"{v.name} ({label})", f"{v.name} (now)", n=1, lineterm=""))
        shown = [f"    {ln}" for ln in lines[:DIFF_LINES]]
        if len(lines) > DIFF_LINES:
            shown.append(f"    … {len(lines) - DIFF_LINES} more diff lines")
        return shown

    def restore(self, repo: Path, *, force: bool, emit: Callable[[str], None]) -> list[str]:
        """Write back the originals of the files that hold what nixmig wrote; with ``force``,
        of edited ones too (their content kept under edited/ first). Never a damaged original."""
        verdicts = self.check(repo, force=force, emit=emit)
        restored = []
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for v in verdicts:
            if v.action == "same":
                continue
            if v.action == "damaged" or v.original is None or (v.action == "unknown" and not _parses(v.original)):
                emit(f"{v.name}: left as it is (--force): its saved original is damaged, never used")
                continue
            if v.action in ("edited", "unknown") and v.current is not None:
                kept = self.root / "edited" / f"{v.name}.{stamp}"
                self._mkdir(kept.parent)
                fsutil.write_atomic(kept, v.current, 0o600)
                emit(f"{v.name}: changed since nixmig wrote it; --force: that version kept in {kept}")
            fsutil.write_atomic(repo / v.name, v.original)
            restored.append(v.name)
        return restored


def _masked_lines(data: bytes, name: str) -> list[str] | None:
    """The file's lines with every hardcoded secret the scanner finds masked; None when the
    file does not parse (then nothing of it is shown)."""
    from nixmig.nixsrc.scan import scan_source

    scan = scan_source(data, name)
    if scan.problem is not None:
        return None
    spans = sorted(((f.start, f.end) for f in scan.findings), reverse=True)
    if any(s < 0 for s, _ in spans):
        return None
    out = bytearray(data)
    for start, end in spans:
        out[start:end] = MASK.encode()
    return out.decode("utf-8", "replace").splitlines()


def _parses(data: bytes) -> bool:
    """An original with no digest (an older nixmig's) is used only when it parses as Nix."""
    from nixmig.nixsrc.parse import first_error, parse

    return first_error(parse(data)) is None
