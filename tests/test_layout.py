"""The import graph of the project's own modules (imports inside functions included): no cycles, and
the training core (solver, model, losses, data_loader) imports nothing of GANmut, test mode or
evaluation, so that it can be read, and changed, without them."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = ('solver', 'model', 'losses', 'data_loader')
# what the core must not import: GANmut, test mode and photos (editing), evaluation
NOT_FOR_THE_CORE = ('ganmut', 'editing', 'evaluation', 'main')
# The layers, lowest first: a module imports only from its own layer or those below (and no cycle
# within a layer). utils is generic machinery; the core trains GANimation; editing is test mode and
# photos; prepare makes datasets from photos with it; ganmut builds on both; evaluation scores either
# model; app serves either in a browser; main chooses.
LAYERS = (('utils',), ('synthetic_faces', 'released', 'model', 'losses', 'data_loader', 'solver', 'openface_utils'),
          ('editing',), ('prepare',), ('ganmut',), ('evaluation',), ('app',), ('main',))


def project_modules():
    """{dotted module name: path} of the project's Python files (tests and the virtualenv left out)."""
    found = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.') and d not in ('tests', '__pycache__', 'data',
                                                                                 'outputs', 'docs'))
        for f in files:
            if f.endswith('.py'):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, '.')
                found[rel.removesuffix('.__init__')] = os.path.join(folder, f)
    return found


def imports_of(path, module, modules):
    """The project modules that `module` (at `path`) imports anywhere in its code."""
    tree = ast.parse(open(path, encoding='utf-8').read(), path)
    package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.') if package else []
                base = '.'.join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f'{base}.{a.name}' for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, 'id', None) == '__import__' and node.args \
                and isinstance(node.args[0], ast.Constant):
            names = [node.args[0].value]
        for name in names:
            while name and name not in modules:
                name = name.rpartition('.')[0]
            if name and name != module:
                out.add(name)
    return out


def import_graph():
    modules = project_modules()
    return {m: imports_of(p, m, modules) for m, p in modules.items()}


def find_cycle(graph):
    """One import cycle as [a, b, ..., a], or None."""
    state = {}

    def visit(node, path):
        state[node] = 'open'
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 'open':
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 'done'
        return None
    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_import_graph_is_read_correctly():
    graph = import_graph()
    assert {'main', 'solver', 'model', 'openface_utils.convert'} <= set(graph)
    assert {'solver', 'model', 'ganmut.space', 'utils.errors'} <= graph['ganmut.solver']
    assert 'data_loader' in graph['openface_utils.convert']
    assert 'evaluation.runner' in graph['main']                 # an import inside a function counts
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) is None


def test_imports_have_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def top(module):
    return module.split('.')[0]


def layer_of(module):
    return next(i for i, names in enumerate(LAYERS) if top(module) in names)


def test_the_training_core_imports_no_ganmut_editing_or_evaluation():
    graph = import_graph()
    wrong = {m: sorted(n for n in graph[m] if top(n) in NOT_FOR_THE_CORE) for m in CORE}
    assert not any(wrong.values()), wrong


def test_every_module_has_a_layer_and_imports_point_down():
    graph = import_graph()
    assert {top(m) for m in graph} <= {name for names in LAYERS for name in names}, 'a module outside LAYERS'
    upward = sorted(f'{m} -> {n}' for m, deps in graph.items() for n in deps if layer_of(n) > layer_of(m))
    assert not upward, upward


def exits_in(path):
    """Lines of `path` that call sys.exit or raise SystemExit outside an `if __name__ == '__main__':` block."""
    tree = ast.parse(open(path, encoding='utf-8').read(), path)
    found = []

    def visit(node):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) \
                and getattr(node.test.left, 'id', None) == '__name__':
            return                                  # the command-line entry of a module may exit
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'exit' \
                and getattr(node.func.value, 'id', None) == 'sys':
            found.append(node.lineno)
        if isinstance(node, ast.Raise) and node.exc is not None and 'SystemExit' in ast.unparse(node.exc):
            found.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child)
    visit(tree)
    return found


def test_library_code_never_exits(tmp_path):
    """User errors travel as utils.errors.UserError up to main(), which alone turns them into exit status 2."""
    sample = tmp_path / 'sample.py'
    sample.write_text('import sys\ndef f():\n    raise SystemExit("x")\nif __name__ == "__main__":\n    sys.exit(f())\n')
    assert exits_in(str(sample)) == [3]
    wrong = {m: exits_in(p) for m, p in project_modules().items() if exits_in(p)}
    assert not wrong, wrong
