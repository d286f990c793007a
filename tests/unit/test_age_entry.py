"""What counts as declaring an agenix secret: where its .age file is, not any binding under it."""

from __future__ import annotations

import pytest

from nixmig.nixsrc.leftover import declares_secret
from nixmig.nixsrc.model import model


@pytest.mark.parametrize(
    ("text", "declared"),
    [
        ("{ age.secrets.db.file = ../secrets/db.age; }", True),
        ('{ age.secrets.db = { file = ../secrets/db.age; mode = "0400"; }; }', True),
        ("{ age.secrets.db.rekeyFile = ./db.age; }", True),  # agenix-rekey
        ("{ age.secrets.db = mkSecret ./db.age; }", True),  # computed as a whole: its business
        ('{ age.secrets.db.owner = "photos"; }', False),  # agenix has no default for file
        ('{ age = { secrets.db = { owner = "photos"; mode = "0440"; }; }; }', False),
        ("{ age.secrets.other.file = ../secrets/other.age; }", False),
    ],
)
def test_declares_secret(text: str, declared: bool) -> None:
    assert declares_secret({"m.nix": model("m.nix", text.encode())}, "db") is declared
