"""The decision of `make audit` (.ci/audit.py) on pip-audit reports: findings fail, accepted ones
need a reason, and a service that knows none of the packages reads as unreachable, not clean."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ci_audit", ROOT / ".ci" / "audit.py")
audit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(audit)

PILLOW_FLAW = {"name": "pillow", "version": "10.0.0",
               "vulns": [{"id": "PYSEC-2023-175", "aliases": ["CVE-2023-4863"], "fix_versions": ["10.0.1"]}]}


def test_a_finding_fails_the_audit():
    status, lines = audit.verdict({"dependencies": [PILLOW_FLAW, {"name": "six", "version": "1.17.0", "vulns": []}]}, {})
    assert status == 1
    assert any("FINDING pillow 10.0.0: PYSEC-2023-175" in line for line in lines)


def test_a_finding_accepted_by_an_alias_passes_and_is_still_printed():
    status, lines = audit.verdict({"dependencies": [PILLOW_FLAW]}, {"CVE-2023-4863": "WebP decoding disabled"})
    assert status == 0
    assert any("accepted" in line and "WebP decoding disabled" in line for line in lines)


def test_every_version_unknown_to_pypi_is_a_skip_not_a_clean_audit():
    report = {"dependencies": [{"name": n, "skip_reason": f"Dependency not found on PyPI and could not be audited: {n} (1)"}
                               for n in ("numpy", "pillow", "vitrine")]}
    status, lines = audit.verdict(report, {})
    assert status == 0
    assert lines[0].startswith("audit skipped: service unreachable")


def test_some_packages_skipped_still_audits_the_rest():
    report = {"dependencies": [PILLOW_FLAW, {"name": "private-pkg", "skip_reason": "Dependency not found on PyPI"}]}
    status, lines = audit.verdict(report, {})
    assert status == 1 and "1 skipped" in lines[0]


def test_an_ignore_entry_without_a_reason_is_refused(tmp_path):
    path = tmp_path / "ignore.txt"
    path.write_text("# comment\nGHSA-aaaa-bbbb-cccc  pinned by the base image until 2027-01\nCVE-2099-1\n")
    with pytest.raises(SystemExit, match="CVE-2099-1 has no reason"):
        audit.read_ignores(path)
    path.write_text("GHSA-aaaa-bbbb-cccc  pinned by the base image until 2027-01\n")
    assert audit.read_ignores(path) == {"GHSA-aaaa-bbbb-cccc": "pinned by the base image until 2027-01"}


def test_the_repository_ignore_file_parses():
    assert all(audit.read_ignores(ROOT / ".ci" / "audit-ignore.txt").values())
