import pytest

from llmdoctor.server.cli import main
from llmdoctor.server.feedback.database import head_revision


def test_db_upgrade_then_current_prints_the_head_revision(feedback_url, capsys):
    assert main(["db", "upgrade", "--db", feedback_url]) == 0
    assert f"base (no feedback tables) -> {head_revision()} (head)" in capsys.readouterr().out
    assert main(["db", "current", "--db", feedback_url]) == 0
    assert capsys.readouterr().out.strip() == f"{head_revision()} (head)"
    assert main(["db", "upgrade", "--db", feedback_url]) == 0
    assert f"already at {head_revision()} (head)" in capsys.readouterr().out


def test_db_downgrade_to_base_drops_the_tables(feedback_url, capsys):
    assert main(["db", "upgrade", "--db", feedback_url]) == 0
    assert main(["db", "downgrade", "--db", feedback_url, "--revision", "base"]) == 0
    assert f"{head_revision()} (head) -> base (no feedback tables)" in capsys.readouterr().out
    assert main(["db", "current", "--db", feedback_url]) == 0
    assert capsys.readouterr().out.strip() == "base (no feedback tables)"


@pytest.mark.parametrize("action", ["upgrade", "current"])
def test_db_bad_url_exits_2_naming_the_flag(action, capsys):
    assert main(["db", action, "--db", "mysql://ann:secret@db/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"llmdoctor db {action}: --db: mysql://ann:***@db/x: unsupported backend")
    assert len(err.strip().splitlines()) == 1 and "secret" not in err


def test_db_unknown_revision_exits_2_naming_the_flag(tmp_path, capsys):
    assert main(["db", "upgrade", "--db", f"sqlite:///{tmp_path / 'f.db'}", "--revision", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--revision:" in err and "'nope'" in err and f"known: base, {head_revision()}, head" in err


def test_db_downgrade_needs_a_revision(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["db", "downgrade", "--db", f"sqlite:///{tmp_path / 'f.db'}"])
    assert info.value.code == 2 and "--revision" in capsys.readouterr().err
