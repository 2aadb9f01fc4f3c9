"""Two directives that keep the docs in step with the code.

``.. cli-help:: [SUBCOMMAND]``
    the ``--help`` text of ``trellis-mv`` (or of one subcommand), from its argparse parser.
``.. benchmark-table:: GLOB``
    the Markdown result files matching ``GLOB`` (relative to the repository root), turned
    into reStructuredText; where none exists yet, a note that names the command producing it.

It also keeps ``autodata`` from printing the docstring of a constant's type (``int``,
``dict``, ...) as if it were the constant's: the page's own text describes it.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[2]


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise LookupError(f"trellis-mv has no subcommand {name!r}")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _literal(text: str) -> nodes.literal_block:
    block = nodes.literal_block(text, text)
    block["language"] = "text"
    return block


class CliHelp(SphinxDirective):
    """``--help`` of the command, or of one subcommand; with ``:subcommands:``, then of each subcommand."""

    optional_arguments = 1
    has_content = False
    option_spec: ClassVar[dict] = {"subcommands": directives.flag}

    def run(self) -> list[nodes.Node]:
        from trellis_mv.cli import build_parser

        old = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "88"
        try:
            parser = build_parser()
            if self.arguments:
                parser = _subparser(parser, self.arguments[0])
            out: list[nodes.Node] = [_literal(parser.format_help())]
            if "subcommands" in self.options:
                for name, sub in _subcommands(parser).items():
                    out.append(nodes.rubric(text=f"trellis-mv {name}"))
                    out.append(_literal(sub.format_help()))
        finally:
            if old is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = old
        return out


_INLINE_CODE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)]+)\)")


def _inline(text: str) -> str:
    text = _INLINE_CODE.sub(lambda m: f"``{m.group(1)}``", text)
    return _LINK.sub(lambda m: f"`{m.group(1)} <{m.group(2)}>`__", text)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_rst(text: str) -> list[str]:
    """The Markdown the benchmark scripts write (headings, paragraphs, lists, pipe tables) as rST."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|?[\s:|-]+\|?\s*$", lines[i + 1]):
            header = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            out += ["", ".. list-table::", "   :header-rows: 1", ""]
            for row in [header, *rows]:
                row = (row + [""] * len(header))[: len(header)]
                out.append(f"   * - {_inline(row[0]) or '..'}")
                out += [f"     - {_inline(c) or '..'}" for c in row[1:]]
            out.append("")
            continue
        heading = re.match(r"^(#+)\s+(.*)$", line)
        if heading:
            out += ["", f".. rubric:: {_inline(heading.group(2))}", ""]
        elif line.startswith("```"):
            out += ["", ".. code-block:: text", ""]
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                out.append("   " + lines[i])
                i += 1
            out.append("")
        else:
            out.append(_inline(line))
        i += 1
    return out


class BenchmarkTable(SphinxDirective):
    required_arguments = 1
    option_spec: ClassVar[dict] = {"command": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        files = sorted(ROOT.glob(self.arguments[0]))
        lines: list[str] = []
        if not files:
            command = self.options.get("command", "")
            lines = [
                ".. note::",
                "",
                f"   No result file matches ``{self.arguments[0]}`` in this checkout. "
                f"Produce it with ``{command}``; the table appears here on the next build.",
            ]
        for path in files:
            self.env.note_dependency(str(path))
            lines += markdown_to_rst(path.read_text(encoding="utf-8"))
            lines += ["", f"*Source:* ``{path.relative_to(ROOT).as_posix()}``", ""]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.arguments[0]), self.content_offset, container)
        return container.children


def _drop_type_docstring(app: object, what: str, name: str, obj: object, options: object, lines: list[str]) -> None:
    """A constant without a documentation comment gets its type's docstring from autodoc; drop it."""
    if what != "data" or inspect.isclass(obj) or callable(obj):
        return
    own = inspect.cleandoc("\n".join(lines)).strip()
    inherited = inspect.cleandoc(type(obj).__doc__ or "").strip()
    if own and own == inherited:
        lines.clear()


_STARTED: dict[str, float] = {}


def gallery_progress(gallery_conf: dict, fname: str | None, when: str) -> None:
    """Say on the console when each gallery example starts and how long it took (sphinx-gallery's
    ``reset_modules`` hook, called before and after each one), so that a slow machine is not silent."""
    import time

    if fname is None:
        return
    name = Path(fname).name
    if when == "before":
        _STARTED[name] = time.perf_counter()
        print(f"gallery: running {name} ...", file=sys.stderr, flush=True)
    elif name in _STARTED:
        print(f"gallery: {name} done in {time.perf_counter() - _STARTED.pop(name):.0f} s", file=sys.stderr, flush=True)


_REMOTE = re.compile(r"""<(?:script|link)[^>]+(?:src|href)=["'](?:https?:)?//[^"']+""")


def _no_remote_assets(app: Any, exc: BaseException | None) -> None:
    """The pages must work offline: a script or stylesheet from another host (a CDN's MathJax) is an error."""
    if exc is not None or app.builder.format != "html":
        return
    found = []
    for page in sorted(Path(app.outdir).rglob("*.html")):
        for match in _REMOTE.finditer(page.read_text(encoding="utf-8", errors="replace")):
            found.append(f"{page.relative_to(app.outdir)}: {match[0]}")
    if found:
        raise RuntimeError(f"the built pages load {len(found)} assets from the network, e.g. {found[0]}; ship them "
                           "with the docs instead (maths: the sphinx-mathjax-offline extension)")


def setup(app: object) -> dict[str, object]:
    app.connect("autodoc-process-docstring", _drop_type_docstring)
    app.connect("build-finished", _no_remote_assets)
    app.add_directive("cli-help", CliHelp)
    app.add_directive("benchmark-table", BenchmarkTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
