"""``generate worker`` writes only inside the project folder (in this process, fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from unified_jobs.cli import main


def generate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = int(main(["generate", "worker", "report", *args]) or 0)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("where", ["absolute", "dot-dot", "dot-dot inside", "symlink"])
def test_a_tests_dir_outside_the_project_is_refused_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    project, outside = tmp_path / "project", tmp_path / "outside"
    project.mkdir()
    outside.mkdir()
    monkeypatch.chdir(project)
    tests_dir = {
        "absolute": str(outside / "tests"),
        "dot-dot": "../outside/tests",
        "dot-dot inside": "tests/../../outside",
        "symlink": "linked/tests",
    }[where]
    if where == "symlink":
        (project / "linked").symlink_to(outside)
    code, err = generate(capsys, "--tests-dir", tests_dir)
    assert code == 1
    assert err.startswith(f"error: --tests-dir {tests_dir} is "), err
    assert "outside the project folder" in err and err.rstrip().endswith("nothing was written")
    assert files(outside) == []
    assert files(project) == (["linked"] if where == "symlink" else [])


def test_a_tests_dir_inside_the_project_is_fine_even_absolute_or_with_dot_dot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert generate(capsys, "--tests-dir", "tests/x/../workers")[0] == 0
    assert (tmp_path / "tests" / "workers" / "test_report.py").is_file()
    assert generate(capsys, "--force", "--tests-dir", str(tmp_path / "checks"))[0] == 0
    assert (tmp_path / "checks" / "test_report.py").is_file()
    assert not (tmp_path / "tests" / "x").exists()


def test_a_workers_dir_outside_the_project_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    code, err = generate(capsys, "--workers-dir", str(tmp_path / "elsewhere"))
    assert code == 1 and "outside the current folder" in err
    assert files(tmp_path) == ["project"]
