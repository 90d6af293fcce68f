"""The docs match the code: every ``medseg-mem ...`` command line in README.md and docs/guide.md parses (click's
parser, in-process, with ``--help`` appended so nothing runs), and the output headers they quote (``plan``'s and
``compare``'s table headers, ``run``'s summary lines) are what the commands print today."""

import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from click.testing import CliRunner

from medseg_mem.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", ROOT / "docs" / "guide.md")
#: A command in a code block (``medseg-mem ...``, ``$ medseg-mem ...``, ``python -m medseg_mem ...``, torchrun's
#: ``-m medseg_mem ...``) or in an inline code span.
COMMAND = re.compile(r"(?:^|\$ |`|-m )(?:medseg-mem|medseg_mem) ([a-z][^`]*)")


def code_blocks(text: str):
    """``(language, lines)`` of each fenced block of a Markdown text."""
    return [(m.group(1), m.group(2).splitlines()) for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S)]


def command_lines(path: Path):
    """Every command line of ``path``: in code blocks (continuations joined, comments dropped) and inline spans."""
    text = path.read_text(encoding="utf-8")
    found = []
    for _, lines in code_blocks(text):
        joined = "\n".join(lines).replace("\\\n", " ")
        for line in (line.strip() for line in joined.splitlines()):
            if line.startswith(("$", "medseg", "torchrun", "python")):
                found += [m.group(1) for m in COMMAND.finditer(line)]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [m.group(1) for m in re.finditer(r"`(?:medseg-mem|python -m medseg_mem) ([a-z][^`]*)`", prose)]
    return found


def arguments(line: str):
    """The tokens of a command line, without a trailing comment, pipe or redirection, nor ``...`` placeholders."""
    line = re.split(r"\s+#\s", line)[0].replace("…", "...")
    tokens = shlex.split(line.replace("<", "'<").replace(">", ">'"))
    ends = [i for i, token in enumerate(tokens) if token in ("|", ">", "&&", "2>&1")]
    return [token for token in tokens[: min(ends, default=len(tokens))] if token != "..."]


ALL = [(path.name, line) for path in DOCS for line in command_lines(path)]


def test_the_docs_hold_command_lines():
    names = {name for name, _ in ALL}
    assert names == {"README.md", "guide.md"} and len(ALL) > 40


@pytest.mark.parametrize("where, line", ALL, ids=[f"{name}:{line[:60]}" for name, line in ALL])
def test_every_documented_command_line_parses(where, line):
    args = arguments(line)
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, f"{where}: `medseg-mem {line}` does not parse: {result.output[-400:]}"
    assert "Usage:" in result.output


def guide_text_lines():
    text = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
    return [line for language, lines in code_blocks(text) if language in ("", "text") for line in lines]


def test_plan_table_headers_are_what_plan_prints():
    from medseg_mem.cli.plan import render_table

    def header(mode: str) -> str:
        plan = SimpleNamespace(mode=mode, calibration="x", process_bytes=1, predicted_bytes=1, host_bytes=1, fits=True,
                               variant="full", budget_bytes=1, stage="x", nproc=1)  # fmt: skip
        return " ".join(render_table([plan], "heading").splitlines()[1].split())

    quoted = [" ".join(line.split()) for line in guide_text_lines() if line.startswith("variant ")]
    assert quoted and set(quoted) <= {header("inference"), header("training")}


def test_compare_table_headers_are_what_compare_prints():
    from medseg_mem.report.format import _run_cells
    from medseg_mem.report.tables import Group

    text = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8") + (ROOT / "README.md").read_text(encoding="utf-8")
    quoted = [line for line in text.splitlines() if line.startswith("| variant | Dice % ")]
    assert quoted
    for line in quoted:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        classes = tuple(cell[len("Dice % "):] for cell in cells if cell.startswith("Dice % "))
        headers, _, _ = _run_cells(Group("d", "cpu", "m", "run", pd.DataFrame(), classes=classes))
        assert cells == headers, line


def test_run_summary_lines_quote_dice_in_percent_and_cascade_only_guidance():
    from medseg_mem.inference.metrics import dice_text

    unit = dice_text(["a"], [0.5]).split(" a ")[0]  # "(%)"
    lines = guide_text_lines()
    summaries = [line for line in lines if re.match(r"\[\w+\] test Dice ", line)]
    assert summaries and all(line.split("test Dice ")[1].startswith(unit + " ") for line in summaries), summaries
    headers = [line for line in lines if re.match(r"\[(full|patch)\] run \S+: ", line)]
    assert headers and not any("stage-2 guidance" in line for line in headers)
