"""PyTorch datasets over medprep shards (imports torch; schemas itself does not).

from medprep.schemas.torch_data import RecordDataset, ShardIterableDataset
ds = RecordDataset("OUT/arrayrecord", split="train", transform=my_fn)     # map-style, random access
it = ShardIterableDataset("OUT/parquet", split="train")                    # streaming, worker-sharded
loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, collate_fn=list)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch.utils.data as tud

from medprep.schemas.readers import ArrayRecordSource, read_arrayrecord_shard, read_parquet_shard, shard_files

Transform = Callable[[dict[str, Any]], object]


class RecordDataset(tud.Dataset[object]):
    """Map-style dataset over ArrayRecord shards: [i] -> transform(record dict)."""

    def __init__(self, path: str, split: str | None = None, transform: Transform | None = None):
        self.source = ArrayRecordSource(path, split)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> object:
        record = self.source[index]
        return self.transform(record) if self.transform else record


class ShardIterableDataset(tud.IterableDataset[object]):
    """Streams records from ArrayRecord or Parquet shards; each DataLoader worker reads its own shards
    (or, with fewer shards than workers, every n-th record), so no record is read twice."""

    def __init__(self, path: str, split: str | None = None, transform: Transform | None = None):
        self.files = shard_files(path, split)
        self.transform = transform

    def __iter__(self) -> Iterator[object]:
        info = tud.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        by_file = len(self.files) >= workers
        files = self.files[worker::workers] if by_file else self.files
        n = 0
        for f in files:
            reader = read_arrayrecord_shard if f.endswith(".array_record") else read_parquet_shard
            for record in reader(f):
                if by_file or n % workers == worker:
                    yield self.transform(record) if self.transform else record
                n += 1
