# Stand-ins for nixpkgs, for evaluating this repo's Nix files with the nix-instantiate
# 2.8 that CI has (no nixpkgs, no network, no store writes). Used by
# tests/unit/test_nix_files.py through eval-*.nix beside this file.
#
# fakeLib: the few lib functions those files call, with nixpkgs' semantics.
# evalOptions: applies option declarations (as nix/module.nix writes them, read with
#   fakeLib's mkOption / types) to a value the way the module system does for these
#   types: defaults for what is not set, a type check for what is, unknown names
#   refused, submodules evaluated with their own `config` and `name`.
# fakePkgs: builders that return their arguments instead of derivations (those whose
#   result is interpolated into a script also carry an outPath under /fake/store).
let
  inherit (builtins)
    all
    attrNames
    concatStringsSep
    elem
    filter
    head
    isAttrs
    isBool
    isFunction
    isInt
    isList
    isString
    listToAttrs
    mapAttrs
    replaceStrings
    ;

  fakeLib = rec {
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = what: mkOption {
      type = types.bool;
      default = false;
      description = "Whether to enable ${what}.";
    };
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    types = {
      str = { name = "str"; };
      bool = { name = "bool"; };
      port = { name = "port"; };
      package = { name = "package"; };
      ints.positive = { name = "positiveInt"; };
      enum = values: {
        name = "enum";
        inherit values;
      };
      nullOr = t: {
        name = "nullOr";
        elem = t;
      };
      listOf = t: {
        name = "listOf";
        elem = t;
      };
      attrsOf = t: {
        name = "attrsOf";
        elem = t;
      };
      submodule = m: {
        name = "submodule";
        module = m;
      };
    };
    # the lib functions nix/package.nix calls
    importTOML = path: builtins.fromTOML (builtins.readFile path);
    makeBinPath = pkgs: concatStringsSep ":" (map (p: "${p}/bin") pkgs);
    concatStringsSep = builtins.concatStringsSep;
    concatMapStringsSep = sep: f: list: builtins.concatStringsSep sep (map f list);
    escapeShellArg = s: "'" + replaceStrings [ "'" ] [ "'\\''" ] s + "'";
    fileset = {
      toSource = args: args;
      unions = list: list;
    };
    # what vm-tests/common.nix's modules call (nixpkgs' semantics, as plain data)
    mkForce = content: {
      _type = "override";
      priority = 50;
      inherit content;
    };
    mkDefault = content: {
      _type = "override";
      priority = 1000;
      inherit content;
    };
    optional = cond: x: if cond then [ x ] else [ ];
    optionalAttrs = cond: attrs: if cond then attrs else { };
    optionalString = cond: s: if cond then s else "";
    licenses.mit = "mit";
    licenses.asl20 = "asl20";
    platforms.linux = [
      "x86_64-linux"
      "aarch64-linux"
    ];
  };

  isOption = v: isAttrs v && (v._type or null) == "option";

  typeError = path: t: v: throw "${path}: ${builtins.toJSON v} is not a valid ${t.name}";

  check =
    t: v: name: path:
    if t.name == "submodule" then
      evalSubmodule t.module v name path
    else if t.name == "attrsOf" then
      (if isAttrs v then mapAttrs (n: x: check t.elem x n "${path}.${n}") v else typeError path t v)
    else if t.name == "listOf" then
      (if isList v then map (x: check t.elem x "<item>" "${path}[]") v else typeError path t v)
    else if t.name == "nullOr" then
      (if v == null then null else check t.elem v name path)
    else if t.name == "enum" then
      (if elem v t.values then v else typeError path t v)
    else if t.name == "str" then
      (if isString v then v else typeError path t v)
    else if t.name == "bool" then
      (if isBool v then v else typeError path t v)
    else if t.name == "port" then
      (if isInt v && v >= 0 && v <= 65535 then v else typeError path t v)
    else if t.name == "positiveInt" then
      (if isInt v && v > 0 then v else typeError path t v)
    else
      v;

  evalOption =
    decl: given: v: name: path:
    if given then
      check decl.type v name path
    else if decl ? default then
      check decl.type decl.default name path
    else
      throw "${path} is used but not defined";

  # decls: nested attrsets of options; value: what the user set
  evalOptions =
    decls: value: path:
    let
      unknown = filter (k: !(decls ? ${k})) (attrNames value);
    in
    if !isAttrs value then
      throw "${path}: expected an attribute set"
    else if unknown != [ ] then
      throw "The option `${path}.${head unknown}' does not exist."
    else
      mapAttrs (
        k: d:
        if isOption d then
          evalOption d (value ? ${k}) (value.${k} or null) k "${path}.${k}"
        else
          evalOptions d (value.${k} or { }) "${path}.${k}"
      ) decls;

  evalSubmodule =
    m: value: name: path:
    let
      fn = if isFunction m then m else (_: m);
      self = evalOptions
        (fn {
          inherit name;
          config = self;
          lib = fakeLib;
        }).options
        value
        path;
    in
    self;

  # every option under decls (submodules included) without a description: the NixOS
  # option search shows nothing for those
  undocumented =
    decls: path:
    builtins.concatLists (
      map (
        k:
        let
          d = decls.${k};
          p = "${path}.${k}";
          sub = t: if t.name == "submodule" then sub' t.module p else if t ? elem then sub t.elem else [ ];
          sub' =
            m: p:
            undocumented
              ((if isFunction m then m else (_: m)) {
                name = "<name>";
                config = throw "config is not needed to list options";
                lib = fakeLib;
              }).options
              p;
        in
        if isOption d then
          (if isString (d.description or null) && d.description != "" then [ ] else [ p ]) ++ sub d.type
        else
          undocumented d p
      ) (attrNames decls)
    );

  # a package or a file in the store: a path-like string that interpolates
  fakeDrv = name: extra: {
    inherit name;
    outPath = "/fake/store/${name}";
  } // extra;

  fakePkgs = {
    lib = fakeLib;
    runtimeShell = "/bin/bash";
    # the builders vm-tests/ use, returning their arguments (and a store path)
    writeText = name: text: fakeDrv name { inherit text; };
    writeTextFile = args: fakeDrv args.name args;
    writeTextDir = path: text: fakeDrv (baseNameOf path) { inherit path text; };
    writeShellScriptBin = name: text: fakeDrv name { inherit text; };
    buildEnv = args: fakeDrv args.name args;
    dockerTools.buildLayeredImage = args: fakeDrv "docker-image-${baseNameOf args.name}.tar.gz" args;
    testers.runNixOSTest = args: args;
    postgresql_16 = fakeDrv "postgresql-16" { };
    busybox = fakeDrv "busybox" { };
    bashInteractive = fakeDrv "bash-interactive" { };
    coreutils = fakeDrv "coreutils" { };
    util-linux = fakeDrv "util-linux" { };
    openssh = fakeDrv "openssh" { };
    writeShellScript = name: text: {
      inherit name text;
    };
    runCommand = name: env: buildCommand: {
      inherit name env buildCommand;
    };
    formats.toml = _: {
      type = { name = "toml"; };
      generate = name: value: {
        inherit name value;
      };
    };
  };
in
{
  inherit
    fakeLib
    evalOptions
    evalSubmodule
    undocumented
    fakeDrv
    fakePkgs
    ;
}
