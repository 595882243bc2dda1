"""Data: read any accepted source, check it, split it, and serve batches by index.

- ``config``: ``DataConfig`` (what --data asks for) and ``DataInfo`` (what was found), saved in runs;
- ``sources``: a reader for every form ``--data`` accepts (named datasets, files, image folders);
- ``images``: image folders through Pillow; ``stream``: images decoded on demand (``ImageStream``);
- ``dsprites``: the procedural dSprites dataset with its ground-truth factors;
- ``arrays``: in-memory containers; ``loading``: ``load_data`` -> ``DataSplits``, ``load_examples`` (every
  example of a source, prepared as a run prepares its data, for encoding and scoring).
"""

from __future__ import annotations

from vaekit.data.arrays import ArrayData, IndexedView, RawData
from vaekit.data.config import DataConfig, DataInfo
from vaekit.data.loading import DataSplits, Examples, check_finite, load_data, load_examples, scale_like_run
from vaekit.data.sources import DATASETS, recorded_spec
from vaekit.data.stream import ImageStream

__all__ = ["DATASETS", "ArrayData", "DataConfig", "DataInfo", "DataSplits", "Examples", "ImageStream", "IndexedView",
           "RawData", "check_finite", "load_data", "load_examples", "recorded_spec", "scale_like_run"]
