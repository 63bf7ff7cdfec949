"""``python -m covseg`` (also what ``torchrun -m covseg`` starts)."""
from __future__ import annotations

from covseg.cli import entry

raise SystemExit(entry())
