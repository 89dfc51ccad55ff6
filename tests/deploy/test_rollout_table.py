"""The README's rollout table is what tests/deploy/rollout_table.py computes, not a guess."""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rollout_table  # noqa: E402

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_the_computed_one():
    text = README.read_text()
    m = re.search(r"<!-- rollout_table.py ([0-9.]+) -->\n((?:  \|.*\n)+)", text)
    assert m, "the README has no <!-- rollout_table.py SECONDS --> block"
    shown = "\n".join(line.strip() for line in m.group(2).splitlines())
    assert shown == rollout_table.table(float(m.group(1)))


def test_the_budget_rounds_a_percentage_up_and_never_below_one():
    assert rollout_table.budget("1", 1000) == 1
    assert rollout_table.budget("5%", 1000) == 50
    assert rollout_table.budget("5%", 10) == 1
    assert rollout_table.budget("25%", 10) == 3
    # 1,000 nodes one at a time at 31.5 s each: 8.75 hours.
    assert rollout_table.rollout_seconds(31.5, 1000, "1") == 31500
    assert rollout_table.rollout_seconds(31.5, 1000, "5%") == 20 * 31.5
