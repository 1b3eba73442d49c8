"""Alert review: ``txwatch serve``, pages and a JSON API over the alerts table.

Public surface: :func:`create_app` builds the application; :func:`publish_label` and
:func:`publish_control` publish an analyst's label or snooze to Kafka from Python.
"""

from txwatch.web.app import create_app
from txwatch.web.labels import PublishError, publish_control, publish_label

__all__ = ["PublishError", "create_app", "publish_control", "publish_label"]
