"""The Gun endpoint serves Yjs's modules to its pages (dtp.graph.gun._yjs): the import
map names every module the page imports, files come from the packages' folder and from
nowhere else, and without Yjs the page is told so rather than left to fail."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("websockets")

from bench import yjs_edges
from dtp.graph import Graph
from dtp.graph.gun._server import serve_in_thread
from dtp.graph.gun._yjs import file_for, import_map, import_map_script


def _fake_modules(root: Path) -> Path:
    """A node_modules folder of two packages, as npm lays them out."""
    (root / "yjs" / "dist").mkdir(parents=True)
    (root / "yjs" / "dist" / "yjs.mjs").write_text("import 'lib0/map';\n")
    (root / "yjs" / "package.json").write_text(
        json.dumps({"exports": {".": {"module": "./dist/yjs.mjs", "require": "./dist/yjs.cjs"}}})
    )
    (root / "lib0").mkdir()
    (root / "lib0" / "map.js").write_text("export const x = 1;\n")
    (root / "lib0" / "webcrypto.js").write_text("export default 1;\n")
    (root / "lib0" / "package.json").write_text(
        json.dumps(
            {
                "exports": {
                    "./map": {"import": "./map.js", "types": "./map.d.ts"},
                    "./webcrypto": {
                        "node": {"module": "./webcrypto.node.js"},
                        "browser": {"module": "./webcrypto.js"},
                    },
                    "./package.json": "./package.json",
                }
            }
        )
    )
    (root / "secret.txt").write_text("no")
    return root


def test_the_import_map_names_each_packages_browser_module(tmp_path: Path) -> None:
    modules = _fake_modules(tmp_path / "node_modules")
    imports = import_map(modules)["imports"]
    assert imports["yjs"] == "/yjs/yjs/dist/yjs.mjs"
    assert imports["lib0/map"] == imports["lib0/map.js"] == "/yjs/lib0/map.js"
    assert imports["lib0/webcrypto"] == "/yjs/lib0/webcrypto.js"  # the browser's, not node's
    script = import_map_script(modules).decode()
    assert script.startswith("window.dtpYjs = true;") and "/yjs/lib0/map.js" in script
    assert import_map_script(None).startswith(b"window.dtpYjs = null;")


def test_only_modules_inside_the_folder_are_served(tmp_path: Path) -> None:
    modules = _fake_modules(tmp_path / "node_modules")
    assert file_for(modules, "/yjs/lib0/map.js") == (modules / "lib0" / "map.js").resolve()
    for path in (
        "/yjs/secret.txt",
        "/yjs/lib0/package.json",
        "/yjs/lib0/../../outside.js",
        "/yjs/lib0/missing.js",
        "/lib0/map.js",
    ):
        assert file_for(modules, path) is None, path
    assert file_for(None, "/yjs/lib0/map.js") is None


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_endpoint_serves_them_beside_its_pages(tmp_path: Path) -> None:
    modules = _fake_modules(tmp_path / "node_modules")
    graph = Graph()
    with serve_in_thread(graph, "127.0.0.1", 0, yjs_dir=modules) as gun:
        status, body = _get(gun.url + "yjs/importmap.js")
        assert status == 200 and b"/yjs/yjs/dist/yjs.mjs" in body
        assert _get(gun.url + "yjs/lib0/map.js") == (200, b"export const x = 1;\n")
        assert _get(gun.url + "yjs/secret.txt")[0] == 404
        status, page = _get(gun.url)
        assert status == 200 and b'src="yjs/importmap.js"' in page and b"collab.mjs" in page
        for name in ("collab.mjs", "yrecords.mjs"):
            assert _get(gun.url + name)[0] == 200
    graph.close()


@pytest.mark.skipif(not yjs_edges.available(), reason="node and npm fetch the yjs package")
def test_every_module_yjs_imports_is_mapped() -> None:
    modules = yjs_edges.install()
    imports = import_map(modules)["imports"]
    source = (modules / "yjs" / "dist" / "yjs.mjs").read_text(encoding="utf-8")
    named = {
        line.split("from '")[1].split("'")[0]
        for line in source.splitlines()
        if " from 'lib0" in line
    }
    assert named and named <= set(imports)
    for url in imports.values():
        assert file_for(modules, url) is not None, url
