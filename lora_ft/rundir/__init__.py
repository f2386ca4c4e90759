"""Running a finished or unfinished run directory: its layout, lock, checkpoints, resume rules and manifest."""
