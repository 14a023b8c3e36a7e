"""Shared test helpers: sample photos, settings for a temporary home, corrupt files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from jobs.settings import Settings

SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")


def sample_photo(name: str = "chelsea.png", size: int | None = 96) -> Image.Image:
    """A real photo from scikit-image, optionally shrunk so tests stay fast."""
    with resources.as_file(resources.files("skimage") / "data" / name) as path, Image.open(path) as image:
        photo = image.convert("RGB")
    if size:
        photo.thumbnail((size, size))
    return photo


def write_photos(folder: Path, count: int = 4, size: int = 96) -> list[Path]:
    """Write `count` real photos as JPEG files into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"photo{index:03d}.jpg"
        sample_photo(SAMPLE_PHOTOS[index % len(SAMPLE_PHOTOS)], size).save(path, quality=90)
        paths.append(path)
    return paths


def embedded_settings(home: Path, **overrides: Any) -> Settings:
    """Settings rooted at a temporary folder, on the torch-free backend unless overridden."""
    values: dict[str, Any] = {
        "home": home,
        "backend": "fake",
        "input_roots": [str(home)],
        "chunk_size": 4,
    }
    values.update(overrides)
    return Settings(**values)
