"""SQL run by a systemd unit: ``psql -c "CREATE ROLE x WITH LOGIN PASSWORD '...'"`` in a oneshot.

A common way to create an app's role in a database container (``podman exec -i postgres psql -U
postgres -c "..."`` in ``ExecStart``, directly or through ``pkgs.writeShellScript`` and a
let-bound command) or on the host (``script = "psql -c ..."``). The command line is in the Nix
store and, while it runs, in the process table. The ``PASSWORD '...'`` clause leaves the SQL,
which stays valid (the unit still creates the role), and a oneshot ordered after that unit sets
the password from the agenix file: for a container, through the same ``exec`` with the SQL on
stdin (templates/role-password-exec.nix.j2), on the host with the native unit
(templates/role-password.nix.j2). When nixmig cannot tell how the SQL reaches the server (a
container named by an expression, a runtime it does not know), the clause stays and the verdict
says it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixmig.nixsrc.quote import escape_indented, nix_attr
from nixmig.nixsrc.render import template
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.shapes.initial_script import add_unit, before_why, remove_clauses, role_unit, unit_name
from nixmig.nixsrc.sqlpass import clauses, role_identifier

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.model import Bind, FileModel
    from nixmig.nixsrc.patch import Builder

COMMANDS = (
    ("script",),
    ("preStart",),
    ("postStart",),
    ("serviceConfig", "ExecStart"),
    ("serviceConfig", "ExecStartPre"),
    ("serviceConfig", "ExecStartPost"),
)
_STRINGS = ("string_expression", "indented_string_expression")
# ${pkgs.podman}/bin/podman exec -i NAME psql -U postgres ...: the runtime, exec's flags, the container
_EXEC = re.compile(
    r"(?P<bin>(?:\$\{[A-Za-z_][\w.-]*\}/bin/|/[\w./-]*/)?(?P<rt>podman|docker))\s+exec\s+"
    r"(?P<flags>(?:(?:-u|--user|-w|--workdir|-e|--env)[ =]\S+\s+|-[-\w]+\s+)*)(?P<name>[\w.-]+)\s+psql\b(?P<rest>.*)",
    re.S,
)
_USER = re.compile(r"(?:-U\s*|--username[ =])([\w.-]+)")
_PSQL = re.compile(r"(?:^|[\s/}])psql\b")
# psql run somewhere else than on this host: unless find_exec read the command, nixmig does not guess
_ELSEWHERE = re.compile(r"\b(?:podman|docker|nerdctl|kubectl|nixos-container|machinectl|ssh|incus|lxc)\b")
# a shell double-quoted string changes these: a password holding one is not the password the server gets
_SHELL_SPECIAL = set('$`\\"!')


@dataclass(frozen=True)
class Exec:
    runtime: str  # podman | docker
    command: str  # ``BIN exec [FLAGS]``: what runs a command in a container, as Nix indented-string source
    name: str  # the container
    user: str  # psql's -U


def strings_in(node: Node) -> list[Node]:
    out: list[Node] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type in _STRINGS:
            out.append(n)
        stack.extend(reversed(n.children))
    return out


def _lets(fm: FileModel, node: Node) -> dict[str, str]:
    """Names bound to a plain string by the ``let`` expressions inside ``node`` (``psql = "podman exec
    ... psql";``), as the string's source text."""
    found: dict[str, str] = {}
    for s in strings_in(node):
        binding = s.parent
        if binding is None or binding.type != "binding" or binding.parent is None:
            continue
        if binding.parent.type != "binding_set" or binding.parent.parent is None:
            continue
        if binding.parent.parent.type != "let_expression":
            continue
        path = binding.child_by_field_name("attrpath")
        if path is not None and s.type == "string_expression":
            found[fm.text(path)] = fm.text(s)[1:-1]
    return found


def command_text(fm: FileModel, bind: Bind) -> str:
    """The unit's command as the shell sees it, near enough to find how psql is run: the let-bound
    parts put in, line continuations joined."""
    text = fm.text(bind.value)
    for name, value in _lets(fm, bind.value).items():
        text = text.replace("${" + name + "}", value)
    return re.sub(r"\\\n\s*", " ", text)


def find_exec(text: str) -> Exec | None:
    m = _EXEC.search(text)
    if m is None:
        return None
    flags = [f for f in re.split(r"\s+", m["flags"].strip()) if f and f not in ("-t", "--tty", "-it", "-ti", "-i")]
    if any(f.startswith("-") and len(f) > 2 and not f.startswith("--") for f in flags):
        return None  # combined short flags nixmig would have to take apart
    user = _USER.search(m["rest"].split(" -c", 1)[0])
    binary = m["bin"]
    if "/" not in binary:  # a bare name: units have no podman/docker on their PATH
        binary = f"${{config.virtualisation.{m['rt']}.package}}/bin/{m['rt']}"
    command = " ".join([binary, "exec", *flags])
    return Exec(m["rt"], command, m["name"], user.group(1) if user else "postgres")


def _antiquotes_ok(command: str) -> bool:
    """Every ``${...}`` of the command is ``pkgs.X`` or ``config.X``: in scope at the module's top."""
    return all(a.split(".", 1)[0] in ("pkgs", "config") for a in re.findall(r"\$\{([^{}]*)\}", command))


def apply(b: Builder, password: str | None) -> None:
    for fm, bind in list(b.all_binds()):
        if len(bind.path) < 4 or bind.path[:2] != ("systemd", "services") or bind.path[3:] not in COMMANDS:
            continue
        unit = bind.path[2]
        if unit == unit_name(b) or "${" in unit:
            continue  # nixmig's own, or a unit named by an expression the setter could not be ordered after
        nodes = [
            s
            for s in strings_in(bind.value)
            if any(
                c.role == b.spec.role and not (set(c.password) & _SHELL_SPECIAL)
                for c in clauses(fm.source[s.start_byte : s.end_byte], in_shell=True)
            )
        ]
        if not nodes:
            continue
        text = command_text(fm, bind)
        how = find_exec(text)
        if how is not None and not _antiquotes_ok(how.command):
            continue
        if how is None and (not _PSQL.search(text) or _ELSEWHERE.search(text)):
            continue  # not psql, or psql somewhere nixmig cannot tell: the verdict says it
        cut = False
        for s in nodes:
            cut |= remove_clauses(b, fm, s, password, f"the SQL that systemd.services.{unit} runs", in_shell=True)
        if not cut:
            continue
        b.sql_file = fm
        before = dependents(b, unit)
        if how is None:
            role_unit(b, fm, bind.node, after=f"{unit}.service", before=before)
        else:
            exec_unit(b, fm, bind.node, how, unit, before)
        if "${pkgs." in (how.command if how else ""):
            b.need(fm, ("pkgs",))


_ORDERING = ("after", "requires", "wants", "bindsTo", "requisite")


def dependents(b: Builder, sql_unit: str) -> list[str]:
    """The units the tree orders after ``sql_unit`` (``after = [ "SQL_UNIT.service" ... ]``, or requires,
    wants ...): the apps that waited for the role's password. nixmig's oneshot, which now sets it, is
    ordered before them, so on a new host they do not start before the password is set."""
    name = f"{sql_unit}.service"
    found: list[str] = []
    for fm, bind in b.all_binds():
        p = bind.path
        if len(p) != 4 or p[:2] != ("systemd", "services") or p[3] not in _ORDERING:
            continue
        unit = p[2]
        if unit in (sql_unit, unit_name(b)) or "${" in unit or f"{unit}.service" in found:
            continue
        if any(fm.text(s)[1:-1] == name for s in strings_in(bind.value) if s.type == "string_expression"):
            found.append(f"{unit}.service")
    return found


def exec_unit(b: Builder, fm: FileModel, near: Node, how: Exec, sql_unit: str, before: list[str]) -> None:
    from nixmig.nixsrc.patch import credential_name

    spec = b.spec
    tpl = template("role-password-exec.nix.j2")
    role_sql = role_identifier(spec.role)
    role_in_dq = re.sub(r'(["\\$`])', r"\\\1", role_sql)
    after = [f"{sql_unit}.service", f"{how.runtime}-{how.name}.service"]
    add_unit(
        b,
        fm,
        near,
        lambda attr: str(
            tpl.unit(
                attr,
                spec.secret,
                nix_attr(spec.secret),
                spec.role,
                escape_indented(role_in_dq, before_antiquote=False),
                credential_name(spec.secret),
                how.command,
                how.user,
                how.name,
                after,
                sql_unit,
                before,
            )
        ),
        f"the oneshot {unit_name(b)} sets the password of role {spec.role} from {spec.secret_on_host} after "
        f"{sql_unit} created it, through `{how.runtime} exec {how.name} psql` with the SQL on stdin (the password is "
        f"never in the store, an argv or the server's log)" + before_why(before, sql_unit),
    )


SHAPE = Shape(
    "unit-sql",
    "a systemd unit that runs psql -c \"CREATE/ALTER ROLE ... PASSWORD '...'\" (in a container through podman/"
    "docker exec, or on the host): the clause goes, a oneshot after that unit sets the password from the agenix "
    "file with the SQL on stdin",
    apply,
    ("oci-podman-create-role-exec", "oci-docker-create-role-let-psql", "native-script-alter-user"),
)
