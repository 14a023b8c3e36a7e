"""The demo: real photos from scikit-image, captioned, edited and rendered on the tiny random-weight model."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image
from rich.console import Console

from jobs.api import Client, JobReport
from jobs.lifecycle import JobKind
from jobs.settings import Settings, get_settings

#: Sample photos shipped inside scikit-image (no download).
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
PROMPTS = (
    "a red fox running through fresh snow at dawn",
    "a lighthouse on a rocky coast under a stormy sky",
    "a bowl of ramen with a soft boiled egg, studio lighting",
)
EDITS = {
    "chelsea": "make the cat's fur white",
    "coffee": "turn the cup blue",
    "rocket": "make the sky a sunset",
}


def write_inputs(folder: Path) -> tuple[Path, Path, Path]:
    """Write the sample photos, a prompt file and an edit manifest; return their paths."""
    photos = folder / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    samples = resources.files("skimage") / "data"
    for name in PHOTOS:
        with resources.as_file(samples / name) as path, Image.open(path) as image:
            image.convert("RGB").save(photos / f"{Path(name).stem}.jpg", quality=92)
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    edits = folder / "edits.jsonl"
    with edits.open("w", encoding="utf-8") as out:
        for name, instruction in EDITS.items():
            out.write(
                json.dumps({"id": name, "image": f"photos/{name}.jpg", "instruction": instruction}) + "\n"
            )
    return photos, prompts, edits


#: Runs one job to its end in this process (workers.cli.run_embedded: the demo needs the worker side).
RunJob = Callable[[Settings, JobKind, str, dict[str, Any]], JobReport]


def run_demo(out: str, console: Console, run_embedded: RunJob) -> None:
    """Run the three kinds of job on the embedded defaults with `run_embedded` and print where every output
    is."""
    folder = Path(out).resolve()
    photos, prompts, edits = write_inputs(folder / "inputs")
    settings = get_settings().model_copy(
        update={
            "home": folder / "state",
            "storage_url": str(folder / "outputs"),
            "input_roots": [str(folder)],
        }
    )
    if settings.backend == "ovis-u1":
        console.print("backend: ovis-u1 (real weights)")
    else:
        console.print(f"backend: {settings.backend} (random weights: the outputs are noise; see the README)")
    runs = [(JobKind.CAPTION, str(photos)), (JobKind.EDIT, str(edits)), (JobKind.GENERATE, str(prompts))]
    reports = [run_embedded(settings, kind, source, {}) for kind, source in runs]
    client = Client(settings)
    for (kind, _), report in zip(runs, reports, strict=True):
        console.rule(
            f"{kind.value}: job {report.id} {report.status} ({report.succeeded}/{report.total} succeeded)"
        )
        for row in _rows(client, report.id):
            shown = row["output"] if row["status"] == "succeeded" else row["error"]
            console.print(f"  {row['id']}: {shown}", markup=False)
        console.print(f"  results file: {report.export_url}", markup=False)
        if report.status != "succeeded":
            raise SystemExit(f"the demo's {kind.value} job ended {report.status}")


def _rows(client: object, job_id: str) -> list[dict[str, object]]:
    from jobs.export import iter_rows

    return list(iter_rows(client.settings, job_id))  # type: ignore[attr-defined]
