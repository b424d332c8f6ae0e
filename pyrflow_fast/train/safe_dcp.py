"""Reading a DCP checkpoint without running pickled code (DCP's own reader unpickles freely, torch 2.13).

:class:`SafeFileSystemReader` reads the ``.metadata`` index with :class:`MetadataUnpickler`, which resolves only
DCP's own metadata classes, ``torch.Size``, dtypes and paths; :class:`SafeLoadPlanner` loads the non-tensor
entries with ``torch.load(weights_only=True)``. :class:`~pyrflow_fast.train.checkpoint.CheckpointManager` reads
every checkpoint through both.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

__all__ = ["MetadataUnpickler", "SafeFileSystemReader", "SafeLoadPlanner"]


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` resolving only the classes DCP writes there (torch 2.13): its
    metadata dataclasses, ``_StorageInfo``, ``torch.Size``, dtypes, the layout decoder and paths.
    Anything else (a tampered file's ``os.system``, ``builtins.eval``, ...) is an UnpicklingError."""

    ALLOWED = {
        "torch.distributed.checkpoint.metadata": {
            "Metadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "MetadataIndex",
            "StorageMeta",
            "TensorProperties",
            "TensorStorageMetadata",
            "_MEM_FORMAT_ENCODING",
        },
        "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
        "torch.serialization": {"_get_layout"},
        "torch": {"Size"},
        "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
        "collections": {"OrderedDict"},
    }

    def find_class(self, module: str, name: str) -> Any:
        if name in self.ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(
            f"DCP metadata refers to {module}.{name}, which a checkpoint's metadata never holds; "
            "refusing to load it (the file was not written by pyrflow's DCP save)"
        )


class SafeFileSystemReader(FileSystemReader):
    """DCP's :class:`~torch.distributed.checkpoint.FileSystemReader` with ``.metadata`` read by
    :class:`MetadataUnpickler` instead of :func:`pickle.load`."""

    def read_metadata(self, *args: Any, **kwargs: Any):
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as fh:
            try:
                metadata = MetadataUnpickler(fh).load()
            except (pickle.UnpicklingError, EOFError) as err:
                raise pickle.UnpicklingError(f"{path}: {err}") from err
        from torch.distributed.checkpoint.metadata import StorageMeta

        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner with the non-tensor entries read by ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        from torch.distributed.checkpoint._traverse import set_element

        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj
