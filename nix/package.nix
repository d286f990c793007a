# nixmig, built from pyproject.toml with nixpkgs' Python packages.
# callPackage'd by flake.nix: `nix build .#nixmig`, `nix run . -- scan .`.
{
  lib,
  python3Packages,
  makeWrapper,
  age,
  openssh,
  nix,
  bash,
}:

let
  py = python3Packages;
  pyproject = lib.importTOML ../pyproject.toml;
  # Not in nixpkgs: built here from its PyPI sdist (see pyrage.nix).
  pyrage = py.callPackage ./pyrage.nix { };
  skips = import ./sandbox-skips.nix;

  # The names pyproject.toml asks for, as nixpkgs spells them:
  #   tree-sitter-nix -> tree-sitter-grammars.tree-sitter-nix (module tree_sitter_nix,
  #   built from nixpkgs' grammar; its version is the grammar's, e.g. 0.3.0)
  #   psycopg[binary] -> psycopg (nixpkgs' psycopg finds libpq itself; no binary wheel)
  deps = with py; [
    typer
    rich
    pyrage
    tree-sitter
    tree-sitter-grammars.tree-sitter-nix
    paramiko
    psycopg
    cryptography
    hvac
    jinja2
  ];
in
py.buildPythonApplication {
  pname = "nixmig";
  inherit (pyproject.project) version;
  pyproject = true;

  # Only what the wheel and the unit tests need: editing the flake, the VM tests or
  # the benches does not rebuild the package.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../nixmig
      ../tests
    ];
  };

  build-system = [ py.hatchling ];

  dependencies = deps;
  # Lower bounds in pyproject.toml are for pip users; nixpkgs pins the versions here.
  pythonRelaxDeps = true;

  nativeBuildInputs = [ makeWrapper ];
  # The tools nixmig runs: nix-instantiate (parse and evaluate .nix files), age (the
  # reference implementation for interop checks), ssh / ssh-keyscan (the hints it
  # prints and deploy commands). The user's own nix comes first when there is one.
  makeWrapperArgs = [
    "--prefix"
    "PATH"
    ":"
    (lib.makeBinPath [
      age
      openssh
    ])
    "--suffix"
    "PATH"
    ":"
    (lib.makeBinPath [ nix ])
  ];

  # The unit tier (tests/unit): pure code plus the real age, ssh-keygen and
  # nix-instantiate. The integration and e2e tiers need PostgreSQL, sshd and dockerd
  # (scripts/test runs them; the VM tests in vm-tests/ run the same flows on NixOS).
  nativeCheckInputs = [
    py.pytest
    age
    openssh
    nix
    bash
  ];
  checkPhase = ''
    runHook preCheck
    export HOME="$(mktemp -d)"
    # nix-instantiate --parse / --eval need a store of their own inside the sandbox
    export TEST_ROOT="$(mktemp -d)"
    export NIX_STORE_DIR="$TEST_ROOT/store" NIX_STATE_DIR="$TEST_ROOT/var/nix" \
      NIX_LOG_DIR="$TEST_ROOT/var/log/nix" NIX_CONF_DIR="$TEST_ROOT/etc" \
      NIX_LOCALSTATE_DIR="$TEST_ROOT/var"
    nix-store --init
    pytest -q -p no:cacheprovider -m unit tests/unit \
      ${lib.concatMapStringsSep " " (p: "--ignore=${p}") (builtins.attrNames skips.paths)} \
      -k ${lib.escapeShellArg ("not (" + lib.concatStringsSep " or " (builtins.attrNames skips.tests) + ")")}
    runHook postCheck
  '';
  pythonImportsCheck = [
    "nixmig"
    "nixmig.cli"
  ];

  passthru = {
    inherit pyrage;
    # for the dev shell and the lint check: the same Python packages, plus dev tools
    pythonDeps = deps;
  };

  meta = {
    description = pyproject.project.description;
    license = lib.licenses.mit;
    mainProgram = "nixmig";
    platforms = lib.platforms.linux;
  };
}
