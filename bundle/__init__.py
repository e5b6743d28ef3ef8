"""LH-UTANet MONAI bundle: networks, data, transforms and handlers."""
