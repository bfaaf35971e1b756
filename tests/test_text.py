"""What a user reads (issue 8, part 7): user strings stay text, errors stay one line, tables
keep every number whole at 80 columns, and the markdown of `compare` renders on GitHub."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from servers import ROOT, RecordingServer, loadforge

from loadforge.present.compare import markdown_document, markdown_text

# A profile whose every user string looks like rich markup.
MARKUP_PROFILE = """
name = "[bold]x[/]"
target = "{target}"
[load]
workers = 1
connections = 4
[[stages]]
name = "[/]warm[red]"
rate = 20
duration = "1s"
[[stages]]
name = "steady [link=x]"
concurrency = 2
think = "100ms"
duration = "1s"
[[requests]]
name = "[/]home"
path = "/"
"""
LONG = "feature/" + "x" * 70


def cli(*args: str, columns: int | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    if columns:
        env["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-m", "loadforge.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Two runs whose profile, stage and request names and labels look like markup."""
    tmp = tmp_path_factory.mktemp("text")
    out = tmp / "results"
    with RecordingServer() as server:
        profile = tmp / "markup.toml"
        profile.write_text(MARKUP_PROFILE.format(target=server.url))
        for build in ("[/]base", "[bold]next"):
            proc = cli("run", str(profile), "--out", str(out), "--label", f"build={build}",
                       "--label", f"branch={LONG}", "--label", "note=[/]",
                       "--summary-json", str(tmp / "summary.json"))
            assert proc.returncode == 0, proc.stderr
            assert "[/]warm[red]" in proc.stdout          # the summary shows names as they are
            assert "MarkupError" not in proc.stderr and "Traceback" not in proc.stderr
    return out


NUMBER = re.compile(r"[0-9][0-9,.]*(?:µs|ms|s|%|pp)?")


def _no_elided_number(text: str) -> None:
    # rich marks a cut cell with "…": no line may have one next to a digit.
    assert not re.search(r"[0-9]…|…[0-9]", text), text


@pytest.mark.parametrize("columns", [None, 80])
def test_ls_shows_markup_like_strings_as_text_and_keeps_numbers_whole(archive, columns):
    proc = cli("ls", str(archive), columns=columns)
    assert proc.returncode == 0, proc.stderr
    assert "[/]base" in proc.stdout and "note=[/]" in proc.stdout
    assert "[bold]x[/]" in proc.stdout
    _no_elided_number(proc.stdout)
    assert "…" not in proc.stdout
    if columns:
        assert max(len(line) for line in proc.stdout.splitlines()) <= columns
    entries = [json.loads(line) for line in cli("ls", "--json", str(archive)).stdout.splitlines()]
    for entry in entries:
        rate = f"{entry['achieved_rps']:,.1f}"
        assert rate in proc.stdout          # whole, not "19.…"


@pytest.mark.parametrize("columns", [None, 80])
def test_compare_shows_labels_as_text_and_keeps_numbers_whole(archive, columns):
    proc = cli("compare", str(archive), columns=columns)
    assert proc.returncode == 0, proc.stderr
    assert "[/]base" in proc.stdout and "[/]warm[red]" in proc.stdout
    assert "…" not in proc.stdout
    if columns:
        assert max(len(line) for line in proc.stdout.splitlines()) <= columns
    data = json.loads(cli("compare", "--format", "json", str(archive)).stdout)
    p99 = data["stages"][0]["values"][1]["p99"]
    from loadforge.present.summary import format_us

    assert format_us(p99) in proc.stdout


def test_compare_markdown_renders_on_github(archive):
    proc = cli("compare", "--format", "markdown", "--fail-on", "p50=-100%", str(archive))
    assert proc.returncode == 0, proc.stderr
    md = proc.stdout
    blocks = md.split("\n\n")
    # Each table is a block of its own: a header row, a delimiter row, rows, nothing else.
    tables = [b for b in blocks if b.startswith("|")]
    assert len(tables) == 3                   # two stages and all stages
    for table in tables:
        rows = table.splitlines()
        assert re.fullmatch(r"\|:---(\|---:)+\|", rows[1])
        cells = [len(re.findall(r"(?<!\\)\|", row)) for row in rows]
        assert len(set(cells)) == 1, table     # no unescaped "|" inside a cell
    # The gates come after a blank line, not glued to the last table row.
    assert "\n\n**Regression gates: all" in md
    assert "\\[/\\]base" in md and "\\[/\\]warm\\[red\\]" in md
    assert md.endswith("\n") and not md.endswith("\n\n")


def test_markdown_text_escapes_what_github_would_read():
    assert markdown_text("a|b") == "a\\|b"
    assert markdown_text("<script>") == "\\<script\\>"
    assert markdown_text("*bold* _it_ `code` [x](y)") == \
        "\\*bold\\* \\_it\\_ \\`code\\` \\[x\\](y)"
    assert markdown_text("two\nlines") == "two lines"


def test_failed_gates_in_markdown_form_a_list_after_a_blank_line():
    check = {"ok": False, "message": "stage [a|b]: p99 +50% (1ms -> 1.5ms)"}
    md = markdown_document({"stages": [], "runs": []}, [check])
    assert md == ("**Regression gates: 1 of 1 checks failed.**\n\n"
                  "- :x: stage \\[a\\|b\\]: p99 +50% (1ms -\\> 1.5ms)\n")


def test_a_long_error_is_one_line_on_a_pipe(tmp_path):
    name = "x" * 300
    path = tmp_path / "long.toml"
    path.write_text(f'name = "{name}"\n[[stages]]\nrate = -1\nduration = "1s"\n')
    proc = cli("run", str(path), columns=80)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "stages[0].rate" in proc.stderr


def test_an_error_naming_markup_is_shown_as_written(tmp_path):
    path = tmp_path / "markup.toml"
    path.write_text('[[stages]]\nname = "[/]"\nrate = 1\nduration = "1s"\n'
                    '[slo]\n[[slo.stages]]\nstage = "[bold]nope[/]"\np99 = "1s"\n')
    proc = loadforge("run", str(path))
    assert proc.returncode == 2, proc.stderr
    assert '"[bold]nope[/]"' in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_usage_error_is_one_line():
    proc = loadforge("run", "--rate", "lots")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--rate" in lines[0], proc.stderr


def test_an_unreadable_file_in_ls_is_one_line_each(tmp_path):
    bad = tmp_path / ("[b]" + "y" * 200 + ".parquet")
    bad.write_bytes(b"not parquet")
    proc = cli("ls", str(tmp_path), columns=80)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "[b]" in lines[0], proc.stderr


def test_print_error_is_one_line_whatever_the_message(capsys):
    from rich.console import Console

    from loadforge.present.text import print_error

    console = Console(stderr=True, width=40)
    print_error("first [/] line\n  second line that is long enough to wrap at forty " * 3,
                console=console)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: first [/] line / second line")
