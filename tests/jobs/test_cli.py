"""The vitrine command's own behaviour: --version, and one-line errors for what the user asked."""

from __future__ import annotations

import pytest

from jobs import cli


def test_version_names_the_packages_that_matter(capsys):
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("vitrine 0.1.0") and "ray 2." in out and "keras 3." in out


def test_user_mistakes_are_one_line_not_a_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("VITRINE_DEBUG", raising=False)
    assert cli.main(["tune", "--grid", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitrine tune: error: ") and "missing.yaml" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert cli.main(["evaluate", "--model", str(tmp_path)]) == 2
    assert "LATEST" in capsys.readouterr().err
    monkeypatch.setenv("VITRINE_DEBUG", "1")
    with pytest.raises(Exception, match="not found"):
        cli.main(["tune", "--grid", str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize("command", ["embed", "build-index"])
def test_out_means_one_thing_the_storage_root_is_storage(command, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--out is now --storage" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    help_text = capsys.readouterr().out
    assert "--storage" in help_text and "--out" not in help_text
