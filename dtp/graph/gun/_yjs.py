"""Yjs for the Gun endpoint's pages: the ``yjs`` npm package and its dependencies (lib0,
isomorphic.js), served as the ES modules they are, with an import map that names them
(docs/graph.md, "Collaborative values").

A page loads ``/yjs/importmap.js`` (a classic script, first: it writes the import map
into the document, or sets ``window.dtpYjs = null`` when Yjs is not installed here), then
imports ``"yjs"`` from its modules. The packages are never shipped with dtp: they are
found by :func:`find_yjs_dir` (``tools/yjs`` installs the pinned ``yjs`` in a checkout).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PREFIX = "/yjs/"
"""Where the endpoint serves the packages' files."""
_CONDITIONS = ("browser", "module", "import", "default")


def find_yjs_dir(start: Path | None = None) -> Path | None:
    """The ``node_modules`` folder that holds ``yjs``: ``$DTP_YJS_DIR``, else
    ``tools/yjs/node_modules`` of a dtp source checkout, else ``node_modules`` in the
    working directory or one above it; None when there is none (``npm install yjs``)."""
    env = os.environ.get("DTP_YJS_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "tools" / "yjs" / "node_modules")
    here = (start or Path.cwd()).resolve()
    candidates.extend(p / "node_modules" for p in (here, *here.parents))
    for candidate in candidates:
        if (candidate / "yjs" / "dist" / "yjs.mjs").is_file():
            return candidate
    return None


def _target(entry: Any) -> str | None:
    """The file an ``exports`` entry names for a browser's ``import``."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        for condition in _CONDITIONS:
            if condition in entry:
                found = _target(entry[condition])
                if found is not None:
                    return found
    return None


def import_map(modules: Path) -> dict[str, dict[str, str]]:
    """The import map of every package in ``modules`` (its ``exports``, or its
    ``module`` / ``main`` file), each file at ``/yjs/<package>/<path>``."""
    imports: dict[str, str] = {}
    for manifest in sorted(modules.glob("*/package.json")):
        try:
            package = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        name = manifest.parent.name
        exports = package.get("exports")
        if isinstance(exports, str) or (
            isinstance(exports, dict) and not any(k.startswith(".") for k in exports)
        ):
            exports = {".": exports}
        if not isinstance(exports, dict):
            main = package.get("module") or package.get("main")
            exports = {".": main} if isinstance(main, str) else {}
        for key, entry in exports.items():
            target = _target(entry)
            if (
                not isinstance(key, str)
                or target is None
                or "*" in key
                or not target.endswith((".js", ".mjs"))
            ):
                continue  # (a pattern, a package.json, a types file: no module to map)
            url = f"{PREFIX}{name}/{target.removeprefix('./')}"
            spec = name + key[1:]
            imports[spec] = url
            if not spec.endswith(".js") and key != ".":
                imports.setdefault(spec + ".js", url)
    return {"imports": imports}


def import_map_script(modules: Path | None) -> bytes:
    """``/yjs/importmap.js``: writes the import map into the page (a classic script, so
    that it comes before any module), or says Yjs is not here."""
    if modules is None:
        return b"window.dtpYjs = null; // yjs is not installed where the page is served\n"
    text = json.dumps(import_map(modules)).replace("<", "\\u003c")
    return (
        "window.dtpYjs = true;\n"
        f"document.write('<script type=\"importmap\">' + {json.dumps(text)} + '</' + 'script>');\n"
    ).encode()


def file_for(modules: Path | None, path: str) -> Path | None:
    """The package file ``/yjs/<package>/<path>`` names (a ``.js``/``.mjs`` file inside
    ``modules``), or None."""
    if modules is None or not path.startswith(PREFIX):
        return None
    rel = path[len(PREFIX) :]
    if not rel.endswith((".js", ".mjs")):
        return None
    return file_within(modules, rel)


def file_within(base: Path, rel: str) -> Path | None:
    """The file ``rel`` names inside ``base``, or None: none there, or a path that leads
    out of it (``..``, a link pointing elsewhere), which the page server must not serve."""
    root = base.resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target
