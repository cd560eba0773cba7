"""Keeps secrets out of dlt's runtime trace (``<pipelines_dir>/<name>/trace.pickle``).

dlt saves, after every run, the text of a failed step's exception and of every exception in its
chain, with their stack traces (``PipelineStepTrace.step_exception`` / ``exception_traces``),
plus the config values it resolved.  An exception can quote a key (an HTTP library printing an
invalid header, a URL with a token), so each step is masked with the registered secrets before
dlt's other trackers see it and before the trace is pickled.  The hook is dlt's own extension
point for trace consumers, ``dlt.pipeline.trace.TRACKING_MODULES``.
"""

from __future__ import annotations

import pickle
from typing import Any

from klaviyo_source.masking import SECRETS


def _probe(value: Any) -> bool:
    """Whether ``value``, as dlt would pickle it, still holds a registered secret."""
    try:
        blob = pickle.dumps(value)
    except Exception:  # noqa: BLE001 - unpicklable: dlt would not save it either
        return False
    return SECRETS.found_in(blob.decode("utf-8", "surrogateescape"))


def masked_step(step: Any) -> Any:
    """A ``PipelineStepTrace`` with every registered secret masked (the same object if none)."""
    if not SECRETS or not _probe(step):
        return step
    step = step._replace(step_exception=SECRETS.deep(step.step_exception),
                         exception_traces=SECRETS.deep(step.exception_traces))
    if step.step_info is not None and _probe(step.step_info):
        info = SECRETS.deep(step.step_info)
        # step info holding a secret somewhere masking cannot reach is dropped, not saved
        step = step._replace(step_info=None if _probe(info) else info)
    return step


def mask_trace(trace: Any) -> None:
    """Mask the steps and resolved config values of a ``PipelineTrace`` in place (dlt pickles
    these very lists)."""
    if not SECRETS:
        return
    steps = trace.steps or []
    for index, step in enumerate(steps):
        steps[index] = masked_step(step)
    values = trace.resolved_config_values
    if values and _probe(values):
        values[:] = [SECRETS.deep(value) for value in values]


class _TraceMasker:
    """A dlt tracking module (``SupportsTracking``) that masks secrets in the trace it is shown."""

    def on_start_trace(self, trace: Any, step: Any, pipeline: Any) -> None:
        pass

    def on_start_trace_step(self, trace: Any, step: Any, pipeline: Any) -> None:
        pass

    def on_end_trace_step(self, trace: Any, step: Any, pipeline: Any, step_info: Any, send_state: bool) -> None:
        if SECRETS and trace.steps:  # the step just appended; earlier ones were masked when they ended
            trace.steps[-1] = masked_step(trace.steps[-1])

    def on_end_trace(self, trace: Any, pipeline: Any, send_state: bool) -> None:
        mask_trace(trace)


def install() -> None:
    """Register the masking tracker first among dlt's trace consumers (idempotent)."""
    from dlt.pipeline import trace as dlt_trace

    modules = dlt_trace.TRACKING_MODULES
    if modules is None:
        dlt_trace.TRACKING_MODULES = modules = []
    if not any(isinstance(module, _TraceMasker) for module in modules):
        modules.insert(0, _TraceMasker())
