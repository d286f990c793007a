# Unit tests that cannot run inside the Nix build sandbox, and why. package.nix
# deselects them in its checkPhase; scripts/test (outside the sandbox) runs them all.
# tests/unit/test_nix_files.py checks that every name here is still a test in
# tests/unit, so this list cannot silently go stale.
let
  pinnedPath = "runs a rendered script with PATH=/usr/bin:/bin; the sandbox has no /usr/bin";
in
{
  tests = {
    test_any_password_makes_a_url_libpq_reads_back = pinnedPath;
    test_several_files_and_lines = pinnedPath;
    test_rerun_replaces_a_0400_file = pinnedPath;
    test_the_password_is_in_no_argv = pinnedPath;
    test_missing_or_empty_password_file_fails_loudly = pinnedPath;
    test_unreadable_password_file_fails_and_leaves_nothing = pinnedPath;
    test_the_script_nix_builds_is_the_rendered_one_and_works = pinnedPath;
    test_the_oci_and_systemd_renderers_run = pinnedPath;
  };
  paths = {
    # parses and evaluates the repo's own .nix files (flake.nix, nix/, vm-tests/),
    # which are not part of the package's source; checks.<system>.lint runs it
    "tests/unit/test_nix_files.py" = "needs the whole repository, not the package source";
    # downloads from PyPI (no network in the sandbox) and reads nix/ and scripts/
    "tests/unit/test_nix_hashes.py" = "needs the network and the whole repository";
    # load a bench script: bench/ is not in the package's source (scripts/test runs them)
    "tests/unit/test_scan_corpus.py" = "loads bench/scan_quality.py";
    "tests/unit/test_patch_coverage.py" = "loads bench/patch_coverage.py";
    "tests/unit/test_patch_coverage_eval.py" = "loads bench/patch_coverage.py and bench/nixstubs.nix";
    "tests/unit/test_init_coverage.py" = "loads bench/init_coverage.py";
  };
}
