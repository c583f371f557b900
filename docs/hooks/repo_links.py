"""MkDocs hook: the README is the site's home page, and links into the repository are checked.

The docs are plain Markdown written to read on a code host: the README links to `docs/x.md`,
and a page links to a repository file as `../trainer/steps.py`. MkDocs knows neither: its
documents are the files under docs/. This hook (named in mkdocs.yml, run by `mkdocs build`):

- adds the README as `index.md`, its `docs/...` links made relative to docs/;
- checks every link that leaves docs/ (the README's own links included) and fails the build
  (a warning, which `strict: true` turns into an error) when its file is not in the repository;
- turns each such link, on the built site only, into a link to the file on the code host when
  `repo_url` is set, else into its text: the site never points at a page it does not have.

Links between pages and to their headings are MkDocs' own to check (`validation` in
mkdocs.yml).
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Callable
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.plugins.repo_links")

README = "README.md"
HOME = "index.md"
# An inline Markdown link or image: [text](target "title"); the text may hold `code`.
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)(\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")


def _outside_code(markdown: str, change: Callable[[str], str]) -> str:
    """Apply `change` to the lines outside fenced code blocks."""
    out, fenced = [], False
    for line in markdown.split("\n"):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        out.append(line if fenced else change(line))
    return "\n".join(out)


def _is_relative(target: str) -> bool:
    return not (
        target.startswith(("#", "/", "mailto:")) or re.match(r"^[a-z][a-z0-9+.-]*:", target)
    )


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the README as the home page, its links rewritten as if it lay in docs/."""
    root = Path(config.config_file_path).parent
    text = (root / README).read_text()

    def rehome(line: str) -> str:
        def one(m: re.Match[str]) -> str:
            bang, label, target, title = m.groups()
            if _is_relative(target):
                target = target[5:] if target.startswith("docs/") else "../" + target
            return f"{bang}[{label}]({target}{title or ''})"

        return LINK.sub(one, line)

    files.append(File.generated(config, HOME, content=_outside_code(text, rehome)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Check the links that leave docs/ and make them work on the built site."""
    root = Path(config.config_file_path).parent
    docs = Path(config.docs_dir).relative_to(root).as_posix()
    here = posixpath.dirname(page.file.src_uri)
    repo_url = (config.repo_url or "").rstrip("/")

    def one(m: re.Match[str]) -> str:
        bang, label, target, title = m.groups()
        if not _is_relative(target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        in_repo = posixpath.normpath(posixpath.join(docs, here, path))
        if not in_repo.startswith("../") and in_repo.startswith(docs + "/"):
            return m.group(0)  # a page or file of the site: MkDocs checks it
        if in_repo == README:  # the README is the home page
            home = posixpath.relpath(HOME, here or ".")
            return f"{bang}[{label}]({home}{'#' + anchor if anchor else ''}{title or ''})"
        if in_repo.startswith("../") or not (root / in_repo).exists():
            log.warning("%s links to %s, which is not in the repository", page.file.src_uri, target)
            return m.group(0)
        if repo_url:
            kind = "tree" if (root / in_repo).is_dir() else "blob"
            return f"{bang}[{label}]({repo_url}/{kind}/HEAD/{in_repo.rstrip('/')}{title or ''})"
        return label

    return _outside_code(markdown, lambda line: LINK.sub(one, line))
