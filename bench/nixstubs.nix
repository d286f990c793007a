# Evaluate one .nix file with stub module arguments: bench/patch_coverage.py's evaluation check.
#
# No nixpkgs on this machine, so `lib`, `pkgs` and `config` are stubs:
# - `stub`: a value that stands for anything: callable (returns itself), coerces to a store-like
#   string, and has as attributes every identifier of the file (params.names, found by the bench),
#   each one `stub` again. Unknown lib functions, pkgs attributes and special args are `stub`.
# - `lib`: `stub` plus minimal real implementations of what modules use to build values
#   (mkIf/mkMerge/mkOverride... keep their content; string and attrset helpers are real).
# - `pkgs`: `stub` plus writers (writeText, writeShellScript...) whose text is forced when the
#   result is used as a string or walked.
# - `config`: the module's own definitions (through mkIf/mkMerge, every branch kept) over its
#   options' defaults, over stub defaults (oci-containers.backend = params.backend, networking),
#   over `stub`; age.secrets holds only the secrets the file declares or secrets.nix has a rule
#   for (params.secrets), each with path = /run/agenix/<x>; sops.secrets.<x>.path = /run/secrets/<x>.
#
# level = "names": the attribute names of the result, of systemd.services, age.secrets and
# virtualisation.oci-containers.containers (what a duplicate dynamic attribute breaks);
# level = "values": every value of the result walked (strings forced, functions not called,
# stubs and derivations not entered), which includes the names. Both levels also force the stub
# config (see `skeleton`).
# A stub gap fails the original file as well: the bench only compares original and patched.
{ file, params }:
let
  b = builtins;
  p = b.fromJSON params;

  specials = [ "__functor" "outPath" "type" "name" "_nixstub" "_nixany" "_nixforce" ];
  stub =
    let
      self = b.listToAttrs (map (n: { name = n; value = self; }) p.names) // {
        __functor = s: _: s;
        outPath = "/nix/store/00000000000000000000000000000000-stub";
        type = "derivation";
        name = "stub";
        _nixstub = true;
        _nixany = true;
      };
    in
    self;
  plain = v: b.removeAttrs v specials; # a stub's attributes without what makes it a stub

  # a derivation-like stub whose text is forced when it is coerced to a string or walked
  drv = name: text:
    b.removeAttrs stub [ "_nixany" ] // {
      inherit name;
      _nixforce = text;
      outPath = b.seq (b.deepSeq text text) "/nix/store/00000000000000000000000000000000-${name}";
    };

  isStubOrDrv = v: v ? _nixstub || (v.type or null) == "derivation";

  # ---- lib ----------------------------------------------------------------------------------
  mkOverride = priority: content: { _type = "override"; inherit priority content; };
  mkOrder = priority: content: { _type = "order"; inherit priority content; };
  concatStringsSep = b.concatStringsSep;
  concatMapStringsSep = sep: f: l: concatStringsSep sep (map f l);
  nameValuePair = name: value: { inherit name value; };
  genAttrs = names: f: b.listToAttrs (map (n: nameValuePair n (f n)) names);
  mapAttrsToList = f: s: map (n: f n s.${n}) (b.attrNames s);
  escapeShellArg = a: "'" + b.replaceStrings [ "'" ] [ "'\\''" ] (toString a) + "'";
  lower = "abcdefghijklmnopqrstuvwxyz";
  upper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  chars = s: b.genList (i: b.substring i 1 s) (b.stringLength s);
  hasPrefix = pre: s: b.substring 0 (b.stringLength pre) s == pre;
  hasSuffix = suf: s:
    let
      ls = b.stringLength s;
      lf = b.stringLength suf;
    in
    lf <= ls && b.substring (ls - lf) lf s == suf;
  escapeRegex = s: b.replaceStrings (chars "\\[]{}()^$?*+|.") (map (c: "\\" + c) (chars "\\[]{}()^$?*+|.")) s;
  recursiveUpdate = l: r:
    b.zipAttrsWith
      (n: vs:
        if b.length vs == 1 then b.head vs
        else if b.isAttrs (b.elemAt vs 0) && b.isAttrs (b.elemAt vs 1) then recursiveUpdate (b.elemAt vs 0) (b.elemAt vs 1)
        else b.elemAt vs 1)
      [ l r ];
  flatten = x: if b.isList x then b.concatMap flatten x else [ x ];
  implemented = rec {
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    inherit mkOverride mkOrder;
    mkDefault = mkOverride 1000;
    mkOptionDefault = mkOverride 1500;
    mkForce = mkOverride 50;
    mkVMOverride = mkOverride 10;
    mkImageMediaOverride = mkOverride 60;
    mkBefore = mkOrder 500;
    mkAfter = mkOrder 1500;
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = _: { _type = "option"; default = false; };
    mkPackageOption = _: _: _: { _type = "option"; default = stub; };
    literalExpression = x: x;
    literalExample = x: x;
    literalMD = x: x;
    mdDoc = x: x;
    optionalString = c: s: if c then s else "";
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: l: if c then l else [ ];
    optionalAttrs = c: s: if c then s else { };
    inherit concatStringsSep concatMapStringsSep nameValuePair genAttrs mapAttrsToList escapeShellArg;
    inherit hasPrefix hasSuffix recursiveUpdate flatten;
    concatStrings = concatStringsSep "";
    concatMapStrings = f: l: concatStringsSep "" (map f l);
    concatLines = l: concatStringsSep "" (map (x: x + "\n") l);
    escapeShellArgs = l: concatStringsSep " " (map escapeShellArg l);
    escape = list: b.replaceStrings list (map (c: "\\" + c) list);
    replaceStrings = b.replaceStrings;
    splitString = sep: s: b.filter b.isString (b.split (escapeRegex sep) s);
    removePrefix = pre: s: if hasPrefix pre s then b.substring (b.stringLength pre) (-1) s else s;
    removeSuffix = suf: s:
      if hasSuffix suf s then b.substring 0 (b.stringLength s - b.stringLength suf) s else s;
    toUpper = b.replaceStrings (chars lower) (chars upper);
    toLower = b.replaceStrings (chars upper) (chars lower);
    strings = implemented;
    lists = implemented;
    attrsets = implemented;
    trivial = implemented;
    options = implemented;
    modules = implemented;
    mapAttrs = b.mapAttrs;
    mapAttrs' = f: s: b.listToAttrs (mapAttrsToList f s);
    filterAttrs = pred: s: b.listToAttrs (b.concatMap (n: if pred n s.${n} then [ (nameValuePair n s.${n}) ] else [ ]) (b.attrNames s));
    attrNames = b.attrNames;
    attrValues = b.attrValues;
    listToAttrs = b.listToAttrs;
    hasAttr = b.hasAttr;
    getAttr = b.getAttr;
    attrByPath = path: default: s:
      if path == [ ] then s
      else if b.isAttrs s && s ? ${b.head path} then attrByPath (b.tail path) default s.${b.head path}
      else default;
    foldl' = b.foldl';
    foldl = op: nul: l: b.foldl' op nul l;
    foldr = op: nul: l: b.foldl' (acc: x: op x acc) nul (b.genList (i: b.elemAt l (b.length l - 1 - i)) (b.length l));
    concatMap = b.concatMap;
    filter = b.filter;
    map = b.map;
    head = b.head;
    tail = b.tail;
    last = l: b.elemAt l (b.length l - 1);
    length = b.length;
    elem = b.elem;
    elemAt = b.elemAt;
    unique = l: b.foldl' (acc: x: if b.elem x acc then acc else acc ++ [ x ]) [ ] l;
    range = first: last: b.genList (i: first + i) (last - first + 1);
    imap0 = f: l: b.genList (i: f i (b.elemAt l i)) (b.length l);
    imap1 = f: l: b.genList (i: f (i + 1) (b.elemAt l i)) (b.length l);
    id = x: x;
    const = x: _: x;
    flip = f: x: y: f y x;
    pipe = x: fs: b.foldl' (acc: f: f acc) x fs;
    toString = b.toString;
    toJSON = b.toJSON;
    fromJSON = b.fromJSON;
    readFile = b.readFile;
    fileContents = f: b.readFile f;
    boolToString = x: if x then "true" else "false";
    isString = b.isString;
    isAttrs = b.isAttrs;
    isList = b.isList;
    isBool = b.isBool;
    isInt = b.isInt;
    isFunction = b.isFunction;
    isDerivation = x: (x.type or null) == "derivation";
    getExe = x: "${x}/bin/stub";
    getExe' = x: n: "${x}/bin/${n}";
    getBin = x: x;
    makeBinPath = l: concatMapStringsSep ":" (x: "${x}/bin") l;
    versionAtLeast = a: v: b.compareVersions a v >= 0;
    versionOlder = a: v: b.compareVersions a v < 0;
    warn = _: v: v;
    trace = _: v: v;
    assertMsg = c: _: c;
    throwIf = c: msg: v: if c then throw msg else v;
    throwIfNot = c: msg: v: if c then v else throw msg;
    zipAttrsWith = b.zipAttrsWith;
    intersectAttrs = b.intersectAttrs;
    removeAttrs = b.removeAttrs;
    stringLength = b.stringLength;
    substring = b.substring;
    elemAt' = b.elemAt;
  };
  lib = stub // implemented;

  # ---- pkgs ---------------------------------------------------------------------------------
  pkgs = stub // {
    inherit lib;
    system = "x86_64-linux";
    writeText = name: text: drv name text;
    writeTextDir = name: text: drv name text;
    writeScript = name: text: drv name text;
    writeScriptBin = name: text: drv name text;
    writeShellScript = name: text: drv name text;
    writeShellScriptBin = name: text: drv name text;
    writeTextFile = a: drv (a.name or "file") (a.text or "");
    writeShellApplication = a: drv (a.name or "app") (a.text or "");
    runCommand = name: _: cmd: drv name cmd;
    runCommandLocal = name: _: cmd: drv name cmd;
  };

  # ---- the module's definitions, as config sees them ---------------------------------------
  isWrapper = v: b.isAttrs v && v ? _type && b.elem v._type [ "if" "merge" "override" "order" ];
  unwrap = v:
    if !isWrapper v then v
    else if v._type == "merge" then b.foldl' mergeTwo { } (map norm v.contents)
    else unwrap v.content;
  # every level through mkIf/mkMerge/mkOverride, lazily
  norm = v:
    let
      u = unwrap v;
    in
    if b.isAttrs u && !(isStubOrDrv u) && !(u ? _type) then b.mapAttrs (_: norm) u else u;
  # hi over lo, attrsets merged recursively (a duplicate definition is no error here)
  mergeTwo = lo: hi:
    let
      l = if b.isAttrs lo && lo ? _nixany then plain lo else lo;
    in
    if b.isAttrs l && b.isAttrs hi && !(isStubOrDrv l) && !(isStubOrDrv hi) && !(l ? _type) && !(hi ? _type) then
      b.zipAttrsWith (_: vs: if b.length vs == 1 then b.head vs else mergeTwo (b.elemAt vs 0) (b.elemAt vs 1)) [ l hi ]
    else hi;

  moduleKeys = [ "imports" "options" "config" "meta" "disabledModules" "_file" "key" "freeformType" "_class" ];
  configPart = r:
    let
      u = unwrap r;
    in
    if !(b.isAttrs u) || isStubOrDrv u then u
    else if u ? config || u ? options then u.config or { }
    else b.removeAttrs u moduleKeys;
  optionDefaults = o:
    if b.isAttrs o && (o._type or null) == "option" then (if o ? default then o.default else stub)
    else if b.isAttrs o && !(isStubOrDrv o) then b.mapAttrs (_: optionDefaults) o
    else stub;

  standard = {
    inherit lib pkgs config;
    options = stub;
    modulesPath = "/stub/nixos/modules";
    specialArgs = { };
  };
  call = f:
    let
      formals = b.functionArgs f;
      args = if formals == { } then standard else b.mapAttrs (n: _: standard.${n} or stub) formals;
    in
    f args;
  applyAll = n: v: if n > 0 && b.isFunction v then applyAll (n - 1) (call v) else v;
  result = applyAll 4 (import (/. + file));
  view = norm (configPart result);
  options = optionDefaults (norm ((unwrap result).options or { }));

  stubDefaults = {
    virtualisation.oci-containers.backend = p.backend;
    networking = { hostName = "stubhost"; domain = "example.org"; fqdn = "stubhost.example.org"; };
    system.stateVersion = "24.05";
  };
  merged = b.foldl' mergeTwo stub [ stubDefaults (norm options) (if b.isAttrs view && !(isStubOrDrv view) then view else { }) ];
  secretDefaults = dir: n: v:
    mergeTwo { name = n; path = "${dir}/${n}"; owner = "root"; group = "root"; mode = "0400"; } v;
  # age.secrets: only the ones declared here or with a rule in secrets.nix (params.secrets), so that
  # a reference to an undeclared secret fails
  declaredAge = mergeTwo (genAttrs p.secrets (_: { })) (at [ "age" "secrets" ] view);
  config = merged // {
    age = (merged.age or { }) // { secrets = b.mapAttrs (secretDefaults "/run/agenix") declaredAge; };
    sops = (merged.sops or { }) // { secrets = b.mapAttrs (secretDefaults "/run/secrets") (merged.sops.secrets or { }); };
  };

  # ---- what is forced -----------------------------------------------------------------------
  namesOf = v: if b.isAttrs v && !(isStubOrDrv v) then b.attrNames v else [ ];
  at = path: v: b.foldl' (acc: k: if b.isAttrs acc && !(isStubOrDrv acc) && acc ? ${k} then norm acc.${k} else { }) v path;
  names = {
    top = namesOf view;
    services = namesOf (at [ "systemd" "services" ] view);
    secrets = namesOf (at [ "age" "secrets" ] view);
    containers = namesOf (at [ "virtualisation" "oci-containers" "containers" ] view);
  };
  walk = d: v:
    if d > 64 then true
    else if b.isAttrs v then
      (if v ? _nixforce then b.deepSeq v._nixforce true
      else if isStubOrDrv v then true
      else b.all (n: walk (d + 1) (norm v.${n})) (b.attrNames v))
    else if b.isList v then b.all (x: walk (d + 1) (norm x)) v
    else if b.isFunction v then true
    else b.seq v true;
  # The stub config itself, forced on both sides: a patched file that reads config where its
  # original did not must not fail on a stub gap the original never reached (an option declared
  # under a special arg's name, say): this makes the original fail as well, hence n/a.
  optionNames = o:
    if b.isAttrs o && !(isStubOrDrv o) && (o._type or null) != "option" then b.all (n: optionNames (norm o.${n})) (b.attrNames o)
    else true;
  skeleton =
    b.length (b.attrNames merged) > 0
    && optionNames (norm ((unwrap result).options or { }))
    && b.seq config.virtualisation.oci-containers.backend true
    && b.all (n: b.seq config.age.secrets.${n}.path true) (b.attrNames config.age.secrets);
in
if p.level == "names" then b.seq skeleton names
else b.deepSeq names (skeleton && walk 0 view)
