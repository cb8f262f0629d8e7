"""`fastbt inspect`'s deep check of an FFCV dataset: the .beton's structure read with FFCV's own
Reader (`beton.beton_contents`), the sample count, and the chosen images decoded (pipelines.convert.verify
runs it)."""

from __future__ import annotations

from pathlib import Path

from pipelines.convert import manifest
from pipelines.convert.verify import check_image
from pipelines.ffcv_backend.beton import beton_contents


def verify_ffcv(m: manifest.Manifest, chosen: set[int] | None, skip: dict[Path, str]):
    beton = m.data_paths()[0]
    if beton in skip:
        return [], [], 0
    try:
        labels, widths, heights, jpeg = beton_contents(beton)
    except (ValueError, AssertionError, OSError) as err:
        return [], [f"{beton}: cannot be read ({err})"], 0
    problems = []
    if len(labels) != m.num_images:
        problems.append(f"{beton}: {len(labels)} samples, manifest says {m.num_images}")
    positions = range(len(labels)) if chosen is None else sorted(i for i in chosen if i < len(labels))
    for i in positions:
        where = f"{beton}: sample {i}"
        try:
            data = jpeg(i)
        except ValueError as err:
            problems.append(str(err))
            continue
        problem = check_image(where, data, m.options["max_resolution"], (int(widths[i]), int(heights[i])))
        problems += [problem] if problem else []
    return labels.tolist(), problems, len(positions)
