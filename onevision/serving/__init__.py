"""Serving: the deployable bundle, the MLflow pyfunc model, request checks and `onevision search`."""
