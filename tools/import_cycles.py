#!/usr/bin/env python3
"""Finds import cycles between the files of a Rust crate.

Imports are meant to form a DAG (no module imports one that imports it back), and rustc does
not check that, so this does. The graph has one node per file under src/ and an edge from a
file to the file of every module it names through `crate::`, `super::` or `self::`, in `use`
(groups expanded) and in expressions (`crate::x::y()`, `super::X`). A path goes to the
deepest module it names that has a file of its own (a type re-exported by `config/mod.rs`
counts as `config/mod.rs`). Test code is left out: `#[cfg(test)]` items and the
module files they declare. Every strongly connected component of more than one file is a cycle.

    tools/import_cycles.py gateway/src plugins/src     # exit 1 on any cycle

Standard library only, so `make lint` needs nothing installed.
"""

import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# Only paths from these count: a parent naming its own children bare (`child::f()`,
# `pub use child::X`) is how it composes them, so those edges are left out.
ROOTS = ("crate", "super", "self")


def strip_comments_and_strings(text):
    """Blanks comments, string and char literals (keeping newlines) so braces and paths in
    them are not read as code."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(" " + "\n" * text.count("\n", i, j))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 260]) and not _ident_before(text, i):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            j = n if end < 0 else end + 1 + len(hashes)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == "b" and text.startswith('b"', i) and not _ident_before(text, i):
            i += 1  # the b prefix; the string is handled next round
            out.append("b")
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == "'":
            # A char literal ('a', '\n', '\u{..}', '{') or a lifetime/label ('a, 'static).
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:i + 12])
            if m:
                out.append("' '")
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _ident_before(text, i):
    return i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")


def matching_brace(text, open_at):
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(text) - 1


ATTR = re.compile(r"#!?\[")
CFG_TEST = re.compile(r"#\[\s*cfg\s*\(\s*test\s*\)\s*\]")


def attribute_end(text, start):
    """Index just past the attribute starting at text[start] ('#[...]')."""
    depth = 0
    for j in range(text.index("[", start), len(text)):
        if text[j] == "[":
            depth += 1
        elif text[j] == "]":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(text)


def remove_test_items(text):
    """Blanks every item under #[cfg(test)]; returns (text, names of test `mod x;` files)."""
    test_mods = set()
    while True:
        m = CFG_TEST.search(text)
        if not m:
            return text, test_mods
        j = m.end()
        while True:  # further attributes on the same item
            k = len(text) - len(text[j:].lstrip())
            if ATTR.match(text, k):
                j = attribute_end(text, k)
            else:
                j = k
                break
        mod = re.match(r"(pub(\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", text[j:])
        if mod:
            test_mods.add(mod.group(3))
            end = j + mod.end()
        else:
            semi, brace = text.find(";", j), text.find("{", j)
            if brace >= 0 and (semi < 0 or brace < semi):
                end = matching_brace(text, brace) + 1
            else:
                end = (semi if semi >= 0 else len(text) - 1) + 1
        blank = re.sub(r"[^\n]", " ", text[m.start():end])
        text = text[:m.start()] + blank + text[end:]


def declared_mods(code):
    """Out-of-line child modules (`mod x;`) and inline ones (`mod x { ... }`) with their
    bodies' spans."""
    files, inline = [], []
    for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*([;{])", code):
        if m.group(2) == ";":
            files.append(m.group(1))
        else:
            inline.append((m.group(1), m.end() - 1, matching_brace(code, m.end() - 1)))
    return files, inline


class Crate:
    def __init__(self, src):
        self.src = src
        self.modules = {}  # module path (tuple) -> file (relative to src)
        self.code = {}  # file -> code without comments, strings and test items
        self.children = {}  # module path -> set of child module names
        root = "lib.rs" if os.path.exists(os.path.join(src, "lib.rs")) else "main.rs"
        self._load((), root, os.path.dirname(root))

    def _load(self, path, rel, child_dir):
        with open(os.path.join(self.src, rel), encoding="utf-8") as f:
            code, test_mods = remove_test_items(strip_comments_and_strings(f.read()))
        self.code[rel] = code
        self.modules[path] = rel
        self._declare(path, rel, code, child_dir, test_mods)

    def _declare(self, path, rel, code, child_dir, test_mods):
        files, inline = declared_mods(code)
        kids = self.children.setdefault(path, set())
        for name in files:
            if name in test_mods or _inside(code.find("mod " + name), inline):
                continue
            kids.add(name)
            flat = os.path.join(child_dir, name + ".rs")
            nested = os.path.join(child_dir, name, "mod.rs")
            if os.path.exists(os.path.join(self.src, flat)):
                self._load(path + (name,), flat, os.path.join(child_dir, name))
            elif os.path.exists(os.path.join(self.src, nested)):
                self._load(path + (name,), nested, os.path.join(child_dir, name))
        for name, start, end in inline:
            kids.add(name)
            self.modules[path + (name,)] = rel
            self.children.setdefault(path + (name,), set())

    def module_at(self, rel, offset):
        """The module path whose code is at this offset of the file (inline modules count)."""
        best = None
        for path, f in self.modules.items():
            if f == rel and (best is None or len(path) < len(best)):
                best = path
        code = self.code[rel]
        for name, start, end in declared_mods(code)[1]:
            if start < offset < end:
                return best + (name,)
        return best

    def resolve(self, here, segments):
        """The file of the deepest module a path names, or None when it leaves the crate."""
        if not segments or segments[0] not in ROOTS:
            return None
        if segments[0] == "crate":
            mod, rest = (), segments[1:]
        else:
            mod, rest = here, segments
            while rest and rest[0] in ("super", "self"):
                if rest[0] == "super":
                    if not mod:
                        return None
                    mod = mod[:-1]
                rest = rest[1:]
        for seg in rest:
            if seg in self.children.get(mod, ()):
                mod = mod + (seg,)
            else:
                break
        return self.modules.get(mod)

    def edges(self):
        graph = {rel: set() for rel in self.code}
        for rel, code in self.code.items():
            for offset, segments in paths_in(code):
                here = self.module_at(rel, offset)
                target = self.resolve(here, segments)
                if target and target != rel:
                    graph[rel].add(target)
        return graph


def _inside(offset, inline):
    return any(start < offset < end for _, start, end in inline)


USE = re.compile(r"\buse\s+([^;]*);")
PATH = re.compile(r"(?<![A-Za-z0-9_:])(" + IDENT + r"(?:\s*::\s*" + IDENT + r")+)")


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> [[a, b], [a, c, d], [a, c, e]]; `as` renames are dropped."""
    tree = re.sub(r"\s+as\s+" + IDENT, "", tree)
    tree = re.sub(r"\s+", "", tree).lstrip(":")
    brace = tree.find("{")
    if brace < 0:
        return [[s for s in tree.split("::") if s and s != "*"]]
    prefix = [s for s in tree[:brace].split("::") if s]
    inner = tree[brace + 1:tree.rindex("}")]
    parts, depth, start = [], 0, 0
    for i, c in enumerate(inner):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    out = []
    for part in parts:
        if part in ("", "self"):
            out.append(prefix)
            continue
        for sub in expand_use_tree(part):
            out.append(prefix + sub)
    return out


def paths_in(code):
    """(offset, segments) of every path that may name a module of the crate."""
    found = []
    use_spans = []
    for m in USE.finditer(code):
        use_spans.append((m.start(), m.end()))
        for segments in expand_use_tree(m.group(1)):
            found.append((m.start(), segments))
    for m in PATH.finditer(code):
        if any(s <= m.start() < e for s, e in use_spans):
            continue
        segments = [s.strip() for s in m.group(1).split("::")]
        found.append((m.start(), segments))
    return found


def strongly_connected(graph):
    """Tarjan's algorithm, iterative; returns the components with more than one node."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return comps


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: import_cycles.py SRC_DIR...", file=sys.stderr)
        return 2
    failed = False
    for src in argv[1:]:
        crate = Crate(src)
        graph = crate.edges()
        for comp in strongly_connected(graph):
            failed = True
            print(f"CYCLE: {src}: {len(comp)} files")
            for f in comp:
                inside = sorted(t for t in graph[f] if t in comp)
                print(f"    {f} -> {', '.join(inside)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
