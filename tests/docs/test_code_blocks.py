"""Every fenced code block of README.md and docs/tutorial/*.md runs as written.

Each page is followed as a new user would: in a fresh temporary folder, its blocks in page
order, each run in a subprocess of this venv's Python (``python``, ``unified-jobs`` and ``mypy``
first on PATH). By the block's language:

- ``python`` whose first line is ``# path/to/file.py``: written to that path (a later block
  with the same path replaces it). Other ``python`` blocks run as a script in the folder.
- ``pycon``: run as a doctest in the folder (``...`` matches anything; an exception matches
  by its type).
- ``console``: each ``$ command`` runs in the folder with bash; the lines after it are its
  expected output (stdout and stderr together; ``...`` matches anything).
- ``sh`` / ``bash`` / ``shell``: run as a bash script in the folder.
- ``yaml``: parsed; with a first line ``# path.yaml``, written there. A config (a file under
  ``config/`` or a mapping with a ``workers`` key) is loaded with ``Jobs.from_config``.
- ``toml``: parsed. ``text``: output shown to the reader, not run.

After the last block, every Python file the page wrote is imported, so a file no command
ran still has no undefined name or module-level ``await``.

Markers: an HTML comment on the line right before the opening fence (the rendered page does
not show it):

- ``<!-- fragment: why -->``: a deliberate excerpt that cannot run alone (keep these rare;
  prefer a block that runs).
- ``<!-- skip: why -->``: a command that is not safe or quick to run here (it installs, runs
  for minutes, or runs until stopped). The reason is required.

Marked blocks are reported as skipped tests, with their reason. Any other language, or a
block that fails, fails the page's test with the page and line of the block.

The checkout is installed editable through an import hook, which mypy cannot follow; the
subprocesses get a PYTHONPATH folder holding only a link to the ``unified_jobs`` package, as
a regular install would give them. No block needs Redis or PostgreSQL today; a block that does
would call ``tests.conftest.require_service`` first (skip on a laptop, fail when CI is set).
"""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs" / "tutorial").glob("*.md"))]

pytestmark = pytest.mark.timeout(300)

FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
MARKER = re.compile(r"^<!--\s*(?P<kind>fragment|skip)\s*(?::\s*(?P<reason>.*?))?\s*-->\s*$")
PATH_LINE = re.compile(r"^#\s+(?P<path>[\w.-]+(?:/[\w.-]+)*\.(?:py|ya?ml))\s*$")
OUTPUT_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
COMMAND_TIMEOUT = 120.0


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str | None = None  # "fragment" | "skip"
    reason: str = ""

    @property
    def where(self) -> str:
        try:
            return f"{self.doc.relative_to(ROOT)}:{self.line}"
        except ValueError:
            return f"{self.doc.name}:{self.line}"

    @property
    def path(self) -> str | None:
        """The file the block says it is (``# app/jobs.py`` on its first line), if any."""
        first = self.text.split("\n", 1)[0]
        match = PATH_LINE.match(first)
        return match["path"] if match else None


class DocBlockError(AssertionError):
    """A block did not run as written."""


def parse_blocks(doc: Path, text: str | None = None) -> list[Block]:
    lines = (doc.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, start = opening["fence"], i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (lines[i].startswith(fence) and not lines[i].strip(fence[0]).strip()):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise DocBlockError(f"{doc.name}:{start + 1}: the code block is never closed")
        marker = MARKER.match(lines[start - 1].strip()) if start > 0 else None
        blocks.append(
            Block(
                doc=doc,
                line=start + 1,
                lang=(opening["info"].split() or [""])[0].lower(),
                text="\n".join(body) + "\n",
                marker=marker["kind"] if marker else None,
                reason=(marker["reason"] or "") if marker else "",
            )
        )
        i += 1
    return blocks


class Project:
    """The folder a page's blocks run in, and how they run there."""

    def __init__(self, folder: Path, site: Path) -> None:
        self.folder = folder
        self.written: list[str] = []
        bin_dir = str(Path(sys.executable).parent)
        env = {k: v for k, v in os.environ.items() if not k.startswith("UNIFIED_JOBS_")}
        env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(site))
        env.pop("VIRTUAL_ENV", None)
        self.env = env

    def run_page(self, blocks: list[Block]) -> None:
        for block in blocks:
            if block.marker is None:
                self.run(block)
        self.import_written_modules()

    def run(self, block: Block) -> None:
        runner = {
            "python": self.run_python,
            "py": self.run_python,
            "pycon": self.run_pycon,
            "console": self.run_console,
            "sh": self.run_shell,
            "bash": self.run_shell,
            "shell": self.run_shell,
            "yaml": self.run_yaml,
            "yml": self.run_yaml,
            "toml": self.run_toml,
            "text": lambda block: None,
        }.get(block.lang)
        if runner is None:
            raise DocBlockError(
                f"{block.where}: a ```{block.lang} block; tests/docs runs python, pycon, console, sh, "
                "yaml and toml blocks. Use one of them, ```text for output, or mark it "
                "<!-- fragment: why --> on the line before"
            )
        runner(block)

    # -- the languages -------------------------------------------------------------------

    def run_python(self, block: Block) -> None:
        if block.path is not None:
            self.write(block)
        else:
            self.check_exit(block, "python -c <block>", [sys.executable, "-c", block.text])

    def run_pycon(self, block: Block) -> None:
        script = (
            "import doctest, sys\n"
            "failed, _ = doctest.testfile(sys.argv[1], module_relative=False, name=sys.argv[2],"
            " optionflags=doctest.ELLIPSIS | doctest.IGNORE_EXCEPTION_DETAIL)\n"
            "sys.exit(1 if failed else 0)\n"
        )
        session = self.folder / f".doctest-{block.line}.txt"
        session.write_text(block.text, encoding="utf-8")
        try:
            self.check_exit(block, "the doctest", [sys.executable, "-c", script, str(session), block.where])
        finally:
            session.unlink()

    def run_console(self, block: Block) -> None:
        for command, want in console_commands(block):
            got = self.check_exit(block, command, ["bash", "-c", command])
            checker = doctest.OutputChecker()
            if not checker.check_output(want, got, OUTPUT_FLAGS):
                example = doctest.Example(command, want)
                raise DocBlockError(
                    f"{block.where}: `{command}` printed other output than the page shows:\n"
                    + checker.output_difference(example, got, OUTPUT_FLAGS)
                )

    def run_shell(self, block: Block) -> None:
        self.check_exit(block, "the shell block", ["bash", "-e", "-o", "pipefail", "-c", block.text])

    def run_yaml(self, block: Block) -> None:
        try:
            data = yaml.safe_load(block.text)
        except yaml.YAMLError as exc:
            raise DocBlockError(f"{block.where}: the YAML does not parse: {exc}") from exc
        path = block.path
        if path is not None:
            self.write(block)
        is_config = (path is not None and path.startswith("config/")) or (
            isinstance(data, dict) and "workers" in data
        )
        if is_config:
            self.load_config(block, path)

    def run_toml(self, block: Block) -> None:
        try:
            tomllib.loads(block.text)
        except tomllib.TOMLDecodeError as exc:
            raise DocBlockError(f"{block.where}: the TOML does not parse: {exc}") from exc

    # -- helpers -------------------------------------------------------------------------

    def write(self, block: Block) -> None:
        assert block.path is not None
        target = self.folder / block.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.text, encoding="utf-8")
        if block.path.endswith(".py") and block.path not in self.written:
            self.written.append(block.path)

    def load_config(self, block: Block, path: str | None) -> None:
        if path is not None and path.startswith("config/") and path.count("/") == 1:
            config_dir, env = self.folder / "config", Path(path).stem
        else:  # a config shown without its file name, or in another folder
            config_dir, env = self.folder / f".config-{block.line}", "docs"
            config_dir.mkdir()
            (config_dir / "docs.yaml").write_text(block.text, encoding="utf-8")
        script = (
            "import sys\n"
            "from unified_jobs import Jobs\n"
            "Jobs.from_config(env=sys.argv[1], config_dir=sys.argv[2]).shutdown()\n"
        )
        what = f"Jobs.from_config(env={env!r}) on the block"
        self.check_exit(block, what, [sys.executable, "-c", script, env, str(config_dir)])

    def import_written_modules(self) -> None:
        modules = [p[: -len(".py")].replace("/", ".").removesuffix(".__init__") for p in self.written]
        if not modules:
            return
        script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
        result = self.execute([sys.executable, "-c", script, *modules])
        if result.returncode != 0:
            raise DocBlockError(
                f"importing the page's files ({', '.join(self.written)}) failed:\n{result.stdout}"
            )

    def execute(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

    def check_exit(self, block: Block, what: str, argv: list[str]) -> str:
        result = self.execute(argv)
        if result.returncode != 0:
            raise DocBlockError(
                f"{block.where}: {what} exited with {result.returncode}:\n{result.stdout}\n"
                f"--- the block ---\n{block.text}"
            )
        return result.stdout


def console_commands(block: Block) -> Iterator[tuple[str, str]]:
    """(command, expected output) pairs of a ``console`` block."""
    command: str | None = None
    want: list[str] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            if command is not None:
                yield command, "".join(want)
            command, want = line[2:], []
        elif command is None:
            if line.strip():
                raise DocBlockError(f"{block.where}: a console block starts with `$ command`, got {line!r}")
        else:
            want.append(line + "\n")
    if command is not None:
        yield command, "".join(want)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PYTHONPATH folder with only ``unified_jobs`` in it, as an installed package."""
    folder = tmp_path_factory.mktemp("site")
    (folder / "unified_jobs").symlink_to(ROOT / "unified_jobs", target_is_directory=True)
    return folder


def marked_blocks() -> list[Block]:
    return [block for doc in DOCS for block in parse_blocks(doc) if block.marker is not None]


# -- the pages ---------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_every_block_of_the_page_runs_as_written(doc: Path, tmp_path: Path, site: Path) -> None:
    blocks = parse_blocks(doc)
    assert blocks, f"{doc} has no code block"
    project = Project(tmp_path / "project", site)
    project.folder.mkdir()
    project.run_page(blocks)


@pytest.mark.parametrize("block", marked_blocks(), ids=lambda block: block.where)
def test_marked_block(block: Block) -> None:
    if block.marker == "skip" and not block.reason:
        pytest.fail(f"{block.where}: <!-- skip --> needs a reason: <!-- skip: why -->")
    pytest.skip(f"{block.where}: {block.marker}: {block.reason or 'an excerpt'}")


def test_the_quick_start_make_targets_exist() -> None:
    """The README's quick start is not run (it installs, and ``make test`` takes minutes); its
    targets must still exist and run the demo and the suite."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
    result = subprocess.run(
        ["make", "-n", "demo", "test"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "-m shop.demo" in result.stdout and "-m pytest" in result.stdout, result.stdout


# -- the runner itself: it must be able to fail --------------------------------------------


def run_markdown(text: str, tmp_path: Path, site: Path) -> Project:
    tmp_path.mkdir(parents=True, exist_ok=True)
    doc = tmp_path / "page.md"
    doc.write_text(text, encoding="utf-8")
    project = Project(tmp_path / "project", site)
    project.folder.mkdir()
    project.run_page(parse_blocks(doc))
    return project


def fence(lang: str, body: str, marker: str = "") -> str:
    return f"{marker}\n```{lang}\n{body.strip()}\n```\n" if marker else f"```{lang}\n{body.strip()}\n```\n"


def test_an_undefined_name_fails_the_page(tmp_path: Path, site: Path) -> None:
    page = fence(
        "python", "# app/jobs.py\nfrom unified_jobs import Jobs\njobs = Jobs.from_config(context=make_pool())"
    )
    with pytest.raises(
        DocBlockError, match=r"(?s)importing the page's files \(app/jobs.py\).*NameError.*make_pool"
    ):
        run_markdown(page, tmp_path, site)


def test_a_module_level_await_fails_the_page(tmp_path: Path, site: Path) -> None:
    page = fence("python", "import asyncio\nawait asyncio.sleep(0)")
    with pytest.raises(DocBlockError, match=r"(?s)page.md:1: python -c <block> exited with 1.*SyntaxError"):
        run_markdown(page, tmp_path, site)


def test_console_output_must_match(tmp_path: Path, site: Path) -> None:
    run_markdown(fence("console", "$ echo hello world\nhello ..."), tmp_path / "ok", site)
    with pytest.raises(DocBlockError, match=r"`echo hello` printed other output"):
        run_markdown(fence("console", "$ echo hello\ngoodbye"), tmp_path / "bad", site)


def test_a_doctest_must_pass(tmp_path: Path, site: Path) -> None:
    with pytest.raises(DocBlockError, match=r"(?s)the doctest exited with 1.*Expected:\s+3\s+Got:\s+2"):
        run_markdown(fence("pycon", ">>> 1 + 1\n3"), tmp_path, site)


def test_a_config_block_is_loaded(tmp_path: Path, site: Path) -> None:
    page = fence("yaml", "# config/development.yaml\nworkers:\n  mode: Backgroundqueue")
    with pytest.raises(DocBlockError, match=r"(?s)Jobs.from_config\(env='development'\).*workers.mode"):
        run_markdown(page, tmp_path, site)


def test_marked_and_unknown_blocks(tmp_path: Path, site: Path) -> None:
    fragment = fence("python", "SendWelcome.perform_later(args)", marker="<!-- fragment: an excerpt -->")
    [block] = parse_blocks(tmp_path / "page.md", fragment)
    assert (block.marker, block.reason) == ("fragment", "an excerpt")
    run_markdown(fragment, tmp_path / "marked", site)  # not run, so no NameError
    with pytest.raises(DocBlockError, match=r"page.md:1: a ```ruby block"):
        run_markdown(fence("ruby", "puts 1"), tmp_path / "unknown", site)


def test_every_page_block_is_seen() -> None:
    """The parser finds every fence of the pages (an unclosed or misread fence would hide blocks)."""
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        fences = sum(1 for line in text.splitlines() if FENCE.match(line))
        assert fences == 2 * len(parse_blocks(doc)), doc
