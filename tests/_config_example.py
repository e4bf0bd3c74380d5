"""The example dataclasses of tests/test_config.py, importable by a second process (the hash-stability test)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Inner:
    depth: int = 2  # a nested value


@dataclass
class Example:
    name: str = "demo"  # a label
    rate: float = 1e-5  # a float that YAML may spell as a string
    steps: int = 10  # a count
    ids: tuple[int, ...] = (1, 2)  # a tuple that YAML gives as a list
    inner: Inner = field(default_factory=Inner)  # a nested dataclass

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
