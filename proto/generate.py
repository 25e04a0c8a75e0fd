"""Regenerates the Python gRPC code from proto/ into services/api/.

One command, reproducible: the generator versions are pinned in pyproject's dev extra and
checked here, so CI can regenerate and fail on any diff (`python proto/generate.py --check`).
grpc_tools emits absolute imports derived from the proto path (protocolbuffers/protobuf#1491);
they are rewritten into the `services.api` package, as Temporal's gen_protos.py does.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "services" / "api"
PINNED = {"grpcio-tools": "1.85.1", "mypy-protobuf": "5.1.0"}
IMPORT_RE = re.compile(r"^(from|import) wapiguard\.v1", re.MULTILINE)


def check_toolchain() -> None:
    for dist, wanted in PINNED.items():
        have = metadata.version(dist)
        if have != wanted:
            sys.exit(f"{dist} {have} installed, {wanted} pinned: install the dev extra first")


def generate(into: Path) -> None:
    import grpc_tools

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    bindir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={into}",
        f"--grpc_python_out={into}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={into}",
        f"--mypy_grpc_out={into}",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_DIR)
    for path in into.rglob("*.py*"):
        text = IMPORT_RE.sub(r"\1 services.api.wapiguard.v1", path.read_text())
        path.write_text(text)
    for pkg in [into, *(d for d in into.rglob("*") if d.is_dir())]:
        (pkg / "__init__.py").write_text("")
    (into / "py.typed").write_text("")


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    files = [p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    return not mismatch and not errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if services/api is stale")
    args = parser.parse_args()
    check_toolchain()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "api"
        fresh.mkdir()
        generate(fresh)
        if args.check:
            if not OUT_DIR.exists() or not same_tree(fresh, OUT_DIR):
                sys.exit("services/api is stale: run `python proto/generate.py` and commit")
            print("services/api is up to date")
            return
        shutil.rmtree(OUT_DIR, ignore_errors=True)
        shutil.copytree(fresh, OUT_DIR)
        print(f"generated {sum(1 for _ in OUT_DIR.rglob('*_pb2*.py*'))} files into {OUT_DIR}")


if __name__ == "__main__":
    main()
