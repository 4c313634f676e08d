import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# After a torch.compile in the process, spinning OpenMP pools of inductor and eager ATen fight
# over the two cores and stall eager ops; passive waiting avoids it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from tiue.testing.environment import use_triton_interpreter_without_gpu  # noqa: E402

# Without a GPU, Triton kernels run on CPU tensors through the interpreter; the flag must be set
# before the first kernel module is imported (importing torch does not import triton).
use_triton_interpreter_without_gpu(os.environ, torch.cuda.is_available())
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A StableDiffusionPipeline folder with tiny random models (PNDM scheduler config, as SD2.1)."""
    from tiue.testing.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def xl_dir(tmp_path_factory):
    """A StableDiffusionXLPipeline folder with tiny random models (Euler scheduler config, as SDXL)."""
    from tiue.testing.tiny_xl import save_tiny_xl_pipeline

    return save_tiny_xl_pipeline(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_v_pipeline_dir(tmp_path_factory):
    """As tiny_pipeline_dir, with v-prediction and linear attention projections (as SD2.x)."""
    from tiue.testing.tiny import save_tiny_pipeline

    return save_tiny_pipeline(
        tmp_path_factory.mktemp("models") / "tiny-sd-v",
        prediction_type="v_prediction",
        use_linear_projection=True,
    )
