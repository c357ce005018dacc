"""What one export run carries between its steps: the source, the output folder, the chosen
precisions, the torch reference model and the manifest being filled in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .sources import Source


@dataclass
class ExportContext:
    source: Source
    out_dir: Path
    precision: str                  # decoder: fp32 | fp16 | int8 | int4
    vision_precision: str           # vision graph: fp32 unless asked
    workdir: Path                   # scratch space, deleted after the export
    requantize: bool = False        # int4 from GGUF: round-to-nearest again, not the file's grid
    reference: Any = None           # the torch model (eval mode, fp32)
    manifest: dict[str, Any] = field(default_factory=dict)
    step: Callable[[str], None] = lambda name: None   # advances the progress bar
