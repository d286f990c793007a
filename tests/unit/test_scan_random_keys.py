"""scan: a key or secret whose name scan's words do not settle (``RESEND_KEY``: "resend" is no known
qualifier) is a finding when its value looks generated; names alone leave these out, since ``*_KEY``
is as often a public key or a key's name. Found in the by-eye review: a live API key stayed in three
containers while scan said nothing was left (realcfg4 18)."""

from __future__ import annotations

import pytest

from nixmig.nixsrc.scan import scan_source

pytestmark = pytest.mark.unit

GENERATED = "re_VEAcqmgc_6qpsyxdiazHw9h1pufBPWf1S"


def _found(name: str, value: str) -> list[str]:
    src = f'{{ x.environment = {{ "{name}" = "{value}"; }}; }}\n'.encode()
    return [f.attr_path for f in scan_source(src, "x.nix").findings]


@pytest.mark.parametrize("name", ["RESEND_KEY", "MAPBOX_KEY", "STRIPE_WEBHOOK_SECRET_VALUE"])
def test_a_generated_value_under_a_key_or_secret_name_is_found(name: str) -> None:
    assert _found(name, GENERATED) == [f'x.environment."{name}"']


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WG_PUBLIC_KEY", "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="),  # a public key
        ("SSH_HOST_KEY", GENERATED),
        ("RESEND_KEY_ID", GENERATED),  # a key's name, not the key
        ("RESEND_KEY", "short-Value-1"),  # too short to be generated
        ("RESEND_KEY", "/run/secrets/resend-key-file-path-here"),  # a path
        ("AGE_KEY", "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"),  # a recipient
        ("LOG_LEVEL_KEY", "debugdebugdebugdebugdebugdebug"),  # one letter class, few characters
    ],
)
def test_public_keys_names_paths_and_plain_words_are_not(name: str, value: str) -> None:
    assert _found(name, value) == []
