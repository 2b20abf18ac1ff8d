"""Regenerate the command-and-key lists of docs/longblocks.md and docs/dgrpo-train.md from the two
CLIs (what `--help` shows, from the config dataclasses): `python docs/reference.py`. A test fails
while a page differs from what this writes."""

from pathlib import Path

from longblocks.cli import app as longblocks_app
from longblocks.flags import with_reference
from trainer.cli import app as trainer_app

DOCS = Path(__file__).resolve().parent

if __name__ == "__main__":
    for prog, group in (("longblocks", longblocks_app), ("dgrpo-train", trainer_app)):
        page = DOCS / f"{prog}.md"
        page.write_text(with_reference(page.read_text(), prog, group))
        print(f"wrote {page}")
