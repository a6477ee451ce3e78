"""MLflow's private or undocumented interfaces, used by layerprint in one place. Checked against MLflow 3.17.2.

- The fluent API's state, which a run the callback creates itself follows as ``mlflow.start_run()`` would:
  whether the user set a tracking URI (``mlflow.tracking._tracking_service.utils.is_tracking_uri_set``),
  the experiment ``mlflow.set_experiment`` chose (``mlflow.tracking.fluent._get_experiment_id``), and
  the run ``mlflow.last_active_run()`` returns (``mlflow.tracking.fluent._last_active_run_id``, kept per
  thread). Public routes are taken first: ``MLFLOW_TRACKING_URI``, the active run's experiment.
- The web UI's shared views: the runs page's "Share" button stores its state (search filter, sort, chart
  view, which charts) as the experiment tag ``mlflow.sharedViewState.<key>``, and the page opens it from
  ``?viewStateShareKey=<key>``. The format is the UI's own (read from its code and checked in headless
  Chromium by ``scripts/ui_check.py``); there is no API for it.
- ``workflowType=machine_learning``: the address parameter that opens a page in the UI's model-training
  navigation instead of its GenAI one (the default; nothing on the server changes it).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

SHARED_VIEW_TAG = "mlflow.sharedViewState."
MAX_TAG_VALUE = 20_000  # what the UI's experiment tags may hold (a longer view is refused by the store)
MODEL_TRAINING = "workflowType=machine_learning"


def _line_chart(uuid: str, metric: str, section: str) -> dict[str, Any]:
    return {"uuid": uuid, "type": "LINE", "runsCountToCompare": 100, "metricSectionId": section, "deleted": False,
            "isGenerated": False, "displayName": metric, "metricKey": metric, "lineSmoothness": 0,
            "xAxisScaleType": "linear", "scaleType": "linear", "range": {}, "xAxisKey": "step",
            "selectedXAxisMetricKey": "", "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False,
            "useGlobalXaxisKey": False, "useGlobalLineSmoothing": False, "selectedMetricKeys": [metric]}


def save_runs_chart_view(client: Any, experiment_id: str, key: str, name: str, search_filter: str,
                         charts: list[str], hidden: list[str]) -> None:
    """Store a view of the experiment's runs page, as its "Share" button does: the runs ``search_filter``
    selects, every one of them drawn (not the first 10), sorted by name (so that children are not folded
    under their parent), in the chart view, with a line chart over steps for each metric of ``charts`` and
    none for the metrics of ``hidden`` (the UI would add one per metric); ``hidden`` is dropped when the
    view would not fit in a tag.

    Args:
        client: an ``MlflowClient``.
        experiment_id: the experiment whose runs page opens the view.
        key: the view's key (``?viewStateShareKey=<key>``).
        name: the view's name in the page's view menu.
        search_filter: an MLflow runs filter, e.g. ``tags.mlflow.parentRunId = '<id>'``.
        charts: metric keys drawn, in order.
        hidden: metric keys not drawn.
    """
    section = "layerprint"
    drawn = [_line_chart(f"chart-{i}", metric, section) for i, metric in enumerate(charts)]
    not_drawn = [{"uuid": f"hidden-{i}", "type": "LINE", "metricKey": metric, "metricSectionId": section,
                  "deleted": True} for i, metric in enumerate(hidden)]
    now = int(time.time() * 1000)
    for chart_list in (drawn + not_drawn, drawn):
        state = {"searchFilter": search_filter, "orderByKey": "attributes.run_name", "orderByAsc": True,
                 "runsHiddenMode": "SHOW_ALL", "compareRunCharts": chart_list, "isAccordionReordered": True,
                 "hideEmptyCharts": True,
                 "compareRunSections": [{"uuid": section, "name": name, "display": True, "isReordered": True,
                                         "deleted": False, "isGenerated": False, "columns": 1, "cardHeight": 560}],
                 "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""}}
        value = json.dumps({"name": name, "createdAt": now, "updatedAt": now,
                            "state": json.dumps(state, separators=(",", ":"))}, separators=(",", ":"))
        if len(value) <= MAX_TAG_VALUE:
            break
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, value)


def runs_view_address(ui: str, experiment_id: str, key: str) -> str:
    """The address that opens a saved view (``save_runs_chart_view``) in the model-training navigation.
    Only this short form opens it: the page adds the view's filter to the address once loaded, and an
    address with a filter in it ignores the view."""
    return f"{ui}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING}&compareRunsMode=CHART&viewStateShareKey={key}"


def run_metrics_address(ui: str, experiment_id: str, run_id: str) -> str:
    """The address of a run's metric charts, in the model-training navigation."""
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics?{MODEL_TRAINING}"


def run_address(ui: str, experiment_id: str, run_id: str) -> str:
    """The address of a run's page (its description, metrics and params), in the model-training navigation."""
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING}"


def run_artifact_address(ui: str, experiment_id: str, run_id: str, path: str = "") -> str:
    """The address of a run's artifact (or of its artifacts page), in the model-training navigation."""
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}/artifacts{'/' + path if path else ''}?{MODEL_TRAINING}"


def uri_set_by_user() -> str | None:
    """The tracking URI the user chose (``MLFLOW_TRACKING_URI``, else ``mlflow.set_tracking_uri``), or None."""
    import mlflow

    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return mlflow.get_tracking_uri() if mlflow.tracking._tracking_service.utils.is_tracking_uri_set() else None


def current_experiment_id(active: Any) -> str:
    """The experiment a new run goes to, as MLflow's fluent API chooses it: the active run's, else the one
    set with ``mlflow.set_experiment`` (or ``MLFLOW_EXPERIMENT_NAME``/``_ID``), else the default ``"0"``."""
    if active is not None:
        return active.info.experiment_id
    import mlflow

    return mlflow.tracking.fluent._get_experiment_id() or "0"


def set_last_active_run(run_id: str) -> None:
    """Make ``mlflow.last_active_run()`` on this thread return ``run_id`` (MLflow sets it, per thread, when a
    run that ``mlflow.start_run()`` started ends)."""
    import mlflow

    mlflow.tracking.fluent._last_active_run_id.set(run_id)
