"""The README's Testing section says what `tests/run-all` does and which suites exist, and stays so:
its numbered step list is `tests/run-all`'s steps, in order, and every suite has its line and link."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# `nice -n 10 CMD` in the script is CMD in the README: how it is scheduled is not what it does
NICE = re.compile(r"^nice -n \d+ ")


def run_all_steps(text: str) -> list[tuple[str, str]]:
    """[(step name, the step's command)] of tests/run-all: each `step "NAME"` line and the first
    line after it that is neither a comment nor blank."""
    steps: list[tuple[str, str]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.fullmatch(r'step "(.+)"', line)
        if not m:
            continue
        command = next(
            (c.strip() for c in lines[i + 1:] if c.strip() and not c.lstrip().startswith("#")), None
        )
        assert command and not command.startswith("step "), f"tests/run-all: step {m[1]!r} runs nothing"
        steps.append((m[1], NICE.sub("", command)))
    return steps


def readme_testing_section(readme: str) -> str:
    start = readme.index("\n## Testing\n")
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end >= 0 else None]


def readme_steps(section: str) -> list[tuple[int, str]]:
    """[(number, command)] of the numbered list in the Testing section: `N. `COMMAND`: ...`."""
    return [(int(n), c) for n, c in re.findall(r"^(\d+)\. `([^`]+)`", section, re.M)]


def test_readme_run_all_steps_are_the_scripts_steps_in_order():
    script = run_all_steps((REPO / "tests" / "run-all").read_text())
    readme = readme_steps(readme_testing_section((REPO / "README.md").read_text()))
    assert len(script) >= 8, script  # the parser found the steps, not a fragment
    assert [n for n, _ in readme] == list(range(1, len(readme) + 1)), "README steps not numbered 1, 2, 3, ..."
    assert [c for _, c in readme] == [c for _, c in script], (
        "README's Testing steps differ from tests/run-all's:\n"
        + "\n".join(f"  run-all: {c}  ({name})" for name, c in script)
    )


def test_the_step_extraction_sees_a_change():
    """The comparison can fail: a step added to, or reordered in, the script is seen."""
    text = (REPO / "tests" / "run-all").read_text()
    steps = run_all_steps(text)
    added = run_all_steps(text + '\nstep "something new"\n# why\nnice -n 10 tests/new.sh --flag\n')
    assert added == steps + [("something new", "tests/new.sh --flag")]
    first, second = steps[0][1], steps[1][1]
    # swap the first two steps' command lines (whole lines only: comments and names stay)
    swapped = re.sub(
        rf"^({re.escape(first)}|{re.escape(second)})$",
        lambda m: second if m[1] == first else first,
        text,
        flags=re.M,
    )
    assert [c for _, c in run_all_steps(swapped)] == [second, first] + [c for _, c in steps[2:]]


def test_every_suite_has_its_line_and_every_link_resolves():
    section = readme_testing_section((REPO / "README.md").read_text())
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", section)
    missing = [link for link in links if not link.startswith("http") and not (REPO / link).exists()]
    assert not missing, f"README Testing links to files that do not exist: {missing}"
    # a suite is a file tests/<name>.rs or a directory tests/<name>/ with a main.rs (cargo's two forms)
    suites = sorted(f"tests/{p.name}" for p in (REPO / "tests").glob("*.rs"))
    suites += sorted(f"tests/{p.parent.name}/" for p in (REPO / "tests").glob("*/main.rs"))
    suites += ["tests/deploy/", "CONTRIBUTING.md"]
    unlinked = [s for s in suites if s not in links]
    assert not unlinked, f"README Testing has no line linking to {unlinked}"


def test_contributing_links_resolve():
    """CONTRIBUTING.md's reading order and test map point at files that exist (a move breaks it here)."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert len(links) > 20, links
    missing = [link for link in links if not link.startswith("http") and not (REPO / link).exists()]
    assert not missing, f"CONTRIBUTING.md links to files that do not exist: {missing}"
