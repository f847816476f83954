"""mkdocs hook (mkdocs.yml ``hooks:``): the site's home page is README.md, so the two never disagree.

README's links are relative to the repository root: ``docs/x.md`` becomes ``x.md`` on the site, and a link
to a file outside docs/ (source code) keeps its text without the link, as the site does not carry it.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def readme_as_index(text: str) -> str:
    """README's markdown with its links made relative to docs/."""
    def fix(match: re.Match) -> str:
        bang, label, target = match.groups()
        if re.match(r"^[a-z]+:|^#", target):  # a URL or an anchor on the page
            return match.group(0)
        if target.startswith("docs/"):
            return f"{bang}[{label}]({target[len('docs/'):]})"
        return label  # outside the site

    return LINK.sub(fix, text)


def on_files(files: Files, config) -> Files:
    readme = Path(config["config_file_path"]).parent / "README.md"
    files.append(File.generated(config, "index.md", content=readme_as_index(readme.read_text(encoding="utf-8"))))
    return files
