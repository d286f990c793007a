# typeshed's stubs for docker-py, not in nixpkgs; only the lint check (mypy --strict
# over tests/, whose e2e harness drives dockerd with docker-py) needs them.
{
  lib,
  buildPythonPackage,
  fetchPypi,
  types-requests,
  urllib3,
}:

buildPythonPackage rec {
  pname = "types_docker";
  version = "7.2.0.20261006";
  format = "wheel";

  src = fetchPypi {
    inherit pname version format;
    dist = "py3";
    python = "py3";
    hash = "sha256-hmBBlxo3iiJu3QlaSlXTkk5R2dFfrqW+7u8lb4byMg0=";
  };

  dependencies = [
    types-requests
    urllib3
  ];


  meta = {
    description = "Typing stubs for docker";
    homepage = "https://github.com/python/typeshed";
    license = lib.licenses.asl20;
  };
}
