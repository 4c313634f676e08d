import pytest


@pytest.fixture(scope="session")
def tiny_features_dir(tmp_path_factory):
    """An untrained, small shapes feature network saved as the evaluator loads it."""
    import torch

    from tiue.world.features import FeatureNetConfig, ShapesFeatureNet

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("features") / "net"
    ShapesFeatureNet(FeatureNetConfig(channels=(8, 16), feature_dim=16)).save_pretrained(folder)
    return folder
