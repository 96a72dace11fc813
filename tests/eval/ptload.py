"""Reads a PyTorch checkpoint into numpy arrays, without torch: the zip format torch.save writes
since torch 1.6, and the legacy format older checkpoints (Resemblyzer's) were written in.

Why: the judges must stay independent of the service and cheap to install. torch is a 700 MB
wheel; a checkpoint is only a pickle naming storages plus the raw storages, so the pickle is
read with the torch classes it names replaced by numpy equivalents.
"""
import collections
import io
import pickle
import struct
import zipfile

import numpy as np

_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}

# The legacy format opens with these three pickles (torch.serialization's constants).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _StorageType:
    def __init__(self, name):
        self.name = name


def _dtype(kind):
    return _DTYPES[kind.name] if isinstance(kind, _StorageType) else np.float32


def _rebuild_tensor(storage, offset, size, stride, *_):
    if storage is None:
        # The legacy format's first pass, which only learns the storages' types: the data
        # follows the pickle, so no tensor can be built yet.
        return None
    if len(size) == 0:
        return storage[offset].copy()
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * storage.itemsize for s in stride)
    ).copy()


class _Unpickler(pickle.Unpickler):
    def __init__(self, data, load_storage):
        super().__init__(data)
        self.load_storage = load_storage

    def find_class(self, module, name):
        if module.startswith("torch") and name.endswith("Storage"):
            return _StorageType(name)
        if name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if name == "_rebuild_parameter":
            return lambda data, *_: data
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name == "device":
            return lambda *_: None
        return super().find_class(module, name)

    def persistent_load(self, pid):
        # Zip format: ('storage', storage type, key, location, number of elements).
        # Legacy format: the same plus view metadata, None or (view key, offset, size) when the
        # tensor's storage is a slice of a larger one saved under the root key.
        storage = self.load_storage(pid[1], pid[2])
        view = pid[5] if len(pid) > 5 else None
        if view is not None and storage is not None:
            _, offset, size = view
            storage = storage[offset:offset + size]
        return storage


def _load_zip(path):
    archive = zipfile.ZipFile(path)
    prefix = next(n for n in archive.namelist() if n.endswith("data.pkl"))[: -len("data.pkl")]
    storages = {}

    def load_storage(kind, key):
        if key not in storages:
            storages[key] = np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=_dtype(kind))
        return storages[key]

    return _Unpickler(io.BytesIO(archive.read(prefix + "data.pkl")), load_storage).load()


def _load_legacy(path):
    with open(path, "rb") as f:
        if pickle.load(f) != _LEGACY_MAGIC or pickle.load(f) != _LEGACY_PROTOCOL:
            raise ValueError(f"{path}: neither a zip nor a legacy torch checkpoint")
        if not pickle.load(f).get("little_endian", True):
            raise ValueError(f"{path}: a big-endian checkpoint")
        start = f.tell()

        # The storages follow the object's pickle, each as an element count and raw data with
        # nothing naming its type, so a first pass over the pickle learns the types.
        kinds = {}

        def learn_kind(kind, key):
            kinds[key] = kind

        _Unpickler(f, learn_kind).load()
        storages = {}
        for key in pickle.load(f):
            dtype = np.dtype(_dtype(kinds[key]))
            (count,) = struct.unpack("<q", f.read(8))
            storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
            if storages[key].size != count:
                raise ValueError(f"{path}: storage {key} is truncated")

        f.seek(start)
        return _Unpickler(f, lambda kind, key: storages[key]).load()


def load(path):
    """The checkpoint's object (a state dict, names to numpy arrays, or a dict holding one)."""
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)
