"""A validated config with where it came from; what every step after loading is handed."""

from __future__ import annotations

from pathlib import Path

from lora_ft.config.schema import RunConfig


class LoadedConfig:
    """A validated config with where it came from: ``path`` (the YAML file) and ``base_dir`` for relative paths."""

    def __init__(self, config: RunConfig, path: Path | None, overrides: list[str]) -> None:
        self.config = config
        self.path = path
        self.overrides = overrides

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    def resolve_path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)
