"""MkDocs hook (``hooks:`` in ``mkdocs.yml``): adds the pages that are not written in
``docs/``.

* the configuration, HTTP API and command-line references, rendered from the code at build
  time (:mod:`devtools.docs_reference`), so ``docs/`` holds no copy of them that could drift;
* the benchmarks page: ``benchmarks/README.md`` itself, where the dated measurements live
  (the guides link to it and repeat none of them).

It also shows a screenshot that may not be taken yet: ``<!-- optional-screenshot: NAME |
ALT -->`` in a page becomes the image ``docs/screenshots/NAME`` where that file exists, and
nothing where it does not (a strict build fails on a link to a missing file).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

from devtools.docs_reference import generated_pages

BENCHMARKS_PAGE = "benchmarks.md"
OPTIONAL_SCREENSHOT = re.compile(r"<!-- optional-screenshot: *([\w.-]+) *\| *(.*?) *-->")


def on_files(files: Files, config) -> Files:
    root = Path(config.config_file_path).parent
    pages = generated_pages()
    pages[BENCHMARKS_PAGE] = (root / "benchmarks" / "README.md").read_text(encoding="utf-8")
    for path, markdown in pages.items():
        existing = files.get_file_from_path(path)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, path, content=markdown))
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    def image(match: re.Match) -> str:
        name, alt = match.group(1), match.group(2)
        target = f"screenshots/{name}"
        if files.get_file_from_path(target) is None:
            return ""
        here = posixpath.dirname(page.file.src_uri)
        return f"![{alt}]({posixpath.relpath(target, here or '.')})"

    return OPTIONAL_SCREENSHOT.sub(image, markdown)
