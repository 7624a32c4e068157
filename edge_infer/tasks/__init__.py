"""Model tasks: how a model's raw outputs become a result, what makes a result uncertain, when two results
agree (canary, shadow) and what Home Assistant shows. One module per task, named as the manifest's `task`:
classification, detection, regression, anomaly, segmentation, raw. The model asks `task_for(name)`; nothing
else names a task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from edge_infer.registry import Registry
from edge_infer.tasks.names import NAMES

if TYPE_CHECKING:
    import numpy as np

    from edge_infer.decide import Decision, Thresholds
    from edge_infer.manifest import Manifest
    from edge_infer.preprocess import ViewGeometry
    from edge_infer.runtime import TensorInfo

Entity = tuple[str, str, dict[str, Any]]  # Home Assistant: (component, object id, fields)


class TaskResult(Protocol):
    """What every task's result offers the rest of the device."""

    task: str

    @property
    def confidence(self) -> float: ...

    @property
    def event_key(self) -> str:
        """What the debouncer compares between frames (a label, a set of labels, a state)."""

    def to_dict(self) -> dict[str, Any]:
        """The `result` of a `results` message."""


@dataclass(frozen=True)
class Context:
    """What a task reads besides the outputs: the manifest, the output tensors (quantization), the live rules
    (thresholds, zones, top-k) and where the frame landed in the model input (None for sensor windows)."""

    manifest: Manifest
    tensors: Sequence[TensorInfo]
    thresholds: Thresholds
    zones: Sequence[Any] = ()
    top_k: int = 3
    geometry: ViewGeometry | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    name: str
    needs_geometry: bool  # its results are placed in the source frame (boxes, masks, zones)

    def postprocess(self, outputs: Sequence[np.ndarray], ctx: Context) -> TaskResult: ...

    def decide(self, result: Any, thresholds: Thresholds) -> Decision:
        """`ok` or `uncertain`, before any fallback."""

    def agrees(self, a: Any, b: Any) -> bool:
        """Whether two models' results on the same input say the same thing (shadow runs)."""

    def entities(self) -> list[Entity]:
        """The Home Assistant entities that show this task's results."""

    def draw(self, result: Any, canvas: Any, size: tuple[int, int], colour: tuple[int, int, int],
             status: str) -> None:
        """Mark `result` on its input picture for `snapshot`: `canvas` is a PIL `ImageDraw` on a picture of
        `size`; `status` is the decision's (`ok` or `uncertain`)."""


def caption(canvas: Any, text: str, colour: tuple[int, int, int], width: int) -> None:
    """One line of text on a dark band across the top of a snapshot picture."""
    canvas.rectangle((0, 0, min(width, 8 + 7 * len(text)), 14), fill=(0, 0, 0))
    canvas.text((3, 1), text, fill=colour)


_TASKS: Registry[Callable[[], Task]] = Registry("edge_infer.tasks", NAMES, "task")
register = _TASKS.register


def task_for(name: str) -> Task:
    """The task registered as `name` (its module is imported on first use)."""
    return _TASKS.factory(name)()
