"""mixpretrain: 3-D medical MAE pretraining with transfer-scaling-law data mixtures."""

__version__ = "0.1.0"
