#!/usr/bin/env node
// Offline check of Sui Move (2024 edition) sources: syntax, and what a parse tree shows.
//
// There is no `sui` CLI on the machines this project is developed on, so Move can't be
// type-checked here. What we *can* do is parse: `@mysten/prettier-plugin-move` ships
// Mysten's tree-sitter grammar for Move (it understands `module a::b;`, `public struct`,
// `let mut`, macros, enums/match, `use fun`, `public(package)`). We load that grammar with
// `web-tree-sitter` directly (the plugin itself gives no line numbers and misses an
// unbalanced module brace) and report:
//   * every ERROR node and every MISSING node in the parse tree,
//   * unbalanced (), [], {} found by a small lexer that skips comments and
//     string / byte-string / hex-string literals, and
//   * in the files that parse, the compile errors a parse tree shows without types
//     (semantic.mjs: a tuple bound to one local, an immutable local changed, a constant
//     or package function that does not exist, a private or miscounted call).
//
// Usage: node check.mjs [file-or-dir ...]   (default: ../../move relative to this file)
// Output: one `file:line:col: message` per problem (1-based line and column);
// exit status 0 when every file is clean, 1 when any problem was found, 2 on usage error.

import { createRequire } from "node:module";
import { readFileSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { semanticProblems } from "./semantic.mjs";

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));

/** Collect .move files from the given paths (directories are walked recursively). */
function collect(paths) {
  const out = [];
  const walk = (p) => {
    const st = statSync(p);
    if (st.isDirectory()) {
      for (const name of readdirSync(p).sort()) {
        if (name === "node_modules" || name === "build" || name.startsWith(".")) continue;
        walk(path.join(p, name));
      }
    } else if (p.endsWith(".move")) {
      out.push(p);
    }
  };
  for (const p of paths) walk(p);
  return out;
}

/** Parse-tree problems: ERROR and MISSING nodes, as {line, col, message}. */
function treeProblems(tree, source) {
  const problems = [];
  const visit = (node) => {
    if (node.isMissing()) {
      const p = node.startPosition;
      problems.push({ line: p.row + 1, col: p.column + 1, message: `missing ${node.type}` });
      return;
    }
    if (node.type === "ERROR") {
      const p = node.startPosition;
      let text = source.slice(node.startIndex, Math.min(node.endIndex, node.startIndex + 40));
      text = text.split("\n")[0];
      problems.push({ line: p.row + 1, col: p.column + 1, message: `syntax error near \`${text}\`` });
      // Keep descending: a nested MISSING node can say more, but avoid duplicate ERRORs.
    }
    if (!node.hasError()) return;
    for (let i = 0; i < node.childCount; i++) visit(node.child(i));
  };
  visit(tree.rootNode);
  if (problems.length === 0 && tree.rootNode.hasError()) {
    problems.push({ line: 1, col: 1, message: "syntax error (parser reported an error)" });
  }
  return problems;
}

/**
 * Bracket balance outside comments and literals. Move has `//` and `/* *\/` comments,
 * byte strings b"..." (with backslash escapes), hex strings x"...", and no char literals.
 */
function braceProblems(source) {
  const problems = [];
  const stack = [];
  const pairs = { ")": "(", "]": "[", "}": "{" };
  let line = 1;
  let col = 1;
  let i = 0;
  const n = source.length;
  const advance = () => {
    if (source[i] === "\n") {
      line++;
      col = 1;
    } else {
      col++;
    }
    i++;
  };
  while (i < n) {
    const c = source[i];
    const d = source[i + 1];
    if (c === "/" && d === "/") {
      while (i < n && source[i] !== "\n") advance();
      continue;
    }
    if (c === "/" && d === "*") {
      const startLine = line;
      const startCol = col;
      advance();
      advance();
      while (i < n && !(source[i] === "*" && source[i + 1] === "/")) advance();
      if (i >= n) {
        problems.push({ line: startLine, col: startCol, message: "unterminated block comment" });
        break;
      }
      advance();
      advance();
      continue;
    }
    if (c === '"') {
      const startLine = line;
      const startCol = col;
      advance();
      while (i < n && source[i] !== '"') {
        if (source[i] === "\\") advance();
        advance();
      }
      if (i >= n) {
        problems.push({ line: startLine, col: startCol, message: "unterminated string literal" });
        break;
      }
      advance();
      continue;
    }
    if (c === "(" || c === "[" || c === "{") {
      stack.push({ ch: c, line, col });
    } else if (c === ")" || c === "]" || c === "}") {
      const top = stack.pop();
      if (!top) {
        problems.push({ line, col, message: `unmatched closing '${c}'` });
      } else if (top.ch !== pairs[c]) {
        problems.push({
          line,
          col,
          message: `'${c}' does not match '${top.ch}' opened at ${top.line}:${top.col}`,
        });
      }
    }
    advance();
  }
  for (const open of stack) {
    problems.push({ line: open.line, col: open.col, message: `unclosed '${open.ch}'` });
  }
  return problems;
}

async function main() {
  const args = process.argv.slice(2);
  if (args.includes("-h") || args.includes("--help")) {
    console.log("usage: node check.mjs [file-or-dir ...]  (default: the repository's move/)");
    return 0;
  }
  const targets = args.length ? args : [path.resolve(here, "..", "..", "move")];
  let files;
  try {
    files = collect(targets);
  } catch (err) {
    console.error(`move-syntax: ${err.message}`);
    return 2;
  }
  if (files.length === 0) {
    console.error("move-syntax: no .move files found");
    return 2;
  }

  const Parser = require("web-tree-sitter");
  await Parser.init();
  const parser = new Parser();
  const wasm = path.join(
    path.dirname(require.resolve("@mysten/prettier-plugin-move/package.json")),
    "tree-sitter-move.wasm",
  );
  parser.setLanguage(await Parser.Language.load(wasm));

  const parsed = [];
  const problemsOf = new Map();
  for (const file of files) {
    const source = readFileSync(file, "utf8");
    const tree = parser.parse(source);
    const problems = [...treeProblems(tree, source), ...braceProblems(source)];
    problemsOf.set(file, problems);
    // a file that does not parse gives no trustworthy tree to check further
    if (problems.length === 0) parsed.push({ file, tree });
    else tree.delete();
  }
  for (const p of semanticProblems(parsed)) problemsOf.get(p.file).push(p);
  for (const { tree } of parsed) tree.delete();

  let bad = 0;
  for (const file of files) {
    const problems = problemsOf.get(file);
    problems.sort((a, b) => a.line - b.line || a.col - b.col);
    const seen = new Set();
    for (const p of problems) {
      const msg = `${file}:${p.line}:${p.col}: ${p.message}`;
      if (seen.has(msg)) continue;
      seen.add(msg);
      console.log(msg);
    }
    if (problems.length) bad++;
  }
  if (bad) {
    console.error(`move-syntax: ${bad} of ${files.length} file(s) have problems`);
    return 1;
  }
  console.error(`move-syntax: ${files.length} file(s) OK`);
  return 0;
}

process.exitCode = await main();
