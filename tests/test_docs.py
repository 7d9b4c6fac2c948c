"""The README and docs/ stay whole: a short front page, every variable documented once, no dead link.

Rules (plain text checks, no network, well under a second):

- **Every variable is documented in exactly one docs page.** A variable is a line `NAME=…` of
  `env.example`. It is *documented* in a page of `docs/*.md` when that page has a variables table (a
  Markdown table whose header's first cell is `variable`) with a row whose first cell names it in
  backticks, alone or among others (`` `CRAFTER_EPISODES` / `CRAFTER_SEED` ``). Rows outside such
  tables, prose, code blocks and the README do not count, so a page may mention any variable freely;
  only its definition row is counted. One page may define a variable in several tables (`CRAFTER_DB_URL`
  in the tables of run_crafter, filter_traces and view, all in docs/modules.md). The reverse holds too:
  a variables table names only variables that `env.example` lists.
- **Every relative link resolves.** Each `[text](target)` and `![alt](target)` in README.md and
  docs/*.md, outside code, whose target has no URL scheme: the path (relative to the page) exists, and
  a `#anchor` into a Markdown page is the GitHub anchor of one of its headings (lower case, punctuation
  other than `-` and `_` dropped, spaces to `-`, `-1`, `-2`… for repeated headings).
- **Every docs page is linked from the README**, so none is orphaned.
- **The README is at most 250 lines** and shows the two commands word for word; `.ci/run` runs exactly
  the README's test command.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250
COMMANDS = (  # the README's two commands, word for word
    "make quickstart   # create .venv (CPU torch pinned), then run the whole loop offline (main job)",
    "make test         # create .venv, start a local PostgreSQL, run the test suite (what CI runs)",
)
TEST_COMMAND = "make test"

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`]*`")
VARIABLE = re.compile(r"`([A-Z][A-Z0-9_]*)`")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def env_variables() -> list[str]:
    text = (ROOT / "env.example").read_text(encoding="utf-8")
    return re.findall(r"^([A-Z][A-Z0-9_]*)=", text, flags=re.M)


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def defined_variables(page: Path) -> set[str]:
    """The variables named in the first cell of a row of a variables table on this page."""
    found: set[str] = set()
    in_table = False
    for line in prose_lines(page.read_text(encoding="utf-8")):
        if not line.lstrip().startswith("|"):
            in_table = False
            continue
        first = cells(line)[0]
        if not in_table:  # a header row starts the table
            in_table = True
            is_variables = first == "variable"
        elif is_variables:
            found.update(VARIABLE.findall(first))
    return found


def slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in prose_lines(page.read_text(encoding="utf-8")):
        match = re.match(r"#{1,6} +(.*?) *#* *$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            yield base if count == 0 else f"{base}-{count}"


def links(page: Path) -> list[str]:
    targets = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        targets += LINK.findall(INLINE_CODE.sub("", line))
    return targets


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: … — not ours to check offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in set(anchors(file)):
            broken.append(f"{target} (no heading #{anchor} in {file.relative_to(ROOT)})")
    return broken


def test_every_variable_is_documented_in_exactly_one_docs_page():
    homes = {page.name: defined_variables(page) for page in sorted(DOCS.glob("*.md"))}
    problems = []
    for name in env_variables():
        where = [page for page, names in homes.items() if name in names]
        if len(where) != 1:
            problems.append(f"{name}: documented in {where or 'no docs page'}")
    listed = set(env_variables())
    for page, names in homes.items():
        problems += [f"{name}: in a variables table of {page}, not in env.example" for name in names - listed]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_every_relative_link_resolves(page):
    assert not broken_links(page), "\n".join(broken_links(page))


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(README)}
    orphans = [page.name for page in sorted(DOCS.glob("*.md")) if page.resolve() not in linked]
    assert not orphans, f"docs pages not linked from README.md: {orphans}"


def test_readme_is_a_short_front_page_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"
    for command in COMMANDS:
        assert command in lines, f"README.md lacks the line: {command}"
    assert any(command.startswith(TEST_COMMAND + " ") for command in COMMANDS)


def test_ci_runs_the_readmes_test_command():
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [line.strip() for line in script if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == TEST_COMMAND, f".ci/run ends with {commands[-1]!r}, not the README's {TEST_COMMAND!r}"
