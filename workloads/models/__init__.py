"""Networks of both papers as block lists: CIFAR ResNets, the plain net, torchvision ResNets."""
from .blocks import Block, BlockInfo, BlockNetwork
from .registry import NETWORKS, NetConfig, build_network, network_config
from .torchvision_adapter import from_torchvision

__all__ = ["Block", "BlockInfo", "BlockNetwork", "NETWORKS", "NetConfig", "build_network",
           "network_config", "from_torchvision"]
