"""`fastbt inspect`'s deep check of a DALI dataset: each shard's tar and index read (without DALI),
the sample counts, and the chosen images decoded (pipelines.convert.verify runs it)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from pipelines.convert import manifest, shards
from pipelines.convert.verify import check_image
from pipelines.dali_backend.index import read_index


def verify_dali(m: manifest.Manifest, chosen: set[int] | None, skip: dict[Path, str]):
    labels, problems, decoded, position = [], [], 0, 0
    max_side = m.options["max_resolution"]
    for f in m.files:
        tar, idx = m.folder / f.path, m.folder / f.index
        if tar in skip or idx in skip:
            position += f.samples
            continue
        try:
            samples, index = shards.shard_samples(tar), read_index(idx)
        except (tarfile.TarError, ValueError, IndexError, OSError) as err:
            problems.append(f"{tar}: cannot be read ({err})")
            position += f.samples
            continue
        if len(samples) != f.samples:
            problems.append(f"{tar}: {len(samples)} samples, manifest says {f.samples}")
        if [e.get(shards.IMAGE_EXT) for e in index] != [(s.offset, s.size) for s in samples]:
            problems.append(f"{idx}: does not match the members of {tar.name}")
        with open(tar, "rb") as fh:
            for s in samples:
                labels.append(s.label)
                if chosen is None or position in chosen:
                    data = os.pread(fh.fileno(), s.size, s.offset)
                    problem = check_image(f"{tar}:{s.key}.{shards.IMAGE_EXT}", data, max_side)
                    problems += [problem] if problem else []
                    decoded += 1
                position += 1
    return labels, problems, decoded
