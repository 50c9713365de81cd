"""Generate src/consentauthz/v1 from protos/ (or, with --check, fail if it has drifted)."""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import pathlib
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "src"
PACKAGE = pathlib.Path("consentauthz") / "v1"


def _include_dirs() -> list[str]:
    grpc_tools_protos = importlib.resources.files("grpc_tools") / "_proto"
    import google.rpc  # googleapis-common-protos ships the .proto files beside the modules

    googleapis = pathlib.Path(next(iter(google.rpc.__path__))).parent.parent
    return [str(PROTO_ROOT), str(grpc_tools_protos), str(googleapis)]


def generate(out_root: pathlib.Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    args = ["protoc", *(f"-I{d}" for d in _include_dirs())]
    args += [f"--python_out={out_root}", f"--pyi_out={out_root}", f"--grpc_python_out={out_root}"]
    if protoc.main([*args, *protos]) != 0:
        raise SystemExit("protoc failed")
    (out_root / PACKAGE / "__init__.py").write_text('"""Generated from protos/. Do not edit."""\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code drifted")
    ns = parser.parse_args()
    if not ns.check:
        generate(OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        fresh, committed = pathlib.Path(tmp) / PACKAGE, OUT / PACKAGE
        names = sorted({p.name for p in fresh.iterdir()} | {p.name for p in committed.iterdir()
                                                             if p.is_file()})
        drifted = [n for n in names if not (fresh / n).exists() or not (committed / n).exists()
                   or not filecmp.cmp(fresh / n, committed / n, shallow=False)]
    if drifted:
        print(f"generated code is out of date with protos/: {', '.join(drifted)}\n"
              "run: make protos", file=sys.stderr)
        return 1
    print("generated code matches protos/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
