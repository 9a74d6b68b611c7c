"""Bespoke Curator's features that this library leaves out, named where they are used.

Invariants:
- each name a Curator user reaches for exists (``curator_flows.types.Image``,
  ``curator_flows.CodeExecutor``, ``curator_flows.push_to_viewer``, ...), so code written for
  Curator fails at the line that uses the feature, not later as an ``AttributeError`` that looks
  like a bug in the user's own ``prompt()``;
- using one (constructing it, calling it, subclassing it and constructing the subclass) raises
  :class:`~curator_flows.errors.NotSupportedError` (a permanent ``ConfigError``) whose message
  says what to use instead; nothing is sent or written first.
"""

from __future__ import annotations

from typing import Any, NoReturn

from .errors import NotSupportedError

#: what the viewer's stand-ins point at instead
VIEWER_INSTEAD = (
    "to look at a run, `curator-flows view RUN_URI` serves a local read-only page of it (progress, "
    "failures by reason, rows next to their prompts and responses), and every publish writes "
    "_report.html beside the data; to share a dataset, push result.dataset with datasets' own "
    "push_to_hub"
)

_MULTIMODAL = (
    "multimodal prompts ({name}) are not supported: curator-flows does not load, encode or "
    "upload images and files for you. Return chat messages whose content is a list of the "
    "provider's own content parts instead, e.g. [{{'role': 'user', 'content': [{{'type': "
    "'text', 'text': ...}}, {{'type': 'image_url', 'image_url': {{'url': <https or data: "
    "URL>}}}}]}}] for OpenAI, or an 'image' block with a base64 'source' for Anthropic: they "
    "are sent as given"
)

_LEFT_OUT = {
    "CodeExecutor": (
        "Curator's code-execution backend (CodeExecutor) is not supported: curator-flows only "
        "prompts LLMs. Run generated code in a task of your own after the LLM stage (an Airflow "
        "task or a Prefect task reading the published dataset), in a sandbox you choose"
    ),
    "Trainer": (
        "Curator's trainers ({name}) are not supported: curator-flows generates and publishes "
        "datasets. Publish with steps.finalize(run, output_uri=...) (or the Airflow operators' "
        "and Prefect flows' output_uri) and fine-tune from the published files with the "
        "training provider's own SDK, as a downstream task"
    ),
    "push_to_viewer": (
        "the hosted Curator Viewer (push_to_viewer) is not supported: " + VIEWER_INSTEAD
    ),
    "load_dataset": (
        "loading a dataset from the hosted Curator Viewer (load_dataset) is not supported: "
        "pass a published output's URI (or any Parquet/JSONL/Arrow path or Hugging Face "
        "dataset) to llm(...) directly, or read it with datasets.load_dataset"
    ),
}


def not_supported(feature: str, name: str | None = None) -> NoReturn:
    """Raise :class:`NotSupportedError` for ``feature`` (a key of the messages here, or
    ``"multimodal"``), naming ``name`` as the user wrote it."""
    template = _MULTIMODAL if feature == "multimodal" else _LEFT_OUT[feature]
    raise NotSupportedError(template.format(name=name or feature))


class _LeftOut:
    """A Curator class this library leaves out: constructing it (or a subclass) raises."""

    _feature = ""
    _qualified = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        not_supported(self._feature, self._qualified or type(self).__name__)


class Image(_LeftOut):
    """Curator's ``curator.types.Image`` (an image in a multimodal prompt): not supported."""

    _feature, _qualified = "multimodal", "curator_flows.types.Image"


class File(_LeftOut):
    """Curator's ``curator.types.File`` (a file in a multimodal prompt): not supported."""

    _feature, _qualified = "multimodal", "curator_flows.types.File"


class CodeExecutor(_LeftOut):
    """Curator's ``curator.CodeExecutor`` (running generated code in sandboxes): not supported."""

    _feature = "CodeExecutor"


class TinkerTrainer(_LeftOut):
    """Curator's ``curator.TinkerTrainer``: not supported."""

    _feature = "Trainer"


class TinkerTrainerConfig(_LeftOut):
    """Curator's ``curator.TinkerTrainerConfig``: not supported."""

    _feature = "Trainer"


class FireworksTrainer(_LeftOut):
    """Curator's ``curator.FireworksTrainer``: not supported."""

    _feature = "Trainer"


class FireworksTrainerConfig(_LeftOut):
    """Curator's ``curator.FireworksTrainerConfig``: not supported."""

    _feature = "Trainer"


def push_to_viewer(*args: Any, **kwargs: Any) -> NoReturn:
    """Curator's ``curator.push_to_viewer``: not supported (see :data:`VIEWER_INSTEAD`)."""
    not_supported("push_to_viewer")


def load_dataset(*args: Any, **kwargs: Any) -> NoReturn:
    """Curator's ``curator.load_dataset`` (a dataset from the hosted viewer): not supported."""
    not_supported("load_dataset")
