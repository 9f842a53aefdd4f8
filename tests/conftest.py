import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

from common.streaming_compat import ensure_streaming_importable  # noqa: E402

ensure_streaming_importable()
