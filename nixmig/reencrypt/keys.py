"""Key providers: where the old and new keys come from.

A key source (``--old-key`` / ``--new-key``) is one of:

``env:NAME``          an environment variable
``file:PATH``         a file (a bare path not ending in ``.age`` means the same)
``age:PATH``          an agenix secret (a bare path ending in ``.age`` means the same),
                      decrypted in memory with ``--identity``
``vault[:KEYNAME]``   a Vault transit key (default ``--vault-key``): the key never
                      leaves Vault, values are sent to it in ``batch_input`` requests

Local key material is 32 bytes, written as base64, hex or raw bytes; exactly one
trailing newline is ignored. Errors name the source (the variable, the path, the
Vault key), never the material.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nixmig.reencrypt.errors import KeyProviderError, VaultError
from nixmig.reencrypt.schemes import KEY_BYTES, Failed, SchemeId
from nixmig.sensitive import Secret

if TYPE_CHECKING:
    import ssl

KeyKind = Literal["env", "file", "age", "vault"]
DEFAULT_VAULT_KEY = "pos-encryption-key"
DEFAULT_VAULT_MOUNT = "transit"


@dataclass(frozen=True)
class KeySource:
    kind: KeyKind
    ref: str  # variable name, path or Vault key name

    def __str__(self) -> str:
        return f"{self.kind}:{self.ref}"


def parse_source(text: str, *, option: str, vault_key: str = DEFAULT_VAULT_KEY) -> KeySource:
    """``env:X``, ``file:P``, ``age:P``, ``vault[:K]`` or a bare path."""
    kind, sep, ref = text.partition(":")
    if sep and kind in ("env", "file", "age", "vault"):
        if kind == "vault":
            return KeySource("vault", ref or vault_key)
        if not ref:
            raise KeyProviderError(f"{kind}: needs a name after the colon", where=option)
        return KeySource(kind, ref)  # type: ignore[arg-type]
    if text == "vault":
        return KeySource("vault", vault_key)
    if not text:
        raise KeyProviderError("empty key source", where=option, hint=_SOURCES_HINT)
    return KeySource("age" if text.endswith(".age") else "file", text)


_SOURCES_HINT = "use env:NAME, file:PATH, age:PATH (agenix, with --identity) or vault[:KEY]"


def rebase(text: str, base: Path, *, option: str) -> str:
    """A key source whose relative file or age path is taken from ``base`` (nixmig.toml's directory)."""
    src = parse_source(text, option=option)
    if src.kind in ("file", "age") and not Path(src.ref).is_absolute():
        return f"{src.kind}:{base / src.ref}"
    return text


def load_secret(text: str, *, option: str, identities: Sequence[Path] = (), loaded: Sequence[Any] = ()) -> Secret:
    """A secret of any length (the blind indexes' HMAC secret) from env:, file: or age:.

    A file or .age secret loses exactly one trailing newline; a variable is taken as is.
    """
    src = parse_source(text, option=option)
    if src.kind == "env":
        value = os.environ.get(src.ref)
        if not value:
            raise KeyProviderError(
                f"environment variable {src.ref} is not set or empty", where=option, hint="set it, or change " + option
            )
        return Secret(value)
    if src.kind == "vault":
        raise KeyProviderError("the HMAC secret cannot come from Vault", where=option, hint="use env:, file: or age:")
    raw = _read(Path(src.ref)) if src.kind == "file" else agenix_decrypt(Path(src.ref), identities, loaded)
    raw = raw[:-1] if raw.endswith(b"\n") else raw
    if not raw:
        raise KeyProviderError("the HMAC secret is empty", where=src.ref)
    return Secret(raw)


def decode_material(raw: bytes, *, where: str) -> Secret:
    """32 key bytes from base64, hex or raw text (one trailing newline ignored)."""
    data = raw[:-1] if raw.endswith(b"\n") else raw
    if data.endswith(b"\r"):
        data = data[:-1]
    candidates: list[bytes] = []
    if len(data) == 2 * KEY_BYTES:
        with contextlib.suppress(UnicodeDecodeError, ValueError):
            candidates.append(bytes.fromhex(data.decode("ascii")))
    for decoder in (base64.b64decode, base64.urlsafe_b64decode):
        with contextlib.suppress(binascii.Error, ValueError):
            candidates.append(decoder(data + b"=" * (-len(data) % 4)))
    candidates.append(data)
    for c in candidates:
        if len(c) == KEY_BYTES:
            return Secret(c)
    raise KeyProviderError(
        f"not a {KEY_BYTES}-byte key",
        where=where,
        hint=f"write {KEY_BYTES} random bytes as base64 (head -c {KEY_BYTES} /dev/urandom | base64)",
    )


def load_local(source: KeySource, identities: Sequence[Path] = (), loaded: Sequence[Any] = ()) -> Secret:
    """The key bytes of an env, file or age source (``loaded``: identities already loaded)."""
    if source.kind == "env":
        value = os.environ.get(source.ref)
        if not value:
            raise KeyProviderError(f"environment variable {source.ref} is not set or empty", where=str(source))
        return decode_material(value.encode(), where=f"${source.ref}")
    if source.kind == "file":
        return decode_material(_read(Path(source.ref)), where=source.ref)
    if source.kind == "age":
        return decode_material(agenix_decrypt(Path(source.ref), identities, loaded), where=source.ref)
    raise KeyProviderError(f"{source} is not a local key source", hint=_SOURCES_HINT)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyProviderError("no such key file", where=path, hint=_SOURCES_HINT) from None
    except OSError as exc:
        raise KeyProviderError(f"cannot read key file: {exc.strerror}", where=path) from None


def agenix_decrypt(path: Path, identity_paths: Sequence[Path], loaded: Sequence[Any] = ()) -> bytes:
    """Decrypt an agenix ``.age`` file in memory with nixmig's age module (imported here).

    ``loaded``: identities already loaded (the operator's, given to ``nixmig apply -i``)."""
    if not identity_paths and not loaded:
        raise KeyProviderError(
            "an agenix key needs an identity to decrypt it",
            where=path,
            hint="pass --identity with an ssh private key or age identity listed for it in secrets.nix",
        )
    from nixmig.secrets import age

    data = _read(path)
    identities = [*loaded, *age.load_identities(identity_paths)]
    return age.decrypt(data, identities, where=path).reveal()


# ---- Vault transit --------------------------------------------------------------------

_CAPABILITIES = {
    "encrypt": 'path "{m}/encrypt/{k}" {{ capabilities = ["update"] }}',
    "decrypt": 'path "{m}/decrypt/{k}" {{ capabilities = ["update"] }}',
    "read": 'path "{m}/keys/{k}" {{ capabilities = ["read"] }}',
}


DEFAULT_VAULT_RETRY_SECONDS = 30.0
# Requests in flight at once when a batch takes several: measured against OpenBao 2.7 on 2 CPUs,
# 4 decrypt ~1.5x the values/s of one at a time (the server's work runs beside the client's).
DEFAULT_VAULT_PARALLEL = 4
# Batches decided at once (in threads of this process) when the ciphers are Vault's: while one
# batch waits for Vault's answers, the next ones' requests are on the wire, and the runner reads
# ahead. Measured against OpenBao 2.7 on 2 CPUs (bench/reencrypt.py --provider vault).
DEFAULT_VAULT_BATCHES = 3


@dataclass(frozen=True)
class VaultSettings:
    """Where Vault is, and how to talk to it.

    ``max_batch``: at most this many items per ``batch_input`` request (None: as many as
    the server accepts, found by splitting a refused request); ``parallel``: requests of one
    batch in flight at once, once their size is settled; ``batches``: batches of rows decided
    at once (:class:`~nixmig.reencrypt.workers.Decider`, in threads; written in order all the
    same). ``retry_seconds``: how long an unreachable or sealed server is waited for (retrying
    with back-off) before the run stops.
    """

    addr: str
    token: Secret
    mount: str = DEFAULT_VAULT_MOUNT
    max_batch: int | None = None
    retry_seconds: float = DEFAULT_VAULT_RETRY_SECONDS
    parallel: int = DEFAULT_VAULT_PARALLEL
    batches: int = DEFAULT_VAULT_BATCHES


class _BatchLimit:
    """How many items one request of a given shape may carry, learned from refusals.

    Real servers cap a request's size: OpenBao refuses JSON with more than
    ``max_request_json_strings`` strings (1,000 by default: every key and every string
    value counts, so ~250 items with a context, ~500 without), Vault and OpenBao a body
    larger than ``max_request_size``. A refused size halves the next try; after that the
    size is bisected between the largest accepted and the smallest refused one, and kept
    once they are within 1/16 of each other. ``cap`` (``--vault-max-batch``) bounds it all.
    """

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.good = 0  # largest size accepted
        self.bad: int | None = None  # smallest size refused

    def size(self, remaining: int) -> int:
        top = min(remaining, self.cap) if self.cap else remaining
        if self.bad is None:
            return top
        if self.good and self.bad - self.good <= max(1, self.good // 16):
            target = self.good
        else:
            target = (self.good + self.bad) // 2 if self.good else self.bad // 2
        return max(1, min(top, target))

    def settled(self) -> bool:
        """Whether :meth:`size` will not change until a refusal: chunks may go out at once."""
        return self.bad is None or (self.good > 0 and self.bad - self.good <= max(1, self.good // 16))

    def accepted(self, n: int) -> None:
        self.good = max(self.good, n)

    def refused(self, n: int) -> None:
        self.bad = n if self.bad is None else min(self.bad, n)
        if self.good >= n:  # the server's limit went down (restarted with another config)
            self.good = 0


class _TooLarge(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Unreachable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _LeanHttp:
    """Where batch requests go, without hvac and requests on the way: one kept-alive
    ``http.client`` connection per thread. Measured against OpenBao on 2 CPUs, hvac + requests
    cost the client ~20 us of CPU per row (3 columns, 9 requests' worth of items), as much as
    a third of what the server's crypto costs, on the same CPUs.

    It trusts what hvac trusts: ``VAULT_CACERT`` / ``VAULT_CAPATH``, else ``REQUESTS_CA_BUNDLE`` /
    ``CURL_CA_BUNDLE``, else certifi's bundle; ``VAULT_CLIENT_CERT`` / ``VAULT_CLIENT_KEY`` for a
    client certificate. :meth:`for_addr` gives None when a proxy from the environment applies to
    the address: hvac (requests) sends those requests, through the proxy."""

    def __init__(self, addr: str, token: Secret) -> None:
        from urllib.parse import urlsplit

        url = urlsplit(addr)
        self.https = url.scheme == "https"
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if self.https else 80)
        self.prefix = url.path.rstrip("/")
        # the token only here and in the requests' headers; __repr__ leaves both out
        self.headers = {"X-Vault-Token": token.reveal_str(), "X-Vault-Request": "true"}
        self.headers["Content-Type"] = "application/json"
        self.context = _tls_context() if self.https else None

    @classmethod
    def for_addr(cls, addr: str, token: Secret) -> _LeanHttp | None:
        from urllib.parse import urlsplit
        from urllib.request import getproxies, proxy_bypass

        url = urlsplit(addr)
        if url.scheme not in ("http", "https"):
            return None
        proxies = getproxies()
        if (proxies.get(url.scheme) or proxies.get("all")) and not proxy_bypass(url.netloc):
            return None
        return cls(addr, token)

    def connect(self) -> Any:
        import http.client

        if self.context is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=30, context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=30)

    def __repr__(self) -> str:
        return f"_LeanHttp({'https' if self.https else 'http'}://{self.host}:{self.port}{self.prefix})"


def _tls_context() -> ssl.SSLContext:
    import ssl

    env = os.environ.get
    cafile = capath = None
    vault_ca = env("VAULT_CACERT") or env("VAULT_CAPATH")
    for candidate in (vault_ca, env("REQUESTS_CA_BUNDLE"), env("CURL_CA_BUNDLE")):
        if candidate:
            cafile, capath = (None, candidate) if Path(candidate).is_dir() else (candidate, None)
            break
    else:
        with contextlib.suppress(ImportError):
            import certifi

            cafile = certifi.where()
    ctx = ssl.create_default_context(cafile=cafile, capath=capath)
    if env("VAULT_CLIENT_CERT"):
        ctx.load_cert_chain(env("VAULT_CLIENT_CERT") or "", env("VAULT_CLIENT_KEY") or None)
    return ctx


def _too_large(message: str) -> bool:
    low = message.lower()
    return "high complexity" in low or "exceeded maximum number of" in low or "too large" in low


class VaultTransit:
    """A thin client of Vault's transit API that turns Vault's errors into advice.

    Key reads go through hvac; the batch requests (``batch_input`` encrypt and decrypt, the
    hot path) over :class:`_LeanHttp`'s kept-alive connections, one per thread, unless a proxy
    applies (then hvac). Several threads may call :meth:`encrypt` and :meth:`decrypt` at once
    (batches decided at once, :class:`~nixmig.reencrypt.workers.Decider`)."""

    def __init__(self, settings: VaultSettings) -> None:
        import hvac  # type: ignore[import-untyped]

        if not settings.addr:
            raise VaultError("no Vault address", where="--vault-addr", hint="pass --vault-addr or set VAULT_ADDR")
        if not len(settings.token):
            raise VaultError("no Vault token", where="--vault-token", hint="set VAULT_TOKEN (or --vault-token)")
        if settings.max_batch is not None and settings.max_batch < 1:
            raise VaultError("the batch cap must be at least 1", where="--vault-max-batch")
        self.addr = settings.addr
        self.mount = settings.mount
        self.retry_seconds = settings.retry_seconds
        self.max_batch = settings.max_batch
        self._limits: dict[tuple[str, bool, bool], _BatchLimit] = {}
        self.requests: list[int] = []  # items per batch request sent (refused ones included)
        self.refused: list[int] = []  # items of the requests refused as too large
        self.in_flight = 0  # batch requests sent and not yet answered
        self.peak_in_flight = 0  # the most at once
        self._hvac: Any = lambda: hvac.Client(url=settings.addr, token=settings.token.reveal_str())
        self._lean = _LeanHttp.for_addr(settings.addr, settings.token)  # None: batch requests through hvac
        self._local = threading.local()  # one client (HTTP session) per thread
        self.parallel = max(1, settings.parallel)
        self.batches = max(1, settings.batches)
        self._pool: ThreadPoolExecutor | None = None
        # Several batches may be decided at once (threads): the learned limits and the pool
        # are shared, and changed under this lock.
        self._lock = threading.Lock()

    @property
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._hvac()
        return client

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def read_key(self, name: str) -> dict[str, Any]:
        resp = self._call("read", name, lambda t: t.read_key(name=name, mount_point=self.mount))
        data: dict[str, Any] = resp["data"]
        return data

    def encrypt(
        self, name: str, plaintexts: Sequence[bytes], context: str | None, key_version: int | None
    ) -> list[str]:
        # one dict per value, built in one comprehension (the hot path: 3 per row and column)
        b64 = binascii.b2a_base64
        items: list[dict[str, Any]]
        if context is not None and key_version is not None:
            ctx = _b64(context.encode())
            items = [
                {"plaintext": b64(p, newline=False).decode(), "context": ctx, "key_version": key_version}
                for p in plaintexts
            ]
        else:
            items = [{"plaintext": b64(p, newline=False).decode()} for p in plaintexts]
            for item in items:
                if context is not None:
                    item["context"] = _b64(context.encode())
                if key_version is not None:
                    item["key_version"] = key_version
        results = self._batch("encrypt", name, items)
        out = []
        for r in results:
            if r.get("error"):
                raise self._advice("encrypt", name, str(r["error"]))
            out.append(str(r["ciphertext"]))
        return out

    def decrypt(self, name: str, ciphertexts: Sequence[str], context: str | None) -> list[bytes | Failed]:
        items: list[dict[str, Any]]
        if context is not None:
            ctx = _b64(context.encode())
            items = [{"ciphertext": c, "context": ctx} for c in ciphertexts]
        else:
            items = [{"ciphertext": c} for c in ciphertexts]
        results = self._batch("decrypt", name, items)
        out: list[bytes | Failed] = []
        a2b = binascii.a2b_base64  # what base64.b64decode calls, without its wrapper
        for r in results:
            err = r.get("error")
            if err:
                if _is_fatal(str(err)):
                    raise self._advice("decrypt", name, str(err))
                out.append(Failed(f"Vault could not decrypt it ({_first_line(str(err))})"))
                continue
            try:
                out.append(a2b(r.get("plaintext") or ""))
            except (binascii.Error, ValueError, TypeError):
                out.append(Failed("Vault returned a plaintext that is not base64"))
        return out

    def _batch(self, op: str, name: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send ``items`` in as many requests as the server needs (see :class:`_BatchLimit`).

        Thread-safe: batches decided at once share the learned limits and the request pool."""
        if not items:
            return []
        shape = (op, "context" in items[0], "key_version" in items[0])
        with self._lock:
            limit = self._limits.get(shape)
            if limit is None:
                limit = self._limits[shape] = _BatchLimit(self.max_batch)
        out: list[dict[str, Any]] = []
        i = 0
        while i < len(items):
            with self._lock:
                n = limit.size(len(items) - i)
                together = self.parallel > 1 and len(items) - i > n and limit.settled()
                if together and self._pool is None:
                    self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="nixmig-vault")
                pool = self._pool
            if together and pool is not None:
                futures = [pool.submit(self._request, op, name, items[j : j + n]) for j in range(i, len(items), n)]
                try:
                    done = [f.result() for f in futures]
                except _TooLarge:  # the server's limit went down: these go again one by one (harmless)
                    with self._lock:
                        limit.refused(n)
                    self.refused.append(n)
                    continue
                for results in done:
                    out.extend(results)
                with self._lock:
                    limit.accepted(n)
                i = len(items)
                break
            try:
                out.extend(self._request(op, name, items[i : i + n]))
            except _TooLarge as exc:
                if n == 1:
                    raise self._advice(op, name, exc.message) from None
                with self._lock:
                    limit.refused(n)
                self.refused.append(n)
                continue
            with self._lock:
                limit.accepted(n)
            i += n
        return out

    def _request(self, op: str, name: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.requests.append(len(items))
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return self._send(op, name, items)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _send(self, op: str, name: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self._lean is None:
            return self._request_hvac(op, name, items)
        body = json.dumps({"batch_input": items}, separators=(",", ":")).encode()
        try:
            status, answer = self._retrying(lambda: self._lean_post(f"/v1/{self.mount}/{op}/{name}", body))
        except _Unreachable as exc:
            raise self._unreachable(exc.reason) from None
        results = (answer.get("data") or {}).get("batch_results") if isinstance(answer, dict) else None
        if status == 200 or (status == 400 and isinstance(results, list) and len(results) == len(items)):
            # Vault answers 400 when every item of a batch failed; the items still say why.
            return self._results(op, name, items, results)
        errors = answer.get("errors") if isinstance(answer, dict) else None
        message = "; ".join(str(e) for e in errors) if errors else f"HTTP {status}"
        if status == 404:
            raise self._advice(op, name, "not found")
        if status == 413 or _too_large(message):
            raise _TooLarge(message)
        if status in (301, 302, 303, 307, 308):
            message = f"redirected (HTTP {status}): point --vault-addr at the active node"
        raise self._advice(op, name, message)

    def _lean_post(self, path: str, body: bytes) -> tuple[int, Any]:
        """POST over this thread's kept-alive connection; (status, parsed JSON body).

        A connection error closes the connection (the next try opens a new one) and is raised
        as ``requests.ConnectionError`` so that :meth:`_retrying` waits and tries again; a 503
        (sealed, standby) as ``hvac.exceptions.VaultDown``, likewise."""
        import http.client

        import hvac.exceptions  # type: ignore[import-untyped]
        import requests

        lean = self._lean
        assert lean is not None
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = lean.connect()
        try:
            conn.request("POST", lean.prefix + path, body, lean.headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            import ssl

            conn.close()
            self._local.conn = None
            if isinstance(exc, ssl.SSLCertVerificationError):  # waiting does not fix a certificate
                raise VaultError(
                    f"Vault's TLS certificate is not trusted: {exc.verify_message}",
                    where=self.addr,
                    hint="set VAULT_CACERT to the PEM file of the CA that signed it (or VAULT_CAPATH to a directory)",
                ) from None
            raise requests.ConnectionError(type(exc).__name__) from None
        if resp.status == 503:
            raise hvac.exceptions.VaultDown()
        try:
            return resp.status, json.loads(raw) if raw else {}
        except ValueError:
            return resp.status, {"errors": [f"HTTP {resp.status}, not JSON"]}

    def _results(self, op: str, name: str, items: list[dict[str, Any]], results: Any) -> list[dict[str, Any]]:
        if not isinstance(results, list) or len(results) != len(items):
            got = len(results) if isinstance(results, list) else 0
            raise VaultError(
                f"Vault answered {got} results for {len(items)} items",
                where=f"{self.mount}/{op}/{name}",
            )
        return results

    def _request_hvac(self, op: str, name: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        import hvac.exceptions

        method = "encrypt_data" if op == "encrypt" else "decrypt_data"
        try:
            resp = self._retrying(
                lambda: getattr(self._client.secrets.transit, method)(
                    name=name, batch_input=items, mount_point=self.mount
                )
            )
        except hvac.exceptions.InvalidRequest as exc:
            # Vault answers 400 when every item of a batch failed; the items still say why.
            body = exc.json if isinstance(exc.json, dict) else {}
            results = (body.get("data") or {}).get("batch_results")
            if isinstance(results, list) and len(results) == len(items):
                return results
            message = _vault_message(exc)
            if _too_large(message):
                raise _TooLarge(message) from None
            raise self._advice(op, name, message) from None
        except hvac.exceptions.InvalidPath:
            raise self._advice(op, name, "not found") from None
        except hvac.exceptions.VaultError as exc:
            message = _vault_message(exc)
            if getattr(exc, "status_code", None) == 413 or _too_large(message):
                raise _TooLarge(message) from None
            raise self._advice(op, name, message) from None
        except _Unreachable as exc:
            raise self._unreachable(exc.reason) from None
        return self._results(op, name, items, resp["data"]["batch_results"])

    def _retrying(self, fn: Any) -> Any:
        """``fn()``, retried with back-off while Vault is unreachable or sealed, up to ``retry_seconds``.

        Encrypt, decrypt and reading a key change nothing on the server: sending one again is harmless."""
        import hvac.exceptions
        import requests

        deadline = time.monotonic() + self.retry_seconds
        pause = 0.1
        while True:
            try:
                return fn()
            except hvac.exceptions.VaultDown:
                reason = "it is sealed or not ready (503)"
            except (hvac.exceptions.VaultError, _Unreachable, VaultError):
                raise
            except (requests.ConnectionError, requests.Timeout) as exc:
                reason = f"{type(exc).__name__}"
            except Exception as exc:  # anything else from the HTTP layer: not worth retrying
                raise _Unreachable(type(exc).__name__) from None
            if time.monotonic() + pause > deadline:
                raise _Unreachable(f"{reason}, for {self.retry_seconds:g} s")
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _unreachable(self, reason: str) -> VaultError:
        return VaultError(
            f"cannot reach Vault: {reason}",
            where=self.addr,
            hint="check --vault-addr / VAULT_ADDR and that Vault is up and unsealed, then run again (it resumes)",
        )

    def _call(self, op: str, name: str, fn: Any) -> Any:
        import hvac.exceptions

        try:
            return self._retrying(lambda: fn(self._client.secrets.transit))
        except hvac.exceptions.InvalidPath:
            raise self._advice(op, name, "not found") from None
        except hvac.exceptions.VaultError as exc:
            raise self._advice(op, name, _vault_message(exc)) from None
        except _Unreachable as exc:
            raise self._unreachable(exc.reason) from None

    def _advice(self, op: str, name: str, message: str) -> VaultError:
        where = f"{self.addr} {self.mount}/{'keys' if op == 'read' else op}/{name}"
        low = message.lower()
        if "missing 'context' for key derivation" in low:
            return VaultError(
                f"Vault key {name!r} is a derived key and needs a context",
                where=where,
                hint="the data was already context-encrypted: run --mode verify, "
                "or name the old non-derived key with --old-key vault:KEY",
            )
        if "permission denied" in low:
            needs = [op] if op == "read" else [op, "read"]
            policy = "; ".join(_CAPABILITIES[n].format(m=self.mount, k=name) for n in needs)
            return VaultError(
                f"permission denied for {op} with key {name!r}",
                where=where,
                hint=f"the token's policy lacks transit capabilities: {policy}",
            )
        if "disallowed by policy" in low:
            return VaultError(
                f"Vault key {name!r} no longer decrypts this ciphertext's version (min_decryption_version)",
                where=where,
                hint=f"lower it while the data moves: vault write {self.mount}/keys/{name}/config "
                "min_decryption_version=N (N: the oldest vN: in the column), then run again (it resumes)",
            )
        if low == "not found" or "encryption key not found" in low or "no existing key" in low:
            return VaultError(
                f"no transit key {name!r}",
                where=where,
                hint=f"create it: vault write -f {self.mount}/keys/{name} derived=true convergent_encryption=true",
            )
        return VaultError(f"Vault refused {op}: {_first_line(message)}", where=where)


def _is_fatal(err: str) -> bool:
    low = err.lower()
    return "missing 'context'" in low or "permission denied" in low or "disallowed by policy" in low


def _vault_message(exc: Any) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        return "; ".join(str(e) for e in errors)
    return str(exc.args[0]) if exc.args else type(exc).__name__


def _first_line(text: str) -> str:
    lines = [ln.strip(" *\t") for ln in text.splitlines() if ln.strip(" *\t")]
    useful = [ln for ln in lines if not ln.endswith("error occurred:")]
    return (useful or lines or [text])[0][:200]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class VaultLegacyCipher:
    """``vault:vN:``: Vault's own ciphertexts under a non-derived key, no context."""

    def __init__(self, transit: VaultTransit, name: str) -> None:
        self._t, self.name = transit, name
        info = transit.read_key(name)
        self._scheme = SchemeId("vault", int(info.get("latest_version", 1)))

    @property
    def scheme(self) -> SchemeId:
        return self._scheme

    @property
    def batches_in_flight(self) -> int:
        """Batches the runner may decide at once with this cipher (threads; Vault does the work)."""
        return self._t.batches

    def accepts(self, sid: SchemeId) -> bool:
        return sid.tag == "vault"  # Vault keeps every version it may decrypt

    def encrypt_many(self, context: str, plaintexts: Sequence[bytes]) -> list[str]:
        return self._t.encrypt(self.name, plaintexts, None, None)

    def decrypt_many(self, context: str, values: Sequence[str]) -> list[bytes | Failed]:
        return self._t.decrypt(self.name, values, None)


class VaultContextCipher:
    """``vctx:vN:``: Vault transit, derived convergent key, context ``table.column``."""

    def __init__(self, transit: VaultTransit, name: str, version: int | None = None) -> None:
        self._t, self.name = transit, name
        info = transit.read_key(name)
        where = f"{transit.addr} {transit.mount}/keys/{name}"
        if not info.get("derived") or not info.get("convergent_encryption"):
            raise VaultError(
                f"Vault key {name!r} is not a derived convergent key",
                where=where,
                hint="deterministic per-column encryption needs a key created with "
                f"vault write -f {transit.mount}/keys/NEW derived=true convergent_encryption=true",
            )
        latest = int(info.get("latest_version", 1))
        if version is not None and not 1 <= version <= latest:
            raise VaultError(f"Vault key {name!r} has no version {version} (latest is {latest})", where=where)
        self._version = version or latest
        self._scheme = SchemeId("vctx", self._version)

    @property
    def scheme(self) -> SchemeId:
        return self._scheme

    @property
    def batches_in_flight(self) -> int:
        return self._t.batches

    def accepts(self, sid: SchemeId) -> bool:
        return sid.tag == "vctx"

    def encrypt_many(self, context: str, plaintexts: Sequence[bytes]) -> list[str]:
        out = self._t.encrypt(self.name, plaintexts, context, self._version)
        return ["vctx:" + c.removeprefix("vault:") for c in out]

    def decrypt_many(self, context: str, values: Sequence[str]) -> list[bytes | Failed]:
        return self._t.decrypt(self.name, ["vault:" + v.removeprefix("vctx:") for v in values], context)


# ---- building the keyring -------------------------------------------------------------


@dataclass(frozen=True)
class KeyOptions:
    """The key flags of a run, before anything is loaded."""

    new: str | None
    old: str | None = None
    new_version: int | None = None  # None: 1 for local keys, the latest for Vault
    old_version: int = 1
    identities: tuple[Path, ...] = ()
    loaded_identities: tuple[Any, ...] = ()  # already loaded (nixmig apply -i): nixmig.secrets.age.Identity
    vault: VaultSettings | None = None
    vault_key: str = DEFAULT_VAULT_KEY


def build_keyring(opts: KeyOptions, *, need_old: bool) -> Any:
    """Load the keys and return a :class:`~nixmig.reencrypt.schemes.Keyring`."""
    from nixmig.reencrypt.schemes import Cipher, ContextCipher, Keyring, LegacyCipher

    if not opts.new:
        raise KeyProviderError("no new key", where="--new-key", hint=f"pass --new-key ({_SOURCES_HINT})")
    if need_old and not opts.old:
        raise KeyProviderError(
            "reencrypt needs the old key",
            where="--old-key",
            hint=f"pass --old-key ({_SOURCES_HINT}), or use --mode encrypt-plaintext",
        )
    transit: VaultTransit | None = None

    def vault() -> VaultTransit:
        nonlocal transit
        if transit is None:
            if opts.vault is None:
                raise VaultError("no Vault settings", hint="pass --vault-addr and --vault-token")
            transit = VaultTransit(opts.vault)
        return transit

    new_src = parse_source(opts.new, option="--new-key", vault_key=opts.vault_key)
    new: Cipher
    if new_src.kind == "vault":
        new = VaultContextCipher(vault(), new_src.ref, opts.new_version)
    else:
        new = ContextCipher(load_local(new_src, opts.identities, opts.loaded_identities), opts.new_version or 1)
    old: list[Cipher] = []
    if opts.old:
        old_src = parse_source(opts.old, option="--old-key", vault_key=opts.vault_key)
        if old_src.kind == "vault":
            old.append(VaultLegacyCipher(vault(), old_src.ref))
        else:
            key = load_local(old_src, opts.identities, opts.loaded_identities)
            old.append(LegacyCipher(key, opts.old_version))
            if not new.accepts(ContextCipher(key, opts.old_version).scheme):
                # rotating context keys: ctx:vOLD values are read with the old key
                old.append(ContextCipher(key, opts.old_version))
    return Keyring(new, tuple(old))
