"""The docs stay honest: every public name and every hook has an autodoc entry in docs/api.rst,
every gallery example is a valid sphinx-gallery script, and every code excerpt the pages
take from a file still finds its start and end. Parses files only; builds nothing."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api.rst"
GALLERY = DOCS / "gallery"

#: Modules whose ``__all__`` is the public API; each name must have an autodoc entry.
PUBLIC_MODULES = [
    "trellis_mv",
    "trellis_mv.run",
    "trellis_mv.samplers",
    "trellis_mv.sparse",
    "trellis_mv.testing",
    "trellis_mv.proxy",
    "trellis_mv.diagnostics",
    "trellis_mv.voxels",
    "trellis_mv.integrations.trellis2",
    "trellis_mv.integrations.trellis",
    "trellis_mv_weighted",
    "trellis_mv_consistency",
    "trellis_mv_spatial",
]

_DIRECTIVE = re.compile(r"^\.\. (auto\w+|currentmodule|module|literalinclude|include)::\s*(\S*)\s*$")
_OPTION = re.compile(r"^\s+:([\w-]+):\s*(.*)$")


def _directives(path: Path) -> list[tuple[str, str, dict[str, str]]]:
    """``(directive, argument, options)`` of every top-level directive in an rST file."""
    found: list[tuple[str, str, dict[str, str]]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _DIRECTIVE.match(line)
        if m:
            found.append((m.group(1), m.group(2), {}))
            continue
        o = _OPTION.match(line)
        if o and found:
            found[-1][2][o.group(1)] = o.group(2).strip()
    return found


def documented_names(path: Path = API) -> set[str]:
    """Fully qualified names that an autodoc directive of ``path`` documents."""
    names: set[str] = set()
    current = ""
    for directive, arg, options in _directives(path):
        if directive in ("currentmodule", "module"):
            current = arg
        elif directive == "automodule":
            names.add(arg)
            members = options.get("members", "")
            names.update(f"{arg}.{m.strip()}" for m in members.split(",") if m.strip())
        elif directive.startswith("auto"):
            # a dotted argument names its module, except for members written Class.member
            explicit = "." in arg and directive not in ("automethod", "autoattribute", "autoproperty")
            full = arg if explicit or not current else f"{current}.{arg}"
            names.add(full)
            members = options.get("members", "")
            names.update(f"{full}.{m.strip()}" for m in members.split(",") if m.strip())
    return names


def _public(module_name: str) -> dict[str, object]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # an optional distribution missing here: nothing to check
        pytest.skip(f"{module_name} does not import here: {exc}")
    return {name: getattr(module, name, None) for name in getattr(module, "__all__", [])}


def _canonical(obj: object) -> str | None:
    """Where a re-exported class or function is defined (autodoc may document it there)."""
    if inspect.isclass(obj) or inspect.isfunction(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    return None


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_an_autodoc_entry(module_name: str) -> None:
    documented = documented_names()
    missing = [
        n for n, obj in _public(module_name).items()
        if f"{module_name}.{n}" not in documented and _canonical(obj) not in documented
    ]
    assert not missing, (
        f"{module_name}.__all__ names without an autodoc entry in docs/api.rst: {missing}; "
        f"add e.g. '.. autofunction:: {module_name}.{missing[0]}' (or autoclass/autodata)"
    )


def hookspecs() -> list[str]:
    from trellis_mv import _spec

    marker = f"{_spec.PROJECT}_spec"
    return [name for name, obj in inspect.getmembers(_spec, inspect.isfunction) if hasattr(obj, marker)]


def test_hookspecs_are_found() -> None:
    assert "register_aggregators" in hookspecs()


@pytest.mark.parametrize("hook", hookspecs())
def test_every_hook_is_documented(hook: str) -> None:
    from trellis_mv import _spec

    assert f"trellis_mv._spec.{hook}" in documented_names(), (
        f"hook {hook!r} has no entry in docs/api.rst; add '.. autofunction:: trellis_mv._spec.{hook}' "
        "under 'Hook specifications'"
    )
    doc = inspect.getdoc(getattr(_spec, hook)) or ""
    assert doc.strip(), f"hook {hook!r} has no docstring: the docstring is its documentation"


def test_the_parser_reads_what_autodoc_reads(tmp_path: Path) -> None:
    rst = tmp_path / "api.rst"
    rst.write_text(
        ".. currentmodule:: pkg\n\n.. autofunction:: f\n\n.. autoclass:: pkg.sub.C\n   :members: m, n\n\n"
        ".. automodule:: pkg.mod\n   :members: a,b\n",
        encoding="utf-8",
    )
    assert documented_names(rst) == {"pkg.f", "pkg.sub.C", "pkg.sub.C.m", "pkg.sub.C.n", "pkg.mod", "pkg.mod.a",
                                     "pkg.mod.b"}


def gallery_scripts() -> list[Path]:
    return sorted(GALLERY.glob("plot_*.py"))


def test_gallery_has_the_examples_the_docs_promise() -> None:
    stems = {p.stem for p in gallery_scripts()}
    for topic in ("single_vs_multi", "compare_aggregators", "custom_aggregator", "per_stage"):
        assert any(topic in s for s in stems), f"no gallery example about {topic!r} in docs/gallery/"


@pytest.mark.parametrize("script", gallery_scripts(), ids=lambda p: p.name)
def test_gallery_script_has_a_title(script: Path) -> None:
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8")), clean=False) or ""
    lines = [line for line in doc.strip().splitlines()]
    assert len(lines) >= 2 and set(lines[1].strip()) == {"="} and len(lines[1].strip()) >= len(lines[0].strip()), (
        f"{script.name} must open with a docstring whose first line is a title underlined with '='"
    )


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.rst"))


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_literalincludes_still_match_their_files(page: Path) -> None:
    for directive, arg, options in _directives(page):
        if directive not in ("literalinclude", "include"):
            continue
        target = (page.parent / arg).resolve()
        assert target.is_file(), f"{page.name}: {directive} of {arg}, which does not exist"
        text = target.read_text(encoding="utf-8")
        pos = 0
        for key in ("start-at", "start-after", "end-before", "end-at"):
            if key in options:
                found = text.find(options[key], pos)
                assert found >= 0, f"{page.name}: {arg} no longer contains {options[key]!r} ({key})"
                pos = found


def test_every_page_is_in_a_toctree() -> None:
    index = (DOCS / "index.rst").read_text(encoding="utf-8")
    for page in _pages():
        if page.stem != "index":
            assert re.search(rf"^\s+{re.escape(page.stem)}\s*$", index, re.M), f"{page.name} is not in index.rst's toctree"
