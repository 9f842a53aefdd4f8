import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

from common.process_setup import setup_process  # noqa: E402

setup_process()  # what every entry point does first
# Import the heavy stack once in the pytest process: forked gloo ranks (tests.distributed.run_ranks)
# inherit it instead of importing megatron-core / deepspeed again in every child (~10-25 s each).
import deepspeed.comm.torch  # noqa: E402, F401
import megatron.core.tensor_parallel  # noqa: E402, F401

import parallel.groups  # noqa: E402, F401
import training.model.metalm  # noqa: E402, F401
