"""A libpq URI with the password as a query parameter (``postgres:///db?host=/run/postgresql&user=app
&password=PW``, a public configuration, stop 21): split around the password like a userinfo URL, its
user read from ``user=``; what the renderer writes reads back through libpq as the same password."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict  # noqa: TID251  (libpq's own parser: the judge)

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc.render import EnvFile, EnvLine, render_script

URI = "postgres:///api?host=/run/postgresql&user=api&password=Shop-q-pw-77&sslmode=disable"


def test_the_query_password_is_split_out_with_its_user_and_host() -> None:
    url = pt.split_url(URI)
    assert url is not None
    assert (url.user, url.password, url.host) == ("api", "Shop-q-pw-77", "/run/postgresql")
    assert url.prefix + url.password + url.suffix == URI and url.suffix == "&sslmode=disable"
    assert pt.split_url(URI, "Shop-q-pw-77") == url
    assert pt.split_url(URI, "another") is None  # not this password
    assert pt.split_url("postgres:///api?user=api&password=") is None  # an empty one is none
    authority = pt.split_url("postgresql://app@db:5432/x?password=p%40ss")
    assert authority is not None and (authority.user, authority.host, authority.password) == ("app", "db", "p%40ss")


@pytest.mark.parametrize("value", ["Shop-q-pw-77", "p@ss w&rd=?#/%é'\"$`\\"])
def test_the_rendered_uri_reads_back_through_libpq(tmp_path: Path, value: str) -> None:
    url = pt.split_url(URI)
    assert url is not None
    env = tmp_path / "app.env"
    script = render_script("s", '"$1"', [EnvFile(str(env), (EnvLine("DATABASE_URL", url.prefix, url.suffix),))])
    secret = tmp_path / "secret"
    secret.write_bytes(value.encode())
    proc = subprocess.run(["bash", "-c", script, "render", str(secret)], capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    line = env.read_text()
    assert line.startswith("DATABASE_URL=") and line.endswith("\n")
    parsed = conninfo_to_dict(line[len("DATABASE_URL=") : -1])
    assert parsed["password"] == value and parsed["user"] == "api" and parsed["host"] == "/run/postgresql"


def test_dual_role_changes_the_user_parameter() -> None:
    from nixmig.nixsrc.patch import Builder

    url = pt.split_url(URI)
    assert url is not None

    class _Spec:
        login_role = "api_v2"
        role = "api"

    b = Builder.__new__(Builder)
    b.spec = _Spec()  # type: ignore[assignment]
    new = b.as_login_role(url)
    assert new.prefix + new.password + new.suffix == URI.replace("user=api&", "user=api_v2&")
    assert new.user == "api_v2"
