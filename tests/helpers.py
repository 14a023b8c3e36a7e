"""Shared test helpers: sample photos, settings for a temporary home, the migrations' round trip."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from PIL import Image
from sqlalchemy import create_engine, inspect

from jobs.db import downgrade, upgrade
from jobs.models import Base
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


def check_migrations_round_trip(url: str) -> None:
    """Migrate the empty database at `url` up, down to nothing and up again; the models match the schema."""
    upgrade(url)
    engine = create_engine(url)
    try:
        assert {"jobs", "items", "alembic_version"} <= set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        downgrade(url, "base")
        assert not {"jobs", "items"} & set(inspect(engine).get_table_names())
        upgrade(url)
        assert {"jobs", "items"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
