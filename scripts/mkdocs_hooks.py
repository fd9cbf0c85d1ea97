"""mkdocs build hooks (``hooks:`` in mkdocs.yml): the study write-ups and the option table.

* **Studies.** Each study's write-up lives beside its data, in ``studies/<study>/README.md``, outside ``docs/``.
  `on_files` adds the files of every ``studies/<study>/`` folder and of its stages (``studies/<study>/<stage>/``;
  not the per-run folders, the packed runs or caches) to the site under the same paths, so
  ``studies/<study>/README.md`` is the page ``studies/<study>/`` and its figures, tables and configs come with it.
  `on_page_markdown` makes the links that are right in a checkout (and on GitHub) right on the site too: from
  ``docs/x.md``, ``../studies/<study>/...`` becomes ``studies/<study>/...``; from a study page, ``../../docs/x.md``
  becomes ``../../x.md``.
* **Options.** The marker ``<!-- tb-options -->`` in a page becomes a table of every field of
  `tb_hf.TempBalanceArguments`: its default and its help text, as ``--help`` shows them.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from mkdocs.structure.files import File

STUDIES = "studies"
#: Not pages: per-run folders, packed runs (runs.jsonl.xz) and Python caches.
_SKIPPED = {"runs", "__pycache__"}
OPTIONS_MARKER = "<!-- tb-options -->"
_LINK = re.compile(r"\]\((?P<target>[^)\s]+)")


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_files(files, config):
    root = _root(config) / STUDIES
    # the index (studies/README.md), a study's files, and those of its stages
    for path in sorted([*root.glob("*.md"), *root.glob("*/*"), *root.glob("*/*/*")]):
        parts = path.relative_to(root).parts
        if path.is_file() and not _SKIPPED & set(parts) and path.suffix != ".xz":
            uri = path.relative_to(_root(config)).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def _relink(markdown: str, src_uri: str) -> str:
    depth = src_uri.count("/")
    if src_uri.startswith(f"{STUDIES}/"):  # a study page: links into docs/ drop the docs/ step
        old, new = "../" * depth + "docs/", "../" * depth
    else:  # a docs page: links to studies/ are one level shallower on the site
        old, new = "../" * (depth + 1) + f"{STUDIES}/", "../" * depth + f"{STUDIES}/"

    def fix(match: re.Match) -> str:
        target = match["target"]
        return f"]({new}{target[len(old) :]}" if target.startswith(old) else match[0]

    return _LINK.sub(fix, markdown)


def options_table() -> str:
    from tb_hf.arguments import TempBalanceArguments

    rows = ["| option | default | help |", "|---|---|---|"]
    for f in dataclasses.fields(TempBalanceArguments):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f.metadata.get("help", "").replace("|", "\\|")
        if "choices" in f.metadata:
            text += " Choices: " + ", ".join(f"`{c!r}`" for c in f.metadata["choices"]) + "."
        rows.append(f"| `{f.name}` | `{default!r}` | {text} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files):
    markdown = _relink(markdown, page.file.src_uri)
    if OPTIONS_MARKER in markdown:
        markdown = markdown.replace(OPTIONS_MARKER, options_table())
    return markdown


__all__ = ["on_files", "on_page_markdown", "options_table"]
