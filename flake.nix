{
  description = "nixmig: move NixOS services off hardcoded database passwords onto agenix secrets, with backups, a journal and rollback";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    # for the VM tests (agenix decrypts the new secret on the target)
    agenix = {
      url = "github:ryantm/agenix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  # flake.lock is not committed yet: the first `nix flake lock` (or any `nix build`,
  # `nix flake check`) writes it; commit it then.
  outputs =
    {
      self,
      nixpkgs,
      agenix,
      ...
    }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      # builtins only, so tests/unit/test_nix_files.py can list the outputs with stub inputs
      forAllSystems = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
      pkgsFor = system: nixpkgs.legacyPackages.${system};

      # the Python environment of the dev shell and the lint check: nixmig's
      # dependencies plus the dev tools of pyproject.toml's [dev] extra
      devPython =
        system:
        let
          pkgs = pkgsFor system;
        in
        pkgs.python3.withPackages (
          ps:
          self.packages.${system}.default.passthru.pythonDeps
          ++ [
            ps.pytest
            ps.mypy
            ps.types-paramiko
            ps.docker
            (ps.callPackage ./nix/types-docker.nix { })
          ]
        );
    in
    {
      packages = forAllSystems (system: rec {
        nixmig = (pkgsFor system).callPackage ./nix/package.nix { };
        default = nixmig;
      });

      # nix run github:OWNER/nixmig -- scan .
      apps = forAllSystems (system: {
        default = {
          type = "app";
          program = "${self.packages.${system}.default}/bin/nixmig";
          meta.description = "nixmig: scan, patch, plan, apply, rollback";
        };
      });

      devShells = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
        in
        {
          default = pkgs.mkShell {
            packages = [
              (devPython system)
              pkgs.ruff
              pkgs.age
              pkgs.nix
              pkgs.openssh
              pkgs.postgresql
              pkgs.docker
              pkgs.nixfmt-tree
            ];
            shellHook = ''
              export PYTHONPATH="$PWD''${PYTHONPATH:+:$PYTHONPATH}"
              echo "nixmig dev shell: python -m nixmig --help; scripts/test needs sshd, dockerd and initdb (see README)"
            '';
          };
        }
      );

      # imports = [ nixmig.nixosModules.default ]; services.nixmig.migrations.<name> = { ... };
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.nixmig.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };

      # nixmig.lib.deployRs.activateWithMigrations { base = deploy-rs.lib.x86_64-linux.activate.nixos cfg; migrations = [ ... ]; }
      lib.deployRs = import ./nix/deploy-rs.nix {
        inherit pkgsFor;
        nixmigFor = system: self.packages.${system}.default;
      };

      checks = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
          inherit (pkgs) lib;
        in
        {
          # builds the wheel and runs the unit tier in its checkPhase
          package = self.packages.${system}.default;

          # ruff, mypy --strict, and the parse/eval checks of every .nix file
          lint =
            pkgs.runCommand "nixmig-lint"
              {
                src = lib.fileset.toSource {
                  root = ./.;
                  fileset = lib.fileset.unions [
                    ./pyproject.toml
                    ./README.md
                    ./flake.nix
                    ./nixmig
                    ./tests
                    ./bench
                    ./nix
                    ./vm-tests
                  ];
                };
                nativeBuildInputs = [
                  (devPython system)
                  pkgs.ruff
                  pkgs.nix
                  pkgs.bash
                ];
              }
              ''
                cp -r "$src" src && chmod -R u+w src && cd src
                export HOME="$(mktemp -d)"
                ruff check nixmig tests bench
                mypy
                export TEST_ROOT="$(mktemp -d)"
                export NIX_STORE_DIR="$TEST_ROOT/store" NIX_STATE_DIR="$TEST_ROOT/var/nix" \
                  NIX_LOG_DIR="$TEST_ROOT/var/log/nix" NIX_CONF_DIR="$TEST_ROOT/etc" \
                  NIX_LOCALSTATE_DIR="$TEST_ROOT/var"
                nix-store --init
                pytest -q -p no:cacheprovider tests/unit/test_nix_files.py
                touch "$out"
              '';
        }
        // import ./vm-tests {
          inherit pkgs agenix;
          nixmig = self.packages.${system}.default;
          nixosModule = self.nixosModules.default;
          deployRs = self.lib.deployRs;
        }
      );

      formatter = forAllSystems (system: (pkgsFor system).nixfmt-tree);
    };
}
