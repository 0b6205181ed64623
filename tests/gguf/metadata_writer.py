"""Metadata-only GGUFs for unit tests of facts: real files, real header parsing, no weights.

Tensor infos are written with their real shapes and types (the data is zeros of the right byte
size, kept tiny by the shapes the tests choose), so every tensor's byte size goes through the
same path as a real model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np


def write_metadata_gguf(
    path: Path,
    arch: str,
    kv: Mapping[str, Any],
    tensors: Mapping[str, tuple[tuple[int, ...], str]] | None = None,
) -> Path:
    """``kv`` keys without the ``{arch}.`` prefix go under it; ``general.*``/``tokenizer.*`` as given.

    ``tensors``: name -> (ggml shape, type name such as F32, F16, Q8_0, Q4_0).
    """
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in kv.items():
        full = key if key.startswith(("general.", "tokenizer.")) else f"{arch}.{key}"
        if isinstance(value, bool):
            writer.add_bool(full, value)
        elif isinstance(value, int):
            writer.add_uint32(full, value)
        elif isinstance(value, float):
            writer.add_float32(full, value)
        elif isinstance(value, str):
            writer.add_string(full, value)
        elif isinstance(value, list):
            writer.add_array(full, value)
        else:
            raise TypeError(f"{key}: {type(value)}")
    for name, (shape, type_name) in (tensors or {}).items():
        qtype = gguf.GGMLQuantizationType[type_name]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        n = int(np.prod(shape))
        raw = np.zeros(n // block * size, dtype=np.uint8)
        # raw quantized data: numpy shape is the ggml shape reversed, bytes in the last dim
        byte_shape = tuple(reversed(shape))[:-1] + (shape[0] // block * size,)
        writer.add_tensor(name, raw.reshape(byte_shape), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
