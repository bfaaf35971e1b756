"""Every shell and TOML example of the getting-started pages runs as written, against nginx on
127.0.0.1 (issue 24): a newcomer who copies them gets the exit codes the pages promise.

How a page's examples are read:
- A ```sh block is a list of commands (a trailing `\\` joins lines; `&&` chains are split).
  `loadforge ...` runs, from a scratch directory where `profiles/` is the repository's; a
  trailing comment `# exits N` says the exit code it must give, otherwise 0. Set-up commands
  (pip, venvs, the test suite itself) are skipped by name; any other program fails the test,
  so a page cannot show a command that nothing checks.
- A ```toml block whose first line is `# NAME.toml` is written to that file before the page's
  commands run; `# profiles/NAME.toml` must be the shipped profile, byte for byte. Any other
  TOML block must at least parse.
- The target: `http://127.0.0.1:8080` (the pages' stand-in for "your service") and
  `$TARGET_URL` become the test's nginx. Durations are cut to at most 2 s and `--repeat` to 2,
  so the page's shape is checked without its length (the quickstart's shipped profile stays 10 s).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import Nginx

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs" / "getting-started").glob("*.md"))
STAND_IN = "http://127.0.0.1:8080"

# Commands the pages show for setting up, not for loadforge to run: skipped, by their words.
SET_UP = (("pip",), ("python3", "-m", "venv"), ("python", "-m", "venv"), (".",), ("source",),
          ("python", "-m", "pytest"), ("python3", "-m", "pytest"), ("mkdocs",))

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
EXPECT = re.compile(r"#.*\bexits (\d+)\b")
# `loadforge run` commands already run as written, so that two pages showing the same run
# (the quickstart) run it once; page-local profiles excepted, as each page writes its own.
RAN: set[tuple[str, ...]] = set()
DURATION_TOML = re.compile(r'^(\s*duration\s*=\s*)"[^"]*"', re.M)


@dataclass
class Command:
    page: str
    text: str
    argv: list[str]
    exit_code: int


def blocks(page: Path) -> Iterator[tuple[str, str]]:
    for match in FENCE.finditer(page.read_text()):
        yield match.group(1), match.group(2)


def commands(page: Path, block: str) -> Iterator[Command]:
    logical = re.sub(r"\\\n\s*", " ", block)
    for line in logical.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        expected = EXPECT.search(line)
        words = shlex.split(line, comments=True)
        parts: list[list[str]] = [[]]
        for word in words:
            if word == "&&":
                parts.append([])
            else:
                parts[-1].append(word)
        for argv in parts:
            yield Command(page.name, line.strip(), argv, int(expected.group(1)) if expected else 0)


def shorten(argv: list[str], target: str) -> list[str]:
    out = []
    for i, word in enumerate(argv):
        word = word.replace(STAND_IN, target)
        if i > 0 and argv[i - 1] == "--duration":
            word = "2s"
        elif i > 0 and argv[i - 1] == "--repeat":
            word = str(min(int(word), 2))
        out.append(word)
    return out


def expand(word: str, env: dict[str, str]) -> str:
    """$VAR and ${VAR} as the shell expands them (the pages quote them)."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), word)


def examples() -> list[Path]:
    assert PAGES, "no getting-started pages under docs/getting-started/"
    return PAGES


@pytest.fixture(scope="module")
def target(nginx: Nginx) -> str:
    return nginx.url


@pytest.mark.parametrize("page", examples(), ids=lambda p: p.stem)
def test_getting_started_examples(page: Path, target: str, tmp_path: Path) -> None:
    (tmp_path / "profiles").symlink_to(ROOT / "profiles")
    env = dict(os.environ, TARGET_URL=target, GITHUB_SHA="branch0", BASE_SHA="main0",
               COLUMNS="120", PYTHONPATH=str(ROOT))
    for lang, body in blocks(page):
        if lang == "toml":
            first, _, rest = body.partition("\n")
            name = first[1:].strip() if first.startswith("#") else ""
            tomllib.loads(body)        # every TOML example parses
            if name.startswith("profiles/"):
                assert rest == (ROOT / name).read_text(), f"{page.name}: {name} differs from the file"
            elif name.endswith(".toml"):
                text = DURATION_TOML.sub(r'\g<1>"2s"', body.replace(STAND_IN, target))
                (tmp_path / name).write_text(text)
        elif lang in ("sh", "bash", "shell"):
            for cmd in commands(page, body):
                if any(tuple(cmd.argv[:len(s)]) == s for s in SET_UP):
                    continue
                assert cmd.argv[0] == "loadforge", (
                    f"{page.name}: `{cmd.text}` runs {cmd.argv[0]}, which this test does not "
                    "know: run it here or add it to SET_UP")
                argv = [expand(w, env) for w in shorten(cmd.argv[1:], target)]
                if argv[:1] == ["run"] and tuple(argv) in RAN:
                    continue        # the same run on an earlier page (the quickstart)
                out = subprocess.run([sys.executable, "-m", "loadforge.cli", *argv],
                                     cwd=tmp_path, env=env, capture_output=True, text=True,
                                     timeout=120, stdin=subprocess.DEVNULL)
                assert out.returncode == cmd.exit_code, (
                    f"{page.name}: `{cmd.text}` exited {out.returncode}, the page says "
                    f"{cmd.exit_code}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
                if not any(w.endswith(".toml") and not w.startswith("profiles/") for w in argv):
                    RAN.add(tuple(argv))


def test_the_rules_of_this_test_are_seen() -> None:
    """The reader itself: continuation lines, chains, expected codes, set-up skipped."""
    block = ("pip install . && loadforge run profiles/quickstart.toml   # install, run\n"
             "loadforge run --target http://127.0.0.1:8080/ --rate 1 \\\n"
             "    --duration 10s --repeat 5    # exits 1: an objective\n")
    found = list(commands(Path("x.md"), block))
    assert [c.argv[0] for c in found] == ["pip", "loadforge", "loadforge"]
    assert [c.exit_code for c in found] == [0, 0, 1]
    assert shorten(found[2].argv, "http://127.0.0.1:1") == [
        "loadforge", "run", "--target", "http://127.0.0.1:1/", "--rate", "1", "--duration", "2s",
        "--repeat", "2"]


def mkdocs_build(site: Path, extra_pages: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`mkdocs build --strict` (as .ci/run runs it) on a copy of the site with pages added."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    shutil.copy(ROOT / "mkdocs.yml", site / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", site / "docs")
    for name, text in extra_pages.items():
        (site / "docs" / name).write_text(text)
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(site / "out")], cwd=site, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))


def test_the_site_builds_strict_with_a_new_guide_in_the_nav(tmp_path: Path) -> None:
    """A guide that mkdocs.yml does not list yet is added to "Guides" by docs/hooks.py, so the
    strict build (which fails on a page left out of the nav) passes and the page is linked."""
    out = mkdocs_build(tmp_path, {"guides/zz-a-new-topic.md": "# A new topic\n\nText.\n"})
    assert out.returncode == 0, out.stderr
    home = (tmp_path / "out" / "index.html").read_text()
    assert "guides/zz-a-new-topic/" in home and "A new topic" in home
    cli = (tmp_path / "out" / "reference" / "cli" / "index.html").read_text()
    assert "loadforge run" in cli and "--summary-json" in cli    # generated from click


def test_the_strict_build_fails_on_a_broken_link(tmp_path: Path) -> None:
    out = mkdocs_build(tmp_path, {"guides/broken.md": "# Broken\n\n[gone](no-such-page.md)\n"})
    assert out.returncode != 0
    assert "no-such-page.md" in out.stderr


ALL_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def loadforge_lines(text: str) -> Iterator[list[str]]:
    """Every `loadforge ...` command of a page's sh blocks and YAML `run:` steps, with its
    continuation lines (a trailing backslash, or a usage line that goes on with `[--...`)."""
    for lang, body in FENCE.findall(text):
        if lang not in ("sh", "bash", "shell", "yaml", ""):
            continue
        joined: list[str] = []
        for line in re.sub(r"\\\n", " ", body).splitlines():
            stripped = line.strip()
            if stripped.startswith("run: "):
                stripped = stripped[5:]
            if stripped.startswith("loadforge "):
                joined.append(stripped)
            elif joined and stripped.startswith(("[--", "--")):
                joined[-1] += " " + stripped
        for command in joined:
            words = shlex.split(command, comments=True)
            for i, word in enumerate(words):
                if word in ("|", ">", "&&", ";", "2>&1"):
                    words = words[:i]
                    break
            yield words


def test_every_documented_flag_exists() -> None:
    """The README's and every docs page's `loadforge` commands (usage lines too) name real
    subcommands and options, so a renamed flag cannot live on in the documentation."""
    from loadforge.cli import main
    seen = 0
    for page in ALL_PAGES:
        for words in loadforge_lines(page.read_text()):
            if len(words) < 2 or words[1].startswith("-"):
                continue
            command = main.commands.get(words[1])
            where = f"{page.relative_to(ROOT)}: `{' '.join(words)}`"
            assert command is not None, f"{where}: no command {words[1]!r}"
            known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
            known |= {"-h", "--help"}
            for word in words[2:]:
                option = word.strip("[]").split("=")[0]
                if option.startswith("-") and option not in ("-", "--"):
                    assert option in known, f"{where}: {command.name} has no option {option}"
            seen += 1
    assert seen > 50, seen
