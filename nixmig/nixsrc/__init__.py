"""Nix source: parse (tree-sitter-nix), scan, patch, validate."""
