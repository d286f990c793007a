"""Logging in over TCP with psycopg: does this password work?"""

from __future__ import annotations

import psycopg

from nixmig.sensitive import Secret


def try_login(host: str, port: int, user: str, password: Secret, dbname: str) -> str | None:
    """None when the login works, else the server's reason (no password in it)."""
    return login_roles(host, port, user, password, dbname)[0]


def login_roles(host: str, port: int, user: str, password: Secret, dbname: str) -> tuple[str | None, str]:
    """(None, the session's current_user) when the login works, else (the server's reason, "")."""
    try:
        with psycopg.connect(
            host=host,
            port=port,
            user=user,
            password=password.reveal_str(),
            dbname=dbname,
            connect_timeout=10,
            sslmode="prefer",
        ) as conn:
            row = conn.execute("SELECT current_user").fetchone()
        return None, str(row[0]) if row else ""
    except psycopg.OperationalError as exc:
        text = str(exc).strip()
        reason = text.split("FATAL:", 1)[-1].strip().splitlines()[0] if text else type(exc).__name__
        # libpq never echoes the password, but be sure (a password may equal the user name: keep it long enough)
        if password.reveal_str() != user:
            reason = reason.replace(password.reveal_str(), "********")
        return reason, ""
