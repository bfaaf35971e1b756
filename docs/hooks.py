"""MkDocs hooks (mkdocs.yml `hooks:`): pages that the nav does not list yet are appended to the
section of their folder (`docs/guides/x.md` to "Guides", `docs/reference/x.md` to
"Reference", ...; a page in a folder without a section, or at the top, to the end of the nav),
so whoever adds a page needs no nav edit for it to appear, and `mkdocs build --strict` does not
fail on an omitted file. List a page in mkdocs.yml to place it."""

from __future__ import annotations

import os
from typing import Any

# docs/ folder -> the nav section its unlisted pages join
SECTIONS = {"getting-started": "Getting started", "guides": "Guides", "reference": "Reference",
            "how-it-works": "How it works"}


def _listed(nav: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(nav, str):
        found.add(nav)
    elif isinstance(nav, list):
        for item in nav:
            found |= _listed(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            found |= _listed(value)
    return found


def _title(path: str) -> str:
    """The page's first `# ` heading, else its file name."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("# "):
                return line[2:].strip()
    return os.path.splitext(os.path.basename(path))[0].replace("-", " ").capitalize()


def _section(nav: list[Any], title: str) -> list[Any] | None:
    for item in nav:
        if isinstance(item, dict) and isinstance(item.get(title), list):
            return item[title]
    return None


def on_config(config: Any, **kwargs: Any) -> Any:
    nav = config.get("nav")
    if not nav:
        return config
    listed = _listed(nav)
    docs = config["docs_dir"]
    for folder, _dirs, files in sorted(os.walk(docs)):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(folder, name), docs).replace(os.sep, "/")
            if not name.endswith(".md") or rel in listed:
                continue
            section = _section(nav, SECTIONS.get(rel.split("/")[0], ""))
            (nav if section is None else section).append({_title(os.path.join(folder, name)): rel})
    return config
