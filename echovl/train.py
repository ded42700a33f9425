"""Train with EchoRL on EasyR1: ``python -m echovl.train config=FILE.yaml key=value ...``.

Thin on purpose: EasyR1 (package ``verl``), Ray and vLLM are imported only here, on demand, and the work is
done in :mod:`echovl.easyr1.main`.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

__all__ = ["main"]

INSTALL_HINT = "pip install -e '.[easyr1]'"


def main(argv: Sequence[str] | None = None) -> None:
    if importlib.util.find_spec("verl") is None:
        print(
            "echovl.train: EasyR1 (Python package 'verl') is not installed. Install echovl with its EasyR1 extra, "
            f"from the repository root: {INSTALL_HINT}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    try:
        from .easyr1.main import main as run
    except ModuleNotFoundError as error:  # EasyR1 is there but one of its own dependencies is not (vllm, ...)
        if (error.name or "").split(".")[0] == "echovl":
            raise
        print(
            f"echovl.train: cannot import EasyR1: module '{error.name}' is missing. EasyR1 needs its GPU stack "
            f"(vllm, flash-attn, ...): see its requirements, or reinstall with {INSTALL_HINT}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    run(argv)


if __name__ == "__main__":
    main()
