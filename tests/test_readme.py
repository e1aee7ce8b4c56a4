"""The README's first lines are the two set-up commands, and its Python example runs."""

import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def read():
    with open(README) as f:
        return f.read()


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    block = re.search(r"```bash\n(.*?)```", read(), re.S).group(1)
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert commands[0].endswith("python -m benchmarks.gaps")
    with open(os.path.join(os.path.dirname(README), ".ci", "run")) as f:
        assert commands[1] in f.read()


def test_readme_python_examples_run(capsys):
    """Every python block, in order, in one namespace (later blocks use the first one's model and data)."""
    blocks = re.findall(r"```python\n(.*?)```", read(), re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "approximation_gap" in out and "amortization_gap" in out
    assert namespace["gaps"].family == "guide"
