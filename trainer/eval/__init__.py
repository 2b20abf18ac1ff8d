"""`dgrpo-train eval`: RULER-style long-context tasks at chosen lengths, scored like training rewards."""
