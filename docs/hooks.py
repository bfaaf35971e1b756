"""MkDocs hooks (mkdocs.yml `hooks:`): guides that the nav does not list yet are appended to
"Guides", so a helper or contributor adding `docs/guides/<topic>.md` needs no nav edit for the
page to appear (and `mkdocs build --strict` does not fail on an omitted file)."""

from __future__ import annotations

import os
from typing import Any

GUIDES = "Guides"


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


def on_config(config: Any, **kwargs: Any) -> Any:
    nav = config.get("nav")
    if not nav:
        return config
    guides = next((item[GUIDES] for item in nav if isinstance(item, dict) and GUIDES in item),
                  None)
    if guides is None:
        return config
    listed = _listed(nav)
    folder = os.path.join(config["docs_dir"], "guides")
    for name in sorted(os.listdir(folder)):
        rel = f"guides/{name}"
        if name.endswith(".md") and rel not in listed:
            guides.append({_title(os.path.join(folder, name)): rel})
    return config
