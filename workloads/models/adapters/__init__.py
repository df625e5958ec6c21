"""One entry point for a model unravel did not build: ``adapt(model)`` picks its family's adapter by the model's
class and returns its residual units as a BlockNetwork (with the anchors ``check_adapter`` proves it by).

The choice is made from the names of the model's classes, so a library is imported only when the model came from
it: adapting a torchvision model never imports timm, and the CIFAR networks import neither.
"""
from __future__ import annotations

from importlib import import_module

from torch import nn

from workloads.models.blocks import BlockNetwork
from workloads.models.errors import AdapterError

# (module, class) of a model -> (adapter module, its function); a subclass is adapted as its library base class
ADAPTERS: dict[tuple[str, str], tuple[str, str]] = {
    ("torchvision.models.resnet", "ResNet"): ("torchvision_resnet", "from_torchvision"),
    ("torchvision.models.regnet", "RegNet"): ("regnet", "from_torchvision_regnet"),
    ("torchvision.models.mobilenetv2", "MobileNetV2"): ("inverted_residual",
                                                        "from_torchvision_inverted_residual"),
    ("torchvision.models.mobilenetv3", "MobileNetV3"): ("inverted_residual",
                                                        "from_torchvision_inverted_residual"),
    ("torchvision.models.efficientnet", "EfficientNet"): ("inverted_residual",
                                                          "from_torchvision_inverted_residual"),
    ("torchvision.models.convnext", "ConvNeXt"): ("convnext", "from_torchvision_convnext"),
    ("torchvision.models.swin_transformer", "SwinTransformer"): ("swin", "from_torchvision_swin"),
    ("torchvision.models.vision_transformer", "VisionTransformer"): ("vit", "from_torchvision_vit"),
    ("timm.models.resnet", "ResNet"): ("timm_resnet", "from_timm_resnet"),
    ("timm.models.convnext", "ConvNeXt"): ("convnext", "from_timm_convnext"),
    ("timm.models.vision_transformer", "VisionTransformer"): ("timm_vit", "from_timm_vit"),
    ("transformers.models.gpt2.modeling_gpt2", "GPT2LMHeadModel"): ("hf", "from_causal_lm"),
    ("transformers.models.llama.modeling_llama", "LlamaForCausalLM"): ("hf", "from_causal_lm"),
    ("transformers.models.mistral.modeling_mistral", "MistralForCausalLM"): ("hf", "from_causal_lm"),
    ("transformers.models.qwen2.modeling_qwen2", "Qwen2ForCausalLM"): ("hf", "from_causal_lm"),
}

# torchvision's builders (torchvision.models.<name>) whose models adapt: the networks a registry can list
TORCHVISION_BUILDERS: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
    "regnet_x_400mf", "regnet_x_800mf", "regnet_x_1_6gf", "regnet_x_3_2gf", "regnet_x_8gf", "regnet_x_16gf",
    "regnet_x_32gf", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf",
    "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
    "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
    "swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b",
    "vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14",
)

# timm's model classes that adapt (timm.create_model names of these classes; blocks are checked when adapted)
TIMM_FAMILIES: tuple[str, ...] = ("timm.models.resnet.ResNet", "timm.models.convnext.ConvNeXt",
                                  "timm.models.vision_transformer.VisionTransformer")


def _known() -> str:
    return ", ".join(f"{module.split('.')[0]} {cls}" for module, cls in ADAPTERS)


def adapt(model: nn.Module) -> BlockNetwork:
    """The model's residual units, by its family's adapter; AdapterError (one line) for a model of no known
    family, or one its adapter cannot reproduce."""
    for cls in type(model).__mro__:
        target = ADAPTERS.get((cls.__module__, cls.__name__))
        if target is not None:
            module, function = target
            return getattr(import_module(f".{module}", __package__), function)(model)
    raise AdapterError(f"{type(model).__name__} is not a residual network unravel can adapt (known: {_known()})")
