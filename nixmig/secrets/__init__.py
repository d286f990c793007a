"""agenix-compatible secrets: secrets.nix, age encryption, generators."""
