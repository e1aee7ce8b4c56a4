"""docs/reliability.md's fault table names tests that exist: a guarantee listed there is one the suite holds."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_test_named_in_the_fault_table_exists():
    with open(os.path.join(REPO, "docs", "reliability.md")) as f:
        table = f.read().split("## Fault classes tested", 1)[1]
    paths = set(re.findall(r"tests/[\w/]+\.py", table))
    names = set(re.findall(r"\b(test_\w+)\b", table)) - {os.path.basename(p)[:-3] for p in paths}
    assert len(names) >= 15
    defined = set()
    for root, _, files in os.walk(os.path.join(REPO, "tests")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(root, name)) as f:
                    defined |= set(re.findall(r"^def (test_\w+)\(", f.read(), re.M))
    for path in paths:
        assert os.path.exists(os.path.join(REPO, path)), path
    assert sorted(names - defined) == []
