# A small TOML writer in pure Nix (builtins only) for what nixmig.toml holds: tables,
# arrays of tables, strings, integers, floats, booleans and arrays of those. The NixOS
# module writes the file with pkgs.formats.toml, which needs nixpkgs; the unit tests
# render the same attribute set with this instead and load it with nixmig.config.
# tests/unit/test_nix_files.py checks its output against Python's tomllib.
let
  inherit (builtins)
    all
    attrNames
    concatStringsSep
    filter
    isAttrs
    isBool
    isFloat
    isInt
    isList
    isString
    match
    replaceStrings
    toJSON
    ;

  # TOML basic strings take JSON's escapes; DEL must be escaped too, which toJSON does not
  del = builtins.fromJSON ''"\u007f"'';
  string = s: replaceStrings [ del ] [ "\\u007F" ] (toJSON s);

  key = k: if match "[A-Za-z0-9_-]+" k != null then k else string k;
  dotted = path: concatStringsSep "." (map key path);

  float =
    f:
    let
      text = toJSON f;
    in
    if match ".*[.eE].*" text != null then text else text + ".0";

  tableArray = v: isList v && v != [ ] && all isAttrs v;

  value =
    path: v:
    if isString v then
      string v
    else if isBool v then
      (if v then "true" else "false")
    else if isInt v then
      toString v
    else if isFloat v then
      float v
    else if isList v then
      "[" + concatStringsSep ", " (map (value path) v) + "]"
    else if isAttrs v then
      "{ " + concatStringsSep ", " (map (k: "${key k} = ${value (path ++ [ k ]) v.${k}}") (attrNames v)) + " }"
    else if v == null then
      throw "toml.nix: ${dotted path} is null, which TOML cannot express"
    else
      throw "toml.nix: ${dotted path}: cannot write a ${builtins.typeOf v}";

  table =
    path: t:
    let
      names = attrNames t;
      tables = filter (k: isAttrs t.${k}) names;
      arrays = filter (k: tableArray t.${k}) names;
      scalars = filter (k: !(isAttrs t.${k}) && !(tableArray t.${k})) names;
      sub = k: path ++ [ k ];
    in
    concatStringsSep "" (map (k: "${key k} = ${value (sub k) t.${k}}\n") scalars)
    + concatStringsSep "" (map (k: "\n[${dotted (sub k)}]\n" + table (sub k) t.${k}) tables)
    + concatStringsSep "" (
      map (k: concatStringsSep "" (map (e: "\n[[${dotted (sub k)}]]\n" + table (sub k) e) t.${k})) arrays
    );
in
table [ ]
