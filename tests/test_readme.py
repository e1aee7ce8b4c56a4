"""The README's first lines are the two set-up commands, and the Python examples of the README and docs run."""

import contextlib
import glob
import inspect
import io
import os
import re

import pytest

pytestmark = pytest.mark.slow  # runs the README's and the docs' examples, training included

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def read(page: str = "README.md") -> str:
    with open(os.path.join(ROOT, page)) as f:
        return f.read()


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", read(page), re.S)


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    block = re.search(r"```bash\n(.*?)```", read(), re.S).group(1)
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert commands[0].endswith("python -m benchmarks.gaps")
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert commands[1] in f.read()


class _Page:
    """One page's blocks run in order in one namespace (later blocks use the earlier ones' model and data)."""

    def __init__(self, page: str):
        self.page = page
        self.blocks = python_blocks(page)
        self.namespace: dict = {}
        self.done = 0  # blocks run so far
        self.failed: int | None = None  # index of the first block that raised
        self.out = io.StringIO()  # everything the page's blocks printed

    def run_through(self, index: int) -> None:
        if self.failed is not None and self.failed < index:
            pytest.fail(f"{self.page}: python block {self.failed} failed, and block {index} needs it")
        while self.done <= index:
            i = self.done
            self.done += 1
            try:
                with contextlib.redirect_stdout(self.out):
                    exec(compile(self.blocks[i], f"{self.page} (python block {i})", "exec"), self.namespace)
            except BaseException:
                self.failed = i
                raise


_pages: dict[str, _Page] = {}


def _page(page: str) -> _Page:
    if page not in _pages:
        _pages[page] = _Page(page)
    return _pages[page]


CASES = [(page, i) for page in PAGES for i in range(len(python_blocks(page)))]


@pytest.mark.parametrize(("page", "index"), CASES, ids=[f"{page}-block{i}" for page, i in CASES])
def test_python_examples_run(page, index):
    """Every python block of README.md and docs/*.md, in order, in one namespace per page."""
    _page(page).run_through(index)


def test_readme_python_examples_print_the_gaps_and_compare_a_users_pair():
    readme = _page("README.md")
    assert len(readme.blocks) >= 2
    readme.run_through(len(readme.blocks) - 1)
    out = readme.out.getvalue()
    assert "approximation_gap" in out and "amortization_gap" in out
    runs = readme.namespace["comparison"].runs
    assert [(r["objective"], r["num_particles"]) for r in runs] == [("elbo", 5), ("iwae", 5), ("iwae-dreg", 5)]
    for r in runs:  # the importance-weighted bound with K = 500 sits above the ELBO of the trained guide
        assert r["test_log_px"]["mean"] >= r["test_elbo"]["mean"] - 3 * (r["test_log_px"]["se"] + r["test_elbo"]["se"])


def test_the_readmes_user_pair_is_the_one_the_command_line_imports():
    """`--model tests.user_programs:make_pair` runs the README's classes: the sources are the same."""
    from tests import user_programs

    block = python_blocks("README.md")[1]
    for cls in (user_programs.Decoder, user_programs.Encoder):
        assert inspect.getsource(cls) in block


def test_a_guide_declaring_its_own_family_gets_q_star_in_it():
    page = _page("docs/models.md")
    page.run_through(len(page.blocks) - 1)
    assert page.namespace["gaps"].family == "guide"
