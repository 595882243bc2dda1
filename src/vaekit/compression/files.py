"""What ``vaekit compress`` and ``vaekit decompress`` run: files in, files out, a summary back.
Everything is read and checked before anything is written; outputs are written atomically."""

from __future__ import annotations

import time
from pathlib import Path

from vaekit.compression.api import DEFAULT_LANES, compress, decompress, read_info, require_constriction
from vaekit.compression.sources import check_image_names, check_output, read_for_coding, write_array, write_images
from vaekit.errors import VaekitError


def _load(run: str | Path):
    from vaekit.run import load

    return load(run, device="cpu", precision="fp32")  # the coder runs its own float64 copy: no inference autocast


def summary(info: dict, size: int, seconds: float | None = None) -> dict:
    data, rate, coder = info["data"], info["rate"], info["coder"]
    values = {"count": data["count"], "dims": data["dims"], "method": coder["method"], "order": coder["order"],
              "lanes": coder["lanes"], "bytes": size, "payload_bits": rate["payload_bits"],
              "initial_bits": rate["initial_bits"], "information_bits": rate["information_bits"],
              "bits_per_dim": rate["bits_per_dim"],
              "bits_per_dim_without_initial": rate["bits_per_dim_without_initial"],
              "file_bits_per_dim": 8 * size / (data["count"] * data["dims"])}
    if seconds is not None:
        values["seconds"] = seconds
        values["images_per_second"] = data["count"] / seconds if seconds > 0 else None
    return values


def compress_file(run: str | Path, spec: str, out: str | Path, *, split: str = "test", lanes: int = DEFAULT_LANES,
                  order: str = "bit-swap", overwrite: bool = False, progress: bool = False) -> dict:
    from vaekit.io import write_bytes

    require_constriction()
    out = Path(out)
    if out.exists() and not overwrite:
        raise VaekitError(f"{out}: already exists; pass --overwrite to replace it")
    if out.is_dir():
        raise VaekitError(f"{out}: is a directory")
    model = _load(run)
    source = read_for_coding(spec, split)
    start = time.perf_counter()
    blob = compress(model, source.x, lanes=lanes, order=order, names=source.names, modes=source.modes,
                    run=str(Path(run).resolve()), progress=progress)
    seconds = time.perf_counter() - start
    write_bytes(out, blob)
    return summary(read_info(blob), len(blob), seconds)


def decompress_file(path: str | Path, out: str | Path, *, run: str | Path | None = None, overwrite: bool = False,
                    progress: bool = False) -> dict:
    require_constriction()
    path, out = Path(path), Path(out)
    if not path.is_file():
        raise VaekitError(f"{path}: no such file")
    blob = path.read_bytes()
    info = read_info(blob, str(path))
    images = info.get("data", {}).get("source") == "images"
    as_folder = images and out.suffix.lower() != ".npy"
    if as_folder:  # before any work: names from a shared file must not reach outside --out
        data = info.get("data", {})
        check_image_names(data.get("names"), data.get("modes"), data.get("count"), str(path))
    check_output(out, overwrite, images)
    if run is None:
        run = info.get("model", {}).get("run")
        if not run:
            raise VaekitError(f"{path}: names no run; pass --run RUN")
    model = _load(run)
    start = time.perf_counter()
    x = decompress(model, blob, progress=progress, name=str(path))
    seconds = time.perf_counter() - start
    if as_folder:
        write_images(out, x, info["data"]["names"], info["data"]["modes"])
    else:
        write_array(out, x)
    return {**summary(info, len(blob), seconds), "out": str(out)}
