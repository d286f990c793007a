{
  description = "Fleet with an inline module (scanner corpus)";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";
    agenix.url = "github:ryantm/agenix";
    agenix.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs = { self, nixpkgs, agenix, ... }: {
    nixosConfigurations.edge = nixpkgs.lib.nixosSystem {
      system = "x86_64-linux";
      modules = [
        agenix.nixosModules.default
        ./hosts/edge
        ({ pkgs, ... }: {
          services.mosquitto = {
            enable = true;
            listeners = [
              {
                users.sensor = {
                  acl = [ "write sensors/#" ];
                  password = "Mqtt-Sensor-36";
                };
                users.dashboard = {
                  acl = [ "read sensors/#" ];
                  passwordFile = "/run/agenix/mqtt-dashboard";
                };
                users.legacy.hashedPassword = "$7$101$kFAKEsaltFAKEsalt$FAKEhashFAKEhashFAKEhashFAKEhash==";
              }
            ];
          };
        })
      ];
    };

    deploy.nodes.edge = {
      hostname = "edge.example.org";
      sshUser = "root";
      sshOpts = [ "-p" "2222" "-o" "StrictHostKeyChecking=yes" ];
    };

    checks.x86_64-linux.vm = nixpkgs.legacyPackages.x86_64-linux.testers.runNixOSTest {
      name = "edge";
      nodes.machine = { ... }: {
        users.users.test.password = "test";
      };
      testScript = ''
        machine.wait_for_unit("mosquitto.service")
        machine.succeed("mosquitto_pub -u sensor -P Mqtt-Sensor-36 -t sensors/t -m 1")
      '';
    };
  };
}
