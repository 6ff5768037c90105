"""MkDocs hook (``hooks:`` in ``mkdocs.yml``): adds the pages that are not written in
``docs/``.

* the configuration, HTTP API and command-line references, rendered from the code at build
  time (:mod:`devtools.docs_reference`), so ``docs/`` holds no copy of them that could drift;
* the benchmarks page: ``benchmarks/README.md`` itself, where the dated measurements live
  (the guides link to it and repeat none of them).
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

from devtools.docs_reference import generated_pages

BENCHMARKS_PAGE = "benchmarks.md"


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
