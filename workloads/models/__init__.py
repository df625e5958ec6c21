"""Networks of both papers as block lists: CIFAR ResNets, the plain net, torchvision ResNets."""
from workloads.models.blocks import Block, BlockInfo, BlockNetwork
from workloads.models.checkpoint import load_checkpoint, network_from_weights, read_weights, state_dict_of
from workloads.models.config import NetConfig
from workloads.models.errors import AdapterError, CheckpointError
from workloads.models.registry import NETWORKS, build_network, network_config, skeleton


def __getattr__(name: str):
    if name == "from_torchvision":  # imports torchvision (a second): only when asked for
        from workloads.models.adapters.torchvision_resnet import from_torchvision
        return from_torchvision
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AdapterError", "Block", "BlockInfo", "BlockNetwork", "CheckpointError", "NETWORKS", "NetConfig",
           "build_network", "from_torchvision", "load_checkpoint", "network_config", "network_from_weights",
           "read_weights", "skeleton", "state_dict_of"]
