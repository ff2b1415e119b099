"""The documentation runs: every python block of the tutorials and family pages, every example.

A page's python blocks run in order in one namespace (later blocks build on earlier
ones), in a fresh working directory, with the registries (learners, families, envs,
communication functions, reward rules) restored afterwards. ``bash`` blocks are not run.
"""
from __future__ import annotations

import importlib
import inspect
import re
import runpy
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = ["concepts.md", "quickstart.md", "build_a_hierarchy.md", "make_your_agents.md"]
FAMILY_PAGES = ["tag.md", "hrl_cg.md", "himpo.md", "alma.md"]
SITE_PAGES = ["index.md", *TUTORIALS, *FAMILY_PAGES]
EXAMPLES = sorted((DOCS / "examples").glob("*.py"))
#: a tiny budget every example accepts
EXAMPLE_ARGS = ["--steps", "64", "--num-envs", "2", "--eval-envs", "2"]
#: pages other people write; links to them are checked once they exist
WRITTEN_ELSEWHERE = {"sweeps.md"}

FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def python_blocks(markdown: str) -> list[tuple[int, str]]:
    """``(line of the first code line, code)`` of every fenced ``python`` block, in order.

    Fences follow CommonMark: a block closes at a fence of the same character at least as
    long as the one that opened it, so blocks shown inside longer fences are not extracted.
    An unclosed fence is an error (it would swallow the rest of the page).
    """
    blocks, opened, start, language, lines = [], None, 0, "", []
    for number, line in enumerate(markdown.splitlines(), start=1):
        match = FENCE.match(line)
        if opened is None:
            if match:
                opened, start, lines = match["fence"], number, []
                language = match["info"].split()[0].lower() if match["info"] else ""
            continue
        if match and not match["info"] and match["fence"][0] == opened[0] and len(match["fence"]) >= len(opened):
            if language in ("python", "py"):
                blocks.append((start + 1, "\n".join(lines) + "\n"))
            opened = None
        else:
            lines.append(line)
    if opened is not None:
        raise ValueError(f"the code fence opened at line {start} is never closed")
    return blocks


def run_blocks(blocks: list[tuple[int, str]], filename: str) -> dict:
    """Run the blocks in order in one namespace; a failure names the page and the block's line.

    The namespace is a module's, registered in ``sys.modules`` while the blocks run, so that
    what needs a real module (dataclasses, pickling) works as in a script.
    """
    page = types.ModuleType("docs_page")
    page.__file__ = filename
    sys.modules[page.__name__] = page
    try:
        for line, code in blocks:
            # leading newlines keep traceback line numbers equal to the page's
            compiled = compile("\n" * (line - 1) + code, filename, "exec")
            try:
                exec(compiled, page.__dict__)
            except Exception as error:
                raise AssertionError(f"{filename}:{line}: the python block starting here fails with "
                                     f"{type(error).__name__}: {error}") from error
    finally:
        del sys.modules[page.__name__]
    return page.__dict__


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and Gitea) give a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    return {github_anchor(m[1]) for m in re.finditer(r"^#{1,6}\s+(.*)$", markdown, re.MULTILINE)}


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """One thread, a fixed seed, a scratch working directory; registries and sacred observers restored."""
    from hmarl.algorithms import FAMILIES, LEARNERS
    from hmarl.envs import ENVS
    from hmarl.comm import COMMUNICATION
    from hmarl.run.experiment import ex
    from hmarl.rewards import REWARD_RULES

    registries = [LEARNERS, FAMILIES, ENVS, COMMUNICATION, REWARD_RULES]
    saved = [dict(r) for r in registries]
    observers = list(ex.observers)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for registry, content in zip(registries, saved):
        registry.clear()
        registry.update(content)
    ex.observers[:] = observers
    torch.set_num_threads(threads)


# -- the harness itself ------------------------------------------------------------------
BAD_PAGE = """# A page

```bash
python -m hmarl this is not run
```

```python
total = 1
```

````markdown
```python
raise RuntimeError("shown inside a longer fence: not extracted")
```
````

```python
total += 1
assert total == 3, f"total is {total}"
```
"""


def test_extractor_finds_python_blocks_with_their_lines():
    blocks = python_blocks(BAD_PAGE)
    assert [line for line, _ in blocks] == [8, 18]
    assert blocks[0][1] == "total = 1\n"


def test_a_failing_block_fails_the_page_with_its_location():
    with pytest.raises(AssertionError, match=r"bad\.md:18: .*AssertionError: total is 2"):
        run_blocks(python_blocks(BAD_PAGE), "bad.md")


def test_blocks_of_a_page_share_one_namespace():
    namespace = run_blocks(python_blocks(BAD_PAGE.replace("total == 3", "total == 2")), "good.md")
    assert namespace["total"] == 2


def test_an_unclosed_fence_is_an_error():
    with pytest.raises(ValueError, match="opened at line 3 is never closed"):
        python_blocks("# A page\n\n```python\nx = 1\n")


def test_anchors_follow_github():
    assert github_anchor("HiMPo on LBF with Survival (Hard) and VMAS sampling") == \
        "himpo-on-lbf-with-survival-hard-and-vmas-sampling"
    assert github_anchor("A longer budget: 1M env steps (3 seeds)") == "a-longer-budget-1m-env-steps-3-seeds"


# -- the pages -----------------------------------------------------------------------------
@pytest.mark.parametrize("page", TUTORIALS + FAMILY_PAGES)
def test_python_blocks_of_page_run(page, isolated):
    blocks = python_blocks((DOCS / page).read_text())
    assert blocks, f"{page} has no python block to run"
    run_blocks(blocks, str(DOCS / page))


PRIVATE = re.compile(r"\.(_[A-Za-z]\w*)")  # `.name` starting with one underscore (not a dunder such as __init__)


@pytest.mark.parametrize("page", TUTORIALS + FAMILY_PAGES)
def test_pages_use_no_private_attributes(page):
    """What the pages show a user is the public interface: no ``obj._name`` in their code or text."""
    used = sorted({match[1] for match in PRIVATE.finditer((DOCS / page).read_text())})
    assert not used, f"{page} uses private attributes: {used}"


def test_examples_use_no_private_attributes():
    used = {example.name: found for example in EXAMPLES
            if (found := sorted({m[1] for m in PRIVATE.finditer(example.read_text())}))}
    assert not used, used


@pytest.mark.parametrize("page", SITE_PAGES)
def test_relative_links_resolve(page):
    text = (DOCS / page).read_text()
    broken = []
    for match in LINK.finditer(text):
        target = match["target"]
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        file = (DOCS / page).parent / path if path else DOCS / page
        if path in WRITTEN_ELSEWHERE and not file.exists():
            continue
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(target)
    assert not broken, f"{page}: links to nothing: {broken}"


# -- the examples --------------------------------------------------------------------------
def test_there_are_examples_and_the_site_links_each():
    assert len(EXAMPLES) >= 2
    for page in ("index.md", "build_a_hierarchy.md"):
        text = (DOCS / page).read_text()
        missing = [e.name for e in EXAMPLES if f"examples/{e.name}" not in text]
        assert not missing, f"{page} does not link {missing}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs_with_a_tiny_budget(example, isolated, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(example), *EXAMPLE_ARGS])
    runpy.run_path(str(example), run_name="__main__")
    out = capsys.readouterr().out
    assert "final metrics:" in out and "eval/return" in out, out


# -- the API reference ---------------------------------------------------------------------
#: the framework's modules whose public classes, functions and methods must say what they do
CORE_MODULES = ["hmarl.spec", "hmarl.strategies", "hmarl.level", "hmarl.hierarchy", "hmarl.comm", "hmarl.rewards", "hmarl.learner",
                "hmarl.run.experiment", "hmarl.buffers", "hmarl.algorithms.himpo.graphs", "hmarl.run.monitor", "hmarl.algorithms.hrl_cg.goals", "hmarl.run.config",
                "hmarl.nn.gnn", "hmarl.nn.mlp", "hmarl.run.observer", "hmarl.algorithms.tag.action_trace", "hmarl.studies.bench",
                "hmarl.run.callbacks"]


def undocumented(module) -> list[str]:
    """Public classes, functions and methods defined in ``module`` with no docstring of their own
    or of the method they override."""
    missing = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            missing += [name] if not obj.__doc__ else []
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                if attr.startswith("_") or not inspect.isfunction(function) or function.__doc__:
                    continue
                if function.__module__ != module.__name__:
                    continue  # attached from elsewhere (torch-geometric generates ``collect`` on first use)
                if not any(getattr(getattr(base, attr, None), "__doc__", None) for base in obj.__mro__[1:]):
                    missing.append(f"{name}.{attr}")
    return missing


@pytest.mark.parametrize("name", CORE_MODULES)
def test_core_api_has_docstrings(name):
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} has no module docstring"
    assert not undocumented(module), f"{name}: no docstring on {undocumented(module)}"


def test_api_reference_builds(tmp_path):
    """The command in docs/index.md, run in process: every module gets a page, no docstring fails."""
    pytest.importorskip("pdoc")
    import pdoc.render  # binds pdoc as well

    specs = [ROOT / "hmarl", *sorted(ROOT.glob("hmarl/[!_]*.py")), ROOT / "hmarl" / "nn",
             *sorted(ROOT.glob("hmarl/nn/[!_]*.py")), ROOT / "hmarl" / "algorithms",
             ROOT / "hmarl" / "envs", *sorted(ROOT.glob("hmarl/envs/[!_]*.py"))]
    pdoc.render.configure(docformat="google", math=True)
    # Imported first: what these dependencies warn about while importing (sacred's cpuinfo runs
    # `uname -p`, torch-geometric uses torch.jit.script) is not about our docstrings.
    import sacred  # noqa: F401
    import torch_geometric  # noqa: F401
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*specs, output_directory=tmp_path)
    # a module-level ``Tensor = torch.Tensor`` alias makes pdoc guess where torch's members come from
    problems = [str(w.message) for w in caught if "Cannot determine where" not in str(w.message)]
    assert not problems, problems
    expected = [f"{p.relative_to(ROOT).with_suffix('')}.html" for p in ROOT.glob("hmarl/[!_]*.py")]
    expected += ["hmarl.html", "hmarl/level.html", "hmarl/algorithms/ppo.html", "hmarl/envs/registry.html", "index.html"]
    assert not [page for page in expected if not (tmp_path / page).exists()]
