#!/usr/bin/env python3
"""Checks the module graph declared in cmake/modules.cmake against the sources.

Every folder src/<m> is a module, declared once by imgstream_module(NAME m ...) with
  DEPS          modules its headers include (linked PUBLIC),
  PRIVATE_DEPS  modules only its .cc files include (linked PRIVATE),
  TEST_DEPS     modules only its tests include (*_test.cc, testing.h, *_testing.h): they
                are not linked into the module (unit_tests links every module),
  LIBS / PRIVATE_LIBS  external libraries, by the short names of EXTERNAL below, the same
                way (PUBLIC when a header includes them).

It fails, saying which file and which line, when
  - a file includes "X/..." of a module X its module does not declare (a header needs X
    in DEPS, a .cc in DEPS or PRIVATE_DEPS, a test in any of the three),
  - a declared dependency is unused, or is declared as DEPS but no header includes it,
  - a file outside the tests includes an external library's header its module does not
    declare, or a declared library is never included (tests' external includes are not
    checked: unit_tests links every module),
  - the graph has a cycle (TEST_DEPS count: a module's tests may not use a module that
    depends on it), or names a module that is not a folder under src/.

Usage: scripts/check-deps.py [--print] [--derive]
  --print   prints the declared graph as text (for docs/modules.md).
  --derive  prints the imgstream_module() calls the includes call for (to start from).
"""
import os
import re
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES_CMAKE = os.path.join(ROOT, "cmake", "modules.cmake")
KEYWORDS = ("NAME", "DEPS", "PRIVATE_DEPS", "TEST_DEPS", "LIBS", "PRIVATE_LIBS")

# Short name of an external library -> the include prefixes that use it.
EXTERNAL = {
    "fmt": ("fmt/",),
    "libnbd": ("libnbd.h",),
    "curl": ("curl/",),
    "zstd": ("zstd.h", "zdict.h"),
    "ext2fs": ("ext2fs/", "et/com_err.h"),
    "openssl": ("openssl/",),
    "json": ("nlohmann/",),
    "cli11": ("CLI/",),
    "threads": ("thread", "pthread.h"),
}

INCLUDE_LOCAL = re.compile(r'^\s*#\s*include\s+"([a-z0-9_]+)/[^"]+"')
INCLUDE_SYSTEM = re.compile(r"^\s*#\s*include\s+<([^>]+)>")


def is_test(name):
    return name.endswith("_test.cc") or name == "testing.h" or name.endswith("_testing.h")


def read_declared():
    text = open(MODULES_CMAKE, encoding="utf-8").read()
    text = re.sub(r"#[^\n]*", "", text)
    declared = {}
    for body in re.findall(r"^imgstream_module\s*\(([^)]*)\)", text, re.M):
        fields = {k: [] for k in KEYWORDS}
        key = None
        for tok in body.split():
            if tok in KEYWORDS:
                key = tok
            elif key is None:
                sys.exit(f"check-deps: {MODULES_CMAKE}: '{tok}' before any keyword")
            else:
                fields[key].append(tok)
        if len(fields["NAME"]) != 1:
            sys.exit(f"check-deps: {MODULES_CMAKE}: a call without exactly one NAME: {body!r}")
        name = fields.pop("NAME")[0]
        if name in declared:
            sys.exit(f"check-deps: {MODULES_CMAKE}: module {name} declared twice")
        declared[name] = {k: set(v) for k, v in fields.items()}
    return declared


def scan_sources():
    """module -> list of (file, line number, kind, target), kind in local/system."""
    uses = defaultdict(list)
    src = os.path.join(ROOT, "src")
    for m in sorted(os.listdir(src)):
        d = os.path.join(src, m)
        if not os.path.isdir(d):
            continue
        uses.setdefault(m, [])
        for f in sorted(os.listdir(d)):
            if not (f.endswith(".h") or f.endswith(".cc")):
                continue
            path = os.path.join("src", m, f)
            with open(os.path.join(ROOT, path), encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if (g := INCLUDE_LOCAL.match(line)) and g.group(1) != m:
                        uses[m].append((path, n, "local", g.group(1)))
                    elif g := INCLUDE_SYSTEM.match(line):
                        for lib, prefixes in EXTERNAL.items():
                            if any(g.group(1) == p or (p.endswith("/") and g.group(1).startswith(p))
                                   for p in prefixes):
                                uses[m].append((path, n, "system", lib))
    return uses


def find_cycle(graph):
    state = {}
    stack = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def derive(uses):
    for m in sorted(uses):
        f = {k: set() for k in KEYWORDS[1:]}
        for path, _, kind, target in uses[m]:
            name = os.path.basename(path)
            if kind == "local":
                f["TEST_DEPS" if is_test(name) else "DEPS" if name.endswith(".h") else "PRIVATE_DEPS"].add(target)
            elif not is_test(name):
                f["LIBS" if name.endswith(".h") else "PRIVATE_LIBS"].add(target)
        f["PRIVATE_DEPS"] -= f["DEPS"]
        f["TEST_DEPS"] -= f["DEPS"] | f["PRIVATE_DEPS"]
        f["PRIVATE_LIBS"] -= f["LIBS"]
        parts = [f"NAME {m}"] + [k + " " + " ".join(sorted(v)) for k, v in f.items() if v]
        print("imgstream_module(" + " ".join(parts) + ")")


def main():
    uses = scan_sources()
    if "--derive" in sys.argv[1:]:
        derive(uses)
        return 0
    declared = read_declared()
    if "--print" in sys.argv[1:]:
        for m, f in declared.items():
            deps = sorted(f["DEPS"] | f["PRIVATE_DEPS"])
            tests = f" (tests: {', '.join(sorted(f['TEST_DEPS']))})" if f["TEST_DEPS"] else ""
            print(f"{m:8} -> {', '.join(deps) or '-'}{tests}")
        return 0

    errors = []
    for m in sorted(set(uses) - set(declared)):
        errors.append(f"src/{m} is not declared in cmake/modules.cmake (add imgstream_module(NAME {m} ...))")
    for m in sorted(set(declared) - set(uses)):
        errors.append(f"cmake/modules.cmake declares module {m}, but there is no folder src/{m}")
    for m, f in sorted(declared.items()):
        for key in ("DEPS", "PRIVATE_DEPS", "TEST_DEPS"):
            for d in sorted(f[key] - set(declared)):
                errors.append(f"module {m}: {key} names {d}, which is not a module")
        for key in ("LIBS", "PRIVATE_LIBS"):
            for lib in sorted(f[key] - set(EXTERNAL)):
                errors.append(f"module {m}: {key} names {lib}, not one of {', '.join(EXTERNAL)}")
        for key, other in (("PRIVATE_DEPS", "DEPS"), ("TEST_DEPS", "DEPS"), ("TEST_DEPS", "PRIVATE_DEPS"),
                           ("PRIVATE_LIBS", "LIBS")):
            for d in sorted(f[key] & f[other]):
                errors.append(f"module {m}: {d} is in both {other} and {key}")

    for m, f in sorted(declared.items()):
        used = defaultdict(set)  # key the use satisfies -> targets
        for path, n, kind, target in uses.get(m, []):
            name = os.path.basename(path)
            test, header = is_test(name), name.endswith(".h")
            if kind == "local":
                allowed = f["DEPS"] if header and not test else f["DEPS"] | f["PRIVATE_DEPS"]
                if test:
                    allowed = allowed | f["TEST_DEPS"]
                    used["TEST_DEPS"].add(target)
                else:
                    used["DEPS" if header else "PRIVATE_DEPS"].add(target)
                if target not in allowed:
                    if not test and header and target in f["PRIVATE_DEPS"]:
                        why = f"a header includes it: move {target} from PRIVATE_DEPS to DEPS"
                    else:
                        why = f"add {target} to its {'TEST_DEPS' if test else 'DEPS' if header else 'PRIVATE_DEPS'}"
                    errors.append(f"{path}:{n}: module {m} includes module {target}, "
                                  f"which it does not declare ({why})")
            elif not test:
                used["LIBS" if header else "PRIVATE_LIBS"].add(target)
                if target not in (f["LIBS"] if header else f["LIBS"] | f["PRIVATE_LIBS"]):
                    key = "LIBS" if header else "PRIVATE_LIBS"
                    errors.append(f"{path}:{n}: module {m} uses library {target}, which it does not "
                                  f"declare (add it to its {key})")
        for d in sorted(f["DEPS"] - used["DEPS"]):
            where = "only its .cc files include it: move it to PRIVATE_DEPS" \
                if d in used["PRIVATE_DEPS"] else "no header of it includes it"
            errors.append(f"module {m}: declared dependency {d} (DEPS) is not used as one ({where})")
        for d in sorted(f["PRIVATE_DEPS"] - used["PRIVATE_DEPS"]):
            errors.append(f"module {m}: declared dependency {d} (PRIVATE_DEPS) is unused: no .cc includes it")
        for d in sorted(f["TEST_DEPS"] - used["TEST_DEPS"]):
            errors.append(f"module {m}: declared test dependency {d} is unused: no test includes it")
        for lib in sorted(f["LIBS"] - used["LIBS"]):
            where = "only its .cc files include it: move it to PRIVATE_LIBS" \
                if lib in used["PRIVATE_LIBS"] else "nothing includes it"
            errors.append(f"module {m}: declared library {lib} (LIBS) is not used as one ({where})")
        for lib in sorted(f["PRIVATE_LIBS"] - used["PRIVATE_LIBS"]):
            errors.append(f"module {m}: declared library {lib} (PRIVATE_LIBS) is unused")

    graph = {m: f["DEPS"] | f["PRIVATE_DEPS"] | f["TEST_DEPS"] for m, f in declared.items()}
    if cycle := find_cycle(graph):
        errors.append("the module graph has a cycle: " + " -> ".join(cycle) +
                      " (move the code that closes it to the right module)")

    for e in errors:
        print(f"check-deps: {e}", file=sys.stderr)
    if errors:
        print(f"check-deps: {len(errors)} problem(s); the graph is cmake/modules.cmake, "
              "described in docs/modules.md", file=sys.stderr)
        return 1
    print(f"check-deps: {len(declared)} modules, graph acyclic, every include declared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
