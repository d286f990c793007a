"""sql.dbname: a conninfo that libpq's own parser reads back as exactly that database name."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict  # noqa: TID251 - libpq's PQconninfoParse, the reference

from nixmig.db import sql

NAMES = [
    "default",
    "dbname=default",
    "port=1 dbname=x",
    "postgresql://nope",
    "postgres://u@h:1/d",
    "it's",
    "back\\slash",
    "\\'",
    "",
    " lead and trail ",
    "tab\there\nnewline",
    "ünïcode-名前",
]


@pytest.mark.parametrize("name", NAMES)
def test_libpq_reads_back_the_name(name: str) -> None:
    assert conninfo_to_dict(sql.dbname(name)) == {"dbname": name}


def test_plain_names_stay_readable_and_nul_is_refused() -> None:
    assert sql.dbname("template1") == "dbname=template1"
    assert sql.dbname("it's a \\ name") == "dbname='it\\'s a \\\\ name'"
    with pytest.raises(ValueError, match="NUL"):
        sql.dbname("a\x00b")
