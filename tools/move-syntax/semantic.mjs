// Compile errors the Move compiler would report that a parse tree alone shows, found
// without type-checking: no `sui` binary can run where this project is developed, and
// these are the mistakes that got past the syntax check before. Each check reports only
// what it is sure of; where a name or type cannot be resolved from the package's own
// sources (framework calls, locals of unknown type), it says nothing.
//
//   * a tuple bound to one local: `let x = (a, b);`, `let x: (u64, u64) = ...`, or
//     `let x = f(...)` where `f` is a package function returning a tuple (Move has no
//     tuple values: E04005 "expected a single type");
//   * an immutable local changed: `x = ...`, `&mut x`, or a method taking `&mut self`
//     called on a local bound without `mut` (Move 2024 needs `let mut`);
//   * a constant that does not exist: a bare constant name (`EFoo`, `MAX_X`) the module
//     does not declare, or an `expected_failure(abort_code = m::EFoo)` naming one that
//     module `m` of the package does not declare (constants are module-private);
//   * a call of a package function that does not exist, is private to another module,
//     or gets the wrong number of arguments (`m::f(...)`, `f(...)` of the same module,
//     and `x.f(...)` where `x`'s struct type is known).
//
// Input: every file's parse tree; the "package" is every module among the files
// checked together. Output: problems as {file, line, col, message}.

const CONST_NAME = /^(E[A-Z][A-Za-z0-9_]*|[A-Z][A-Z0-9_]+)$/;
const SCENARIO_TAKES = new Set([
  "take_shared",
  "take_shared_by_id",
  "take_from_sender",
  "take_from_sender_by_id",
  "take_from_address",
  "take_from_address_by_id",
  "take_immutable",
  "take_immutable_by_id",
]);
// Modules every Sui Move 2024 module may name without a `use`.
const IMPLICIT_MODULES = new Set(["vector", "option", "object", "transfer", "tx_context"]);

const kids = (node) => {
  const out = [];
  for (let i = 0; i < node.childCount; i++) out.push(node.child(i));
  return out;
};
// (newlines and comments are named nodes of this grammar, but no part of the code)
const TRIVIA = new Set(["newline", "line_comment", "block_comment"]);
const named = (node) => kids(node).filter((c) => c.isNamed() && !TRIVIA.has(c.type));
const firstOfType = (node, type) => kids(node).find((c) => c.type === type) || null;
const pos = (node) => ({ line: node.startPosition.row + 1, col: node.startPosition.column + 1 });

/** The `::`-separated path of a module_access (type arguments left out). */
function pathOf(access) {
  const parts = [];
  const walk = (n) => {
    if (n.type === "type_arguments") return;
    if (n.childCount === 0) {
      if (n.type !== "::" && n.isNamed()) parts.push(n.text);
      return;
    }
    for (const c of kids(n)) walk(c);
  };
  walk(access);
  return parts;
}

/** The module_access of a name_expression (or null). */
function accessOf(nameExpr) {
  return nameExpr && nameExpr.type === "name_expression" ? firstOfType(nameExpr, "module_access") : null;
}

/** A single plain identifier named by `expr` (a local, a constant), or null. */
function plainName(expr) {
  const access = accessOf(expr);
  if (!access) return null;
  const path = pathOf(access);
  return path.length === 1 ? path[0] : null;
}

/** The type arguments' first apply_type name in a module_access (`take_shared<Host>`). */
function typeArgument(access) {
  const args = access && findDeep(access, "type_arguments");
  if (!args) return null;
  const first = named(args)[0];
  return first ? typeInfo(first) : null;
}

function findDeep(node, type) {
  if (node.type === type) return node;
  for (const c of kids(node)) {
    const found = findDeep(c, type);
    if (found) return found;
  }
  return null;
}

/** {ref: null | "imm" | "mut", tuple: bool, path: string[] | null} of a type node. */
function typeInfo(node) {
  if (!node) return { ref: null, tuple: false, path: null };
  if (node.type === "ref_type") {
    const inner = named(node).find((c) => c.type !== "imm_ref" && c.type !== "mut_ref");
    const mut = firstOfType(node, "mut_ref") !== null;
    return { ...typeInfo(inner), ref: mut ? "mut" : "imm" };
  }
  if (node.type === "tuple_type") {
    return { ref: null, tuple: named(node).length !== 1, path: null };
  }
  if (node.type === "apply_type") {
    return { ref: null, tuple: false, path: pathOf(firstOfType(node, "module_access")) };
  }
  return { ref: null, tuple: false, path: null };
}

function hasAttribute(annotations, name) {
  return annotations.some((a) => {
    const found = [];
    const walk = (n) => {
      if (n.type === "identifier") found.push(n.text);
      for (const c of kids(n)) walk(c);
    };
    walk(a);
    return found.includes(name);
  });
}

// -- the package: modules, their constants, structs, functions and aliases ---------------

function collectModule(file, moduleNode, testFile) {
  const identity = firstOfType(moduleNode, "module_identity");
  const [address, name] = pathOf(identity);
  const body = firstOfType(moduleNode, "module_body");
  const mod = {
    file,
    address,
    name,
    node: body,
    consts: new Set(),
    structs: new Set(),
    functions: new Map(),
    aliases: new Map(), // alias -> "address::module"
    members: new Map(), // imported member -> {module: "address::module", name}
    useFuns: new Set(), // method names a `use fun` declares: resolved elsewhere
    testOnly: testFile,
  };
  let pending = [];
  for (const item of body ? kids(body) : []) {
    if (item.type === "annotation") {
      pending.push(item);
      continue;
    }
    if (item.type === "newline" || item.type === "line_comment" || item.type === "block_comment") {
      continue;
    }
    const annotations = pending;
    pending = [];
    if (item.type === "constant") {
      const id = firstOfType(item, "constant_identifier");
      if (id) mod.consts.add(id.text);
    } else if (item.type === "struct_definition" || item.type === "enum_definition") {
      const id = named(item).find((c) => c.type === "struct_identifier" || c.type === "enum_identifier");
      if (id) mod.structs.add(id.text);
    } else if (item.type === "function_definition" || item.type === "macro_function_definition") {
      const fn = functionInfo(item, annotations, mod);
      if (fn) mod.functions.set(fn.name, fn);
    } else if (item.type === "use_declaration") {
      collectUse(item, mod);
    }
  }
  // a #[test_only] module is test code too
  return mod;
}

function functionInfo(node, annotations, mod) {
  const id = firstOfType(node, "function_identifier");
  if (!id) return null;
  const modifier = firstOfType(node, "modifier");
  let visibility = "private";
  if (modifier) {
    const text = modifier.text.replace(/\s+/g, "");
    if (text.startsWith("public(package)") || text.startsWith("public(friend)")) visibility = "package";
    else if (text.startsWith("public")) visibility = "public";
  }
  const params = [];
  const paramList = firstOfType(node, "function_parameters");
  for (const p of paramList ? named(paramList) : []) {
    const mut = p.type === "mut_function_parameter";
    const inner = mut ? firstOfType(p, "function_parameter") : p;
    if (!inner || inner.type !== "function_parameter") continue;
    const nameNode = firstOfType(inner, "variable_identifier");
    const typeNode = named(inner).find((c) => c.type !== "variable_identifier");
    params.push({ name: nameNode ? nameNode.text : "_", mut, type: typeInfo(typeNode) });
  }
  const ret = firstOfType(node, "ret_type");
  const retType = ret ? typeInfo(named(ret)[0]) : { ref: null, tuple: false, path: null };
  return {
    name: id.text,
    node,
    module: mod,
    visibility,
    macro: node.type === "macro_function_definition",
    testOnly: hasAttribute(annotations, "test_only") || hasAttribute(annotations, "test"),
    params,
    ret: retType,
  };
}

function collectUse(node, mod) {
  for (const c of named(node)) {
    if (c.type === "use_module") {
      const identity = firstOfType(c, "module_identity");
      const [address, name] = pathOf(identity);
      const alias = named(c).filter((n) => n.type === "module_identifier").pop();
      mod.aliases.set(alias ? alias.text : name, `${address}::${name}`);
    } else if (c.type === "use_fun") {
      const method = firstOfType(c, "function_identifier");
      if (method) mod.useFuns.add(method.text);
    } else if (c.type === "use_module_member" || c.type === "use_module_members") {
      const identity = firstOfType(c, "module_identity");
      const [address, name] = pathOf(identity);
      for (const member of named(c).filter((n) => n.type === "use_member")) {
        const ids = named(member).filter((n) => n.type === "identifier");
        if (ids.length === 0) continue;
        const target = ids[0].text;
        const alias = ids.length > 1 ? ids[ids.length - 1].text : target;
        if (target === "Self") mod.aliases.set(alias === "Self" ? name : alias, `${address}::${name}`);
        else mod.members.set(alias, { module: `${address}::${name}`, name: target });
      }
    }
  }
}

function buildPackage(parsed) {
  const modules = new Map(); // "address::name" -> module
  for (const { file, tree } of parsed) {
    const testFile = /(^|[\\/])tests[\\/]/.test(file);
    const walk = (n) => {
      if (n.type === "module_definition") {
        const mod = collectModule(file, n, testFile);
        if (mod.address && mod.name) modules.set(`${mod.address}::${mod.name}`, mod);
        return;
      }
      for (const c of kids(n)) walk(c);
    };
    walk(tree.rootNode);
  }
  return modules;
}

// -- resolving names ------------------------------------------------------------------------

/** The package module a module path names from `mod` (alias, `Self`, or address::name). */
function resolveModule(pkg, mod, parts) {
  if (parts.length === 1) {
    if (parts[0] === "Self") return mod;
    const full = mod.aliases.get(parts[0]);
    if (full) return pkg.get(full) || null;
    // the package's own modules can be named by address::name only
    return null;
  }
  if (parts.length === 2) return pkg.get(`${parts[0]}::${parts[1]}`) || null;
  return null;
}

/** The package module defining the struct a type path names, or null. */
function structModule(pkg, mod, path) {
  if (!path || path.length === 0) return null;
  if (path.length === 1) {
    if (mod.structs.has(path[0])) return mod;
    const member = mod.members.get(path[0]);
    if (member) {
      const target = pkg.get(member.module);
      return target && target.structs.has(member.name) ? target : null;
    }
    return null;
  }
  const target = resolveModule(pkg, mod, path.slice(0, -1));
  return target && target.structs.has(path[path.length - 1]) ? target : null;
}

/** The package function a call's name path names from `mod`, or null when unknown. */
function resolveFunction(pkg, mod, path) {
  if (path.length === 1) {
    const own = mod.functions.get(path[0]);
    if (own) return { fn: own, target: mod, name: path[0] };
    const member = mod.members.get(path[0]);
    if (member) {
      const target = pkg.get(member.module);
      if (target) return { fn: target.functions.get(member.name) || null, target, name: member.name };
    }
    return null;
  }
  const target = resolveModule(pkg, mod, path.slice(0, -1));
  if (!target) return null;
  const name = path[path.length - 1];
  return { fn: target.functions.get(name) || null, target, name };
}

// -- checking one module ----------------------------------------------------------------

function checkModule(pkg, mod, problems) {
  const report = (node, message) => problems.push({ file: mod.file, ...pos(node), message });

  // expected_failure(abort_code = m::EName): the constant of a package module
  const annotationWalk = (n) => {
    if (n.type === "annotation_expr") {
      const ids = named(n);
      if (ids[0] && ids[0].type === "identifier" && ids[0].text === "abort_code") {
        const access = ids.find((c) => c.type === "module_access");
        if (access) checkAbortCode(access);
      }
    }
    for (const c of kids(n)) annotationWalk(c);
  };
  const checkAbortCode = (access) => {
    const path = pathOf(access);
    const name = path[path.length - 1];
    if (!CONST_NAME.test(name)) return;
    if (path.length === 1) {
      if (!mod.consts.has(name)) report(access, `abort_code ${name}: no such constant in module ${mod.name}`);
      return;
    }
    const target = resolveModule(pkg, mod, path.slice(0, -1));
    if (target === null) {
      const head = path[0];
      if (path.length === 2 && !mod.aliases.has(head) && !IMPLICIT_MODULES.has(head)) {
        report(access, `abort_code ${path.join("::")}: unbound module '${head}' (no \`use\` names it)`);
      }
      return;
    }
    if (!target.consts.has(name)) {
      report(access, `abort_code ${path.join("::")}: module ${target.name} declares no constant ${name}`);
    }
  };
  if (mod.node) annotationWalk(mod.node);

  for (const fn of mod.functions.values()) {
    if (fn.macro) continue; // macro bodies are checked where they are expanded
    const block = firstOfType(fn.node, "block");
    if (!block) continue;
    const scopes = [new Map()];
    for (const p of fn.params) {
      scopes[0].set(p.name, { mut: p.mut, ref: p.type.ref, type: p.type, known: true });
    }
    checkBody(pkg, mod, fn, block, scopes, report);
  }
}

function lookup(scopes, name) {
  for (let i = scopes.length - 1; i >= 0; i--) {
    if (scopes[i].has(name)) return scopes[i].get(name);
  }
  return null;
}

/** The bindings a bind_list introduces: [{name, mut, node}]. */
function bindings(bindList) {
  const out = [];
  const walk = (n, mut) => {
    if (n.type === "name_expression") return; // a variant or struct name in a pattern
    if (n.type === "mut_bind_var") {
      for (const c of kids(n)) walk(c, true);
      return;
    }
    if (n.type === "bind_var") {
      const id = firstOfType(n, "variable_identifier");
      if (id && id.text !== "_") out.push({ name: id.text, mut, node: n });
      return;
    }
    for (const c of kids(n)) walk(c, mut);
  };
  walk(bindList, false);
  return out;
}

/** What a let's value is known to be: {ref, tuple, path} or null when unknown. */
function valueInfo(pkg, mod, expr, scopes) {
  if (!expr) return null;
  switch (expr.type) {
    case "expression_list":
      return { ref: null, tuple: named(expr).length > 1, path: null };
    case "borrow_expression":
      return { ref: firstOfType(expr, "mut_ref") ? "mut" : "imm", tuple: false, path: null };
    case "pack_expression": {
      const access = accessOf(named(expr)[0]);
      return { ref: null, tuple: false, path: access ? pathOf(access) : null };
    }
    case "vector_expression":
    case "num_literal":
    case "bool_literal":
    case "address_literal":
    case "byte_string_literal":
    case "hex_string_literal":
      return { ref: null, tuple: false, path: null, value: true };
    case "call_expression": {
      const access = accessOf(named(expr)[0]);
      if (!access) return null;
      const path = pathOf(access);
      if (SCENARIO_TAKES.has(path[path.length - 1])) {
        const t = typeArgument(access);
        return t ? { ref: null, tuple: false, path: t.path } : null;
      }
      const found = resolveFunction(pkg, mod, path);
      return found && found.fn ? { ...found.fn.ret, fnModule: found.target } : null;
    }
    case "dot_expression": {
      const parts = named(expr);
      const last = parts[parts.length - 1];
      if (last && last.type === "call_expression") {
        const access = accessOf(named(last)[0]);
        if (!access) return null;
        const path = pathOf(access);
        if (path.length === 1 && SCENARIO_TAKES.has(path[0])) {
          const t = typeArgument(access);
          return t ? { ref: null, tuple: false, path: t.path } : null;
        }
        const method = resolveMethod(pkg, mod, parts[0], path, scopes);
        return method && method.fn ? { ...method.fn.ret, fnModule: method.target } : null;
      }
      return null;
    }
    default:
      return null;
  }
}

/** The package function `recv.name(...)` calls, when `recv`'s struct type is known. */
function resolveMethod(pkg, mod, recv, path, scopes) {
  if (path.length !== 1) return null;
  const local = plainName(recv) && lookup(scopes, plainName(recv));
  if (!local || !local.type || !local.type.path) return null;
  const owner = structModule(pkg, local.typeModule || mod, local.type.path);
  if (!owner || mod.useFuns.has(path[0]) || owner.useFuns.has(path[0])) return null;
  return { fn: owner.functions.get(path[0]) || null, target: owner, name: path[0], local };
}

function checkBody(pkg, mod, fn, root, scopes, report) {
  const checkCall = (node, found, argCount, viaMethod) => {
    if (!found) return;
    const { fn: callee, target, name } = found;
    const shown = `${target.name}::${name}`;
    if (!callee) {
      // a method may come from a `use fun` alias elsewhere: only direct calls are sure
      if (!viaMethod) report(node, `${shown}: module ${target.name} has no function ${name}`);
      return;
    }
    if (callee.macro) return;
    if (target !== mod) {
      if (callee.visibility === "private") {
        report(node, `${shown} is private to module ${target.name}`);
      }
      if (callee.testOnly && !mod.testOnly && !fn.testOnly) {
        report(node, `${shown} is #[test_only] and cannot be called from non-test code`);
      }
    }
    const expected = callee.params.length - (viaMethod ? 1 : 0);
    if (argCount !== expected) {
      report(
        node,
        `${shown} takes ${callee.params.length} argument(s); this call passes ${argCount + (viaMethod ? 1 : 0)}`,
      );
    }
  };

  const visit = (node) => {
    switch (node.type) {
      case "block": {
        scopes.push(new Map());
        for (const c of kids(node)) visit(c);
        scopes.pop();
        return;
      }
      case "let_statement": {
        const bindList = firstOfType(node, "bind_list");
        const children = kids(node);
        const eq = children.findIndex((c) => c.type === "=");
        const value = eq >= 0 ? children.slice(eq + 1).find((c) => c.isNamed()) : null;
        const annotation = children
          .slice(0, eq >= 0 ? eq : children.length)
          .find((c) => c.isNamed() && !TRIVIA.has(c.type) && c.type !== "bind_list");
        if (value) visit(value);
        const bound = bindList ? bindings(bindList) : [];
        const single = bindList && named(bindList).length === 1 && named(bindList)[0].type !== "comma_bind_list";
        const declared = annotation ? typeInfo(annotation) : null;
        const known = valueInfo(pkg, mod, value, scopes);
        if (single && bound.length === 1) {
          if (declared && declared.tuple) {
            report(node, `'${bound[0].name}' is declared with a tuple type; Move binds a tuple only to a pattern like (a, b)`);
          } else if (known && known.tuple) {
            report(node, `a tuple is bound to the single local '${bound[0].name}'; Move has no tuple values: bind it as (a, b, ...)`);
          }
        }
        const type = declared && (declared.path || declared.ref) ? declared : known;
        for (const b of bound) {
          scopes[scopes.length - 1].set(b.name, {
            mut: b.mut,
            ref: type && single ? type.ref : undefined,
            type: type && single && !type.tuple ? type : null,
            typeModule: type && type.fnModule ? type.fnModule : mod,
            known: Boolean(type && single),
          });
        }
        return;
      }
      case "match_arm":
      case "lambda_expression": {
        scopes.push(new Map());
        for (const c of kids(node)) {
          if (c.type === "bind_list" || c.type === "lambda_bindings") {
            for (const b of bindings(c)) scopes[scopes.length - 1].set(b.name, { mut: b.mut, known: false });
          } else {
            visit(c);
          }
        }
        scopes.pop();
        return;
      }
      case "assign_expression": {
        const [lhs, ...rest] = named(node);
        const name = plainName(lhs);
        // (`*r = v` parses as `*(r = v)`: that is no assignment to r)
        if (name && node.parent && node.parent.type !== "dereference_expression") {
          const local = lookup(scopes, name);
          if (local && !local.mut) {
            report(lhs, `'${name}' is assigned but was not declared \`mut\` (let mut ${name} = ...)`);
          }
        }
        if (!name && lhs && lhs.type === "dot_expression" && !isCallChain(lhs)) {
          const rootName = plainName(named(lhs)[0]);
          const root = rootName && lookup(scopes, rootName);
          if (root && !root.mut && root.known && root.ref === null) {
            report(lhs, `a field of '${rootName}' is assigned but '${rootName}' was not declared \`mut\``);
          }
        }
        if (!name) visit(lhs);
        for (const c of rest) visit(c);
        return;
      }
      case "borrow_expression": {
        const operand = named(node).find((c) => c.type !== "mut_ref" && c.type !== "imm_ref");
        if (firstOfType(node, "mut_ref") && operand) {
          const name = plainName(operand);
          const local = name && lookup(scopes, name);
          if (local && !local.mut) {
            report(operand, `'${name}' is borrowed mutably but was not declared \`mut\``);
          } else if (!name && operand.type === "dot_expression") {
            const rootName = plainName(named(operand)[0]);
            const root = rootName && lookup(scopes, rootName);
            if (root && !root.mut && root.known && root.ref === null && !isCallChain(operand)) {
              report(operand, `a field of '${rootName}' is borrowed mutably but '${rootName}' was not declared \`mut\``);
            }
          }
        }
        for (const c of kids(node)) visit(c);
        return;
      }
      case "call_expression": {
        const access = accessOf(named(node)[0]);
        const args = firstOfType(node, "arg_list");
        if (access) {
          const path = pathOf(access);
          const local = path.length === 1 ? lookup(scopes, path[0]) : null;
          if (!local) checkCall(node, resolveFunction(pkg, mod, path), args ? named(args).length : 0, false);
        }
        if (args) for (const c of kids(args)) visit(c);
        return;
      }
      case "dot_expression": {
        const parts = named(node);
        const last = parts[parts.length - 1];
        if (parts.length === 2 && last.type === "call_expression") {
          const recv = parts[0];
          const access = accessOf(named(last)[0]);
          const args = firstOfType(last, "arg_list");
          if (access) {
            const method = resolveMethod(pkg, mod, recv, pathOf(access), scopes);
            if (method) {
              checkCall(last, method, args ? named(args).length : 0, true);
              const self = method.fn && method.fn.params[0];
              const local = method.local;
              if (self && self.type.ref === "mut" && local.ref === null && !local.mut) {
                report(recv, `${method.target.name}::${method.name} takes &mut self, but '${plainName(recv)}' was not declared \`mut\``);
              } else if (self && self.type.ref === "mut" && local.ref === "imm") {
                report(recv, `${method.target.name}::${method.name} takes &mut self, but '${plainName(recv)}' is an immutable reference`);
              }
            }
          }
          visit(recv);
          if (args) for (const c of kids(args)) visit(c);
          return;
        }
        for (const c of kids(node)) visit(c);
        return;
      }
      case "name_expression": {
        const name = plainName(node);
        const parent = node.parent;
        if (
          name &&
          CONST_NAME.test(name) &&
          !lookup(scopes, name) &&
          !mod.consts.has(name) &&
          !(parent && (parent.type === "pack_expression" || parent.type === "bind_unpack"))
        ) {
          report(node, `${name}: module ${mod.name} declares no such constant (constants are private to their module)`);
        }
        return;
      }
      default:
        for (const c of kids(node)) visit(c);
    }
  };
  visit(root);
}

/** Whether a dot chain goes through a call (`a.b().c`): its root is not what is borrowed. */
function isCallChain(node) {
  return named(node).some((c) => c.type === "call_expression" || (c.type === "dot_expression" && isCallChain(c)));
}

/** Problems of every module in `parsed` ([{file, tree}]), checked as one package. */
export function semanticProblems(parsed) {
  const pkg = buildPackage(parsed);
  const problems = [];
  for (const mod of pkg.values()) checkModule(pkg, mod, problems);
  return problems;
}
