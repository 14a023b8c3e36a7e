"""Inputs like users have, for the GPU benchmark of the real model: photos, captions, prompts and edits.

- Photos: crops of scikit-image's colour sample photos at the aspect ratios cameras and phones produce
  (4:3, 3:2, 16:9, square, portraits, a few panoramas), resized so that the long side falls between 256 and
  1280 px (log-uniform: as many below 572 px as above), saved as JPEG at quality 80-95. The visual tokenizer
  works at an image's own resolution, so their cost spreads as real photos' does (256 visual tokens at
  448 px and below, about 2,000 at 1280 x 960).
- Caption length limits: random weights never emit the end token, so every caption runs to its item's
  `max_new_tokens`; the limits are drawn log-normal around 130 tokens and kept within 40-400, the spread of
  real captions from alt-text to detailed descriptions.
- Prompts: 2 to about 180 words (log-normal around 20), from a one-line subject to a paragraph of details.
- Edits: instructions of 3 to 40 words on photos of the same mix of sizes.

Everything is drawn from one seed: the same seed writes the same files. On a host without scikit-image, the
sample photos come from a folder written beforehand with `export-photos`:

    python bench/realistic_inputs.py export-photos .remote/photos
    python bench/realistic_inputs.py write /tmp/inputs --captions 64 --prompts 16 --edits 16
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: scikit-image's colour photos (its data folder ships them; the rest are greyscale or synthetic).
SAMPLE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
)
#: Width / height of photos as cameras and phones take them, with how often each comes.
ASPECT_RATIOS: tuple[tuple[float, float], ...] = (
    (4 / 3, 0.25),
    (3 / 2, 0.18),
    (16 / 9, 0.12),
    (1.0, 0.13),
    (3 / 4, 0.15),
    (2 / 3, 0.09),
    (9 / 16, 0.05),
    (2.0, 0.03),
)
LONG_SIDE_PX = (256, 1280)
JPEG_QUALITY = (80, 95)
#: Caption length limits: log-normal median and spread, and the bounds they are kept within.
CAPTION_TOKENS_MEDIAN = 130
CAPTION_TOKENS_SIGMA = 0.6
CAPTION_TOKENS = (40, 400)
PROMPT_WORDS_MEDIAN = 20
PROMPT_WORDS_SIGMA = 0.8
PROMPT_WORDS = (2, 180)

_SUBJECTS = (
    "a red fox",
    "city skyline",
    "a cat",
    "sunset over dunes",
    "a lighthouse on a cliff",
    "a bowl of ramen with a soft-boiled egg",
    "an astronaut riding a horse",
    "a fox in the snow",
    "a street market in Marrakesh",
    "a vintage red bicycle leaning on a wall",
    "a portrait of an old fisherman",
    "a glass teapot with blooming tea",
    "a robot reading a newspaper in a cafe",
    "a mountain lake at sunrise",
    "a child flying a kite on a beach",
    "an isometric model of a tiny city",
    "a golden retriever wearing sunglasses",
    "a cathedral interior with stained glass",
    "a bowl of fruit on a wooden table",
    "a koi pond seen from above",
)
_DETAILS = (
    "at dusk",
    "overhead shot",
    "film grain",
    "in the style of a watercolor",
    "soft morning light",
    "shallow depth of field",
    "85mm lens",
    "highly detailed",
    "with long shadows",
    "muted pastel colors",
    "dramatic clouds in the background",
    "reflections on wet cobblestones",
    "steam rising into cold air",
    "a few birds in the distance",
    "the horizon slightly tilted",
    "warm tungsten lighting",
    "a hint of fog",
    "neon signs glowing",
    "captured on expired slide film",
    "symmetrical composition",
)
_SENTENCES = (
    "The scene is quiet and the light falls from the left.",
    "In the foreground there is a small wooden sign with hand-painted letters.",
    "Colors are rich but not saturated, like a printed magazine photograph from the seventies.",
    "Behind the main subject a row of trees bends in the wind.",
    "The textures should be crisp: rough stone, smooth glass, and soft fabric.",
    "A narrow path leads the eye from the lower corner toward the center.",
    "There are exactly three people visible, all of them far away and out of focus.",
    "The sky takes up the upper third of the frame and shifts from orange to deep blue.",
    "Small details reward a close look, such as a cat sleeping on a windowsill.",
    "The overall mood is calm, nostalgic and a little mysterious.",
)
EDIT_INSTRUCTIONS = (
    "make it black and white",
    "remove the background",
    "turn the sky a deep orange",
    "add a small red boat on the water",
    "make it look like a watercolor painting",
    "replace the season with winter and add falling snow",
    "change the lighting to golden hour and make the shadows longer",
    "add a pair of round glasses to the main subject and make the colors warmer",
    "make the photo look as if it was taken on an old film camera, with grain and faded colors",
    "remove every person from the picture and fill the space with what would be behind them",
    "turn this into a night scene with street lamps on, light reflecting on the ground and a few lit windows",
    "keep the main subject exactly as it is but replace the whole background with a sunny beach, palm trees "
    "and a calm turquoise sea, matching the light direction",
)


@dataclass(frozen=True)
class Photo:
    """One written photo: its path and size."""

    path: Path
    width: int
    height: int

    @property
    def long_side(self) -> int:
        """The longer of width and height, in pixels."""
        return max(self.width, self.height)


@dataclass
class Inputs:
    """What `write_inputs` wrote: one source per task, and figures that describe them."""

    folder: Path
    caption_manifest: Path
    generate_manifest: Path
    edit_manifest: Path
    photos: list[Photo] = field(default_factory=list)
    token_limits: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    edits: list[Photo] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts and spreads per task, for the result file."""
        return {
            "caption": {
                "items": len(self.photos),
                **_spread("long_side_px", [p.long_side for p in self.photos]),
                **_spread("megapixels", [p.width * p.height / 1e6 for p in self.photos], digits=3),
                **_spread("max_new_tokens", self.token_limits),
            },
            "generate": {
                "items": len(self.prompts),
                **_spread("prompt_words", [len(p.split()) for p in self.prompts]),
            },
            "edit": {
                "items": len(self.edits),
                **_spread("long_side_px", [p.long_side for p in self.edits]),
            },
        }


def _spread(name: str, values: Sequence[float], digits: int = 1) -> dict[str, Any]:
    if not values:
        return {}
    return {
        name: {
            "min": min(values),
            "median": round(statistics.median(values), digits),
            "mean": round(statistics.fmean(values), digits),
            "max": max(values),
        }
    }


# -- sample photos -----------------------------------------------------------------------------------------
def _skimage_data() -> Path:
    from importlib import resources

    return Path(str(resources.files("skimage") / "data"))


def export_sample_photos(dest: Path) -> list[Path]:
    """Copy the colour sample photos out of scikit-image, for a host that lacks it."""
    dest.mkdir(parents=True, exist_ok=True)
    source = _skimage_data()
    return [Path(shutil.copy(source / name, dest / name)) for name in SAMPLE_PHOTOS]


def load_sample_photos(folder: Path | None = None) -> list[Any]:
    """The sample photos as RGB images: from `folder` if given, else from scikit-image."""
    from PIL import Image

    source = folder if folder is not None else _skimage_data()
    missing = [name for name in SAMPLE_PHOTOS if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{source} lacks the sample photos {missing}: run export-photos first")
    photos = []
    for name in SAMPLE_PHOTOS:
        with Image.open(source / name) as image:
            photos.append(image.convert("RGB"))
    return photos


# -- draws -------------------------------------------------------------------------------------------------
def _aspect(rng: random.Random) -> float:
    ratios = [ratio for ratio, _ in ASPECT_RATIOS]
    return rng.choices(ratios, [weight for _, weight in ASPECT_RATIOS])[0]


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _log_normal(rng: random.Random, median: float, sigma: float, bounds: tuple[int, int]) -> int:
    value = round(median * math.exp(rng.gauss(0.0, sigma)))
    return min(max(value, bounds[0]), bounds[1])


def caption_token_limits(count: int, rng: random.Random) -> list[int]:
    """Per-caption `max_new_tokens`: log-normal around CAPTION_TOKENS_MEDIAN, kept within CAPTION_TOKENS."""
    return [
        _log_normal(rng, CAPTION_TOKENS_MEDIAN, CAPTION_TOKENS_SIGMA, CAPTION_TOKENS) for _ in range(count)
    ]


def prompt_of(words: int, rng: random.Random) -> str:
    """A text-to-image prompt of at least `words` words (or one short subject): a subject, then details,
    then whole sentences, never cut in the middle of a phrase."""
    fitting = [subject for subject in _SUBJECTS if len(subject.split()) <= words]
    text = rng.choice(fitting or sorted(_SUBJECTS, key=len)[:1])
    details = list(_DETAILS)
    rng.shuffle(details)
    while len(text.split()) < words and details:
        text += ", " + details.pop()
    while len(text.split()) < words:
        text += ". " + rng.choice(_SENTENCES).rstrip(".")
    return text


def prompts(count: int, rng: random.Random) -> list[str]:
    """`count` prompts, their lengths log-normal around PROMPT_WORDS_MEDIAN words."""
    return [
        prompt_of(_log_normal(rng, PROMPT_WORDS_MEDIAN, PROMPT_WORDS_SIGMA, PROMPT_WORDS), rng)
        for _ in range(count)
    ]


def _photo_plan(
    count: int, rng: random.Random, sources: int, long_side: tuple[int, int]
) -> list[dict[str, Any]]:
    """What each photo will be, drawn up front so that the files do not depend on thread timing."""
    plans = []
    for _ in range(count):
        aspect = _aspect(rng)
        side = round(_log_uniform(rng, *long_side))
        width, height = (
            (side, max(1, round(side / aspect))) if aspect >= 1 else (max(1, round(side * aspect)), side)
        )
        plans.append(
            {
                "source": rng.randrange(sources),
                "size": (width, height),
                "aspect": aspect,
                "scale": rng.uniform(0.5, 1.0),
                "x": rng.random(),
                "y": rng.random(),
                "quality": rng.randint(*JPEG_QUALITY),
            }
        )
    return plans


def _render(source: Any, plan: dict[str, Any]) -> Any:
    """Crop the source at the plan's aspect ratio and scale, then resize to the plan's size."""
    from PIL import Image

    aspect = plan["aspect"]
    full_w, full_h = source.size
    crop_w = min(full_w, full_h * aspect) * plan["scale"]
    crop_h = crop_w / aspect
    left = (full_w - crop_w) * plan["x"]
    top = (full_h - crop_h) * plan["y"]
    box = (round(left), round(top), round(left + crop_w), round(top + crop_h))
    return source.crop(box).resize(plan["size"], Image.Resampling.LANCZOS)


def write_photos(
    folder: Path,
    count: int,
    rng: random.Random,
    sources: Sequence[Any],
    *,
    prefix: str = "p",
    long_side: tuple[int, int] = LONG_SIDE_PX,
    threads: int = 16,
) -> list[Photo]:
    """`count` JPEG photos in `folder`, named `<prefix><index>.jpg`."""
    folder.mkdir(parents=True, exist_ok=True)
    plans = _photo_plan(count, rng, len(sources), long_side)

    def write(index: int) -> Photo:
        plan = plans[index]
        path = folder / f"{prefix}{index:06d}.jpg"
        _render(sources[plan["source"]], plan).save(path, "JPEG", quality=plan["quality"])
        return Photo(path, *plan["size"])

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(write, range(count)))


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_inputs(
    folder: Path,
    *,
    captions: int,
    prompt_count: int,
    edits: int,
    seed: int = 0,
    photos_dir: Path | None = None,
    long_side: tuple[int, int] = LONG_SIDE_PX,
    image_size: tuple[int, int] | None = None,
) -> Inputs:
    """Photos and the three manifests in `folder`. `image_size` (width, height) sets every text-to-image
    item's size (the backend's default, 1024 x 1024, when None)."""
    rng = random.Random(seed)
    sources = load_sample_photos(photos_dir)
    photos = write_photos(folder / "photos", captions, rng, sources, long_side=long_side)
    limits = caption_token_limits(captions, rng)
    captions_path = _write_jsonl(
        folder / "captions.jsonl",
        [
            {"id": p.path.stem, "image": f"photos/{p.path.name}", "max_new_tokens": limit}
            for p, limit in zip(photos, limits, strict=True)
        ],
    )
    texts = prompts(prompt_count, rng)
    size = {"width": image_size[0], "height": image_size[1]} if image_size else {}
    generate_path = _write_jsonl(
        folder / "prompts.jsonl",
        [{"id": f"g{k:05d}", "prompt": text, **size} for k, text in enumerate(texts)],
    )
    sources_for_edits = write_photos(folder / "edits", edits, rng, sources, prefix="e", long_side=long_side)
    edit_path = _write_jsonl(
        folder / "edits.jsonl",
        [
            {"id": p.path.stem, "image": f"edits/{p.path.name}", "instruction": rng.choice(EDIT_INSTRUCTIONS)}
            for p in sources_for_edits
        ],
    )
    return Inputs(folder, captions_path, generate_path, edit_path, photos, limits, texts, sources_for_edits)


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL manifest written here."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    """export-photos DEST | write FOLDER [--captions N --prompts N --edits N --seed S --photos DIR]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export-photos", help="copy the sample photos out of scikit-image")
    export.add_argument("dest", type=Path)
    write = commands.add_parser("write", help="write photos and manifests")
    write.add_argument("folder", type=Path)
    write.add_argument("--captions", type=int, default=64)
    write.add_argument("--prompts", type=int, default=16)
    write.add_argument("--edits", type=int, default=16)
    write.add_argument("--seed", type=int, default=0)
    write.add_argument(
        "--photos", type=Path, default=None, help="sample photos folder (default: scikit-image)"
    )
    args = parser.parse_args(argv)
    if args.command == "export-photos":
        for path in export_sample_photos(args.dest):
            print(path)
        return
    inputs = write_inputs(
        args.folder,
        captions=args.captions,
        prompt_count=args.prompts,
        edits=args.edits,
        seed=args.seed,
        photos_dir=args.photos,
    )
    print(json.dumps(inputs.summary(), indent=1))


if __name__ == "__main__":
    main()
