# pyrage (Python bindings for rage, the Rust age implementation) is not in nixpkgs.
# Built from the PyPI sdist with maturin. Its Cargo.lock is copied beside this file
# (pyrage-Cargo.lock, byte for byte from the sdist), so importCargoLock needs no
# vendor hash: every crate comes from crates.io with the checksum in the lock file.
{
  lib,
  buildPythonPackage,
  fetchPypi,
  rustPlatform,
  cargo,
  rustc,
}:

buildPythonPackage rec {
  pname = "pyrage";
  version = "1.4.0";
  pyproject = true;

  src = fetchPypi {
    inherit pname version;
    # sha256 of pyrage-1.4.0.tar.gz as published on PyPI
    hash = "sha256-VFvxiOjSF+yIwyvI6L9WAmyMCxsfltJojO3xQnqw6Cc=";
  };

  cargoDeps = rustPlatform.importCargoLock { lockFile = ./pyrage-Cargo.lock; };

  nativeBuildInputs = [
    cargo
    rustc
    rustPlatform.cargoSetupHook
    rustPlatform.maturinBuildHook
  ];

  # nixmig's unit tests (run in its checkPhase) encrypt and decrypt with pyrage
  # and check the results against the age binary; that is the test that matters here.
  doCheck = false;
  pythonImportsCheck = [
    "pyrage"
    "pyrage.ssh"
    "pyrage.x25519"
  ];

  meta = {
    description = "Python bindings for rage (age encryption in Rust)";
    homepage = "https://github.com/woodruffw/pyrage";
    license = lib.licenses.mit;
  };
}
