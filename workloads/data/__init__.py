"""Datasets as device-resident tensors: CIFAR-10/100 and the bundled digits."""
