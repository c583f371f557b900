"""The docs site: `mkdocs build --strict` passes, fails on a broken link or anchor, and the
built pages load nothing from the network (they must read offline, behind a firewall)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import ROOT

# What the site is built from; everything else in the repository is linked into a copy as is.
SOURCES = ("mkdocs.yml", "README.md", "docs")


def build(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=project,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},  # Material's banner about its successor
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    done = build(ROOT, site)
    assert done.returncode == 0, done.stderr
    return site


def test_the_site_builds_with_every_page(site: Path) -> None:
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert (site / "index.html").exists()  # the README, as the home page
    for page in pages:
        assert (site / page.removesuffix(".md") / "index.html").exists(), page


# The tags a browser fetches by itself, and the attribute holding the URL.
FETCHED = {"script": "src", "img": "src", "iframe": "src", "source": "src", "link": "href"}


class Loads(HTMLParser):
    """Every URL a page would fetch by itself: scripts, styles, images, frames, media."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.mermaid = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        wanted = FETCHED.get(tag)
        # <link rel="canonical"> or "alternate" names a page, fetches nothing.
        if tag == "link" and values.get("rel") not in {"stylesheet", "preload", "icon", None}:
            wanted = None
        if wanted and values.get(wanted):
            self.urls.append(values[wanted] or "")
        # Material fetches mermaid from unpkg.com for a page with a mermaid diagram.
        self.mermaid |= "mermaid" in (values.get("class") or "").split()


def test_no_page_loads_anything_from_the_network(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    for page in pages:
        loads = Loads()
        loads.feed(page.read_text())
        external = [u for u in loads.urls if u.startswith(("http:", "https:", "//"))]
        assert external == [], page
        assert not loads.mermaid, page
    # theme.font: false, else Material links Google Fonts from every page.
    assert "fonts.googleapis" not in (site / "index.html").read_text()


@pytest.mark.parametrize(
    ("page", "append", "said"),
    [
        ("docs/trainer.md", "[a page](nowhere.md)", "nowhere.md"),
        ("docs/trainer.md", "[a heading](service.md#no-such-heading)", "#no-such-heading"),
        ("docs/trainer.md", "[a file](../trainer/nowhere.py)", "../trainer/nowhere.py"),
        ("README.md", "[a page](docs/nowhere.md)", "nowhere.md"),
        ("README.md", "[a heading](#no-such-heading)", "#no-such-heading"),
    ],
)
def test_a_broken_link_fails_the_build(tmp_path: Path, page: str, append: str, said: str) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for entry in ROOT.iterdir():
        if entry.name in SOURCES:
            copy = shutil.copytree if entry.is_dir() else shutil.copyfile
            copy(entry, project / entry.name)
        elif not entry.name.startswith("."):
            (project / entry.name).symlink_to(entry)
    with open(project / page, "a") as f:
        f.write(f"\nSee {append}.\n")
    done = build(project, tmp_path / "site")
    assert done.returncode != 0
    assert said in done.stderr
