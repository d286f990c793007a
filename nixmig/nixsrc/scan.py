"""Find hardcoded secrets in Nix source. Pure: bytes in, findings out, no I/O, no printing.

A finding is one hardcoded credential: where it is (file:line:col of the first
character of the secret value, columns in characters), the attribute path as
written (``services.db.service.environment.POSTGRES_PASSWORD``), its kind, the
value wrapped in :class:`~nixmig.sensitive.Secret`, and a suggested agenix
secret name (``twenty-db-password``).

What counts:

* a non-empty string literal bound to an attribute whose *last* word is a
  credential noun (password, passwd, passphrase, secret, token, credentials,
  an api/secret/private/access/... key), any case and any style
  (``POSTGRES_PASSWORD``, ``adminpass``, ``apiKey``, ``"db/password"``);
  ``hashedPassword`` / ``initialHashedPassword`` are the low-severity ``hash`` kind;
* a URL with a password in its userinfo (``postgres://user:pass@db/x``), in any
  string or bare URI, whatever the attribute is called;
* a PEM private key block or an age identity (``AGE-SECRET-KEY-1...``);
* inside strings (env files, YAML/TOML/INI text, shell, SQL, command lines):
  ``DB_PASSWORD=...``, ``password: ...``, ``--api-key=...``, ``PASSWORD '...'``;
* well-known token formats (GitHub, GitLab, Slack, Stripe live keys), Authorization headers;
* also through ``lib.mkForce``/``mkDefault``/``mkIf``, ``if`` branches, function argument
  defaults, mkOption ``default``, ``{ name = "X_PASSWORD"; value = ...; }``,
  ``nameValuePair``, ``[ "--password" "..." ]``, ``pkgs.writeText`` bound to a ``*File``
  option, nginx ``basicAuth.<user>``, and every string attribute of a plain ``*secret*.nix``.

What does not: anything that is not a literal (``config.age.secrets.x.path``,
``builtins.readFile``), values with an interpolation where the secret would be
(``"${config.sops.placeholder.db}"``), empty strings, file paths, templating
placeholders (``$VAR``, ``@pass@``, ``{{ x }}``, ``$__file{...}``, ``!secret x``,
``ENC[...]``), names whose last word is not a credential noun (``passwordFile``,
``PASSWORD_MIN_LENGTH``, ``password_encryption``, ``publicKey``), option
documentation (``description``, ``example``, ``literalExpression`` ...) and comments.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Protocol

from nixmig.nixsrc.parse import first_error, parse
from nixmig.sensitive import MASK, Secret

if TYPE_CHECKING:
    from tree_sitter import Node, Query


class Kind(StrEnum):
    PASSWORD = "password"  # noqa: S105 - a kind, not a password
    URL_CREDENTIAL = "url-credential"
    TOKEN = "token"  # noqa: S105 - a kind, not a token
    KEY = "key"
    PRIVATE_KEY = "private-key"
    HASH = "hash"


class Severity(StrEnum):
    HIGH = "high"
    LOW = "low"


SEVERITY: Final[dict[Kind, Severity]] = {
    Kind.PASSWORD: Severity.HIGH,
    Kind.URL_CREDENTIAL: Severity.HIGH,
    Kind.TOKEN: Severity.HIGH,
    Kind.KEY: Severity.HIGH,
    Kind.PRIVATE_KEY: Severity.HIGH,
    Kind.HASH: Severity.LOW,
}

DESCRIPTION: Final[dict[Kind, str]] = {
    Kind.PASSWORD: "hardcoded password",
    Kind.URL_CREDENTIAL: "password in the userinfo of a URL",
    Kind.TOKEN: "hardcoded token or shared secret",
    Kind.KEY: "hardcoded API, encryption or private key",
    Kind.PRIVATE_KEY: "private key block (PEM or age identity)",
    Kind.HASH: "password hash in the configuration (low severity: crackable offline)",
}


@dataclass(frozen=True)
class Finding:
    """One hardcoded secret. ``value`` never prints: it is a :class:`Secret`."""

    file: str
    line: int  # 1-based
    col: int  # 1-based, in characters
    end_line: int
    end_col: int  # exclusive
    attr_path: str  # as written; "" when the string is not bound to an attribute
    kind: Kind
    value: Secret = field(repr=False, compare=False)
    secret_name: str
    rule: str  # how it was found: name, url, dsn, pem, age-identity, assignment, flag, sql, token-format
    # byte span of the value in the source (-1: unknown); what patch's verdict compares with its edits
    start: int = field(default=-1, compare=False)
    end: int = field(default=-1, compare=False)

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.kind]

    def masked(self, key: bytes) -> MaskedFinding:
        """The finding without its value: length and a keyed digest (for grouping) only."""
        digest = hmac.new(key, self.value.reveal(), hashlib.sha256).digest()[:16]
        return MaskedFinding(
            file=self.file,
            line=self.line,
            col=self.col,
            end_line=self.end_line,
            end_col=self.end_col,
            attr_path=self.attr_path,
            kind=self.kind,
            length=len(self.value),
            digest=digest,
            secret_name=self.secret_name,
            rule=self.rule,
        )


@dataclass(frozen=True)
class MaskedFinding:
    """What leaves the scanner for output and across processes: no value, ever."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    attr_path: str
    kind: Kind
    length: int
    digest: bytes = field(repr=False)
    secret_name: str
    rule: str

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.kind]

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.col,
            "end_line": self.end_line,
            "end_column": self.end_col,
            "attribute": self.attr_path,
            "kind": str(self.kind),
            "severity": str(self.severity),
            "value": {"masked": MASK, "length": self.length},
            "secret_name": self.secret_name,
            "rule": self.rule,
        }


@dataclass(frozen=True)
class SyntaxProblem:
    """A file that does not parse (or cannot be read): reported as one line, never a crash."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.col, "message": self.message}


@dataclass(frozen=True)
class FileScan:
    file: str
    findings: tuple[Finding, ...] = ()
    problem: SyntaxProblem | None = None


# --------------------------------------------------------------------------- names

_WORD_RE: Final = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_PASSWORD_NOUNS: Final = frozenset({"password", "passwd", "passphrase", "pass", "pwd", "pw", "psk"})
# how people write "password" short, as public configurations do (`psswd = "..."`, 15V/02)
_MISSPELLED: Final = frozenset({"psswd", "pswd", "passwrd", "paswd", "paswrd"})
_TOKEN_NOUNS: Final = frozenset({"token", "secret", "credentials", "credential", "creds"})
_KEY_QUALIFIERS: Final = frozenset(
    {
        "api", "secret", "private", "access", "encryption", "encrypt", "enc", "signing", "sign",
        "master", "auth", "client", "app", "session", "shared", "preshared", "hmac", "jwt",
        "license", "licence", "webhook", "admin", "root", "cookie", "otp", "totp", "aes",
        "cipher", "crypt", "storage", "account", "server", "service", "secure", "installation",
    }
)  # fmt: skip
_COMPOUND_SUFFIXES: Final = (
    ("password", "password"),
    ("passwd", "passwd"),
    ("passphrase", "passphrase"),
    ("token", "token"),
    ("secret", "secret"),
    ("apikey", "key"),
    ("secretkey", "key"),
    ("privatekey", "key"),
    ("accesskey", "key"),
    ("authkey", "key"),
    ("masterkey", "key"),
)
# short nouns glued to a known prefix: adminpass, rootpw, requirepass, dbpwd
_SHORT_COMPOUND_RE: Final = re.compile(
    r"^(admin|root|db|user|smtp|mail|ldap|bind|require|master|auth|rpc|vnc|web|http|pg|sql|mysql)(pass|pw|pwd)$"
)
_NOT_COMPOUNDS: Final = frozenset({"bypass", "compass", "overpass", "surpass", "trespass"})
_HASH_WORDS: Final = frozenset({"hash", "hashed"})
# nginx proxy_pass & co: "pass" as in pass-through, not a password
_PASS_THROUGH: Final = frozenset({"proxy", "fastcgi", "uwsgi", "scgi", "grpc", "memcached"})


@functools.lru_cache(maxsize=4096)
def _words(name: str) -> tuple[str, ...]:
    out = [w.lower() for w in _WORD_RE.findall(name)]
    while out and out[-1].isdigit():
        out.pop()
    return tuple(out)


def words(name: str) -> list[str]:
    """``POSTGRES_PASSWORD`` -> [postgres, password]; ``hashedPasswordFile`` -> [hashed, password, file]."""
    return list(_words(name))


def _noun(word: str) -> tuple[str, str] | None:
    """(prefix, noun) when ``word`` is or ends with a credential noun; noun normalised."""
    if word in _PASSWORD_NOUNS or word in _TOKEN_NOUNS or word == "key":
        return "", word
    if word in _MISSPELLED:
        return "", "passwd"
    if word in _NOT_COMPOUNDS:
        return None
    for suffix, noun in _COMPOUND_SUFFIXES:
        if word.endswith(suffix) and len(word) > len(suffix):
            return word[: -len(suffix)], noun
    m = _SHORT_COMPOUND_RE.match(word)
    if m:
        return m.group(1), "pass"
    return None


@dataclass(frozen=True)
class NameClass:
    kind: Kind
    words: tuple[str, ...]  # the name's words, split and normalised, for secret names


@functools.lru_cache(maxsize=4096)
def classify_name(name: str, *, plural: bool = False) -> NameClass | None:
    """Is ``name`` the name of a credential? Only its last word counts (``passwordFile`` is not).

    ``plural`` also accepts ``passwords``, ``tokens``, ``api_keys`` (lists, ``access-tokens``).
    """
    ws = words(name)
    if not ws:
        return None
    last = ws[-1]
    plural_noun = plural and last.endswith("s") and last not in ("pass", "credentials", "creds")
    if plural_noun and _noun(last[:-1]) is not None:
        last = last[:-1]
        ws = [*ws[:-1], last]
    prev = ws[-2] if len(ws) > 1 else ""
    # special shapes whose last word is not the noun
    if ws[-3:] == ["secret", "key", "base"]:  # rails SECRET_KEY_BASE
        return NameClass(Kind.KEY, tuple(ws))
    if last == "raw" and prev == "psk":  # wpa_supplicant pskRaw
        return NameClass(Kind.PASSWORD, tuple(ws[:-1]))
    if last in _HASH_WORDS and prev in ("password", "passwd", "pass"):
        return NameClass(Kind.HASH, (*ws[:-2], "hashed", "password"))
    if last == "cookie" and (len(ws) == 1 or prev == "erlang"):
        return NameClass(Kind.TOKEN, tuple(ws))  # the Erlang distribution cookie (rabbitmq, couchdb)
    split = _noun(last)
    if split is None:
        return None
    prefix, noun = split
    if noun == "pass" and not prefix and prev in _PASS_THROUGH:
        return None
    expanded = [*ws[:-1], *([prefix] if prefix else []), noun]
    if noun in ("password", "passwd", "passphrase", "pass", "pwd", "pw", "psk"):
        if expanded[0] in ("mysql", "mariadb") and {"random", "allow", "empty", "onetime"} & set(expanded[1:-1]):
            return None  # the images' flags: MYSQL_RANDOM_ROOT_PASSWORD = "1", MARIADB_ALLOW_EMPTY_ROOT_PASSWORD
        if any(w in _HASH_WORDS for w in expanded[:-1]):
            return NameClass(Kind.HASH, tuple(expanded))
        return NameClass(Kind.PASSWORD, tuple(expanded))
    if noun in _TOKEN_NOUNS:
        return NameClass(Kind.TOKEN, tuple(expanded))
    # noun == "key": only with a qualifier that makes it secret (not ssh/public/host keys)
    qualifier = expanded[-2] if len(expanded) > 1 else ""
    if qualifier in _KEY_QUALIFIERS:
        return NameClass(Kind.KEY, tuple(expanded))
    return None


# --------------------------------------------------------------------------- values

PLACEHOLDER: Final = "\x00"  # stands for an interpolation inside a string's text

_PATH_RE: Final = re.compile(r"(?:/|\./|\.\./|~/)[^\s]*")
_PLACEHOLDER_RES: Final = (
    re.compile(r"\$?\$\{?[A-Za-z_][A-Za-z0-9_]*\}?"),  # $VAR, ${VAR}; $${VAR}: Nix's escape of ${, filled at run time
    re.compile(r"\$\(.*\)", re.S),  # $(cat /run/...)
    re.compile(r"\$__(?:file|env|vault)\{.*\}"),  # grafana $__file{...}
    re.compile(r"@[A-Za-z_][A-Za-z0-9_-]*@"),  # substituteAll @pass@
    re.compile(r"\{\{.*\}\}", re.S),  # templates
    re.compile(r"<%.*%>", re.S),
    re.compile(r"%\([A-Za-z_]+\)s"),
    re.compile(r"%[-+ #0]*\d*(?:\.\d+)?[sdqbi](?:\\n)?"),  # printf "KEY=%s\n" "$(...)": filled at run time
    re.compile(r"<[A-Za-z_ -]+>"),  # <YOUR_PASSWORD>
    # a Symfony/ini parameter, alone or leading a path: %env(DB_PASS)%, %kernel.project_dir%/config/jwt/x.pem
    re.compile(r"%[\w.()-]+%(?:/[\w./-]*)?"),
    re.compile(r"\*+"),  # already masked
    re.compile(r"[A-Z_]*(?:PASS|PASSWORD|PASSWD|SECRET|TOKEN|KEY)[A-Z_]*"),  # USER:PASSWORD in docs
)
_PLACEHOLDER_PREFIXES: Final = (
    "!secret ", "!env_var ", "!include ", "ENC[", "ext:", "file:", "env:", "vault:", "unix:",
)  # fmt: skip
_YAML_TAG_RE: Final = re.compile(r"![\w.]+\s+\S+")  # !secret x, !secret.yaml x, !env_var X
_SENTINELS: Final = frozenset(
    {"disabled", "none", "null", "nil", "false", "true", "off", "no", "yes", "-", "unset", "redacted"}
)
_REFERENCE_RE: Final = re.compile(r"[\w.@-]+:(?:/|\./|\.\./)\S*")  # LoadCredential id:/run/agenix/x
_PLAIN_URL_RE: Final = re.compile(r"[a-z][a-z0-9+.-]*://[^\s@]*")  # a URL without userinfo
_YAML_NON_VALUES: Final = frozenset(
    {"null", "~", "true", "false", "yes", "no", "none", "|", ">", "|-", ">-", "''", '""'}
)
_CRYPT_RE: Final = re.compile(r"\$(?:1|2[abxy]?|5|6|7|y|gy|sha1|md5|argon2(?:id|i|d)|pbkdf2(?:-sha\d+)?|scrypt)\$")


def is_placeholder(value: str) -> bool:
    """True when a value is not a hardcoded secret: empty, interpolated, a path, a placeholder."""
    v = value.strip()
    if not v or PLACEHOLDER in v:
        return True
    if _PATH_RE.fullmatch(v):
        return True
    if v.startswith(_PLACEHOLDER_PREFIXES):
        return True
    if _REFERENCE_RE.fullmatch(v) or _PLAIN_URL_RE.fullmatch(v) or _YAML_TAG_RE.fullmatch(v):
        return True
    if v.lower() in _SENTINELS:
        return True
    return any(r.fullmatch(v) for r in _PLACEHOLDER_RES)


_LDAP_HASH_RE: Final = re.compile(r"\{(?:S?SHA(?:256|384|512)?|S?MD5|CRYPT|PBKDF2[-\w]*|ARGON2|SSHA)\}\S+", re.I)


# PostgreSQL's own password verifiers (what `ALTER ROLE ... PASSWORD` and ensureClauses.password take
# hashed): SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (base64), md5 + 32 hex digits
_PG_VERIFIER_RE: Final = re.compile(
    r"SCRAM-SHA-256\$\d+:[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*:[A-Za-z0-9+/]+=*|md5[0-9a-f]{32}"
)


def looks_like_crypt_hash(value: str) -> bool:
    """crypt(3) / PHC strings ($6$, $y$, $2b$, $argon2id$ ...), LDAP {SSHA} style hashes and
    PostgreSQL's SCRAM / md5 verifiers."""
    return (
        _CRYPT_RE.match(value) is not None
        or _LDAP_HASH_RE.fullmatch(value) is not None
        or _PG_VERIFIER_RE.fullmatch(value) is not None
    )


# Regexes run on the text of a string (bytes), with interpolations replaced by PLACEHOLDER.
_URL_RE: Final = re.compile(
    rb"(?i)(?<![A-Za-z0-9+.-])([a-z][a-z0-9+.\-]{1,30})://"
    rb"([^\s/@:?#'\"\\]*):([^\s/@?#'\"\\]+)@([^\s/?#:'\"@\\]*)"
)
# a libpq URI with the password as a query parameter (postgres:///db?host=/run/postgresql&user=u&password=pw)
_URL_QUERY_RE: Final = re.compile(
    rb"(?i)(?<![A-Za-z0-9+.-])([a-z][a-z0-9+.\-]{1,30})://([^\s'\"\\]*?[?&])password=([^\s&#'\"\\]+)"
)
_URL_QUERY_USER_RE: Final = re.compile(rb"[?&]user=([^\s&#'\"\\]*)")
_PEM_RE: Final = re.compile(
    rb"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----(.*?)(?:-----END \1-----|\Z)", re.S
)
_AGE_RE: Final = re.compile(rb"AGE-SECRET-KEY-1[0-9A-Z]{58}")
_TOKEN_FORMAT_RE: Final = re.compile(
    rb"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}"
    rb"|glpat-[A-Za-z0-9_\-]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|sk_live_[A-Za-z0-9]{20,})"
)
_VALUE: Final = rb"(\"[^\"\n]*\"|'[^'\n]*'|[^\s\"',;&)}\]#]+)"
# the value sits in a lookahead, so `https://host/x?token=...` is tried again after `https:`
_ASSIGN_RE: Final = re.compile(
    rb"(?<![\w.\-$/])(?:export[ \t]+)?([\"']?)(-{0,2}[A-Za-z_][\w.\-]*)\1[ \t]*(?:=>|[=:])[ \t]*(?=" + _VALUE + rb")"
)
_SIGIL_RE: Final = re.compile(rb"(?<![\w$])\$([A-Za-z_]\w*)[ \t]*=[ \t]*(?=" + _VALUE + rb")")  # PHP, Perl
_FLAG_RE: Final = re.compile(rb"(?<![\w.\-])--([A-Za-z][\w\-]*)[ \t]+(?=" + _VALUE + rb")")
_SQL_RE: Final = re.compile(rb"(?i)\b(?:PASSWORD|IDENTIFIED(?:[ \t]+WITH[ \t]+\w+)?[ \t]+BY)[ \t]+'([^'\n]*)'")
_SPACED_RE: Final = re.compile(rb"(?m)^[ \t]*([A-Za-z_][\w\-]*)[ \t]+([^\s\"'=:]\S*)[ \t]*;?[ \t]*$")
_NETRC_RE: Final = re.compile(rb"\b(?:login|user|machine)[ \t]+\S+[ \t]+password[ \t]+(\S+)")
_FLAG_ONLY_RE: Final = re.compile(rb"-{1,2}([A-Za-z][\w\-]*)")
_AUTH_HEADER_RE: Final = re.compile(
    rb"(?i)\bAuthorization\b[\"']?[ \t]*[:=]?[ \t]*[\"']?(?:Basic|Bearer|Token)[ \t]+([A-Za-z0-9+/=._~-]{8,})"
)
# cheap file-level gate: no trigger, nothing to walk (syntax is still checked)
_TRIGGER_RE: Final = re.compile(
    rb"(?i)pass|pw|ps?swd|secret|token|key|cred|psk|cookie|identified|authorization|://|basicauth|gh[pousr]_|glpat-|xox"
    rb"|sk_live_|@tcp\(|@unix\(|mysql|mariadb"
)
# a .pgpass line: host:port:database:user:password (a colon or backslash inside a field is escaped)
_PGPASS_FIELD = rb"(?:[^:\n\\]|\\.)*"
_PGPASS_RE: Final = re.compile(
    rb"(?m)^[ \t]*((?:[^:\s\\#]|\\.)*:"
    + _PGPASS_FIELD
    + b":"
    + _PGPASS_FIELD
    + b":"
    + _PGPASS_FIELD
    + rb"):((?:[^\n\\]|\\.)+?)[ \t]*$"
)
# Go's MySQL driver DSN (go-sql-driver/mysql): user:password@tcp(host:port)/db, or @unix(/run/mysqld.sock)
_DSN_RE: Final = re.compile(rb"(?<![\w.+-])([\w.-]+):([^\s@/:'\"\\]+)@(?:tcp|unix)\(")


# --------------------------------------------------------------------------- tree context

_DOC_NAMES: Final = frozenset(
    {"description", "longDescription", "example", "defaultText", "meta", "message", "warnings",
     "relatedPackages", "literalExample"}
)  # fmt: skip
_DOC_FUNCS: Final = frozenset(
    {"literalExpression", "literalMD", "literalExample", "literalDocBook", "mdDoc", "mkEnableOption",
     "mkPackageOption", "mkPackageOptionMD", "throw", "abort", "warn", "warnIf", "trace", "mkRemovedOptionModule",
     "mkRenamedOptionModule", "mkChangedOptionModule", "mkAliasOptionModule"}
)  # fmt: skip
_VALUE_WRAPPERS: Final = frozenset(
    {"mkForce", "mkDefault", "mkOverride", "mkIf", "mkBefore", "mkAfter", "mkOptionDefault",
     "mkImageMediaOverride", "mkVMOverride", "toString", "mkOrder"}
)  # fmt: skip
_FILE_WRITERS: Final = frozenset({"writeText", "toFile", "writeTextDir"})
_MODULE_LISTS: Final = frozenset({"imports", "modules"})
_FILE_NOUNS: Final = frozenset({"file", "path", "files"})


@dataclass
class _Context:
    """Where a string sits: the binding it is the direct value of, and the path to it."""

    segments: list[str]  # attribute path segments as written, outermost first
    plain: list[str]  # the same, unquoted (for names)
    leaf: str | None  # effective name the string is bound to (None: not a direct value)
    plural: bool  # the string is an element of a list bound to ``leaf``
    file_content: bool  # the string is the content of writeText/toFile bound to ``leaf``
    basic_auth: bool  # nginx basicAuth.<user> = "password"
    attr_name: bool = False  # the string is an attribute name (only URLs are looked for)
    in_attrset: bool = False  # the leaf binding is an attribute of an attrset (not let, not a formal)


def _doc_binding(binding: Node, plains: Sequence[str]) -> bool:
    """The binding names documentation (``description``, a package's ``meta``): nothing in it is a credential.
    A let's ``meta`` is an author's own attrset, no package's (``meta = { username = "..."; password = "..."; }``
    read by a container's environment, realcfg34/04)."""
    names = set(plains) & _DOC_NAMES
    if names == {"meta"} and plains[:1] == ["meta"]:
        bs = binding.parent
        return not (bs is not None and bs.parent is not None and bs.parent.type == "let_expression")
    return bool(names)


def _text(node: Node) -> str:
    raw = node.text
    return raw.decode("utf-8", "replace") if raw is not None else ""


def _attrpath(binding: Node) -> tuple[list[str], list[str]]:
    """The attrs of a binding as written, and unquoted (``"db/password"`` -> db/password)."""
    ap = binding.child_by_field_name("attrpath")
    if ap is None:
        return [], []
    written: list[str] = []
    plain: list[str] = []
    for a in ap.named_children:
        raw = a.text or b""
        text = raw.decode("utf-8", "replace")
        written.append(text)
        quoted = raw[:1] == b'"' and b"${" not in raw and b"\\" not in raw
        plain.append(text[1:-1] if quoted else text)
    return written, plain


def _function_name(fn: Node | None) -> str:
    """Last name of a function expression: ``lib.mkForce`` -> mkForce, ``(mkOverride 50)`` -> mkOverride."""
    while fn is not None:
        t = fn.type
        if t == "variable_expression":
            name = fn.child_by_field_name("name")
            return _text(name) if name is not None else ""
        if t == "select_expression":
            ap = fn.child_by_field_name("attrpath")
            attrs = ap.children_by_field_name("attr") if ap is not None else []
            return _text(attrs[-1]) if attrs else ""
        if t == "apply_expression":
            fn = fn.child_by_field_name("function")
            continue
        if t == "parenthesized_expression":
            fn = fn.child_by_field_name("expression")
            continue
        return ""
    return ""


def _apply_args(apply: Node) -> tuple[str, list[Node]]:
    """``f a b`` -> ("f", [a, b]): the curried arguments in order."""
    args: list[Node] = []
    node: Node | None = apply
    while node is not None and node.type == "apply_expression":
        arg = node.child_by_field_name("argument")
        if arg is not None:
            args.append(arg)
        node = node.child_by_field_name("function")
    args.reverse()
    return _function_name(node), args


def _sibling_string(binding: Node, name: str) -> str | None:
    """In the binding set of ``binding``, the plain string bound to ``name``, if any."""
    bs = binding.parent
    if bs is None:
        return None
    for b in bs.named_children:
        if b.type != "binding":
            continue
        _, plain = _attrpath(b)
        if plain == [name]:
            expr = b.child_by_field_name("expression")
            plain_string = expr is not None and expr.type == "string_expression"
            if plain_string and expr is not None and all(c.type == "string_fragment" for c in expr.named_children):
                return "".join(_text(c) for c in expr.named_children)
    return None


_Upper = tuple[tuple[str, ...], tuple[str, ...]] | None


def _upper(start: Node, memo: dict[int, _Upper]) -> _Upper:
    """The attribute path above a container node (outermost first), or None inside documentation.

    Memoised per file by node id: every string of an attrset shares the climb above it.
    """
    if start.id in memo:
        return memo[start.id]
    chain: list[tuple[list[str], list[str]]] = []  # bindings, innermost first
    pending = [start.id]  # containers whose path this climb computes, innermost first
    tail: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    through_list = False
    doc = False
    child, node = start, start.parent
    while node is not None:
        t = node.type
        if t == "binding":
            segs, plains = _attrpath(node)
            if through_list and plains and plains[-1] in _MODULE_LISTS:
                break  # module lists: each element is a module of its own
            if _doc_binding(node, plains):
                doc = True
                break
            chain.append((segs, plains))
            bs = node.parent
            container = bs.parent if bs is not None else None
            if container is None or container.type == "let_expression":
                break
            if container.id in memo:
                hit = memo[container.id]
                if hit is None:
                    doc = True
                else:
                    tail = hit
                break
            pending.append(container.id)
            through_list = False
            child, node = container, container.parent
            continue
        if t == "apply_expression" and node.child_by_field_name("argument") == child:
            if _function_name(node.child_by_field_name("function")) in _DOC_FUNCS:
                doc = True
                break
        elif t == "list_expression":
            through_list = True
        elif t == "formal":
            name = node.child_by_field_name("name")
            if name is not None:
                chain.append(([_text(name)], [_text(name)]))
            break
        elif t == "source_code":
            break
        child, node = node, node.parent
    if doc:
        for key in pending:
            memo[key] = None
        return None
    # pending[i] sits below chain[i:], and chain[-1] below the tail
    segs_acc, plain_acc = list(tail[0]), list(tail[1])
    results: list[_Upper] = []
    for i in range(len(chain) - 1, -1, -1):
        segs_acc.extend(chain[i][0])
        plain_acc.extend(chain[i][1])
        results.append((tuple(segs_acc), tuple(plain_acc)))
    results.reverse()  # results[i] = path above chain[i]'s container, including chain[i]
    for i, key in enumerate(pending):
        memo[key] = results[i] if i < len(results) else tail
    return memo[start.id]


def _context(string: Node, memo: dict[int, _Upper]) -> _Context | None:
    """Climb from a string to the root. None when the string is documentation or an attr name."""
    upper: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    segments: list[list[str]] = []
    plain: list[list[str]] = []
    leaf: str | None = None
    direct = True  # still the direct value of the next binding up
    plural = False
    file_content = False
    basic_auth = False
    through_list = False  # a list lies between here and the last binding seen
    leaf_binding: Node | None = None
    after_leaf_apply: str | None = None  # first function applied to the attrset holding the leaf
    bindings_seen = 0

    attr_name = False
    in_attrset = False
    child = string
    node = string.parent
    if node is not None and node.type == "attrpath":
        # url."https://user:pass@host/".insteadOf: an attribute name holding a URL
        attr_name = True
        direct = False
        child, node = node, node.parent
        if node is None or node.type != "binding":
            return None
        segs, plains = _attrpath(node)
        segments.append(segs)
        plain.append(plains)
        bindings_seen = 1
        bs = node.parent
        container = bs.parent if bs is not None else None
        if container is None or container.type == "let_expression":
            node = None
        else:
            child, node = container, container.parent
    while node is not None:
        t = node.type
        if t == "binding":
            if child.type == "attrpath":
                return None  # inside an attribute name: ${"..."}
            segs, plains = _attrpath(node)
            if through_list and plains and plains[-1] in _MODULE_LISTS:
                break  # module lists: each element is a module of its own
            if _doc_binding(node, plains):
                return None
            bindings_seen += 1
            if bindings_seen == 1:
                leaf_binding = node
                if direct and plains:
                    leaf = plains[-1]
                if len(plains) >= 2 and plains[-2] == "basicAuth" and leaf is not None:
                    basic_auth = True
            elif bindings_seen == 2 and leaf_binding is not None and plains:
                if leaf == "default" and after_leaf_apply == "mkOption":
                    leaf = plains[-1]  # mkOption { default = "..."; } of an option called plains[-1]
                if plains[-1] == "basicAuth" and after_leaf_apply is None and leaf is not None:
                    basic_auth = True
            segments.append(segs)
            plain.append(plains)
            direct = False
            through_list = False
            bs = node.parent
            container = bs.parent if bs is not None else None
            if bindings_seen == 1:
                in_attrset = container is not None and container.type != "let_expression"
            if container is None or container.type == "let_expression":
                break  # a let binding: its path starts at its own name
            if bindings_seen >= 2:  # the rest is the path only: shared with the siblings
                up = _upper(container, memo)
                if up is None:
                    return None
                upper = up
                break
            child, node = container, container.parent
            continue
        if t == "formal":
            name = node.child_by_field_name("name")
            if name is not None:
                if direct and bindings_seen == 0:
                    leaf = _text(name)
                segments.append([_text(name)])
                plain.append([_text(name)])
            break
        if t == "apply_expression":
            if node.child_by_field_name("argument") == child:
                fname, args = _apply_args(node)
                if fname in _DOC_FUNCS:
                    return None
                if bindings_seen == 1 and after_leaf_apply is None:
                    after_leaf_apply = fname
                if fname == "nameValuePair" and len(args) == 2 and args[1] == child:
                    first = args[0]
                    if first.type == "string_expression" and direct and bindings_seen == 0:
                        leaf = _text(first)[1:-1]
                        segments.append([leaf])
                        plain.append([leaf])
                        bindings_seen = 1
                        leaf_binding = None
                    direct = False
                elif fname in _FILE_WRITERS and args and args[-1] == child and direct:
                    file_content = True
                elif fname in _VALUE_WRAPPERS:
                    pass
                else:
                    direct = False
            else:
                direct = False
        elif t == "list_expression":
            if direct and bindings_seen == 0:
                plural = True
            through_list = True
        elif t in ("parenthesized_expression", "let_expression", "function_expression"):
            pass
        elif t in ("with_expression", "assert_expression"):
            if node.child_by_field_name("body") != child:
                direct = False
        elif t == "if_expression":
            if node.child_by_field_name("condition") == child:
                direct = False
        elif t == "select_expression":
            attrpath = node.child_by_field_name("attrpath")
            out_path = file_content and attrpath is not None and _text(attrpath) == "outPath"
            if node.child_by_field_name("default") != child and not out_path:
                direct = False  # (pkgs.writeText "pw" "...").outPath is the store file's path, as toString gives
        elif t in ("attrset_expression", "rec_attrset_expression", "binding_set", "let_attrset_expression"):
            direct = False
        elif t == "source_code":
            break
        elif t == "interpolation":
            # "${pkgs.writeText "x" "pw"}" is the value itself; "a${b}c" is not
            outer = node.parent
            if outer is None or outer.named_child_count != 1:
                direct = False
            else:
                child, node = outer, outer.parent
                continue
        else:  # binary operators, unary ...: not a direct value
            direct = False
        child, node = node, node.parent

    if leaf is not None and leaf_binding is not None and leaf == "value" and bindings_seen >= 1:
        named = _sibling_string(leaf_binding, "name")  # { name = "DB_PASSWORD"; value = "..."; }
        if named is not None:
            leaf = named
    segments.reverse()
    plain.reverse()
    return _Context(
        segments=[*upper[0], *(s for segs in segments for s in segs)],
        plain=[*upper[1], *(p for ps in plain for p in ps)],
        leaf=leaf,
        plural=plural,
        file_content=file_content,
        basic_auth=basic_auth,
        attr_name=attr_name,
        in_attrset=in_attrset,
    )


# --------------------------------------------------------------------------- string text


@dataclass(frozen=True)
class _StrText:
    """A string's text with interpolations as PLACEHOLDER, and a map back to source offsets."""

    data: bytes
    # (offset in data, offset in source) at each piece boundary; pieces map byte for byte
    # except escapes, which map every produced byte to the escape's start
    pieces: tuple[tuple[int, int, bool], ...]  # (data offset, source offset, verbatim)
    source_end: int

    def source_offset(self, i: int) -> int:
        lo, hi = 0, len(self.pieces) - 1
        if hi < 0:
            return self.source_end
        while lo < hi:  # last piece starting at or before i
            mid = (lo + hi + 1) // 2
            if self.pieces[mid][0] <= i:
                lo = mid
            else:
                hi = mid - 1
        d, s, verbatim = self.pieces[lo]
        if i >= len(self.data):
            return self.source_end
        return s + (i - d) if verbatim else s


_ESCAPES: Final = {b"n": b"\n", b"t": b"\t", b"r": b"\r"}


def _string_text(node: Node) -> _StrText:
    data = bytearray()
    pieces: list[tuple[int, int, bool]] = []
    t = node.type
    if t == "uri_expression":
        raw = node.text or b""
        return _StrText(bytes(raw), ((0, node.start_byte, True),), node.end_byte)
    end = node.end_byte
    for c in node.named_children:
        ct = c.type
        raw = c.text or b""
        if ct == "string_fragment":
            pieces.append((len(data), c.start_byte, True))
            data += raw
        elif ct == "escape_sequence":
            pieces.append((len(data), c.start_byte, False))
            if raw.startswith(b"''"):
                rest = raw[2:]
                if rest == b"'":
                    data += b"''"
                elif rest.startswith(b"\\"):
                    data += _ESCAPES.get(rest[1:], rest[1:])
                else:
                    data += rest
            else:
                data += _ESCAPES.get(raw[1:], raw[1:])
        elif ct == "dollar_escape":
            continue  # ''$ : the '$' follows as its own fragment
        elif ct == "interpolation":
            pieces.append((len(data), c.start_byte, False))
            data += PLACEHOLDER.encode()
    if node.children:
        end = node.children[-1].start_byte
    return _StrText(bytes(data), tuple(pieces), end)


# --------------------------------------------------------------------------- secret names

_NOISE_WORDS: Final = frozenset(
    {"postgres", "postgresql", "pg", "pgsql", "psql", "mysql", "mariadb", "redis", "mongo",
     "mongodb", "initial", "env", "value", "default", "my", "the", "require", "str", "raw",
     "plain", "text", "cleartext", "plaintext", "config", "settings"}
)  # fmt: skip
_GENERIC_STEMS: Final = frozenset(
    {"default", "arion-compose", "arion-pkgs", "configuration", "flake", "docker-compose", "compose",
     "module", "modules", "home", "main", "hardware-configuration", "services", "service", "secrets",
     "containers", "container", "nixos", "hosts", "system", "linux", "common", "shared"}
)  # fmt: skip
_NORMAL_NOUN: Final = {"pass": "password", "passwd": "password", "pwd": "password", "pw": "password"}
_LOCAL_HOSTS: Final = frozenset({"localhost", "127", "0", "", "host", PLACEHOLDER})


_SLUG_RE: Final = re.compile(r"[^a-z0-9]+")


def _slug(text: str) -> str:
    return _SLUG_RE.sub("-", text.lower()).strip("-")


def file_project(file: str, source: bytes) -> str:
    """The project a file belongs to: arion's ``project.name``, else its name or directory."""
    m = re.search(rb'project\.name\s*=\s*"([A-Za-z0-9_.-]+)"', source)
    if m:
        return _slug(m.group(1).decode())
    *parents, name = file.replace("\\", "/").split("/")
    stem = name[:-4] if name.endswith(".nix") else name.rsplit(".", 1)[0]
    if stem and _slug(stem) not in _GENERIC_STEMS:
        return _slug(stem)
    for parent in reversed(parents):
        if _slug(parent) and _slug(parent) not in _GENERIC_STEMS:
            return _slug(parent)
    return "nix"


def _scope(plain: Sequence[str]) -> tuple[str | None, str | None]:
    """(project, component) from an attribute path: arion projects and services, containers ..."""
    project: str | None = None
    component: str | None = None
    n = len(plain)
    for i, seg in enumerate(plain):
        nxt = plain[i + 1] if i + 1 < n else None
        if nxt is None:
            break
        prev = plain[i - 1] if i > 0 else ""
        if (seg, prev) in (("projects", "arion"), ("containers", "oci-containers"), ("containers", "quadlet")):
            project = nxt
        elif seg in ("containers", "docker-containers") and i == 0:
            project = nxt  # NixOS containers.<name>; docker-containers.<name> (oci-containers before 20.09)
        elif seg == "services":
            after = plain[i + 2] if i + 2 < n else None
            if after in ("service", "image", "nixos", "build") and i + 2 < n - 1:
                component = nxt  # arion services.<name>.service ...
            elif prev in ("systemd", "", "config", "options") and project is None and i + 2 < n:
                project = nxt
        elif seg == "users" and prev == "users":
            project = nxt
        elif seg == "etc" and prev == "environment":
            project = nxt.rsplit("/", 1)[-1].split(".")[0]
        elif seg == "networks" and prev == "wireless":
            project = f"wifi-{nxt}"
        elif seg == "virtualHosts":
            project = nxt
    return (_slug(project) if project else None), (_slug(component) if component else None)


def suggest_name(
    *,
    project: str,
    plain: Sequence[str],
    kind: Kind,
    name_words: Sequence[str] = (),
    url_host: str | None = None,
    url_user: str | None = None,
) -> str:
    """A suggested agenix secret name: project, component, then what the secret is.

    ``services.db.service.environment.POSTGRES_PASSWORD`` in the arion project
    ``twenty`` gives ``twenty-db-password``; so does ``postgres://postgres:...@db/x``.
    """
    return _suggest_name(project, tuple(plain), kind, tuple(name_words), url_host, url_user)


@functools.lru_cache(maxsize=8192)
def _suggest_name(
    project: str,
    plain: tuple[str, ...],
    kind: Kind,
    name_words: tuple[str, ...],
    url_host: str | None,
    url_user: str | None,
) -> str:
    path_project, component = _scope(plain)
    proj = path_project or project
    if url_host is not None:
        host = url_host.split(".")[0].lower()
        if host not in _LOCAL_HOSTS and not host.isdigit() and PLACEHOLDER not in host:
            component = _slug(host)
    head = [w for part in (proj, component) if part for w in part.split("-") if w]
    taken = set(head)
    tail: list[str] = []
    if kind is Kind.URL_CREDENTIAL:
        candidates: Sequence[str] = [*words((url_user or "").lower()), "password"]
    else:
        candidates = name_words
    for w in candidates:
        w = _NORMAL_NOUN.get(w, w)
        if w in _NOISE_WORDS or w in taken or (tail and tail[-1] == w):
            continue
        tail.append(w)
    if kind is Kind.HASH:
        tail = [*(w for w in tail if w not in ("hashed", "hash", "password")), "hashed", "password"]
    elif kind is Kind.PRIVATE_KEY:
        tail = [*(w for w in tail if w not in ("private", "key")), "private", "key"]
    elif kind in (Kind.PASSWORD, Kind.URL_CREDENTIAL):
        if not tail or tail[-1] not in ("password", "passphrase", "psk"):
            tail.append("password")
    elif kind is Kind.TOKEN:
        if not tail or tail[-1] not in _TOKEN_NOUNS:
            tail.append("token")
    elif not tail or tail[-1] not in ("key", "base"):
        tail.append("key")
    name = "-".join([*head, *tail])
    return _slug(name) or "secret"


# --------------------------------------------------------------------------- the scan


@functools.cache
def _strings_query() -> Query:
    import tree_sitter_nix
    from tree_sitter import Language, Query

    lang = Language(tree_sitter_nix.language())
    return Query(lang, "[(string_expression) (indented_string_expression) (uri_expression)] @s")


def _captures(root: Node) -> list[Node]:
    from tree_sitter import QueryCursor

    caps = QueryCursor(_strings_query()).captures(root)
    nodes = caps.get("s", [])
    return sorted(nodes, key=lambda n: n.start_byte)


class _Collector:
    """Turns spans of one string into findings; drops overlapping spans (first one wins)."""

    def __init__(self, file: str, source: bytes, project: str) -> None:
        self.file = file
        self.source = source
        self.project = project
        self.findings: list[Finding] = []
        self.memo: dict[int, _Upper] = {}
        base = file.replace("\\", "/").rsplit("/", 1)[-1].lower()
        # a plain secrets file (git-crypt style); agenix's rules file lists publicKeys instead
        self.secrets_file = any(w in base for w in ("secret", "credential", "password")) and b"publicKeys" not in source

    def _pos(self, offset: int) -> tuple[int, int]:
        """1-based line and column (in characters) of a byte offset."""
        start = self.source.rfind(b"\n", 0, offset) + 1
        col = len(self.source[start:offset].decode("utf-8", "replace")) + 1
        return self.source.count(b"\n", 0, offset) + 1, col

    def add(
        self,
        text: _StrText,
        span: tuple[int, int],
        *,
        kind: Kind,
        ctx: _Context,
        rule: str,
        name_words: Sequence[str],
        taken: list[tuple[int, int]],
        url_host: str | None = None,
        url_user: str | None = None,
    ) -> None:
        start, end = span
        if any(start < e and s < end for s, e in taken):
            return
        taken.append(span)
        value = text.data[start:end]
        src_start = text.source_offset(start)
        src_end = text.source_offset(end - 1) + 1 if end > start else src_start
        line, col = self._pos(src_start)
        end_line, end_col = self._pos(src_end)
        self.findings.append(
            Finding(
                file=self.file,
                line=line,
                col=col,
                end_line=end_line,
                end_col=end_col,
                attr_path=".".join(ctx.segments),
                kind=kind,
                value=Secret(value),
                secret_name=suggest_name(
                    project=self.project,
                    plain=ctx.plain,
                    kind=kind,
                    name_words=name_words,
                    url_host=url_host,
                    url_user=url_user,
                ),
                rule=rule,
                start=src_start,
                end=src_end,
            )
        )


def _ends_field(data: bytes, i: int) -> bool:
    """After a ``key: value``, only the end of the line, a separator or a comment may follow."""
    rest = data[i : data.find(b"\n", i) if b"\n" in data[i:] else len(data)].strip()
    return rest == b"" or rest[:1] in (b",", b"}", b"#", b";", b"]", b'"', b"'")


def _unquote_span(data: bytes, start: int, end: int) -> tuple[int, int]:
    if end - start >= 2 and data[start] in b"\"'" and data[end - 1] == data[start]:
        return start + 1, end - 1
    return start, end


def _commented(data: bytes, start: int) -> bool:
    """Is offset ``start`` inside a comment line (``#``, ``//``, ``;``, ``--``) of the text?"""
    line_start = data.rfind(b"\n", 0, start) + 1
    return data[line_start:start].lstrip().startswith((b"#", b"//", b";", b"--"))


def _value_kind(cls: NameClass, value: str) -> Kind | None:
    """The kind of a value bound to a credential name, or None when it is not a hardcoded one."""
    stripped = value.strip()
    if is_placeholder(value):
        return None
    if looks_like_crypt_hash(stripped):
        return Kind.HASH
    if cls.kind is Kind.HASH and stripped in ("!", "*", "!!", "!*"):
        return None  # a locked account, not a hash
    return cls.kind


def _previous_flag(node: Node) -> NameClass | None:
    """In ``[ "--webdav-pass" "x" ]``, the credential flag right before a list element."""
    prev = node.prev_named_sibling
    while prev is not None and prev.type == "comment":
        prev = prev.prev_named_sibling
    if prev is None or prev.type != "string_expression":
        return None
    m = _FLAG_ONLY_RE.fullmatch(_string_text(prev).data)
    return classify_name(m.group(1).decode()) if m else None


_TEXT_ONLY_TRIGGER_RE: Final = re.compile(
    rb"pass|pw|ps?swd|secret|token|key|cred|psk|cookie|identified|authorization|gh[pousr]_|github_pat_|glpat-|xox"
    rb"|sk_live_|@tcp\(|@unix\(|mysql|mariadb"
)
# a MySQL/MariaDB client given its password glued to -p (``mysql -uroot -pPW -e ...``; ``-p`` alone prompts)
# a systemd-tmpfiles line that writes its argument into a file (tmpfiles.d(5): Type Path Mode User Group Age
# Argument; f, f+, F, w, w+): a secret when the file's name says one (/var/lib/x/root-password)
_TMPFILES_RE: Final = re.compile(
    rb"(?m)^[ \t]*[fFw]\+?[ \t]+(/[^\s]+)[ \t]+[^\s]+[ \t]+[^\s]+[ \t]+[^\s]+[ \t]+[^\s]+[ \t]+([^\s]+)[ \t]*$"
)
_MYSQL_FLAG_RE: Final = re.compile(
    rb"(?<![\w-])(?:mysql|mariadb|mysqldump|mysqladmin|mysqlcheck|mysqlimport|mariadb-dump|mariadb-admin)\b"
    rb"[^\n;|&]*?\s-p([^\s'\"`;|&$\\][^\s'\"`;|&\\]*)"
)


def _worth_a_climb(node: Node) -> bool:
    """Can this string be a finding? Cheap checks before the full climb of :func:`_context`.

    Text rules need a trigger in the text (a URL needs an ``@``); the name rule needs the
    binding right above to be a credential name, ``default`` (mkOption), ``value`` (name/value
    pairs), a ``*File`` name (writeText), or a list element after a ``--password`` flag.
    """
    raw = node.text or b""
    low = raw.lower()
    if _TEXT_ONLY_TRIGGER_RE.search(low) or (b"://" in raw and b"@" in raw):
        return True
    child, parent = node, node.parent
    for _ in range(8):
        if parent is None:
            return False
        t = parent.type
        if t == "binding":
            ap = parent.child_by_field_name("attrpath")
            last = ap.named_children[-1] if ap is not None and ap.named_child_count else None
            if ap is None or last is None:
                return False
            name = (last.text or b"").decode("utf-8", "replace").strip('"')
            if name in ("default", "value") or classify_name(name, plural=True) is not None:
                return True
            names = [(n.text or b"").decode("utf-8", "replace").strip('"') for n in ap.named_children]
            if _keyed_by_user(names[-2] if len(names) >= 2 else _outer_name(parent)) is not None:
                return True
            if name == "text" and len(names) >= 2:
                base = names[-2].rsplit("/", 1)[-1].split(".", 1)[0]
                return credential_file_name(base) is not None  # environment.etc."x-admin-pass".text
            if name.endswith("File") and "secrets" in (*names[:-1], _outer_name(parent)):
                return True  # gitlab's secrets.dbFile = pkgs.writeText ...
            ws = words(name)
            return len(ws) > 1 and ws[-1] in _FILE_NOUNS and classify_name("_".join(ws[:-1])) is not None
        if t == "formal":
            return True
        if t == "attrpath" or t in _NOT_A_VALUE:
            return False
        if t == "list_expression" and _previous_flag(child) is not None:
            return True
        child, parent = parent, parent.parent
    return True


_FILE_CREDENTIAL_WORDS = ("password", "passwd", "secret", "token")


def credential_file_name(base: str) -> str | None:
    """A file named for the credential it holds (``nextcloud-admin-pass``, ``password-redis-db``): the
    name scan classifies it by, or None. A file's name may put the credential word first, which an
    attribute's may not (``password_db`` could name a database)."""
    if classify_name(base) is not None:
        return base
    found = [w for w in words(base) if w.lower() in _FILE_CREDENTIAL_WORDS]
    return found[0].lower() if found else None


def _scan_string(node: Node, out: _Collector, *, every: bool = False) -> None:
    if not every and not _worth_a_climb(node):
        return
    ctx = _context(node, out.memo)
    if ctx is None:
        return
    if ctx.leaf == "text" and len(ctx.plain) >= 4 and ctx.plain[-4:-2] == ["environment", "etc"]:
        # environment.etc."app-admin-pass".text = "...": a file in the store named for a credential
        base = ctx.plain[-2].rsplit("/", 1)[-1].split(".", 1)[0]
        named = credential_file_name(base)
        if named is not None:
            ctx = replace(ctx, leaf=base if classify_name(base) is not None else named, file_content=True)
    text = _string_text(node)
    data = text.data
    taken: list[tuple[int, int]] = []
    leaf_words = words(ctx.leaf) if ctx.leaf else []

    def add(span: tuple[int, int], kind: Kind, rule: str, name_words: Sequence[str], **url: str) -> None:
        out.add(text, span, kind=kind, ctx=ctx, rule=rule, name_words=name_words, taken=taken,
                url_host=url.get("host"), url_user=url.get("user"))  # fmt: skip

    # 1. URLs with a password in the userinfo, wherever they are (even in attribute names)
    if b"://" in data:
        for m in _URL_RE.finditer(data):
            if not is_placeholder(m.group(3).decode("utf-8", "replace")):
                add(m.span(3), Kind.URL_CREDENTIAL, "url", leaf_words,
                    host=m.group(4).decode("utf-8", "replace"), user=m.group(2).decode("utf-8", "replace"))  # fmt: skip
        if b"password=" in data:
            for m in _URL_QUERY_RE.finditer(data):
                if b"@" in m.group(2).split(b"?")[0].rpartition(b"/")[0] or is_placeholder(
                    m.group(3).decode("utf-8", "replace")
                ):
                    continue  # (a userinfo password too: rule 1's)
                user = _URL_QUERY_USER_RE.search(m.group(2))
                add(m.span(3), Kind.URL_CREDENTIAL, "url", leaf_words, host="",
                    user=user.group(1).decode("utf-8", "replace") if user else "")  # fmt: skip
    if b"@tcp(" in data or b"@unix(" in data:  # a Go MySQL DSN: no scheme, the password before the @
        for m in _DSN_RE.finditer(data):
            if not is_placeholder(m.group(2).decode("utf-8", "replace")):
                add(m.span(2), Kind.PASSWORD, "dsn", [*leaf_words, "password"])
    if ctx.plain and any("pgpass" in seg.lower() for seg in ctx.plain) and b":" in data:
        # a libpq password file (environment.etc."pgpass".text): host:port:database:user:password lines
        for m in _PGPASS_RE.finditer(data):
            if not is_placeholder(m.group(2).decode("utf-8", "replace")):
                add(m.span(2), Kind.PASSWORD, "pgpass", [*leaf_words, "password"])
    if ctx.attr_name or node.type == "uri_expression":
        return

    # 2. private key material, anywhere
    if b"PRIVATE KEY" in data:
        for m in _PEM_RE.finditer(data):
            body = m.group(2)
            if PLACEHOLDER.encode() not in body and body.strip():
                add((m.start(), m.end()), Kind.PRIVATE_KEY, "pem", leaf_words)
    if b"AGE-SECRET-KEY-" in data:
        for m in _AGE_RE.finditer(data):
            add(m.span(), Kind.PRIVATE_KEY, "age-identity", leaf_words)

    # 3. the whole string is the value of a credential-named attribute (or list flag)
    cls: NameClass | None = None
    if ctx.leaf is not None:
        leaf = ctx.leaf
        if ctx.file_content:  # passwordFile = pkgs.writeText "pw" "..."
            ws = words(leaf)
            leaf = "_".join(ws[:-1] if ws and ws[-1] in _FILE_NOUNS else ws)
        cls = classify_name(leaf, plural=ctx.plural) if leaf else None
        if cls is None and not ctx.file_content and len(ctx.plain) >= 2 and ctx.plain[-1] == ctx.leaf:
            cls = _keyed_by_user(ctx.plain[-2])  # ensurePasswords.alice = "..."
        if cls is None and ctx.file_content and "secrets" in ctx.plain[:-1] and ctx.leaf.endswith("File"):
            # a store file under a `secrets` attrset (gitlab's secrets.dbFile, secrets.otpFile): a key, whatever
            # its own name says
            cls = NameClass(Kind.TOKEN, (*words(ctx.leaf)[:-1], "secret"))
        if cls is None and ctx.basic_auth:
            cls = NameClass(Kind.PASSWORD, (*words(ctx.leaf), "password"))
        if cls is None and out.secrets_file and ctx.in_attrset and not ctx.plural and not ctx.file_content:
            cls = _secrets_file_class(ctx.leaf, data)
        if cls is None and not ctx.file_content:
            cls = _random_under_secret_name(ctx.leaf, data)
    if cls is None and node.parent is not None and node.parent.type == "list_expression":
        cls = _previous_flag(node)
    if cls is not None:
        kind = _value_kind(cls, data.decode("utf-8", "replace"))
        if kind is None:
            return
        if ctx.file_content and _scan_inside(data, leaf_words, add) > 0:
            return  # an env file written to the store: the assignments inside are the findings
        sql_or_lines = b"\n" in data.strip() or _SQL_RE.search(data) is not None
        if sql_or_lines and _scan_inside(data, leaf_words, add, multiline=b"\n" in data.strip()) > 0:
            return  # SQL or config lines under a credential's name (`let dbPassword = ''CREATE ROLE ...''`)
        if not taken and b"://" not in data:
            add((0, len(data)), kind, "name", cls.words)
            return
    _scan_inside(data, leaf_words, add, multiline=node.type == "indented_string_expression")


def _outer_name(binding: Node) -> str:
    """The last attribute name of the binding whose attrset holds ``binding`` ("" if none)."""
    node = binding.parent
    for _ in range(3):
        if node is None:
            return ""
        if node.type == "binding":
            ap = node.child_by_field_name("attrpath")
            last = ap.named_children[-1] if ap is not None and ap.named_child_count else None
            return (last.text or b"").decode("utf-8", "replace").strip('"') if last is not None else ""
        node = node.parent
    return ""


def _keyed_by_user(parent: str) -> NameClass | None:
    """A map from a name to its password: ``ensurePasswords.umami = "..."``, ``passwords.alice = "..."``
    (the attribute names a user, its parent says what the value is)."""
    ws = words(parent)
    if not ws or ws[-1] not in ("passwords", "passwds", "passphrases"):
        return None
    return classify_name(parent, plural=True)


class _Add(Protocol):
    def __call__(self, span: tuple[int, int], kind: Kind, rule: str, name_words: Sequence[str], **url: str) -> None: ...


_NOT_SECRET_LAST: Final = frozenset(
    {"id", "user", "username", "name", "email", "mail", "host", "hostname", "url", "uri", "endpoint",
     "region", "bucket", "port", "type", "file", "path", "dir", "domain", "address", "owner", "group",
     "mode", "description", "server", "account", "login", "org", "organization", "realm", "issuer"}
)  # fmt: skip
_PUBLIC_KEY_PREFIXES: Final = (b"ssh-", b"age1", b"ecdsa-sha2-", b"sk-ssh-", b"sk-ecdsa-")


def _secrets_file_class(name: str, value: bytes) -> NameClass | None:
    """In a plain ``secrets.nix`` (git-crypt style), every string attribute is a secret
    unless its name says otherwise (``keyId``, ``user``, ``host`` ...)."""
    ws = words(name)
    if not ws or ws[-1] in _NOT_SECRET_LAST or value.startswith(_PUBLIC_KEY_PREFIXES):
        return None
    return NameClass(Kind.KEY if ws[-1] == "key" else Kind.PASSWORD, tuple(ws))


_GENERATED_NOT_LAST: Final = _NOT_SECRET_LAST | frozenset(
    {"format", "length", "size", "algorithm", "algo", "ref", "env", "var", "field", "location", "version"}
    | {"count", "bits", "hash"}
)
_GENERATED_NOT_WORDS: Final = frozenset(
    {"public", "pub", "host", "ssh", "gpg", "pgp", "fingerprint", "cert", "certificate", "signed", "verify"}
)
_RANDOM_VALUE_RE: Final = re.compile(rb"[A-Za-z0-9_+/=.~-]{24,}")


def _random_under_secret_name(leaf: str, data: bytes) -> NameClass | None:
    """A name whose key word has a qualifier scan does not know (``RESEND_KEY``) or that holds "secret"
    before another word (``WEBHOOK_SECRET_HEADER``), bound to a value that looks generated: 24+
    characters of a key alphabet with letters and digits, never a public key, a path or a URL.
    Names alone leave these out (``*_KEY`` is as often a public key or a key's name)."""
    ws = [w.lower() for w in words(leaf)]
    if not ws or ws[-1] in _GENERATED_NOT_LAST or set(ws) & _GENERATED_NOT_WORDS:
        return None
    if not (ws[-1] == "key" or "secret" in ws[:-1]):
        return None
    if _RANDOM_VALUE_RE.fullmatch(data) is None or data.startswith((*_PUBLIC_KEY_PREFIXES, b"/", b"./")):
        return None
    has = sum(bool(re.search(p, data)) for p in (rb"[a-z]", rb"[A-Z]", rb"[0-9]"))
    if has < 2 or len(set(data)) < 10:
        return None
    return NameClass(Kind.KEY if ws[-1] == "key" else Kind.TOKEN, tuple(ws))


def _scan_inside(data: bytes, leaf_words: Sequence[str], add: _Add, *, multiline: bool = True) -> int:
    """Assignments, flags, SQL, netrc and auth headers inside a string's text; how many added."""
    count = 0
    low = data.lower()
    if _TEXT_ONLY_TRIGGER_RE.search(low) is None:
        return 0  # every rule below needs one of the trigger words in the text

    def found(span: tuple[int, int], kind: Kind, rule: str, name_words: Sequence[str]) -> None:
        nonlocal count
        count += 1
        add(span, kind, rule, name_words)

    rules: list[tuple[re.Pattern[bytes], str, int, int]] = []
    if b"=" in data or b":" in data:
        rules.append((_ASSIGN_RE, "assignment", 2, 3))
    if b"$" in data:
        rules.append((_SIGIL_RE, "assignment", 1, 2))
    if b"--" in data:
        rules.append((_FLAG_RE, "flag", 1, 2))
    if multiline:
        rules.append((_SPACED_RE, "config-line", 1, 2))
    for regex, rule, key_group, value_group in rules:
        for m in regex.finditer(data):
            key = m.group(key_group).decode("utf-8", "replace").lstrip("-")
            key = key.rsplit(".", 1)[-1]
            name = classify_name(key, plural=True)
            if name is None or _commented(data, m.start()):
                continue
            start, end = _unquote_span(data, *m.span(value_group))
            value = data[start:end].decode("utf-8", "replace")
            if value.lower() in _YAML_NON_VALUES:
                continue
            kind = _value_kind(name, value)
            if kind is None or (kind is not Kind.HASH and value.strip(" \t'\"").startswith("$")):
                continue  # a shell expansion (also quoted after an empty word: password=' "$password" ')
            if regex is _ASSIGN_RE:
                raw_sep = data[m.end(key_group) : m.start(value_group)]
                sep = raw_sep.strip(b"\"' \t")
                if sep == b":" and not _ends_field(data, m.end(value_group)):
                    continue  # "password: see the docs" is prose, not YAML
                if sep == b":" and raw_sep[:1] in (b" ", b"\t") and raw_sep.endswith(b":"):
                    continue  # psql's variable interpolation (PASSWORD :'pw'), not a YAML key
                if raw_sep == b":" and not m.group(1) and "." in m.group(key_group).decode("utf-8", "replace"):
                    continue  # host.pw:443 (a domain and its port), neither YAML (key: value) nor JSON ("key":)
            found((start, end), kind, rule, name.words)
    if b"/" in data:
        for m in _TMPFILES_RE.finditer(data):
            path = m.group(1).decode("utf-8", "replace")
            tname = classify_name(path.rsplit("/", 1)[-1].rsplit(".", 1)[0])
            value = m.group(2).decode("utf-8", "replace")
            tkind = _value_kind(tname, value) if tname is not None and value != "-" else None
            if tname is None or tkind is None or value.startswith("$") or _commented(data, m.start()):
                continue
            found(m.span(2), tkind, "tmpfiles", tname.words)
    if b"mysql" in low or b"mariadb" in low:
        for m in _MYSQL_FLAG_RE.finditer(data):
            if not is_placeholder(m.group(1).decode("utf-8", "replace")) and not _commented(data, m.start()):
                found(m.span(1), Kind.PASSWORD, "mysql-flag", [*leaf_words, "password"])
    for regex, rule in ((_SQL_RE, "sql"), (_NETRC_RE, "netrc")):
        if b"password" not in low and b"identified" not in low:
            break
        for m in regex.finditer(data):
            value = m.group(1).decode("utf-8", "replace")
            if is_placeholder(value) or (value.startswith("$") and not looks_like_crypt_hash(value)):
                continue
            hashed = looks_like_crypt_hash(value) or value.startswith(("SCRAM-SHA-256$", "md5"))
            found(m.span(1), Kind.HASH if hashed else Kind.PASSWORD, rule, [*leaf_words, "password"])
    if b"authorization" in low:
        for m in _AUTH_HEADER_RE.finditer(data):
            found(m.span(1), Kind.TOKEN, "auth-header", [*leaf_words, "token"])
    # well-known token formats, whatever the name
    if b"_" in data or b"-" in data:
        for m in _TOKEN_FORMAT_RE.finditer(data):
            found(m.span(), Kind.TOKEN, "token-format", [*leaf_words, "token"])
    return count


# Which strings to look at: only those a trigger word leads to. A trigger inside a string
# (or a bare URI) makes that string a candidate; a trigger in an attribute name (or a
# function argument's name) makes every string in that binding's value a candidate, down to
# nested attrsets, which have names of their own (mkOption's `default` and `value` of name /
# value pairs are triggers too); a string that is a `--password`-like list element brings the
# element after it. Every rule of _scan_string needs one of these words somewhere there:
# credential nouns all contain one, and so do URLs with userinfo, PEM / age keys, SQL, netrc
# lines, auth headers and the known token formats.
_TRIGGER_WORDS: Final = (
    b"pass", b"pw", b"pswd", b"psswd", b"secret", b"token", b"key", b"cred", b"psk", b"cookie", b"identified",
    b"authorization", b"://", b"default", b"value", b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_",
    b"github_pat_", b"glpat-", b"xox", b"sk_live_", b"@tcp(", b"@unix(",
)  # fmt: skip
_TRIGGER_SCAN_RE: Final = re.compile(b"|".join(re.escape(w) for w in _TRIGGER_WORDS))
_STRING_TYPES: Final = frozenset({"string_expression", "indented_string_expression", "uri_expression"})
_NOT_A_VALUE: Final = frozenset({"binding_set", "attrset_expression", "rec_attrset_expression", "source_code"})


def _value_strings(expr: Node | None, into: dict[int, Node]) -> None:
    """Every string in a value, through wrappers, lists and interpolations, not into attrsets."""
    stack = [expr] if expr is not None else []
    while stack:
        node = stack.pop()
        t = node.type
        if t == "binding_set" or t == "comment":
            continue
        if t in _STRING_TYPES:
            into[node.id] = node
        stack.extend(node.named_children)


def _secrets_files(attrpath: Node, expr: Node | None, into: dict[int, Node]) -> None:
    """``secrets = { dbFile = pkgs.writeText ...; }`` (gitlab's): the strings of its ``*File`` bindings too."""
    last = attrpath.named_children[-1] if attrpath.named_child_count else None
    if last is None or (last.text or b"").strip(b'"') != b"secrets" or expr is None:
        return
    for bset in (c for c in expr.named_children if c.type == "binding_set"):
        for b in bset.named_children:
            ap = b.child_by_field_name("attrpath") if b.type == "binding" else None
            name = (ap.named_children[-1].text or b"") if ap is not None and ap.named_child_count else b""
            if name.endswith(b"File"):
                _value_strings(b.child_by_field_name("expression"), into)


def _candidates(root: Node, source: bytes) -> list[Node]:
    found: dict[int, Node] = {}
    for m in _TRIGGER_SCAN_RE.finditer(source.lower()):
        node: Node | None = root.descendant_for_byte_range(m.start(), m.end())
        for _ in range(12):
            if node is None:
                break
            t = node.type
            if t in _STRING_TYPES:
                found[node.id] = node
                parent = node.parent
                if parent is not None and parent.type == "list_expression":
                    after = node.next_named_sibling
                    if after is not None and after.type in _STRING_TYPES:
                        found[after.id] = after  # [ "--requirepass" "..." ]
                binding = parent.parent if parent is not None and parent.type == "attrpath" else None
                if binding is not None and binding.type == "binding":
                    # a quoted attribute name holds the trigger: environment.etc."app-admin-pass".text = "..."
                    _value_strings(binding.child_by_field_name("expression"), found)
                break
            if t == "attrpath":
                binding = node.parent
                if binding is not None and binding.type == "binding":
                    _value_strings(binding.child_by_field_name("expression"), found)
                    _secrets_files(node, binding.child_by_field_name("expression"), found)
                    break
            elif t == "formal":
                _value_strings(node.child_by_field_name("default"), found)
                break
            elif t in _NOT_A_VALUE or t == "comment":
                break
            node = node.parent
    return sorted(found.values(), key=lambda n: n.start_byte)


def _problem(file: str, source: bytes, node: Node) -> SyntaxProblem:
    """Where and why ``file`` does not parse: Nix's own parser's position and words when nix is installed
    (as patch says it; tree-sitter's recovery may wrap a whole file in one error at 1:1), else tree-sitter's."""
    from nixmig.nixsrc.parse import nix_parse_error

    from_nix = nix_parse_error(source)
    if from_nix is not None:
        line_no, col_no, message = from_nix
        return SyntaxProblem(file, line_no, col_no, f"{message}; not scanned (`nix-instantiate --parse` shows it)")
    row, col_bytes = node.start_point
    lines = source.split(b"\n")
    line = lines[row] if row < len(lines) else b""
    col = len(line[:col_bytes].decode("utf-8", "replace")) + 1
    snippet = line.decode("utf-8", "replace").strip()[:60]
    missing = f" (missing {node.type})" if node.is_missing else ""
    return SyntaxProblem(
        file, row + 1, col, f"syntax error{missing} near {snippet!r}; not scanned (`nix-instantiate --parse` shows it)"
    )


def scan_source(source: bytes, file: str, *, project: str | None = None) -> FileScan:
    """Every hardcoded secret in one Nix file. ``file`` is only used in findings and names."""
    tree = parse(source)
    err = first_error(tree)
    if err is not None:
        return FileScan(file, problem=_problem(file, source, err))
    if _TRIGGER_RE.search(source) is None:
        return FileScan(file)
    out = _Collector(file, source, project or file_project(file, source))
    # a plain secrets file, nginx basicAuth and nameValuePair name secrets away from their
    # strings: look at every string of such a file
    every = out.secrets_file or b"basicAuth" in source or b"nameValuePair" in source
    nodes = _captures(tree.root_node) if every else _candidates(tree.root_node, source)
    for node in nodes:
        _scan_string(node, out, every=every)
    if b"${" in source:
        _lets_read_as_passwords(tree.root_node, out)
    names = _secret_names(source) if b"/" in source else set()
    return FileScan(file, findings=tuple(f for f in out.findings if f.value.reveal() not in names))


# a quoted attribute name holding a slash (sops-nix's secret names: sops.placeholder."paperless/admin_pass")
_QUOTED_NAME_RE: Final = re.compile(rb'\.\s*"([\w.-]+(?:/[\w.-]+)+)"')


def _secret_names(source: bytes) -> set[bytes]:
    """The slashed names a file uses as attribute names (``config.sops.placeholder."paperless/admin_pass"``,
    ``sops.secrets."db/password"``): a list of such strings (``paperlessSecrets = [ "paperless/admin_pass" ];``
    fed to ``lib.genAttrs``) names secrets, it holds none (realcfg35/04)."""
    return set(_QUOTED_NAME_RE.findall(source))


# the text of a string just before an interpolation that puts a password there: SQL's PASSWORD '...' or
# IDENTIFIED BY '...' (its quote closes right after), a URL's userinfo (://user:...@)
_SQL_BEFORE: Final = re.compile(rb"(?i)\b(?:PASSWORD|IDENTIFIED(?:[ \t]+WITH[ \t]+\w+)?[ \t]+BY)[ \t]+E?'$")
_URL_BEFORE: Final = re.compile(rb"://[^\s/@:'\"{}$]*:$")


def password_position(source: bytes, use: Node) -> str | None:
    """ "sql" or "url" when the variable ``use`` is interpolated where a string holds a password (``PASSWORD
    '${pw}'``, ``"postgres://u:${pw}@db/x"``), else None."""
    interp = use.parent
    string = interp.parent if interp is not None and interp.type == "interpolation" else None
    if string is None or string.type not in ("string_expression", "indented_string_expression"):
        return None
    before = source[max(string.start_byte, interp.start_byte - 200) : interp.start_byte]  # type: ignore[union-attr]
    after = source[interp.end_byte : interp.end_byte + 1]  # type: ignore[union-attr]
    if after == b"'" and _SQL_BEFORE.search(before):
        return "sql"
    if after == b"@" and _URL_BEFORE.search(before):
        return "url"
    return None


def literal_finding(source: bytes, file: str, start: int, name: str, rule: str) -> Finding | None:
    """A password finding for the whole string that starts at byte ``start`` of a file (a literal that a
    read in another file shows to be one: ``PASSWORD '${plain.key}'``), placed and named as scan places a
    binding's; None when no string starts there or it holds no value (a placeholder, a hash)."""
    tree = parse(source)
    node: Node | None = tree.root_node.descendant_for_byte_range(start, start)
    while node is not None and not (
        node.type in ("string_expression", "indented_string_expression") and node.start_byte == start
    ):
        node = node.parent
    if node is None:
        return None
    out = _Collector(file, source, file_project(file, source))
    ctx = _context(node, out.memo)
    text = _string_text(node)
    value = text.data.decode("utf-8", "replace")
    if ctx is None or not text.data or PLACEHOLDER in value or is_placeholder(value) or looks_like_crypt_hash(value):
        return None
    out.add(text, (0, len(text.data)), kind=Kind.PASSWORD, ctx=ctx, rule=rule,
            name_words=[*words(name), "password"], taken=[])  # fmt: skip
    return out.findings[0] if out.findings else None


def _lets_read_as_passwords(root: Node, out: _Collector) -> None:
    """A let-bound string whose name says nothing (``ledgerDb = "..."``) read where a password goes
    (``PASSWORD '${ledgerDb}'`` in SQL, ``://u:${ledgerDb}@`` in a URL): a password, found at its binding
    (where a rule on the name would have found it)."""
    from nixmig.nixsrc.lets import let_literals

    for let in let_literals(root).values():
        lit = let.literal
        if lit.type not in ("string_expression", "indented_string_expression"):
            continue
        if any(f.start < lit.end_byte and lit.start_byte < f.end for f in out.findings):
            continue  # found already (by its name, or as a URL)
        rule = next((r for u in let.uses if (r := password_position(out.source, u)) is not None), None)
        if rule is None or is_placeholder(let.value) or looks_like_crypt_hash(let.value):
            continue
        ctx = _context(lit, out.memo)
        text = _string_text(lit)
        if ctx is None or PLACEHOLDER.encode() in text.data or not text.data:
            continue
        out.add(text, (0, len(text.data)), kind=Kind.PASSWORD, ctx=ctx, rule=f"read-as-{rule}",
                name_words=[*words(let.name), "password"], taken=[])  # fmt: skip


def disambiguate(findings: Iterable[MaskedFinding]) -> list[MaskedFinding]:
    """One secret name per distinct value: the same name with different values gets -2, -3 ...

    Findings with the same suggested name and the same value (the POSTGRES_PASSWORD
    and the URLs that repeat it) keep one name: one agenix secret replaces them all.
    """
    result: list[MaskedFinding] = []
    seen: dict[str, list[bytes]] = {}
    for f in findings:
        digests = seen.setdefault(f.secret_name, [])
        if f.digest not in digests:
            digests.append(f.digest)
        index = digests.index(f.digest)
        result.append(f if index == 0 else replace(f, secret_name=f"{f.secret_name}-{index + 1}"))
    return result


# ---------------------------------------------------------------- SQL files the Nix files name

# a relative path to a .sql file in Nix source (``initialScript = ./init.sql``, ``builtins.readFile ../db/a.sql``)
SQL_PATH: Final = re.compile(rb"(?<![\w.~/-])((?:\.\.?/)[\w.+/-]*\.sql)\b")


def nix_paths(root: Node, file: str) -> list[tuple[int, str]]:
    """(start byte, path resolved against ``file``'s directory, posix, normalized) of each relative Nix path
    in the syntax tree ``root`` (``./tutorial.conf``, ``${./setup.sql}``; not one in a comment or inside a
    string's text, nor one built by interpolation)."""
    import posixpath

    from nixmig.nixsrc.parse import descendants

    out: list[tuple[int, str]] = []
    for n in descendants(root):
        rel = n.text.decode("utf-8", "replace") if n.type == "path_expression" and n.text is not None else ""
        if rel.startswith(("./", "../")) and "${" not in rel:
            out.append((n.start_byte, posixpath.normpath(posixpath.join(posixpath.dirname(file), rel))))
    return sorted(out)


def text_paths(source: bytes, file: str) -> list[str]:
    """The files other than .nix (and agenix's .age) ``source`` (the Nix file ``file``) names by a relative
    Nix path (:func:`nix_paths`; a path may leave the repository, or name a directory: the caller decides).
    Such a file goes into the Nix store with the configuration."""
    from nixmig.nixsrc.parse import parse

    paths = (p for _, p in nix_paths(parse(source).root_node, file))
    return list(dict.fromkeys(p for p in paths if not p.endswith((".nix", ".age"))))


def sql_paths(source: bytes, file: str) -> list[str]:
    """The .sql files ``source`` (the Nix file ``file``) names by a relative path, resolved against its
    directory (posix, normalized; a path may leave the repository: the caller decides)."""
    import posixpath

    out: list[str] = []
    for m in SQL_PATH.finditer(source):
        p = posixpath.normpath(posixpath.join(posixpath.dirname(file), m.group(1).decode()))
        if p not in out:
            out.append(p)
    return out


def scan_sql(source: bytes, file: str) -> list[Finding]:
    """Each password a SQL file sets in clear (PostgreSQL's ``CREATE ROLE x ... PASSWORD '...'``, MySQL's
    ``CREATE USER 'x'@'h' IDENTIFIED BY '...'``): a Nix file names it (an initialScript), so it goes into
    the world-readable Nix store with it."""
    from nixmig.nixsrc.shapes.mysql_initial_script import statements
    from nixmig.nixsrc.sqlpass import clauses

    found: list[tuple[int, int, str, str, str]] = [
        (c.value_start, c.value_end, c.password, f"PASSWORD of role {c.role}", c.role) for c in clauses(source)
    ]
    text = source.decode("utf-8", "surrogateescape")
    for st in statements(text):
        if st.clause is None:
            continue
        start = len(text[: st.value_start].encode("utf-8", "surrogateescape"))
        end = len(text[: st.clause[1] - 1].encode("utf-8", "surrogateescape"))
        found.append((start, end, st.clause[2], f"IDENTIFIED BY of account {st.account}", st.user))
    out: list[Finding] = []
    for value_start, value_end, password, attribute, role in sorted(found):
        if is_placeholder(password):
            continue
        line = source.count(b"\n", 0, value_start) + 1
        col = len(source[source.rfind(b"\n", 0, value_start) + 1 : value_start].decode("utf-8", "replace")) + 1
        end_line = source.count(b"\n", 0, value_end) + 1
        end_col = len(source[source.rfind(b"\n", 0, value_end) + 1 : value_end].decode("utf-8", "replace")) + 1
        out.append(
            Finding(
                file,
                line,
                col,
                end_line,
                end_col,
                attribute,
                Kind.PASSWORD,
                Secret(password),
                f"{role}-db-password",
                "sql",
                value_start,
                value_end,
            )
        )
    return out
