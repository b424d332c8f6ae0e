"""pyrflow_ref stays pure NumPy: no module imports torch, and importing it loads no torch."""

import ast
import pathlib
import subprocess
import sys

import pyrflow_ref

ROOT = pathlib.Path(pyrflow_ref.__file__).parent


def test_no_torch_import_in_source():
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{path} imports torch"


def test_import_loads_no_torch():
    code = "import sys, pyrflow_ref, pyrflow_ref.gaussian, pyrflow_ref.demo; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
