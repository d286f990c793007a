"""nixmig: move NixOS services off hardcoded credentials onto agenix secrets."""

__version__ = "0.1.0"
