# Import the heavy stack once in the pytest process: forked gloo ranks (tests.distributed.run_ranks)
# inherit it instead of importing megatron-core / deepspeed again in every child (~10-25 s each).
import deepspeed.comm.torch  # noqa: F401
import megatron.core.tensor_parallel  # noqa: F401

import parallel.groups  # noqa: F401
import training.model.metalm  # noqa: F401
