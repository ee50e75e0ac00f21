"""The suite's time budget (tests/time_budget.json, checked at the end of a whole run by conftest.py)
names every test module, and its check flags a module that grew past its share."""

import json
from pathlib import Path

from conftest import BUDGET_FILE, over_budget

TESTS = Path(__file__).parent


def test_every_test_module_has_a_share_and_the_shares_fit_the_run():
    budget = json.loads(BUDGET_FILE.read_text())
    modules = {p.name for p in TESTS.glob("test_*.py")}
    assert set(budget["modules"]) == modules, set(budget["modules"]) ^ modules
    assert 0.99 <= sum(budget["modules"].values()) <= 1.03  # each share is rounded up
    assert budget["slack"] >= 1.0 and 0 <= budget["noise"] < 0.05
    assert budget["wall_minutes_max"] <= 40


def test_a_module_past_its_share_or_without_one_is_named():
    budget = {"modules": {"test_a.py": 0.5, "test_b.py": 0.5}, "slack": 1.2, "noise": 0.01}
    assert over_budget({"test_a.py": 50, "test_b.py": 50}, budget) == []
    grown = over_budget({"test_a.py": 70, "test_b.py": 30}, budget)
    assert len(grown) == 1 and grown[0].startswith("test_a.py took 70.0%")
    assert over_budget({"test_a.py": 1, "test_b.py": 1, "test_c.py": 1}, budget) == [
        "test_c.py has no entry in time_budget.json"
    ]
